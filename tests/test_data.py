"""Readers on the real corpora (counts checked by independent simple methods), malformed input
(each error naming file and line), dataset dispatch and the label vocabulary."""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from nertron.engine.data import (IGNORE_INDEX, PAD, SCHEMES, DataFormatError, LabelVocab, Sentence,
                                 UnknownLabelError, convert, detect_format, from_spans, read_atis, read_conll, read_csv,
                                 read_dataset, read_factrueval, spans)
from nertron.tags import SCHEME_NAMES, normalize_scheme


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _raises_at(path: Path, line: int, message: str, call):
    with pytest.raises(DataFormatError, match=re.escape(message)) as info:
        list(call())
    assert info.value.path == Path(path) and info.value.line == line
    where = f"{path}:{line}: " if line else f"{path}: "
    assert str(info.value).startswith(where)
    assert isinstance(info.value, ValueError)


# --- CoNLL-2003 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eng.train", "eng.testa", "eng.testb"])
def test_conll_counts(data_dir, name):
    path = data_dir / "conll2003" / name
    text = path.read_text(encoding="utf-8")
    # Independent count: blank-line-separated blocks holding a non-DOCSTART line.
    blocks = [b for b in re.split(r"\n\s*\n", text) if any(ln.strip() and not ln.startswith("-DOCSTART-")
                                                         for ln in b.splitlines())]
    token_lines = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("-DOCSTART-")]
    sentences = list(read_conll(path))
    assert len(sentences) == len(blocks)
    assert [w for s in sentences for w in s.words] == [f[0] for f in token_lines]
    assert [t for s in sentences for t in s.tags] == [f[3] for f in token_lines]
    assert len({s.doc_id for s in sentences}) == text.count("-DOCSTART-")
    assert {len(s.words) == len(s.tags) > 0 for s in sentences} == {True}
    # source points at the sentence's first line.
    first = sentences[0]
    number = int(first.source.rsplit(":", 1)[1])
    assert text.splitlines()[number - 1].split()[0] == first.words[0]


def test_conll_known_sizes(data_dir):
    assert sum(1 for _ in read_conll(data_dir / "conll2003" / "eng.testa")) == 3250
    first = next(iter(read_conll(data_dir / "conll2003" / "eng.testa")))
    assert first.words[:3] == ["CRICKET", "-", "LEICESTERSHIRE"] and first.tags[2] == "I-ORG"
    assert first.doc_id == "1"


def test_conll_errors(tmp_path):
    ok = "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n\n"
    path = _write(tmp_path, "eng.bad", ok + "German JJ I-NP I-MISC\ncall NN I-NP\n")
    _raises_at(path, 7, "expected 4 columns, got 3", lambda: read_conll(path))
    path = _write(tmp_path, "tags.bad", ok + "German JJ I-NP Q-PER\n")
    _raises_at(path, 6, "bad tag 'Q-PER'", lambda: read_conll(path))
    path = _write(tmp_path, "one.bad", "word\n")
    _raises_at(path, 1, "expected at least 2 columns", lambda: read_conll(path))
    path = _write(tmp_path, "empty.txt", "")
    _raises_at(path, 0, f"no sentences in {path}", lambda: read_conll(path))
    path = _write(tmp_path, "docs_only.txt", "-DOCSTART- -X- O O\n\n\n")
    _raises_at(path, 0, "no sentences", lambda: read_conll(path))
    # Two-column files are fine; an explicit column count is enforced.
    path = _write(tmp_path, "two.txt", "a B-PER\nb O\n\nc O")
    assert [s.tags for s in read_conll(path)] == [["B-PER", "O"], ["O"]]
    _raises_at(path, 1, "expected 4 columns, got 2", lambda: read_conll(path, columns=4))


def test_conll_streams(tmp_path):
    # A generator: sentences before a malformed line come out before the error.
    path = _write(tmp_path, "late.txt", "a B-PER\n\nb c d O\n")
    stream = read_conll(path)
    assert next(stream).words == ["a"]
    with pytest.raises(DataFormatError, match=":3: expected 2 columns, got 4"):
        next(stream)


# --- ATIS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["atis.train.w-intent.iob", "atis.test.w-intent.iob", "atis-2.dev.w-intent.iob"])
def test_atis_real(data_dir, name):
    path = data_dir / "atis" / name
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    sentences = list(read_atis(path))
    assert len(sentences) == len(lines)
    for line, s in zip(lines, sentences):
        left, right = line.split("\t")
        assert s.words == left.split()[1:-1]
        assert len(s.tags) == len(s.words) > 0
        assert s.intent == right.split()[-1]
        assert s.tags == right.split()[1:-1]
    assert all(t == "O" or t[:2] in ("B-", "I-") for s in sentences for t in s.tags)
    if name.startswith("atis.train"):
        assert sum("#" in s.intent for s in sentences) == 26  # multi-intents stay joined
        assert sentences[0].tags[5] == "B-fromloc.city_name" and sentences[0].words[5] == "boston"


def test_atis_errors(tmp_path):
    good = "BOS show flights EOS\tO O O atis_flight\n"
    cases = [
        ("BOS show flights EOS\tO O atis_flight\n", "2 words but 1 tags"),
        ("BOS show flights EOS\tO O O O atis_flight\n", "2 words but 3 tags"),
        ("show flights EOS\tO O O atis_flight\n", "must start with BOS and end with EOS"),
        ("BOS show flights\tO O O atis_flight\n", "must start with BOS and end with EOS"),
        ("BOS show flights EOS O O O atis_flight\n", "got 0 tabs"),
        ("BOS show flights EOS\tB-x O O atis_flight\n", "the BOS tag must be O"),
        ("BOS show flights EOS\tO Q-PER O atis_flight\n", "bad tag 'Q-PER'"),
        ("BOS show EOS\tatis_flight\n", "expected the BOS tag O"),
    ]
    for i, (bad, message) in enumerate(cases):
        path = _write(tmp_path, f"bad{i}.iob", good + "\n" + bad)
        _raises_at(path, 3, message, lambda: read_atis(path))
    path = _write(tmp_path, "empty.iob", "\n\n")
    _raises_at(path, 0, "no sentences", lambda: read_atis(path))


# --- FactRuEval-2016 ------------------------------------------------------------------------------


def _blocks(tokens_path: Path) -> list[list[list[str]]]:
    """Sentences of a .tokens file as lists of fields, by splitting on blank lines."""
    text = tokens_path.read_text(encoding="utf-8")
    return [[ln.split() for ln in b.splitlines() if ln.strip()] for b in re.split(r"\n\s*\n", text) if b.strip()]


def _objects(book: Path) -> list[tuple[str, set[int]]]:
    """(TYPE, token ids) of each object, computed straight from the files."""
    index = {}  # token id -> the ids in file order, to expand n_tokens
    order = [int(f[0]) for block in _blocks(book.with_suffix(".tokens")) for f in block]
    index = {tid: i for i, tid in enumerate(order)}
    span_tokens = {}
    for line in book.with_suffix(".spans").read_text(encoding="utf-8").splitlines():
        f = line.split("#")[0].split()
        if f:
            start = index[int(f[4])]
            span_tokens[f[0]] = set(order[start:start + int(f[5])])
    result = []
    for line in book.with_suffix(".objects").read_text(encoding="utf-8").splitlines():
        f = line.split("#")[0].split()
        if f:
            result.append((f[1], set().union(*(span_tokens[s] for s in f[2:]))))
    return result


@pytest.mark.parametrize("split", ["devset", "testset"])
def test_factrueval_real(data_dir, split):
    folder = data_dir / "factrueval2016" / split
    stats = Counter()
    sentences = list(read_factrueval(folder, stats))
    books = sorted(folder.glob("*.tokens"))
    assert stats["documents"] == len(books) == {"devset": 122, "testset": 132}[split]
    by_doc: dict[str, list[Sentence]] = {}
    for s in sentences:
        by_doc.setdefault(s.doc_id, []).append(s)
    all_types = Counter()
    kept_types = {"Person": "PER", "Org": "ORG", "Location": "LOC", "LocOrg": "LOC"}
    exact_checked = 0
    for tokens_path in books:
        book = tokens_path.with_suffix("")
        blocks = _blocks(tokens_path)
        doc = by_doc[tokens_path.stem]
        # Sentences are the blank-line blocks; words are the tokens' texts.
        assert [s.words for s in doc] == [[f[3] for f in block] for block in blocks]
        # The tokens' text is the .txt at their offsets.
        text = book.with_suffix(".txt").read_text(encoding="utf-8")
        for block in blocks:
            for tid, offset, length, word in block:
                assert text[int(offset):int(offset) + int(length)] == word
        ids = [int(f[0]) for block in blocks for f in block]
        tags = dict(zip(ids, [t for s in doc for t in s.tags]))
        objects = _objects(book)
        all_types.update(kind for kind, _ in objects)
        kept = [(kind, tokens) for kind, tokens in objects if kind in kept_types]
        for kind, tokens in kept:
            others = [t for k, t in kept if t is not tokens and t & tokens]
            if not others:
                # An object overlapping no other one is tagged on exactly its tokens.
                assert {i for i in tokens if tags[i] != "O"} == tokens
                assert {tags[i][2:] for i in tokens} == {kept_types[kind]}
                first = ids[min(ids.index(i) for i in tokens)]
                assert tags[first].startswith("B-")
                exact_checked += 1
        # Every tagged token lies in some object of that type.
        for tid, tag in tags.items():
            if tag != "O":
                assert any(kept_types[k] == tag[2:] and tid in t for k, t in kept)
    assert exact_checked > 1000
    # Nothing lost silently: every object is tagged or counted as dropped.
    assert stats["objects"] == sum(all_types.values())
    assert stats["tagged"] + stats["dropped"] == stats["objects"]
    dropped_types = {k: v for k, v in all_types.items() if k not in kept_types}
    assert {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("dropped_type:")} == dropped_types
    assert stats["dropped"] == sum(dropped_types.values()) + stats["dropped_overlap"]
    assert "Project" in dropped_types
    assert stats["sentences"] == len(sentences)
    # Entities are at least the tagged objects (discontinuous objects give several runs).
    assert sum(len(spans(s.tags)) for s in sentences) >= stats["tagged"]


def _copy_book(data_dir: Path, tmp_path: Path) -> Path:
    src = data_dir / "factrueval2016" / "devset" / "book_100"
    folder = tmp_path / "fre"
    folder.mkdir()
    for suffix in (".tokens", ".spans", ".objects", ".txt"):
        shutil.copy(src.with_suffix(suffix), folder / f"book_100{suffix}")
    return folder


def _replace_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_factrueval_errors(data_dir, tmp_path):
    folder = _copy_book(data_dir, tmp_path)
    assert len(list(read_factrueval(folder))) > 5
    assert len(list(read_factrueval(folder / "book_100"))) > 5  # a single book by its prefix
    spans_path = folder / "book_100.spans"
    original = spans_path.read_text(encoding="utf-8")
    _replace_line(spans_path, 3, "22765 loc_name 47 8 999999999 1  # broken")
    _raises_at(spans_path, 3, "span 22765 starts at unknown token id 999999999", lambda: read_factrueval(folder))
    _replace_line(spans_path, 3, "22765 loc_name 47 8")
    _raises_at(spans_path, 3, "expected 6 fields", lambda: read_factrueval(folder))
    spans_path.write_text(original, encoding="utf-8")
    objects_path = folder / "book_100.objects"
    _replace_line(objects_path, 2, "10547 LocOrg 424242 # nowhere")
    _raises_at(objects_path, 2, "object 10547 names unknown span id 424242", lambda: read_factrueval(folder))
    tokens_path = folder / "book_100.tokens"
    _replace_line(tokens_path, 4, "143786 17 4")
    _raises_at(tokens_path, 4, "expected 4 fields", lambda: read_factrueval(folder))
    _replace_line(tokens_path, 4, "143786 x 4 июня")
    _raises_at(tokens_path, 4, "offset must be an integer, got 'x'", lambda: read_factrueval(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises_at(empty, 0, "no sentences", lambda: read_factrueval(empty))


def test_factrueval_choices(tmp_path):
    # A hand-made book: nested objects keep the outer one, Project is dropped, a
    # discontinuous object gets B- on each run, LocOrg is LOC.
    folder = tmp_path / "mini"
    folder.mkdir()
    words = ["Мэрия", "Москвы", "и", "проект", "Иван", "Петров", ".", "Россия"]
    offset, token_lines = 0, []
    for i, word in enumerate(words):
        token_lines.append(f"{100 + i} {offset} {len(word)} {word}")
        offset += len(word) + 1
    token_lines.insert(7, "")  # second sentence: Россия
    (folder / "book_1.tokens").write_text("\n".join(token_lines) + "\n", encoding="utf-8")
    (folder / "book_1.spans").write_text(
        "1 org_descr 0 5 100 1  # Мэрия\n2 loc_name 6 6 101 1  # Москвы\n3 project 0 0 103 1\n"
        "4 name 0 0 104 1\n5 surname 0 0 105 1\n6 loc_name 0 0 107 1\n", encoding="utf-8")
    (folder / "book_1.objects").write_text(
        "1 Org 1 2 # Мэрия Москвы\n2 LocOrg 2 # Москвы\n3 Project 3\n4 Person 4 5\n5 Person 4\n"
        "6 Location 6\n7 Org 1 4\n", encoding="utf-8")
    stats = Counter()
    first, second = read_factrueval(folder, stats)
    assert first.tags == ["B-ORG", "I-ORG", "O", "O", "B-PER", "I-PER", "O"]
    assert second.words == ["Россия"] and second.tags == ["B-LOC"]
    # Dropped: LocOrg and Person(4) nested, Org(7) overlapping, Project by type.
    assert stats["dropped_overlap"] == 3 and stats["dropped_type:Project"] == 1
    assert stats["tagged"] == 3 and stats["objects"] == 7 and stats["dropped"] == 4


def test_factrueval_discontinuous(tmp_path):
    folder = tmp_path / "disc"
    folder.mkdir()
    (folder / "book_2.tokens").write_text("1 0 1 a\n2 2 1 b\n3 4 1 c\n", encoding="utf-8")
    (folder / "book_2.spans").write_text("10 x 0 1 1 1\n11 x 4 1 3 1\n", encoding="utf-8")
    (folder / "book_2.objects").write_text("5 Person 10 11\n", encoding="utf-8")
    assert next(read_factrueval(folder)).tags == ["B-PER", "O", "B-PER"]


# --- CSV ---------------------------------------------------------------------------------------------


def test_csv_read(tmp_path):
    path = _write(tmp_path, "train.csv", 'labels,text,cls\n"B-PER I-PER O","Ivan Petrov , said",greet\n'
                                         '"O X","a b",other\n')
    with pytest.raises(DataFormatError, match=r"train.csv:2: 4 tokens but 3 labels"):
        list(read_csv(path))
    path = _write(tmp_path, "train.csv", 'labels,text,cls\n"B-PER I-PER O","Ivan Petrov said",greet\n'
                                         '\n"O X","a b",\n')
    sentences = list(read_csv(path))
    assert sentences[0] == Sentence(["Ivan", "Petrov", "said"], ["B-PER", "I-PER", "O"], "greet",
                                    source=f"{path}:2")
    assert sentences[1].tags == ["O", "X"] and sentences[1].intent is None and sentences[1].source.endswith(":4")
    tsv = _write(tmp_path, "train.tsv", "text\tlabels\nI live\tO O\n")
    assert [(s.words, s.tags, s.intent) for s in read_csv(tsv)] == [(["I", "live"], ["O", "O"], None)]
    # sep given explicitly; quoted fields spanning lines (row 1 is lines 2-4) keep line numbers right.
    semi = _write(tmp_path, "multi.csv", 'labels,text\n"O\nO","a\nb"\n"O O","c"\n')
    _raises_at(semi, 5, "1 tokens but 2 labels", lambda: read_csv(semi, sep=","))


def test_csv_errors(tmp_path):
    cases = [
        ("labels,words\nO,a\n", 1, "header lacks column(s) text"),
        ("labels,text\nO,a,extra\n", 2, "expected 2 fields, got 3"),
        ("labels,text\nO O,a\n", 2, "1 tokens but 2 labels"),
        ("labels,text\nO,a\nQ-PER,b\n", 3, "bad tag 'Q-PER'"),
        ("labels,text\n,\n", 0, "no sentences"),
        ("labels,text\nO,  \n", 2, "empty text"),
        ("", 0, "no sentences"),
    ]
    for i, (text, line, message) in enumerate(cases):
        path = _write(tmp_path, f"bad{i}.csv", text)
        _raises_at(path, line, message, lambda: read_csv(path))


# --- dispatch ------------------------------------------------------------------------------------


def test_read_dataset_dispatch(data_dir, tmp_path):
    conll = read_dataset(data_dir / "conll2003" / "eng.testb")
    assert (conll.format, conll.scheme) == ("conll", "IOB1")
    assert sum(1 for _ in conll) == sum(1 for _ in conll) == 3453  # re-iterable
    atis = read_dataset(data_dir / "atis" / "atis.test.w-intent.iob")
    assert (atis.format, atis.scheme) == ("atis", "IOB2") and next(iter(atis)).intent
    fre = read_dataset(data_dir / "factrueval2016" / "devset")
    assert (fre.format, fre.scheme) == ("factrueval", "IOB2")
    n = sum(1 for _ in fre)
    assert fre.stats["sentences"] == n and fre.stats["dropped"] > 0
    sum(1 for _ in fre)
    assert fre.stats["sentences"] == n  # stats restart with each pass
    csv_path = _write(tmp_path, "data.txt", "labels,text\nO,a\n")
    # Only O tags: nothing to detect; CSV (and ATIS) default to IOB2, CoNLL to IOB1.
    assert detect_format(csv_path) == "csv" and read_dataset(csv_path).scheme == "IOB2"
    assert read_dataset(csv_path, tag_scheme="iobes").scheme == "BIOES"
    atis_copy = _write(tmp_path, "atis.txt", "BOS a EOS\tO O intent\n")
    assert detect_format(atis_copy) == "atis"
    assert detect_format(_write(tmp_path, "x.tsv", "text\tlabels\n")) == "csv"
    assert read_dataset(atis_copy, "atis").format == "atis"
    with pytest.raises(ValueError, match="unknown data format 'json'"):
        read_dataset(atis_copy, "json")
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        read_dataset(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "missing.txt", "conll")
    with pytest.raises(FileNotFoundError, match="no FactRuEval"):
        read_dataset(tmp_path / "missing", "factrueval")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataFormatError, match="FactRuEval .tokens"):
        read_dataset(tmp_path / "empty_dir")


def test_sentence_checks_lengths():
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        Sentence(["a", "b"], ["O"])


# --- label vocabulary ----------------------------------------------------------------------------


def test_vocab_from_conll(data_dir, tmp_path):
    sentences = list(read_conll(data_dir / "conll2003" / "eng.testa"))
    vocab = LabelVocab.from_sentences(sentences)
    tags = {t for s in sentences for t in s.tags}
    assert vocab.labels[0] == PAD and vocab.labels[1] == "O"
    assert set(vocab.labels[1:]) == tags and vocab.num_labels == len(tags) + 1 == len(vocab)
    # Sorted by type then prefix: stable whatever the order of the data.
    assert LabelVocab.from_sentences(reversed(sentences)) == vocab
    assert LabelVocab.from_labels(["I-LOC", "B-PER", "X", "B-LOC", "O", "S-LOC"]).labels == [
        PAD, "O", "B-LOC", "I-LOC", "S-LOC", "B-PER"]
    for s in sentences[:200]:
        ids = vocab.encode(s.tags)
        assert all(0 < i < vocab.num_labels for i in ids)
        assert vocab.decode(ids) == s.tags
    path = tmp_path / "labels.json"
    vocab.save(path)
    assert LabelVocab.load(path) == vocab and LabelVocab.from_file(path) == vocab
    assert LabelVocab.from_file(data_dir / "conll2003" / "eng.testa") == vocab
    assert LabelVocab.from_labels(["O", "B-PER"]) != vocab
    assert hash(LabelVocab(vocab.labels)) == hash(vocab)


def test_vocab_pad_and_ignore():
    vocab = LabelVocab(["O", "B-PER", "X"])
    assert vocab.labels == [PAD, "O", "B-PER"]  # pad first, X not a class
    assert vocab.encode("X") == IGNORE_INDEX == -100 and vocab.decode(-100) == "X"
    assert vocab.encode(["B-PER", "X", PAD]) == [2, -100, 0]
    assert vocab.decode(torch.tensor([2, 1, -100])) == ["B-PER", "O", "X"]
    assert vocab.decode(torch.tensor(1)) == "O"
    assert "X" in vocab and "B-PER" in vocab and "I-PER" not in vocab
    assert LabelVocab([PAD, "O"]).labels == [PAD, "O"]


def test_vocab_errors(tmp_path):
    vocab = LabelVocab.from_labels(["O", "B-PER", "I-PER"])
    with pytest.raises(KeyError) as info:
        vocab.encode("B-LOC")
    assert isinstance(info.value, UnknownLabelError)
    assert str(info.value) == "unknown label 'B-LOC'; known labels: <pad>, O, B-PER, I-PER"
    with pytest.raises(UnknownLabelError, match=r"label id 7 outside \[0, 4\)"):
        vocab.decode(7)
    with pytest.raises(ValueError, match="must be the first label"):
        LabelVocab(["O", PAD])
    with pytest.raises(ValueError, match="duplicate labels: O"):
        LabelVocab(["O", "B-PER", "O"])
    bad = _write(tmp_path, "bad.json", "{not json")
    with pytest.raises(ValueError, match="bad.json: not a JSON label vocabulary"):
        LabelVocab.load(bad)
    with pytest.raises(ValueError, match="no 'labels' list"):
        LabelVocab.load(_write(tmp_path, "other.json", '{"vocab": []}'))
    with pytest.raises(ValueError, match="starting with '<pad>'"):
        LabelVocab.load(_write(tmp_path, "nopad.json", '{"labels": ["O"]}'))
    with pytest.raises(ValueError, match="newer"):
        LabelVocab.load(_write(tmp_path, "new.json", '{"labels": ["<pad>"], "version": 99}'))


# --- tag schemes of the files ------------------------------------------------------------------------

# One text in every scheme: "EU rejects German call . Peter Blackburn" with two touching PER.
_WORDS = ["EU", "rejects", "German", "call", "Peter", "Blackburn", "Smith", "said", "Jones"]
_SPANS = [("ORG", 0, 1), ("MISC", 2, 3), ("PER", 4, 6), ("PER", 6, 7), ("PER", 8, 9)]


def _conll_text(tags, columns=4):
    rows = [" ".join([w] + ["X"] * (columns - 2) + [t]) for w, t in zip(_WORDS, tags)]
    return "-DOCSTART- -X- O O\n\n" + "\n".join(rows[:4]) + "\n\n" + "\n".join(rows[4:]) + "\n"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_conll_in_every_scheme(tmp_path, scheme):
    tags = from_spans(_SPANS, len(_WORDS), scheme)
    path = _write(tmp_path, f"{scheme}.conll", _conll_text(tags))
    # Detected: the same entities whatever the scheme (IOE1 text has E- only between the touching PER).
    dataset = read_dataset(path)
    found = dataset.scheme
    assert [t for s in dataset for t in s.tags] == tags  # yielded as in the file
    assert spans(tags, found) == _SPANS and convert(tags, found, scheme) == tags
    # Given, in any spelling: the same sentences.
    for name in {scheme, scheme.lower()} | {alias for alias in SCHEME_NAMES if normalize_scheme(alias) == scheme}:
        assert [t for s in read_conll(path, tag_scheme=name) for t in s.tags] == tags
        assert read_dataset(path, tag_scheme=name).scheme == scheme


def test_conll_detection_examples(tmp_path):
    cases = {"BIOES": ["S-ORG", "O", "S-MISC", "O", "B-PER", "E-PER", "S-PER", "O", "S-PER"],
             "BILOU": ["U-ORG", "O", "U-MISC", "O", "B-PER", "L-PER", "U-PER", "O", "U-PER"],
             "IOB1": ["I-ORG", "O", "I-MISC", "O", "I-PER", "I-PER", "B-PER", "O", "I-PER"],
             "IOB2": ["B-ORG", "O", "B-MISC", "O", "B-PER", "I-PER", "B-PER", "O", "B-PER"],
             "IOE2": ["E-ORG", "O", "E-MISC", "O", "I-PER", "E-PER", "E-PER", "O", "E-PER"]}
    for scheme, tags in cases.items():
        path = _write(tmp_path, f"{scheme}.txt", _conll_text(tags))
        assert read_dataset(path).scheme == scheme
        assert [t for s in read_conll(path) for t in s.tags] == tags
    assert read_dataset(_write(tmp_path, "o.txt", "a O\n")).scheme == "IOB1"  # CoNLL's default


def test_conll_mixed_schemes_are_rejected(tmp_path):
    iob1 = ["I-ORG", "O", "I-MISC", "O", "I-PER", "I-PER", "B-PER", "O", "I-PER"]
    # An S- tag in a file whose other tags say IOB1: line 12 is "Blackburn ... S-ORG".
    mixed = iob1[:5] + ["S-ORG"] + iob1[6:]
    path = _write(tmp_path, "mixed.conll", _conll_text(mixed))
    _raises_at(path, 9, "tag 'S-ORG' is not a IOB1 tag", lambda: read_conll(path))
    with pytest.raises(DataFormatError, match="detected from its other tags: a file must keep to one scheme"):
        list(read_dataset(path))
    # Given IOB1 explicitly, an S- tag is named the same way.
    path = _write(tmp_path, "bioes.conll", _conll_text(["S-ORG"] + ["O"] * 8))
    assert [s.tags[0] for s in read_conll(path)][0] == "S-ORG"  # detected: BIOES
    _raises_at(path, 3, "tag 'S-ORG' is not a IOB1 tag (IOB1 prefixes: B, I)", lambda: read_conll(path, tag_scheme="IOB1"))
    with pytest.raises(DataFormatError, match=r"bioes.conll:3: .*tag_scheme IOB1 was given"):
        list(read_dataset(path, tag_scheme="iob1"))
    # IOB2 given, an entity starting with I- (IOB1 style): line and tag named.
    path = _write(tmp_path, "iob1.conll", _conll_text(iob1))
    _raises_at(path, 3, "tag 'I-ORG' breaks IOB2 (expected 'B-ORG')", lambda: read_conll(path, tag_scheme="bio"))
    # BIOES: B- without E-.
    path = _write(tmp_path, "b.conll", _conll_text(["B-ORG"] + ["O"] * 8))
    _raises_at(path, 3, "tag 'B-ORG' breaks BIOES (expected 'S-ORG')", lambda: read_conll(path, tag_scheme="IOBES"))
    # A malformed tag after valid sentences: the sentences before it still come out first.
    path = _write(tmp_path, "late.conll", "a B-PER\n\nb S-X\nc I-X\n")
    stream = read_conll(path)
    assert next(stream).tags == ["B-PER"]
    with pytest.raises(DataFormatError, match=r"late.conll:3: tag .S-X. is not a IOB2 tag"):
        next(stream)
    with pytest.raises(ValueError, match="unknown tag scheme 'BILUO'"):
        list(read_conll(path, tag_scheme="BILUO"))
    with pytest.raises(ValueError, match="unknown tag scheme 'BILUO'"):
        read_dataset(path, tag_scheme="BILUO")


def test_invalid_utf8_names_file_and_line(tmp_path, data_dir):
    for name, text, line, reader in [
        ("bad.conll", b"a O\n\nb O\nc\xff O\n", 4, read_conll),
        ("bad.iob", b"BOS a EOS\tO O i\nBOS b EOS\tO \xc3( i\n", 2, read_atis),
        ("bad.csv", b"labels,text\nO,a\n\"O\nO\",\"b\n\xe2\x82\"\n", 5, read_csv),
    ]:
        path = tmp_path / name
        path.write_bytes(text)
        _raises_at(path, line, "invalid UTF-8", lambda: reader(path))
        _raises_at(path, line, "invalid UTF-8", lambda: read_dataset(path))
    first = tmp_path / "first.txt"
    first.write_bytes(b"\xffa O\n")
    _raises_at(first, 1, "invalid UTF-8 (byte 0xff at column 1)", lambda: read_dataset(first))
    # Lone CR line ends count as lines, as in text mode.
    cr = tmp_path / "cr.conll"
    cr.write_bytes(b"a O\rb O\r\rc \xff\n")
    _raises_at(cr, 4, "invalid UTF-8 (byte 0xff at column 3)", lambda: read_conll(cr))
    folder = _copy_book(data_dir, tmp_path)
    tokens = folder / "book_100.tokens"
    lines = tokens.read_bytes().split(b"\n")
    lines[4] = lines[4] + b"\xff"
    tokens.write_bytes(b"\n".join(lines))
    _raises_at(tokens, 5, "invalid UTF-8", lambda: read_factrueval(folder))


def test_atis_and_csv_schemes(tmp_path, data_dir):
    path = _write(tmp_path, "a.iob", "BOS show boston flights EOS\tO O S-city O atis_flight\n"
                                     "BOS to new york EOS\tO O B-city E-city atis_flight\n")
    assert read_dataset(path).scheme == "BIOES" and len(list(read_atis(path))) == 2
    _raises_at(path, 1, "tag 'S-city' is not a IOB2 tag", lambda: read_atis(path, tag_scheme="IOB2"))
    assert read_dataset(data_dir / "atis" / "atis.train.w-intent.iob").scheme == "IOB2"
    # CSV: the continuation label X is left out of detection and checks, wherever it is.
    path = _write(tmp_path, "x.csv", 'labels,text\n"S-PER X O","Ann ##a said"\n"B-LOC X E-LOC","New ##y York"\n')
    assert read_dataset(path).scheme == "BIOES"
    assert [s.tags for s in read_csv(path)] == [["S-PER", "X", "O"], ["B-LOC", "X", "E-LOC"]]
    _raises_at(path, 2, "tag 'S-PER' is not a IOB1 tag", lambda: read_csv(path, tag_scheme="IOB1"))
    path = _write(tmp_path, "mixed.csv", 'labels,text\n"I-PER O",a b\n"I-PER I-PER",c d\n"S-LOC",e\n')
    _raises_at(path, 4, "tag 'S-LOC' is not a IOB1 tag", lambda: read_csv(path))
    # Malformed CSV is a DataFormatError too.
    path = _write(tmp_path, "big.csv", "labels,text\n" + '"' + "a" * 200_000 + '",b\n')
    with pytest.raises(DataFormatError, match="big.csv:2: bad CSV: field larger than field limit"):
        list(read_csv(path))
    # FactRuEval's tags are the reader's own IOB2.
    assert read_dataset(data_dir / "factrueval2016" / "devset", tag_scheme="BIO").scheme == "IOB2"
    with pytest.raises(ValueError, match="FactRuEval tags are IOB2"):
        read_dataset(data_dir / "factrueval2016" / "devset", tag_scheme="BIOES")


def test_nerdata_converts_each_file_to_the_model_scheme(tmp_path, minilm_dir):
    from nertron.engine.data.loader import NerData

    iob1 = ["I-ORG", "O", "I-MISC", "O", "I-PER", "I-PER", "B-PER", "O", "I-PER"]
    train = _write(tmp_path, "train.bioes", _conll_text(from_spans(_SPANS, len(_WORDS), "BIOES")))
    valid = _write(tmp_path, "valid.iob1", _conll_text(iob1))
    test = _write(tmp_path, "test.bilou", _conll_text(from_spans(_SPANS, len(_WORDS), "BILOU")))
    for target in ("IOB2", "BIOES", "IOB1"):
        data = NerData.create(train, valid, minilm_dir, test_path=test, tag_scheme=target)
        expected = from_spans(_SPANS, len(_WORDS), target)
        for split in ("train", "valid", "test"):
            assert [t for s in data.sentences(split) for t in s.tags] == expected, (target, split)
    # source_scheme: the files' scheme, given; a file that does not fit it is rejected at its line.
    data = NerData.create(train, None, minilm_dir, source_scheme="iobes", tag_scheme="IOB2")
    assert [t for s in data.sentences("train") for t in s.tags] == from_spans(_SPANS, len(_WORDS), "IOB2")
    with pytest.raises(DataFormatError, match=r"valid.iob1:3: tag 'I-ORG' breaks BIOES"):
        NerData.create(train, valid, minilm_dir, source_scheme="BIOES")
    # CSV with X: converted around it.
    csv_path = _write(tmp_path, "x.csv", 'labels,text\n"S-PER X O","Ann ##a said"\n')
    data = NerData.create(csv_path, None, minilm_dir, tag_scheme="IOB2")
    assert data.sentences("train")[0].tags == ["B-PER", "X", "O"]


def test_nerdata_on_conll2003_unchanged(data_dir, minilm_dir):
    # Today's IOB1 CoNLL input: detected IOB1, converted to IOB2 exactly as the hard-wired IOB1 did.
    from nertron.engine.data.loader import NerData
    from nertron.tags import iob1_to_iob2

    path = data_dir / "conll2003" / "eng.testa"
    data = NerData.create(path, None, minilm_dir, valid_fraction=0.5)
    sentences = list(read_conll(path))
    got = data.sentences("train") + data.sentences("valid")
    assert [(s.words, s.tags) for s in got] == [(s.words, iob1_to_iob2(s.tags)) for s in sentences]
