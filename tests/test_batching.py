"""The one batching path (nertron.engine.batching) that NerData and Tagger share: encoding texts or
word lists, windows, length bucketing under a token budget, collation and merging, on real
CoNLL-2003 sentences and the real MiniLM vocabulary."""
import random

import pytest
import torch

from nertron.engine import batching
from nertron.engine.tokenizer import IGNORE_INDEX, WordPieceTokenizer, merge_windows


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def sentences(conll_dev):
    return [words for words, _ in conll_dev[:30]]


def test_encode_texts_equals_encode_text_and_marks_empty_inputs(tok, sentences):
    texts = [" ".join(words) for words in sentences[:5]] + ["", "   ", "\u200b"]
    pieces = batching.encode(tok, texts, words=False)
    for text, p in zip(texts[:5], pieces):
        assert p == tok.encode_text(text)
    assert pieces[5:] == [None, None, None]
    words = batching.encode(tok, sentences[:3] + [[]], words=True)
    assert words[:3] == [tok.encode_words(w) for w in sentences[:3]] and words[3] is None


def test_encode_text_batch_matches_encode_text(tok, sentences):
    texts = ["Angela Merkel met Emmanuel Macron in Paris.", "U.S. stocks fell 3.5% on 1996-08-22."]
    assert tok.encode_text_batch(texts) == [tok.encode_text(t) for t in texts]
    assert tok.encode_text_batch([]) == []
    with pytest.raises(TypeError, match="not a str"):
        tok.encode_text_batch("one text")
    with pytest.raises(ValueError, match="empty text"):
        tok.encode_text("  ")


def test_split_windows_numbers_windows_per_input(tok, sentences):
    long = [w for words in sentences for w in words]  # several hundred sub-tokens
    short = tok.windows(tok.encode_words(long), max_length=64)
    assert len(short) > 1
    small = WordPieceTokenizer(tok.vocab, tok.do_lower_case, max_length=64)
    pieces = [small.encode_words(sentences[0]), None, small.encode_words(long)]
    windows = batching.split_windows(small, pieces)
    assert [(w.item, w.number) for w in windows] == [(0, 0)] + [(2, k) for k in range(len(short))]
    assert [w.pieces for w in windows[1:]] == short


def test_bucket_respects_budget_and_cap_and_covers_everything():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(200)]
    groups = batching.bucket(lengths, 256)
    assert sorted(i for g in groups for i in g) == list(range(200))
    for group in groups:
        assert len(group) == 1 or len(group) * (max(lengths[i] for i in group) + 2) <= 256
    flat = [i for g in groups for i in g]
    assert flat == sorted(range(200), key=lambda i: (lengths[i], i))  # shortest first, stable
    capped = batching.bucket(lengths, 10_000, max_batch_size=16)
    assert max(len(g) for g in capped) == 16
    assert batching.bucket([500], 100) == [[0]]  # too long for the budget: a batch alone
    a = batching.bucket(lengths, 256, rng=random.Random(3))
    b = batching.bucket(lengths, 256, rng=random.Random(3))
    assert a == b and sorted(i for g in a for i in g) == list(range(200))


def test_collate_shapes_word_index_and_optional_targets(tok, sentences):
    windows = [tok.encode_words(words) for words in sentences[:4]]
    batch = batching.collate(tok, windows)
    B, T = batch["input_ids"].shape
    W = max(len(w.words) for w in windows)
    assert B == 4 and T == max(len(w.input_ids) for w in windows) + 2
    assert batch["word_index"].shape == batch["word_mask"].shape == (4, W)
    assert "labels" not in batch and "intents" not in batch
    for row, w in enumerate(windows):
        n = len(w.words)
        assert batch["word_mask"][row].sum() == n
        ids = batch["input_ids"][row, batch["word_index"][row, :n]].tolist()
        assert ids == [w.input_ids[s] for s in w.word_starts]  # each word's first sub-token
    labels = [list(range(len(w.words))) for w in windows]
    full = batching.collate(tok, windows, labels, [1, 0, 2, 1])
    assert full["labels"].shape == (4, W) and full["intents"].tolist() == [1, 0, 2, 1]
    assert (full["labels"][~full["word_mask"]] == IGNORE_INDEX).all()
    partial = batching.collate(tok, windows, labels[:3] + [None], [1, 0, None, 1])
    assert "labels" not in partial and "intents" not in partial


def test_merge_single_window_and_windows(tok, sentences):
    long = [w for words in sentences for w in words]
    pieces = tok.encode_words(long)
    windows = tok.windows(pieces, max_length=64)
    predictions = [[k] * len(w.words) for k, w in enumerate(windows)]
    assert batching.merge(pieces, windows, predictions) == merge_windows(pieces, windows, predictions)
    one = tok.encode_words(sentences[0])
    assert batching.merge(one, [one], [list(range(len(one.words)))]) == list(range(len(one.words)))


def test_checks_name_the_item():
    assert batching.check_text(0, "ok") == "ok"
    with pytest.raises(TypeError, match="item 3 is int"):
        batching.check_text(3, 7)
    with pytest.raises(ValueError, match="item 1 .*surrogate"):
        batching.check_text(1, "a\ud800")
    assert batching.check_words_item(0, ()) == []
    with pytest.raises(TypeError, match="item 2 is str"):
        batching.check_words_item(2, "words")
    with pytest.raises(TypeError, match="item 0: word 1 is int"):
        batching.check_words_item(0, ["a", 5])
    with pytest.raises(ValueError, match="item 0: word 0 is an empty string"):
        batching.check_words_item(0, [""])
    with pytest.raises(ValueError, match="item 4: word 1 is not valid Unicode"):
        batching.check_words_item(4, ["a", "b\udc00"])


def test_nerdata_and_tagger_batch_alike(tok, sentences):
    """NerData's collation is batching.collate's (labels added): the same input tensors."""
    from nertron.engine.data.loader import NerData
    from nertron.engine.data.readers import Sentence

    data = NerData.from_sentences([Sentence(w, ["O"] * len(w)) for w in sentences], None, tok, batch_tokens=512)
    for batch, group in data.batches("train"):
        plain = batching.collate(tok, [e.window for e in group])
        for key in ("input_ids", "attention_mask", "word_index", "word_mask"):
            assert torch.equal(batch[key], plain[key])
        assert batch["labels"].shape == plain["word_mask"].shape
