"""WordPiece tokenisation and sub-token alignment (nertron.engine.tokenizer).

Checked on real data: CoNLL-2003 (English), FactRuEval-2016 (Russian) and the real
all-MiniLM-L6-v2 uncased vocab; ids are compared with Hugging Face's BertTokenizerFast. The
cased tests use a small cased vocab built in a temporary folder from real CoNLL-2003 words
(no cased checkpoint is installed), compared with transformers' BertTokenizer on that vocab.
"""
from __future__ import annotations

import json
from bisect import bisect_right
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import read_conll
from nertron.engine.tokenizer import (
    IGNORE_INDEX,
    WordPieces,
    WordPieceTokenizer,
    align_labels,
    merge_subtoken_predictions,
    merge_windows,
)

# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def hf(minilm_dir):
    return transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))


class Sentences(list):
    """A sentence list whose repr stays short in hypothesis' failure reports."""

    def __repr__(self) -> str:
        return f"<{len(self)} CoNLL-2003 sentences>"


@pytest.fixture(scope="module")
def dev_sentences(conll_dev) -> Sentences:
    return Sentences(conll_dev)


@pytest.fixture(scope="module")
def conll_train(data_dir) -> list[tuple[list[str], list[str]]]:
    return read_conll(data_dir / "conll2003" / "eng.train", limit=3000)


def read_documents(path: Path, limit: int) -> list[tuple[list[str], list[str]]]:
    """The first ``limit`` documents of a CoNLL-2003 file, each as (words, NER tags)."""
    documents, words, tags = [], [], []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            fields = line.split()
            if fields and fields[0] == "-DOCSTART-":
                if words:
                    documents.append((words, tags))
                    if len(documents) == limit:
                        return documents
                words, tags = [], []
            elif fields:
                words.append(fields[0])
                tags.append(fields[-1])
    if words:
        documents.append((words, tags))
    return documents


@pytest.fixture(scope="module")
def long_document(data_dir, tok) -> tuple[list[str], list[str]]:
    """A real CoNLL-2003 document (eng.testa) of more than 512 sub-tokens."""
    for words, tags in read_documents(data_dir / "conll2003" / "eng.testa", limit=200):
        if len(tok.encode_words(words)) > 700:
            return words, tags
    pytest.fail("no CoNLL-2003 dev document longer than 700 sub-tokens")


@pytest.fixture(scope="module")
def russian_texts(data_dir) -> list[str]:
    paths = sorted((data_dir / "factrueval2016" / "devset").glob("*.txt"))[:20]
    assert paths, "FactRuEval-2016 devset texts are missing"
    return [p.read_text(encoding="utf-8") for p in paths]


@pytest.fixture(scope="module")
def cased_dir(tmp_path_factory, conll_train) -> Path:
    """A cased WordPiece vocab from real CoNLL-2003 words: frequent whole words, their
    3-letter prefixes and 1-3 letter suffixes as ##pieces, every character seen."""
    counts = Counter(w for words, _ in conll_train for w in words)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for w in counts for c in w})
    pieces = set(chars) | {"##" + c for c in chars}
    for word, n in counts.most_common(3000):
        pieces.add(word)
        pieces.add(word[:3])
        pieces.update("##" + word[-k:] for k in (1, 2, 3) if len(word) > k)
    tokens += sorted(pieces - set(tokens))
    folder = tmp_path_factory.mktemp("cased")
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder


def check_invariants(pieces: WordPieces) -> None:
    """word_spans cover input_ids exactly, in order; every word has >= 1 piece; lengths agree."""
    n = len(pieces.input_ids)
    assert len(pieces.tokens) == len(pieces.token_offsets) == n
    assert len(pieces.words) == len(pieces.word_offsets) == len(pieces.word_spans)
    position = 0
    for start, end in pieces.word_spans:
        assert start == position and end > start
        position = end
    assert position == n


# --- loading and casing ---------------------------------------------------------------------------


def test_real_checkpoint_settings(tok, hf, minilm_dir):
    assert tok.do_lower_case is True and tok.strip_accents is True  # tokenizer_config: do_lower_case true
    assert tok.max_length == 512  # config.json max_position_embeddings
    assert tok.vocab_size == hf.vocab_size == 30522
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == (
        hf.cls_token_id, hf.sep_token_id, hf.pad_token_id, hf.unk_token_id)
    by_file = WordPieceTokenizer.from_pretrained(minilm_dir / "vocab.txt")
    assert (by_file.do_lower_case, by_file.max_length) == (True, 512)


@pytest.mark.parametrize("configured, expected", [(None, True), (True, True), (False, False)])
def test_lower_case_detected_from_vocab_then_config_then_user(tmp_path, minilm_dir, cased_dir, configured, expected):
    uncased = tmp_path / "uncased"
    uncased.mkdir()
    shutil.copy(minilm_dir / "vocab.txt", uncased)
    assert WordPieceTokenizer.from_pretrained(uncased).do_lower_case is True  # no upper-case pieces
    assert WordPieceTokenizer.from_pretrained(cased_dir).do_lower_case is False  # CoNLL words keep case
    if configured is not None:
        (uncased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": configured}))
    assert WordPieceTokenizer.from_pretrained(uncased).do_lower_case is expected
    # The user's value wins over both.
    assert WordPieceTokenizer.from_pretrained(uncased, do_lower_case=not expected).do_lower_case is (not expected)


def test_strip_accents_from_tokenizer_config(tmp_path, minilm_dir):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "strip_accents": False}))
    keeps = WordPieceTokenizer.from_pretrained(tmp_path)
    assert keeps.strip_accents is False
    reference = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert keeps.encode_text("Zürich café").input_ids == reference("Zürich café", add_special_tokens=False).input_ids
    assert keeps.encode_text("café").tokens != WordPieceTokenizer.from_pretrained(minilm_dir).encode_text("café").tokens


@pytest.mark.parametrize(
    "config, tokenizer_config, user, expected",
    [
        ({"max_position_embeddings": 128}, {"model_max_length": 256}, None, 128),
        ({}, {"model_max_length": 256}, None, 256),
        ({}, {"model_max_length": int(1e30)}, None, 512),  # HF's "unknown" placeholder
        ({}, {}, None, 512),
        ({"max_position_embeddings": 128}, {}, 64, 64),
    ],
)
def test_max_length_resolution(tmp_path, minilm_dir, config, tokenizer_config, user, expected):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert WordPieceTokenizer.from_pretrained(tmp_path, max_length=user).max_length == expected


# --- ids equal Hugging Face's -----------------------------------------------------------------------


def test_ids_equal_hf_on_conll_sentences(tok, hf, conll_dev):
    sentences = [words for words, _ in conll_dev]
    reference = hf(sentences, is_split_into_words=True, add_special_tokens=False)
    batched = tok.encode_words_batch(sentences)
    for n, words in enumerate(sentences):
        pieces = tok.encode_words(words)
        assert pieces.input_ids == reference["input_ids"][n], words
        assert pieces.word_ids == reference.word_ids(n)
        assert batched[n] == pieces
        check_invariants(pieces)


def test_cased_ids_equal_transformers(cased_dir, conll_dev):
    tok = WordPieceTokenizer.from_pretrained(cased_dir)
    reference = transformers.BertTokenizer.from_pretrained(str(cased_dir), do_lower_case=False)
    sentences = [words for words, _ in conll_dev[:300]]
    expected = reference(sentences, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    got = [p.input_ids for p in tok.encode_words_batch(sentences)]
    assert got == expected
    assert tok.encode_words(["EU"]).tokens == ["EU"]  # case kept
    assert sum(i == tok.unk_token_id for ids in got for i in ids) < 0.01 * sum(map(len, got))  # a real vocab


def test_encode_text_equals_hf_whole_text_and_offsets_slice_back(tok, hf, data_dir, russian_texts):
    texts = [" ".join(words) for words, _ in read_documents(data_dir / "conll2003" / "eng.testb", limit=5)]
    texts += russian_texts[:5]
    for text in texts:
        pieces = tok.encode_text(text)
        reference = hf(text, add_special_tokens=False, return_offsets_mapping=True)
        assert pieces.input_ids == reference["input_ids"]
        assert pieces.token_offsets == [tuple(o) for o in reference["offset_mapping"]]
        check_invariants(pieces)
        assert pieces.text is text
        assert all(text[a:b] == word for word, (a, b) in zip(pieces.words, pieces.word_offsets))


def test_encode_words_offsets_index_the_joined_words(tok, conll_dev):
    words = conll_dev[3][0]
    pieces = tok.encode_words(words)
    assert pieces.text == " ".join(words)
    assert [pieces.text[a:b] for a, b in pieces.word_offsets] == words
    for (start, end), (a, b) in zip(pieces.word_spans, pieces.word_offsets):
        # Sub-token offsets fall inside their word's offsets.
        assert all(a <= s <= e <= b for s, e in pieces.token_offsets[start:end])


@pytest.mark.parametrize(
    "text, words",
    [
        ("The U.S. and Jean-Pierre's firm on 1996-08-22 paid 3,500.50 at 10:30 .",
         ["The", "U.S.", "and", "Jean-Pierre", "'s", "firm", "on", "1996-08-22", "paid", "3,500.50", "at", "10:30",
          "."]),
        ("O'Neill (Reuters) - don't!", ["O'Neill", "(", "Reuters", ")", "-", "don't", "!"]),
        ("Москва,\u00a0«Газпром»\n北京", ["Москва", ",", "«", "Газпром", "»", "北京"]),
        ("zero\u200b-width \u200b and\x00 control", ["zero\u200b-width", "and", "control"]),
    ],
)
def test_split_text_into_conll_like_words(tok, hf, text, words):
    pieces = tok.encode_text(text)
    assert pieces.words == words
    assert pieces.input_ids == hf(text, add_special_tokens=False)["input_ids"]


SPECIAL_STRINGS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
# Characters where BERT's rules bite (accents, combining mark, zero-width, NUL, CJK, clitics,
# Turkish dotted I), mixed with arbitrary unicode.
TRICKY = st.text(alphabet=st.sampled_from(list("aZé.-,'’ s0  \n\t\u200b\x00\u0301北Жß$€İ:/")), min_size=1, max_size=60)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(TRICKY, st.text(min_size=1, max_size=60)))
def test_encode_text_random_equals_hf(tok, hf, text):
    assume(not any(s in text for s in SPECIAL_STRINGS))  # HF matches those as special tokens; we do not
    reference = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    if not reference["input_ids"]:
        with pytest.raises(ValueError, match="empty text"):
            tok.encode_text(text)
        return
    pieces = tok.encode_text(text)
    assert pieces.input_ids == reference["input_ids"]
    assert pieces.token_offsets == [tuple(o) for o in reference["offset_mapping"]]
    check_invariants(pieces)
    assert all(text[a:b] == word for word, (a, b) in zip(pieces.words, pieces.word_offsets))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.one_of(TRICKY, st.text(min_size=1, max_size=10)), min_size=1, max_size=10))
def test_encode_words_random_equals_hf(tok, hf, words):
    assume(not any(s in w for w in words for s in SPECIAL_STRINGS))
    pieces = tok.encode_words(words)
    check_invariants(pieces)
    reference = hf(words, is_split_into_words=True, add_special_tokens=False)
    # HF drops words the normaliser empties; here they are one [UNK] each.
    expected = [None] * len(words)
    for position, word in enumerate(reference.word_ids()):
        expected[word] = (expected[word] or []) + [reference["input_ids"][position]]
    for word, ((start, end), ids) in enumerate(zip(pieces.word_spans, expected)):
        assert pieces.input_ids[start:end] == (ids or [tok.unk_token_id]), words[word]


def test_special_token_strings_in_text_are_plain_text(tok):
    # A literal "[SEP]" in a document must not end the segment: it is tokenised as text.
    pieces = tok.encode_words(["[SEP]", "x"])
    assert pieces.tokens == ["[", "sep", "]", "x"] and pieces.word_spans == [(0, 3), (3, 4)]


# --- alignment ------------------------------------------------------------------------------------


def test_words_of_many_pieces_align(tok, conll_train):
    """Real CoNLL words of five or more pieces (long names, numbers with separators)."""
    found = 0
    for words, tags in conll_train:
        pieces = tok.encode_words(words)
        lengths = [end - start for start, end in pieces.word_spans]
        if max(lengths) < 5:
            continue
        found += 1
        aligned = align_labels(pieces, tags)
        assert len(aligned) == len(pieces.input_ids)
        for (start, end), tag in zip(pieces.word_spans, tags):
            assert aligned[start] == tag
            assert aligned[start + 1 : end] == ["X"] * (end - start - 1)
        assert merge_subtoken_predictions(pieces, aligned) == tags
        ids = align_labels(pieces, list(range(len(tags))), continuation_label=IGNORE_INDEX)
        assert sum(i != IGNORE_INDEX for i in ids) == len(tags)
    assert found >= 20


@pytest.mark.parametrize("index", [0, 7, 42, 199])
def test_inverse_mapping_gives_back_word_labels(tok, conll_dev, index):
    words, tags = conll_dev[index]
    pieces = tok.encode_words(words)
    assert merge_subtoken_predictions(pieces, align_labels(pieces, tags)) == tags
    assert align_labels(words, tags, tokenizer=tok) == align_labels(pieces, tags)
    tensor = torch.arange(len(pieces.input_ids))
    assert merge_subtoken_predictions(pieces, tensor) == pieces.word_starts


def test_pretokeniser_splits_stay_under_one_word(tok):
    pieces = tok.encode_words(["U.S.", "Jean-Pierre", "1996-08-22"])
    assert pieces.tokens == ["u", ".", "s", ".", "jean", "-", "pierre", "1996", "-", "08", "-", "22"]
    assert pieces.word_spans == [(0, 4), (4, 7), (7, 12)]
    expected = ["I-LOC", "X", "X", "X", "I-PER", "X", "X", "O", "X", "X", "X", "X"]
    assert align_labels(pieces, ["I-LOC", "I-PER", "O"]) == expected


@pytest.mark.parametrize("empty_word", ["\u200b", "\x00", "\u0301", "\ufeff", " ", "\ufffd"])
def test_word_emptied_by_normaliser_becomes_unk(tok, empty_word):
    pieces = tok.encode_words(["Peter", empty_word, "Blackburn"])
    assert pieces.tokens == ["peter", "[UNK]", "blackburn"]
    assert pieces.word_spans == [(0, 1), (1, 2), (2, 3)]
    assert pieces.token_offsets[1] == pieces.word_offsets[1] == (6, 6 + len(empty_word))
    assert merge_subtoken_predictions(pieces, align_labels(pieces, ["I-PER", "O", "I-PER"])) == ["I-PER", "O", "I-PER"]
    # Raw text has no such word: the run is not made a word at all.
    assert tok.encode_text(f"Peter {empty_word} Blackburn").words == ["Peter", "Blackburn"]


def test_unicode_accents_cyrillic_cjk(tok, hf, russian_texts):
    pieces = tok.encode_words(["Zürich", "Besançon", "北京大学", "Ελλάδα"])
    assert pieces.tokens[0] == "zurich"  # uncased: accents stripped
    start, end = pieces.word_spans[1]
    assert "".join(t.removeprefix("##") for t in pieces.tokens[start:end]) == "besancon"
    start, end = pieces.word_spans[2]
    assert pieces.tokens[start:end] == ["北", "京", "大", "学"]  # one piece per CJK character
    assert [pieces.text[a:b] for a, b in pieces.token_offsets[start:end]] == list("北京大学")
    check_invariants(pieces)
    # Real Russian (FactRuEval-2016): Cyrillic pieces, offsets back to the original characters.
    text = russian_texts[0]
    pieces = tok.encode_text(text)
    assert sum(any("а" <= c <= "я" for c in t) for t in pieces.tokens) > 50
    for token, (a, b) in zip(pieces.tokens, pieces.token_offsets):
        if token != "[UNK]":
            original = text[a:b].lower().replace("й", "и").replace("ё", "е")
            assert original.startswith(token.removeprefix("##")[:1]) or not token.isalpha()


def test_long_word_becomes_unk_like_bert(tok, hf):
    word = "a" * 101  # over max_input_chars_per_word
    assert tok.encode_words([word]).input_ids == [tok.unk_token_id] == hf(word, add_special_tokens=False)["input_ids"]


# --- batches --------------------------------------------------------------------------------------


@pytest.mark.parametrize("multiple", [None, 8])
def test_batch_equals_hf_padding(tok, hf, conll_dev, multiple):
    sentences = [words for words, _ in conll_dev[10:26]]
    batch = tok.batch([tok.encode_words(w) for w in sentences], pad_to_multiple_of=multiple)
    reference = hf(sentences, is_split_into_words=True, padding=True, pad_to_multiple_of=multiple, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].dtype == torch.long
        assert torch.equal(batch[key], reference[key]), key
    if multiple:
        assert batch["input_ids"].shape[1] % multiple == 0


# --- windows --------------------------------------------------------------------------------------


def check_windows(pieces: WordPieces, windows: list[WordPieces], size: int) -> None:
    """Windows fit, overlap, cover every sub-token and word, and are faithful slices."""
    assert len(windows) > 1
    covered_words: set[int] = set()
    for k, window in enumerate(windows):
        check_invariants(window)
        start = window.token_index
        assert 0 < len(window.input_ids) <= size
        assert window.input_ids == pieces.input_ids[start : start + len(window.input_ids)]
        assert window.token_offsets == pieces.token_offsets[start : start + len(window.input_ids)]
        first = window.word_index
        assert window.words == pieces.words[first : first + len(window.words)]
        covered_words.update(range(first, first + len(window.words)))
        if k:
            previous = windows[k - 1]
            assert previous.token_index < start <= previous.token_index + len(previous.input_ids)
    assert windows[0].token_index == 0
    assert windows[-1].token_index + len(windows[-1].input_ids) == len(pieces.input_ids)
    assert covered_words == set(range(len(pieces.words)))


def test_text_longer_than_512_subtokens(tok, long_document):
    words, tags = long_document
    text = " ".join(words)
    pieces = tok.encode_text(text)
    assert len(pieces.input_ids) > 512
    windows = tok.windows(pieces)
    check_windows(pieces, windows, 510)
    for k, window in enumerate(windows):
        # Whole words only, and consecutive windows share words.
        assert [e - s for s, e in window.word_spans] == [
            e - s for s, e in pieces.word_spans[window.word_index : window.word_index + len(window.words)]]
        if k:
            assert window.word_index < windows[k - 1].word_index + len(windows[k - 1].words)
    batch = tok.batch(windows)
    assert batch["input_ids"].shape[0] == len(windows) and batch["input_ids"].shape[1] <= 512
    assert (batch["input_ids"][:, 0] == tok.cls_token_id).all()
    lengths = batch["attention_mask"].sum(1)
    assert all(batch["input_ids"][row, n - 1] == tok.sep_token_id for row, n in enumerate(lengths.tolist()))
    # Gold tags of the text's words: the tag of the CoNLL word each starts in (the raw-text
    # split differs from CoNLL's in a few places, e.g. CoNLL's score "6-" is "6" "-" here).
    conll_starts = [a for a, _ in tok.encode_words(words).word_offsets]
    tags = [tags[bisect_right(conll_starts, start) - 1] for start, _ in pieces.word_offsets]
    assert sum(tag != "O" for tag in tags) > 20
    # Each window "predicts" the gold tags of its words.
    predictions = [tags[w.word_index : w.word_index + len(w.words)] for w in windows]
    merged = merge_windows(pieces, windows, predictions)
    assert merged == tags
    # The same through the sub-token path: align, window the labels, read them back.
    sub_labels = align_labels(pieces, tags)
    per_window = [merge_subtoken_predictions(w, sub_labels[w.token_index : w.token_index + len(w)]) for w in windows]
    assert merge_windows(pieces, windows, per_window) == tags


def context(pieces: WordPieces, window: WordPieces, word: int) -> tuple[bool, int]:
    """(window holds the word's first sub-token, sub-tokens of context on its poorer side);
    an edge of the text itself costs no context."""
    start, end = window.token_index, window.token_index + len(window.input_ids)
    first, last = pieces.word_spans[word]
    inside = [t for t in range(first, last) if start <= t < end]
    before = inside[0] - start if start > 0 else 10**9
    after = end - 1 - inside[-1] if end < len(pieces.input_ids) else 10**9
    return first >= start, min(before, after)


def test_merge_windows_takes_the_window_with_most_context(tok, long_document):
    pieces = tok.encode_words(long_document[0])
    windows = tok.windows(pieces, max_length=130, stride=60)
    predictions = [[k] * len(w.words) for k, w in enumerate(windows)]
    chosen = merge_windows(pieces, windows, predictions)
    assert len(chosen) == len(pieces.words)
    for word, k in enumerate(chosen):
        holders = [j for j, w in enumerate(windows) if w.word_index <= word < w.word_index + len(w.words)]
        best = max(context(pieces, windows[j], word) for j in holders)
        assert context(pieces, windows[k], word) == best
        assert k == min(j for j in holders if context(pieces, windows[j], word) == best)
    assert len(set(chosen)) == len(windows)  # every window contributes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    max_length=st.integers(3, 48),
    sentence=st.integers(0, 399),
    long_word=st.sampled_from([None, "-" * 30, "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15"]),
)
def test_windows_random_sizes(tok, dev_sentences, data, max_length, sentence, long_word):
    words, tags = dev_sentences[sentence]
    words, tags = list(words), list(tags)
    if long_word:  # a word of more pieces than a small window holds: it must be cut
        words.insert(len(words) // 2, long_word)
        tags.insert(len(tags) // 2, "I-MISC")
    pieces = tok.encode_words(words)
    size = max_length - 2
    stride = data.draw(st.integers(0, size - 1))
    windows = tok.windows(pieces, max_length=max_length, stride=stride)
    if len(pieces.input_ids) <= size:
        assert windows == [pieces]
        return
    check_windows(pieces, windows, size)
    bounds = set(pieces.word_starts)
    for k, window in enumerate(windows[1:], 1):
        previous = windows[k - 1]
        previous_end = previous.token_index + len(previous.input_ids)
        overlap = previous_end - window.token_index
        if previous_end in bounds:  # the previous window ended on a word boundary
            assert window.token_index in bounds  # so this one starts on one: no word is cut
            if overlap < stride:  # no whole-word start gave that much overlap
                assert not any(previous.token_index < b <= previous_end - stride for b in bounds)
                if len(previous.words) > 1:
                    assert overlap > 0  # but at least a word is shared
        else:  # a word longer than a window was cut: restart `stride` sub-tokens before the cut
            assert len(previous.words) == 1 and overlap == stride
    predictions = [tags[w.word_index : w.word_index + len(w.words)] for w in windows]
    assert merge_windows(pieces, windows, predictions) == tags


def test_short_sequence_is_its_own_window(tok, conll_dev):
    pieces = tok.encode_words(conll_dev[0][0])
    assert tok.windows(pieces) == [pieces]
    assert merge_windows(pieces, [pieces], [conll_dev[0][1]]) == conll_dev[0][1]


# --- bad input ------------------------------------------------------------------------------------


def write_vocab(folder: Path, tokens: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return folder


def write_config(folder: Path, text: str) -> Path:
    (folder / "config.json").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda d: d / "missing", FileNotFoundError, "missing"),
        (lambda d: d / "missing" / "vocab.txt", FileNotFoundError, "vocab.txt"),
        (lambda d: (d / "no_vocab").mkdir() or d / "no_vocab", FileNotFoundError, "has no vocab.txt"),
        (lambda d: write_vocab(d / "empty", []), ValueError, "is empty"),
        (lambda d: write_vocab(d / "no_cls", ["[PAD]", "[UNK]", "[SEP]", "a"]), ValueError, r"lacks \[CLS\]"),
        (lambda d: write_vocab(d / "no_specials", ["a", "b"]), ValueError, r"\[UNK\], \[CLS\], \[SEP\], \[PAD\]"),
        (lambda d: write_config(write_vocab(d / "bad_json", ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]), "{"), ValueError,
         "config.json is not valid JSON"),
    ],
)
def test_bad_checkpoint(tmp_path, make, error, message):
    path = make(tmp_path)
    with pytest.raises(error, match=message) as raised:
        WordPieceTokenizer.from_pretrained(path)
    if error is FileNotFoundError:
        assert str(tmp_path) in str(raised.value)  # names the path


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda t: t.encode_text(""), ValueError, "empty text"),
        (lambda t: t.encode_text(" \n\t "), ValueError, "empty text"),
        (lambda t: t.encode_text("\u200b\x00"), ValueError, "empty text"),
        (lambda t: t.encode_words([]), ValueError, "empty text"),
        (lambda t: t.encode_words(["EU", "rejects", ""]), ValueError, "word 2 is an empty string"),
        (lambda t: t.encode_words_batch([["EU"], []]), ValueError, "sentence 1: empty text"),
        (lambda t: t.encode_text(b"bytes"), TypeError, "bytes"),
        (lambda t: t.encode_text(None), TypeError, "NoneType"),
        (lambda t: t.encode_words("EU rejects"), TypeError, "not a str"),
        (lambda t: t.encode_words(["EU", 3]), TypeError, "word 1 is int"),
        (lambda t: t.encode_words(["EU", None]), TypeError, "word 1 is NoneType"),
        (lambda t: align_labels(t.encode_words(["EU", "rejects"]), ["I-ORG"]), ValueError, "1 labels for 2 words"),
        (lambda t: align_labels(["EU"], ["I-ORG"]), TypeError, "tokenizer="),
        (lambda t: align_labels(t.encode_words(["EU"]), "I-ORG"), TypeError, "not a str"),
        (lambda t: merge_subtoken_predictions(t.encode_words(["EU", "rejects"]), [0, 1, 2, 3]), ValueError,
         "4 predictions for 2 sub-tokens"),
        (lambda t: merge_windows(t.encode_words(["EU", "rejects"]), [t.encode_words(["EU", "rejects"])], [["O"]]),
         ValueError, "window 0 has 2 words but 1 predictions"),
        (lambda t: merge_windows(t.encode_words(["EU", "rejects"]), [], []), ValueError, "2 words are in no window"),
        (lambda t: t.batch([]), ValueError, "empty batch"),
        (lambda t: t.batch(["EU"]), TypeError, "batch item 0 is str"),
        (lambda t: t.batch([t.encode_words(["EU"] * 600)]), ValueError, "600 sub-tokens.*windows"),
        (lambda t: t.windows(t.encode_words(["EU"] * 600), stride=510), ValueError, "stride"),
        (lambda t: t.windows(t.encode_words(["EU"]), max_length=2), ValueError, "max_length"),
    ],
)
def test_bad_input(tok, call, error, message):
    with pytest.raises(error, match=message):
        call(tok)


def test_public_names_exported_from_package():
    import nertron

    assert nertron.WordPieceTokenizer is WordPieceTokenizer and nertron.WordPieces is WordPieces
    assert (nertron.align_labels, nertron.merge_subtoken_predictions, nertron.merge_windows) == (
        align_labels, merge_subtoken_predictions, merge_windows)
