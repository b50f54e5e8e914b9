"""Tagger: entities of raw text with character offsets, CRF span scores, windows, streaming,
files, errors and the ``nertron tag`` command, on real CoNLL-2003 sentences and the real
MiniLM encoder (a small untrained head: what is tested is the machinery, not accuracy)."""
import io
import itertools
import json
import math
import os
import random
import sys

import pytest
import torch

from nertron.engine.casing import casing_tensors

from nertron.bindings.crf import allowed_transitions, crf_marginals_torch, crf_span_log_probs
from nertron.engine import batching, cli, tagger as tagger_module
from nertron.engine.data.schemes import convert, spans
from nertron.engine.data.vocab import LabelVocab
from nertron.engine.models import BertBiLSTMAttnCRF, BertBiLSTMAttnNMT, BertBiLSTMCRF, ModelConfig
from nertron.engine.tagger import Entity, TaggedText, Tagger, _ChunkRules
from nertron.engine.tokenizer import merge_windows


def make_model_dir(path, minilm_dir, sentences) -> None:
    """An untrained BertBiLSTMAttnCRF over MiniLM with CoNLL's IOB2 labels, head saved in fp16.

    The emission layer is scaled up so that decisions are far from ties: tagging the same
    words in another batch (other padding, other BLAS blocking) gives the same tags.
    """
    vocab = LabelVocab.from_sentences([convert(tags, "IOB1", "IOB2") for _, tags in sentences])
    torch.manual_seed(0)
    model = BertBiLSTMAttnCRF.create(vocab.num_labels, minilm_dir, labels=vocab.labels, enc_hidden_dim=32,
                                     num_heads=2, key_dim=16, val_dim=16)
    with torch.no_grad():
        model.emissions.weight.mul_(8.0)
    model.save(path, vocab, head_dtype=torch.float16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_dir, conll_dev):
    path = tmp_path_factory.mktemp("tagger_model")
    make_model_dir(path, minilm_dir, conll_dev)
    return path


@pytest.fixture(scope="module")
def tagger(model_dir) -> Tagger:
    return Tagger.load(model_dir, device="cpu")


@pytest.fixture(scope="module")
def texts(conll_dev) -> list[str]:
    """Real sentences of mixed lengths (1 to 40+ words), in file order."""
    return [" ".join(words) for words, _ in conll_dev[:40]]


def check_entities(text: str, entities: list[Entity]) -> None:
    end = 0
    for e in entities:
        assert text[e.start:e.end] == e.text
        assert e.start >= end and e.end > e.start  # in order, not overlapping
        assert e.text == e.text.strip() and e.text
        assert 0.0 < e.score <= 1.0
        assert e.label in ("PER", "LOC", "ORG", "MISC")
        end = e.end


def key(entities: list[Entity]) -> list[tuple]:
    return [(e.label, e.start, e.end, e.text) for e in entities]


# --- CRF span probabilities ------------------------------------------------------------------------


def brute_force_span(em, lengths, start, end, trans, b, i, j, want):
    """log P(y_i..y_j = want) of sequence b by enumerating every tag sequence."""
    n = lengths[b]
    K = em.shape[2]
    scores, matching = [], []
    for y in itertools.product(range(K), repeat=n):
        s = start[y[0]] + em[b, 0, y[0]] + end[y[-1]]
        for t in range(1, n):
            s = s + trans[y[t - 1], y[t]] + em[b, t, y[t]]
        scores.append(s)
        matching.append(list(y[i:j + 1]) == want)
    scores = torch.stack(scores)
    log_z = torch.logsumexp(scores, 0)
    chosen = scores[torch.tensor(matching)]
    return float(torch.logsumexp(chosen, 0) - log_z) if len(chosen) else -math.inf


@pytest.mark.parametrize("K, lengths", [(3, [5, 3, 1]), (4, [4, 4, 2])])
def test_crf_span_log_probs_equal_brute_force(K, lengths):
    gen = torch.Generator().manual_seed(K)
    B, T = len(lengths), max(lengths)
    em = torch.randn(B, T, K, generator=gen, dtype=torch.float64) * 2
    start = torch.randn(K, generator=gen, dtype=torch.float64)
    end = torch.randn(K, generator=gen, dtype=torch.float64)
    trans = torch.randn(K, K, generator=gen, dtype=torch.float64)
    # constrained, as the decoder uses it: disallowed transitions and start/end tags
    trans[0, 2] = trans[2, 1] = -math.inf
    start[1] = -math.inf
    end[2] = -math.inf
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    tags = torch.randint(0, K, (B, T), generator=gen).masked_fill(~mask, -1)
    spans_, expected = [], []
    for b, n in enumerate(lengths):
        for i in range(n):
            for j in range(i, n):
                spans_.append((b, i, j))
                expected.append(brute_force_span(em, lengths, start, end, trans, b, i, j, tags[b, i:j + 1].tolist()))
    spans_ = torch.tensor(spans_)
    got = crf_span_log_probs(em, mask, tags, spans_, start, end, trans)
    assert got.dtype == torch.float64
    expected = torch.tensor(expected, dtype=torch.float64)
    finite = torch.isfinite(expected)
    assert finite.sum() > len(expected) // 2 and (~finite).any()  # both kinds are exercised
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite], expected[finite], rtol=0, atol=1e-10)
    # fp32 inputs: computed in fp32, close to the fp64 values
    got32 = crf_span_log_probs(em.float(), mask, tags, spans_, start.float(), end.float(), trans.float())
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32[finite].double(), expected[finite], rtol=0, atol=1e-5)
    # a one-position span is the marginal
    marginals = crf_marginals_torch(em, mask, start, end, trans)
    single = spans_[:, 1] == spans_[:, 2]
    b, i = spans_[single, 0], spans_[single, 1]
    torch.testing.assert_close(got[single].exp(), marginals[b, i, tags[b, i]], rtol=0, atol=1e-12)


def test_crf_span_log_probs_sum_to_one_over_assignments():
    gen = torch.Generator().manual_seed(7)
    K, T = 3, 5
    em = torch.randn(1, T, K, generator=gen, dtype=torch.float64)
    start, end = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    trans = torch.randn(K, K, generator=gen, dtype=torch.float64)
    mask = torch.ones(1, T, dtype=torch.bool)
    total = 0.0
    for y in itertools.product(range(K), repeat=2):  # every assignment of positions 1..2
        tags = torch.tensor([[0, y[0], y[1], 0, 0]])
        total += float(crf_span_log_probs(em, mask, tags, torch.tensor([[0, 1, 2]]), start, end, trans).exp())
    assert total == pytest.approx(1.0, abs=1e-12)
    assert crf_span_log_probs(em, mask, tags, torch.zeros(0, 3, dtype=torch.long), start, end, trans).shape == (0,)


# --- entity spans on the device ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["IOB2", "IOB1", "BIOES"])
def test_chunk_rules_equal_conlleval_spans(scheme):
    prefixes = "BIES" if scheme == "BIOES" else "BI"
    labels = ["<pad>", "O"] + [f"{p}-{t}" for t in ("PER", "LOC") for p in prefixes]
    rules = _ChunkRules(labels, scheme)
    rng = random.Random(0)
    B, W = 200, 9
    lengths = [rng.randint(1, W) for _ in range(B)]
    tags = torch.tensor([[rng.randrange(1, len(labels)) for _ in range(W)] for _ in range(B)])
    mask = torch.arange(W)[None] < torch.tensor(lengths)[:, None]
    found, label_ids = rules.spans(tags.masked_fill(~mask, -1), mask)
    got = [[] for _ in range(B)]
    for (b, first, last), label in zip(found.tolist(), label_ids.tolist()):
        got[b].append((rules.types[label], first, last + 1))
    for b in range(B):
        names = [labels[t] for t in tags[b, :lengths[b]].tolist()]
        assert got[b] == spans(names, scheme), names


# --- tagging text ---------------------------------------------------------------------------------


def test_offsets_round_trip_and_input_order(tagger, texts):
    shuffled = texts[::-1][:25] + ["  Peter Blackburn  ", "BRUSSELS 1996-08-22", "The U.S. and Jean-Pierre's team."]
    results = tagger.tag(shuffled)
    assert len(results) == len(shuffled)
    assert sum(len(r) for r in results) > 10
    for text, entities in zip(shuffled, results):
        check_entities(text, entities)
    # order restored: every text gives what it gives alone (lengths differ, batches differ)
    for text, entities in zip(shuffled[::4], results[::4]):
        alone = tagger.tag(text)
        assert key(alone) == key(entities)
        assert [e.score for e in alone] == pytest.approx([e.score for e in entities], abs=1e-4)


def word_batch(tagger: Tagger, text: str):
    """The model input of one text, built by hand (as the learner's collate does)."""
    pieces = tagger.tokenizer.encode_text(text)
    batch = tagger.tokenizer.batch([pieces])
    batch["word_index"] = torch.tensor([pieces.word_starts]) + 1
    batch["word_mask"] = torch.ones(1, len(pieces.words), dtype=torch.bool)
    batch.update(casing_tensors([pieces], tagger.casing))  # the model's casing inputs, if it reads them
    starts = [a for a, _ in pieces.word_offsets]
    ends = [b for _, b in pieces.word_offsets]
    return batch, starts, ends


def test_single_word_entity_score_is_crf_marginal(tagger, texts):
    checked = 0
    for text in texts:
        entities = tagger.tag(text)  # alone: the same batch as built below, so the same floats
        batch, starts, ends = word_batch(tagger, text)
        with torch.no_grad():
            out = tagger.model(batch)
            marginals = tagger.model.marginals(batch)[0]  # shape: (W, K)
        for e in entities:
            word = starts.index(e.start)
            if ends.index(e.end) != word:
                continue
            tag = int(out.tags[0, word])
            assert tagger.labels[tag] == f"B-{e.label}"
            assert e.score == pytest.approx(float(marginals[word, tag]), abs=1e-5)
            checked += 1
        if checked >= 5:
            break
    assert checked >= 5


def test_span_score_is_probability_of_decoded_tags(tagger, texts):
    """A multi-word entity's score is P(y_i..y_j) from crf_span_log_probs with the constrained CRF."""
    text, entity = next((t, e) for t in texts for e in tagger.tag(t) if " " in e.text)
    batch, starts, ends = word_batch(tagger, text)
    mask = batch["word_mask"]
    with torch.no_grad():
        out = tagger.model(batch)
    i, j = starts.index(entity.start), ends.index(entity.end)
    assert j > i
    crf = tagger.model.crf
    constraints = allowed_transitions(tagger.labels, "BIO")
    trans = crf.transitions.masked_fill(~constraints.transitions, -math.inf)
    trans[0, :] = trans[:, 0] = -math.inf  # <pad>
    start = crf.start_transitions.masked_fill(~constraints.start, -math.inf)
    start[0] = -math.inf
    end = crf.end_transitions.clone()
    end[0] = -math.inf
    span = torch.tensor([[0, i, j]])
    with torch.no_grad():
        want = crf_span_log_probs(out.emissions, mask, out.tags, span, start, end, trans).exp()
        exact = crf_span_log_probs(out.emissions.double(), mask, out.tags, span, start.double(), end.double(),
                                   trans.double()).exp()
    assert entity.score == pytest.approx(float(want), abs=1e-6)
    assert entity.score == pytest.approx(float(exact), rel=5e-4)  # fp32 rounding of scores in the hundreds


def test_tag_words_gives_word_indices(tagger, conll_dev, texts):
    sentences = [words for words, _ in conll_dev[:20]]
    by_words = tagger.tag_words(sentences + [[]])
    assert by_words[-1] == []
    by_text = tagger.tag(texts[:20])
    for words, word_entities, text_entities in zip(sentences, by_words, by_text):
        offsets = [0]
        for word in words:
            offsets.append(offsets[-1] + len(word) + 1)
        assert [(e.label, offsets[e.start], offsets[e.end] - 1) for e in word_entities] == \
            [(e.label, e.start, e.end) for e in text_entities]
        for e in word_entities:
            assert e.text == " ".join(words[e.start:e.end])


def starts_of(pieces) -> list[int]:
    return [a for a, _ in pieces.word_offsets]


def ends_of(pieces) -> list[int]:
    return [b for _, b in pieces.word_offsets]


def window_alone(tagger: Tagger, window) -> tuple[list[str], list[tuple[str, int, int, float]]]:
    """One window run alone, by hand (collate, model, chunk rules, CRF span scores): its tag
    names and its entities ``(label, first word, end word, score)``. The window keeps its
    place in its text (``word_index``), so its casing inputs are those of the text."""
    batch = batching.collate(tagger.tokenizer, [window], casing=tagger.casing)
    with torch.inference_mode():
        out = tagger.model(batch)
        spans, label_ids = tagger._rules.spans(out.tags, batch["word_mask"])
        scores = tagger.model.crf.span_log_probs(out.emissions.float(), out.tags, spans, batch["word_mask"]).exp()
    found = [(tagger._rules.types[t], i, j + 1, min(p, 1.0))
             for (_, i, j), t, p in zip(spans.tolist(), label_ids.tolist(), scores.tolist())]
    return [tagger.labels[t] for t in out.tags[0].tolist()], found


def test_long_text_is_windowed_without_losing_words(model_dir, conll_dev):
    """A text of > 512 sub-tokens: every word gets exactly one tag, the tags are those of the
    windows tagged one by one and merged, and no entity is lost or doubled at the seams."""
    tagger = Tagger.load(model_dir, device="cpu", batch_tokens=512)  # one window per batch: no padding
    text = " ".join(" ".join(words) for words, _ in conll_dev[40:120])
    pieces = tagger.tokenizer.encode_text(text)
    windows = tagger.tokenizer.windows(pieces)
    assert len(pieces.input_ids) > 1000 and len(windows) >= 3
    [result] = list(tagger._stream([text], words=False))
    assert result.words == pieces.words and len(result.tags) == len(pieces.words)
    # each window alone (it fits, so it is not windowed again), merged by the tokenizer's rule
    alone = [window_alone(tagger, w) for w in windows]
    assert result.tags == merge_windows(pieces, windows, [tags for tags, _ in alone])
    # the entities are exactly the spans of those tags: none lost, none doubled
    entities = tagger.tag(text)
    check_entities(text, entities)
    expected = [(kind, pieces.word_offsets[a][0], pieces.word_offsets[b - 1][1])
                for kind, a, b in spans(result.tags, "IOB2")]
    assert [(e.label, e.start, e.end) for e in entities] == expected
    seams = {w.word_index for w in windows[1:]} | {w.word_index + len(w.words) for w in windows[:-1]}
    assert len(entities) > 20 and seams
    # the same words given as a word list: same spans, as word indices
    # scores: an entity is scored in a window holding it; where that window, tagged alone,
    # finds the same entity, the score is the same
    matched = 0
    for e in entities:
        first, last = starts_of(pieces).index(e.start), ends_of(pieces).index(e.end)
        scores = {score for w, (_, found) in zip(windows, alone) for label, a, b, score in found
                  if (label, a + w.word_index, b + w.word_index) == (e.label, first, last + 1)}
        if scores:
            assert any(abs(e.score - s) < 1e-6 for s in scores)
            matched += 1
    assert matched > 0.8 * len(entities)
    [by_words] = tagger.tag_words([pieces.words])
    starts = [a for a, _ in pieces.word_offsets]
    ends = [b for _, b in pieces.word_offsets]
    assert [(e.label, starts.index(e.start), ends.index(e.end) + 1) for e in entities] == \
        [(e.label, e.start, e.end) for e in by_words]
    assert [e.score for e in by_words] == pytest.approx([e.score for e in entities], abs=1e-4)


def nmt_tagger(tagger: Tagger) -> Tagger:
    """A small seeded NMT head over ``tagger``'s BERT and labels (sharpened output layer, so
    that it finds entities), as a CPU Tagger."""
    config = ModelConfig(label_size=len(tagger.labels), checkpoint_dir=tagger.model.config.checkpoint_dir,
                         labels=tagger.labels, enc_hidden_dim=32, num_heads=2, key_dim=16, val_dim=16,
                         dec_embedding_dim=16, dec_hidden_dim=32)
    torch.manual_seed(1)
    model = BertBiLSTMAttnNMT(config, tagger.model.features.bert)
    with torch.no_grad():
        model.nmt.out.weight.mul_(8.0)
    return Tagger(model, tagger.tokenizer, device="cpu")


def test_nmt_model_scores_are_products_of_softmax(model_dir, tagger, texts):
    nmt = nmt_tagger(tagger)
    model = nmt.model
    results = nmt.tag(texts[:12])
    assert sum(len(r) for r in results) > 0
    for text, entities in zip(texts[:12], results):
        check_entities(text, entities)
        if not entities:
            continue
        batch, starts, ends = word_batch(nmt, text)
        with torch.no_grad():
            out = model(batch)
        probs = torch.softmax(out.emissions[0].float(), -1)  # shape: (W, K)
        for e in entities:
            i, j = starts.index(e.start), ends.index(e.end)
            want = math.prod(float(probs[t, out.tags[0, t]]) for t in range(i, j + 1))
            assert e.score == pytest.approx(want, rel=1e-4)


def test_bioes_model(tagger, texts):
    labels = ["<pad>", "O"] + [f"{p}-{t}" for t in ("LOC", "MISC", "ORG", "PER") for p in "BIES"]
    config = ModelConfig(label_size=len(labels), checkpoint_dir=tagger.model.config.checkpoint_dir, labels=labels,
                         tag_scheme="BIOES", enc_hidden_dim=32)
    torch.manual_seed(2)
    model = BertBiLSTMCRF(config, tagger.model.features.bert)
    with torch.no_grad():
        model.emissions.weight.mul_(8.0)
    bioes = Tagger(model, tagger.tokenizer, device="cpu")
    results = list(bioes._stream(texts[:15], words=False))
    assert sum(len(r.entities) for r in results) > 5
    for text, result in zip(texts[:15], results):
        check_entities(text, result.entities)
        assert len(result.entities) == len(spans(result.tags, "BIOES"))
        assert all(not (t.startswith("I-") or t.startswith("E-")) or p[2:] == t[2:] and p[0] in "BI"
                   for p, t in zip(["O"] + result.tags, result.tags))  # constrained decoding holds


# --- streaming and files ----------------------------------------------------------------------------


def test_tag_equals_tag_iter_equals_tag_file(tagger, texts, tmp_path):
    inputs = texts[:20] + ["", "   ", "EU rejects German call to boycott British lamb ."]
    by_tag = tagger.tag(inputs)
    assert by_tag[20] == [] and by_tag[21] == []
    assert list(tagger.tag_iter(iter(inputs))) == by_tag
    source = tmp_path / "in.txt"
    source.write_text("\n".join(inputs) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert tagger.tag_file(source, out) == len(inputs)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == inputs
    assert [[Entity(**e) for e in r["entities"]] for r in records] == by_tag
    # other chunking: other batches, same entities
    small = list(tagger.tag_iter(inputs, chunk_size=3, batch_tokens=256))
    assert [key(r) for r in small] == [key(r) for r in by_tag]
    # CoNLL output: one word<TAB>tag line per word, a blank line after each text
    conll = tmp_path / "out.conll"
    tagger.tag_file(source, conll, format="conll")
    blocks, rows = [], []
    for line in conll.read_text(encoding="utf-8").splitlines():
        if line:
            rows.append(line.split("\t"))
        else:
            blocks.append(rows)
            rows = []
    assert rows == [] and len(blocks) == len(inputs)
    for text, rows in zip(inputs, blocks):
        words = [text[a:b] for a, b in tagger.tokenizer.split_text(text)]
        assert [w for w, _ in rows] == words
        assert all(tag in tagger.labels for _, tag in rows)


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_tag_iter_reads_in_bounded_chunks(model_dir, texts, threads):
    tagger = Tagger.load(model_dir, device="cpu", threads=threads)
    pulled = []

    def endless():
        for n in itertools.count():
            pulled.append(n)
            yield texts[n % len(texts)]

    results = tagger.tag_iter(endless(), chunk_size=4)
    first = list(itertools.islice(results, 6))
    # two chunks of 4, and the threads + 1 next ones, read ahead to be tokenised meanwhile
    # (without worker threads, none: the next chunk is read when it is needed)
    ahead = tagger.threads + 1 if tagger.threads else 0
    assert len(first) == 6 and len(pulled) == 4 * (2 + ahead)
    assert [key(r) for r in first] == [key(r) for r in tagger.tag(texts[:6])]


# --- errors and loading -----------------------------------------------------------------------------


def test_errors_name_the_item(tagger, tmp_path):
    with pytest.raises(TypeError, match=r"item 2 is int"):
        tagger.tag(["a", "b", 3])
    with pytest.raises(TypeError, match=r"item 1 is bytes"):
        list(tagger.tag_iter(iter(["ok", b"bytes"])))
    with pytest.raises(ValueError, match=r"item 1 .*surrogate"):
        tagger.tag(["fine", "bad \udcff text"])
    with pytest.raises(TypeError, match=r"item 0: word 1 is int"):
        tagger.tag_words([["a", 1]])
    with pytest.raises(TypeError, match="not a str"):
        tagger.tag_words("a text")
    assert tagger.tag("") == [] and tagger.tag([]) == [] and tagger.tag(" \t ") == []
    bad = tmp_path / "bad.txt"
    bad.write_bytes("Peter Blackburn\n".encode() + b"caf\xe9 latte\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2: not valid UTF-8"):
        tagger.tag_file(bad, tmp_path / "out.jsonl")
    with pytest.raises(ValueError, match="unknown output format"):
        tagger.tag_file(bad, tmp_path / "out.txt", format="xml")
    with pytest.raises(ValueError, match="is the input file"):
        tagger.tag_file(bad, bad)
    assert bad.read_bytes().startswith(b"Peter")


def test_load_defaults_dtype_and_missing_model(model_dir, tmp_path, monkeypatch, tagger):
    # the fp16-stored head is cast to fp32 compute
    assert all(p.dtype == torch.float32 for p in tagger.model.parameters())
    assert tagger.dtype == torch.float32 and tagger.device.type == "cpu"
    with pytest.raises(ValueError, match="bfloat16 inference needs a CUDA device"):
        Tagger.load(model_dir, device="cpu", dtype="bf16")
    with pytest.raises(ValueError, match="float16 inference needs a CUDA device"):
        Tagger.load(model_dir, device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="unknown dtype"):
        Tagger.load(model_dir, device="cpu", dtype="fp8")
    with pytest.raises(FileNotFoundError, match="model.json missing"):
        Tagger.load(tmp_path, device="cpu")
    monkeypatch.setattr(tagger_module, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    with pytest.raises(FileNotFoundError, match="no default model is installed"):
        Tagger.load(device="cpu")
    monkeypatch.setattr(tagger_module, "DEFAULT_MODEL_DIR", model_dir)
    default = Tagger.load(device="cpu")
    assert key(default.tag("Peter Blackburn met EU officials in Brussels .")) == \
        key(tagger.tag("Peter Blackburn met EU officials in Brussels ."))


# --- the command line -------------------------------------------------------------------------------


def test_cli_tag(model_dir, tagger, texts, tmp_path, capsys, monkeypatch):
    sample = texts[:3]
    assert cli.main(["tag", "--model", str(model_dir), "--device", "cpu", *sample]) == 0
    printed = capsys.readouterr().out
    for text, entities in zip(sample, tagger.tag(sample)):
        assert text in printed
        for e in entities:
            assert f"{e.label:<8} {e.text!r:<32} {f'{e.start}:{e.end}':<12} {e.score:.3f}" in printed
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts[:8]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli.main(["tag", "--model", str(model_dir), "--input", str(source), "--output", str(out)]) == 0
    reference = tmp_path / "ref.jsonl"
    tagger.tag_file(source, reference)
    assert out.read_text() == reference.read_text()
    # standard input, CoNLL to standard output
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(source.read_bytes())))
    assert cli.main(["tag", "--model", str(model_dir), "--input", "-", "--format", "conll"]) == 0
    conll = tmp_path / "ref.conll"
    tagger.tag_file(source, conll, format="conll")
    assert capsys.readouterr().out == conll.read_text()
    # errors: exit status 2 and a message
    assert cli.main(["tag", "--model", str(model_dir), "--dtype", "bf16", "--device", "cpu", "x"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert cli.main(["tag", "--model", str(model_dir)]) == 2
    assert "nothing to tag" in capsys.readouterr().err


# --- input types, devices, iterable errors, files that must not be lost ------------------------------


@pytest.mark.parametrize("bad, named", [(None, "NoneType"), (123, "int"), (b"Peter Blackburn", "bytes"),
                                        (bytearray(b"x"), "bytearray"), ({"Peter Blackburn": 1}, "mapping"),
                                        ({"Peter Blackburn", "EU"}, "set"), (frozenset({"EU"}), "frozenset")])
def test_tag_rejects_what_is_not_text(tagger, bad, named):
    with pytest.raises(TypeError, match=rf"tag takes a str, or a list \(or other iterable\) of str, not .*{named}"):
        tagger.tag(bad)
    with pytest.raises(TypeError, match=named):
        tagger.tag_iter(bad)  # at the call, not at the first next()
    with pytest.raises(TypeError, match=named):
        tagger.tag_words(bad)
    # ordered iterables are fine
    assert tagger.tag(iter(["EU rejects German call ."])) == tagger.tag(("EU rejects German call .",))


def test_device_ints_follow_hugging_face(model_dir, tagger):
    assert Tagger(tagger.model, tagger.tokenizer, device=-1).device == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        Tagger.load(model_dir, device="tpu")
    if not torch.cuda.is_available():
        for device in (0, "cuda", "cuda:1"):
            with pytest.raises(ValueError, match="needs CUDA, which this machine does not have"):
                Tagger.load(model_dir, device=device)
    with pytest.raises(ValueError, match="device -2"):
        Tagger.load(model_dir, device=-2)


def test_iterable_error_names_the_item_after_earlier_results(tagger, texts):
    def failing():
        yield from texts[:4]
        raise OSError("disk gone")

    for chunk_size in (2, 3, 1024):
        results = tagger.tag_iter(failing(), chunk_size=chunk_size)
        got = []
        with pytest.raises(RuntimeError, match=r"the input iterable raised at item 4 \(OSError\): disk gone") as info:
            for entities in results:
                got.append(entities)
        assert isinstance(info.value.__cause__, OSError)
        assert [key(r) for r in got] == [key(r) for r in tagger.tag(texts[:4])]  # yielded before the error


def test_tag_file_never_loses_the_old_output(tagger, texts, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old results\n")
    with pytest.raises(FileNotFoundError, match="no input file"):
        tagger.tag_file(tmp_path / "missing.txt", out)
    bad = tmp_path / "bad.txt"
    bad.write_bytes("EU\n".encode() * 1100 + b"caf\xe9\n")  # after the first chunk of 1,024 lines
    with pytest.raises(ValueError, match=r"bad\.txt: line 1101: not valid UTF-8"):
        tagger.tag_file(bad, out)
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        tagger.tag_file(tmp_path / "dir", out)
    with pytest.raises(ValueError, match="the output .* is a directory"):
        tagger.tag_file(bad, tmp_path / "dir")
    assert out.read_text() == "old results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "dir", "out.jsonl"]  # no temporary file
    good = tmp_path / "good.txt"
    good.write_text("\n".join(texts[:3]) + "\n", encoding="utf-8")
    out.chmod(0o640)
    assert tagger.tag_file(good, out) == 3  # replaced when complete, its permissions kept
    assert len(out.read_text().splitlines()) == 3 and out.stat().st_mode & 0o777 == 0o640


def test_tag_file_refuses_the_input_by_any_name(tagger, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("Peter Blackburn\n", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(source)
    os_link = tmp_path / "hard.txt"
    os.link(source, os_link)
    for other in (source, tmp_path / "link.txt", os_link, tmp_path / "." / "in.txt"):
        with pytest.raises(ValueError, match="is the input file"):
            tagger.tag_file(source, other)
        with pytest.raises(ValueError, match="is the input file"):
            tagger.tag_file(other, source)
    assert source.read_text(encoding="utf-8") == "Peter Blackburn\n"


def test_fifo_input_is_refused_without_blocking(tagger, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe is a named pipe \(FIFO\)"):
        tagger.tag_file(fifo, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


# --- the host pipeline: worker thread, word probabilities, batching options, output ---------------


def test_worker_thread_gives_the_same_results_in_order(model_dir, texts, conll_dev):
    """threads=1 (chunks tokenised by the worker thread, ahead) and threads=0 give the same
    results, in input order, over several chunks, long (windowed) and empty texts."""
    long_text = " ".join(" ".join(words) for words, _ in conll_dev[40:90])
    items = texts[:25] + ["", long_text, "   "] + texts[25:]
    inline = Tagger.load(model_dir, device="cpu", threads=0)
    worker = Tagger.load(model_dir, device="cpu", threads=1)
    a = list(inline._stream(items, words=False, chunk_size=7))
    b = list(worker._stream(items, words=False, chunk_size=7))
    assert a == b and len(a) == len(items)
    assert a[25] == TaggedText([], [], []) and len(a[26].words) > 300
    assert [key(r.entities) for r in a] == [key(e) for e in inline.tag(items)]
    two = Tagger.load(model_dir, device="cpu", threads=2)  # two chunks tokenised at once
    assert list(two._stream(items, words=False, chunk_size=7)) == a
    with pytest.raises(ValueError, match="threads"):
        Tagger.load(model_dir, device="cpu", threads=-1)


def test_device_pipeline_lands_a_chunk_after_queueing_the_next(model_dir, texts, conll_dev, monkeypatch):
    """As on CUDA (launches return before the device is done): every batch of chunk k is
    queued before any result of chunk k - 1 is read, each batch is waited for once, and the
    results are those of the synchronous CPU path, in order (windowed and empty texts too)."""
    from nertron.engine import tagger as tagger_module

    long_text = " ".join(" ".join(words) for words, _ in conll_dev[40:90])
    items = texts[:13] + ["", long_text] + texts[13:30]
    want = list(Tagger.load(model_dir, device="cpu", threads=0)._stream(items, words=False, chunk_size=6))
    tagger = Tagger.load(model_dir, device="cpu", threads=1)
    events: list[tuple] = []

    class Event:  # a CUDA event stand-in: the work is done, reading it is logged
        def __init__(self, chunk, b):
            self.where = (id(chunk), b)

        def synchronize(self):
            events.append(("land",) + self.where)

    launch = tagger._launch

    alive = []  # chunks kept referenced, so that their ids stay distinct

    def queued(chunk, b, word_probs):
        alive.append(chunk)
        pending = launch(chunk, b, word_probs)
        events.append(("launch", id(chunk), b))
        return tagger_module._Pending(pending.packed, Event(chunk, b), pending.scores, pending.word_probs)

    monkeypatch.setattr(tagger, "_launch", queued)
    got = list(tagger._stream(items, words=False, chunk_size=6))
    assert got == want and len(got) == len(items)
    chunks = list(dict.fromkeys(c for _, c, _ in events))
    assert len(chunks) == 6
    launches = [e for e in events if e[0] == "launch"]
    assert sorted(e[1:] for e in events if e[0] == "land") == sorted(e[1:] for e in launches)
    for k in range(1, len(chunks)):  # chunk k is all queued before chunk k - 1 is read back
        last_launch = max(i for i, e in enumerate(events) if e[:2] == ("launch", chunks[k]))
        first_land = min(i for i, e in enumerate(events) if e[:2] == ("land", chunks[k - 1]))
        assert last_launch < first_land


def test_error_mid_stream_comes_after_the_results_before_it(model_dir, texts):
    worker = Tagger.load(model_dir, device="cpu", threads=1)

    def items():
        yield from texts[:10]
        raise OSError("disk gone")

    got = []
    with pytest.raises(RuntimeError, match="item 10 .*disk gone"):
        for entities in worker.tag_iter(items(), chunk_size=4):
            got.append(entities)
    assert [key(e) for e in got] == [key(e) for e in worker.tag(texts[:10])]


def test_word_probs_are_crf_marginals_of_the_decoded_tags(tagger, texts):
    lines = texts[:8] + [""]
    together = [result for _, result in tagger.tag_lines(lines, word_probs=True)]
    assert together[-1].probs == [] and all(result.probs is None for _, result in tagger.tag_lines(lines[:2]))
    for text, batched in zip(lines[:8], together):
        # alone: the same batch as built below, so the same floats (in a batch: within fp32 noise)
        [(_, result)] = list(tagger.tag_lines([text], word_probs=True))
        assert batched.probs == pytest.approx(result.probs, abs=1e-4)
        batch, _, _ = word_batch(tagger, text)
        with torch.no_grad():
            marginals = tagger.model.marginals(batch)[0]  # shape: (W, K)
        tags = [tagger.labels.index(t) for t in result.tags]
        assert len(result.probs) == len(result.words) == len(tags)
        # (a probability is at most 1: the fp32 marginal can pass it by an ulp or so)
        assert result.probs == pytest.approx([min(float(marginals[w, t]), 1.0) for w, t in enumerate(tags)], abs=1e-6)


def test_max_batch_size_caps_the_rows_and_changes_nothing(model_dir, texts):
    capped = Tagger.load(model_dir, device="cpu", max_batch_size=3)
    chunk = capped._prepare(texts[:20], False, capped.batch_tokens)
    assert max(len(group) for group in chunk.groups) == 3
    assert [key(e) for e in capped.tag(texts[:20])] == [key(e) for e in Tagger.load(model_dir, device="cpu").tag(texts[:20])]
    with pytest.raises(ValueError, match="max_batch_size"):
        Tagger.load(model_dir, device="cpu", max_batch_size=0)


def test_entity_boundaries_on_the_device_equal_the_chunk_rules(tagger):
    """``_ChunkRules.boundaries`` (fixed shapes, for the device) marks the first and last word
    of each conlleval entity, and at each first word where the entity ends; ``spans`` (read
    from them) finds the same spans."""
    rng = torch.Generator().manual_seed(0)
    K = len(tagger.labels)
    tags = torch.randint(0, K, (64, 17), generator=rng)
    lengths = torch.randint(1, 18, (64,), generator=rng)
    mask = torch.arange(17) < lengths[:, None]
    spans_found, labels = tagger._rules.spans(tags, mask)
    first, last, end = tagger._rules.boundaries(tags, mask)
    b, i = first.nonzero().unbind(1)
    assert torch.equal(torch.stack([b, i, end[b, i]], 1), spans_found) and torch.equal(tags[b, i], labels)
    assert int(last.sum()) == len(spans_found)
    # against conlleval itself, on tags of the scheme (labels outside it, <pad>, read as O there)
    names = [label if label == "O" or label[:2] in ("B-", "I-", "E-", "S-") else "O" for label in tagger.labels]
    for row in range(64):
        words = [names[t] for t in tags[row, :lengths[row]].tolist()]
        want = spans(words, tagger.scheme)  # (type, first, end exclusive)
        assert first[row].nonzero().flatten().tolist() == [a for _, a, _ in want], words
        assert last[row].nonzero().flatten().tolist() == [e - 1 for _, _, e in want], words
        assert [int(end[row, a]) for _, a, _ in want] == [e - 1 for _, _, e in want], words
        assert [tagger._rules.types[t] for t in tags[row, first[row]].tolist()] == [t for t, _, _ in want]


def test_entity_to_dict_is_the_hugging_face_grouped_shape_and_jsonl_keeps_its_fields(tagger, texts):
    import numpy as np

    [(text, result)] = list(tagger.tag_lines([texts[2]]))
    entity = result.entities[0]
    d = entity.to_dict()
    assert list(d) == ["entity_group", "score", "word", "start", "end"] and isinstance(d["score"], np.float32)
    assert (d["entity_group"], d["word"], d["start"], d["end"]) == (entity.label, entity.text, entity.start, entity.end)
    record = json.loads(tagger_module.format_record(text, result, "jsonl"))
    assert record["entities"][0] == {"text": entity.text, "label": entity.label, "start": entity.start,
                                     "end": entity.end, "score": entity.score}


def test_tag_file_shows_progress_on_stderr_only(model_dir, texts, tmp_path, capsys, monkeypatch):
    """A bar on stderr with the file's total, texts/s and tokens/s when stderr is a terminal (or
    progress=True); stdout stays clean; off with progress=False / --quiet, when stderr is not a
    terminal, and for library calls on plain lists."""
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(texts[:12]) + "\n", encoding="utf-8")
    tagger = Tagger.load(model_dir, device="cpu")
    capsys.readouterr()
    assert tagger.tag_file(inp, tmp_path / "out.jsonl", progress=True) == 12
    out, err = capsys.readouterr()
    assert out == "" and "12/12" in err and "tokens/s" in err
    tagger.tag_file(inp, tmp_path / "out.jsonl")  # stderr is not a terminal here
    tagger.tag_file(inp, tmp_path / "out.jsonl", progress=False)
    tagger.tag(texts[:12])
    list(tagger.tag_lines(texts[:3]))
    assert capsys.readouterr() == ("", "")
    list(tagger.tag_lines(texts[:3], progress=True))
    assert "3/3" in capsys.readouterr().err
    assert tagger_module.count_lines(inp) == 12
    (tmp_path / "no_end.txt").write_text("a\nb", encoding="utf-8")
    assert tagger_module.count_lines(tmp_path / "no_end.txt") == 2 == len(list(tagger_module.read_lines(tmp_path / "no_end.txt")))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # as in a terminal
    assert cli.main(["tag", "--model", str(model_dir), "--device", "cpu", "--input", str(inp), "--output",
                     str(tmp_path / "cli.jsonl")]) == 0
    assert "12/12" in capsys.readouterr().err
    assert cli.main(["tag", "--model", str(model_dir), "--device", "cpu", "--input", str(inp), "--quiet",
                     "--format", "jsonl"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 12 and err == ""
