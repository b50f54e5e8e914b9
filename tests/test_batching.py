"""The one batching path (nertron.engine.batching) that NerData and Tagger share: encoding texts or
word lists, windows, length bucketing under a token budget, collation and merging, on real
CoNLL-2003 sentences and the real MiniLM vocabulary."""
import random

import numpy as np

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


# --- the flat path (Encoded, units, collate_units): the tagger's host pipeline --------------------

# characters of every class the word splitter and BERT's normaliser tell apart: letters, 's',
# digits, the joining punctuation, other punctuation, whitespace of several kinds, characters
# the normaliser removes (zero-width, control, BOM), a combining mark, CJK, a ligature, a dotted
# capital I (lower-cases to two characters), symbols that normalise to punctuation, an emoji
ALPHABET = list("aAsSzZ0189 .,:/'-’!?()[]#@\t\n\u3000\u00a0\u200b\u200d\x00\ufeff\u00adéüßİ\u0301中文ﬁ¼\u1fef\u037e\U0001F600")
PIECES = ["U.S.", "'s", "Jean-Pierre", "1996-08-22", "3.5", "O'Neill", "##ab", "x" * 120, "  "]


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) if rng.random() < 0.8 else rng.choice(PIECES)
                    for _ in range(rng.randint(0, 50))) for _ in range(count)]


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_encode_texts_without_offsets_equals_with_offsets_and_encode_text(minilm_dir, sentences, lower):
    """The fast path (encode_batch_fast, pre-tokens located from the character classes) gives
    the same words and sub-tokens as the path with offsets, which equals encode_text per text;
    on real sentences and on 3,000 random texts of every awkward character class."""
    tok = WordPieceTokenizer.from_pretrained(minilm_dir, do_lower_case=lower)
    texts = [" ".join(words) for words in sentences] + random_texts(3000, seed=int(lower))
    fast, slow = tok.encode_texts(texts), tok.encode_texts(texts, offsets=True)
    assert fast.token_chars is None and slow.token_chars is not None  # no fallback was needed
    for name in ("ids", "token_ptr", "word_chars", "word_first", "word_ptr"):
        assert (getattr(fast, name) == getattr(slow, name)).all(), name
    for n in range(0, len(texts), 7):
        one = tok.encode_text_batch([texts[n]])[0]
        assert fast.pieces(n) == slow.pieces(n) == one
        assert fast.words(n) == one.words


def test_encode_word_lists_equals_encode_words(tok, sentences):
    lists = sentences + [["\u200b"], ["a", "\u200b", "b"], [], ["\u0301", "x"], ["U.S.", "Jean-Pierre"]]
    encoded = tok.encode_word_lists(lists)
    for n, words in enumerate(lists):
        if words:
            assert encoded.pieces(n) == tok.encode_words(words)
        assert encoded.words(n) == words
    assert encoded.pieces(len(sentences) + 1).tokens == ["a", "[UNK]", "b"]  # an emptied word keeps its place


def test_encodings_made_beforehand_give_the_same_encoded(tok, sentences):
    """The tagger's split: ``backend_encodings`` (the tokenizers call alone, run in a worker
    thread) then ``encode_texts`` / ``encode_word_lists`` with ``encodings=`` equals the one-call
    methods; encodings of other items are refused with one line."""
    texts = [" ".join(words) for words in sentences] + ["", "   ", "U.S. troops' O'Neill"]
    split = tok.encode_texts(texts, encodings=tok.backend_encodings(texts))
    whole = tok.encode_texts(texts)
    lists = sentences + [[], ("a", "b")]
    split_lists = tok.encode_word_lists(lists, tok.backend_encodings(lists, words=True))
    whole_lists = tok.encode_word_lists(lists)
    for name in ("ids", "token_ptr", "word_chars", "word_first", "word_ptr"):
        assert (getattr(split, name) == getattr(whole, name)).all(), name
        assert (getattr(split_lists, name) == getattr(whole_lists, name)).all(), name
    assert tok.backend_encodings([]) == [] and tok.backend_encodings([[], []], words=True) == []
    with pytest.raises(ValueError, match="1 encodings for 2 texts"):
        tok.encode_texts(texts[:2], encodings=tok.backend_encodings(texts[:1]))
    with pytest.raises(ValueError, match="offsets=True"):
        tok.encode_texts(texts[:1], offsets=True, encodings=tok.backend_encodings(texts[:1]))
    with pytest.raises(ValueError, match="1 encodings for 2 non-empty word lists"):
        tok.encode_word_lists(lists[:2], tok.backend_encodings(lists[:1], words=True))


def test_units_and_collate_units_equal_windows_and_collate(tok, sentences):
    """Windows on flat arrays (``units``) are ``WordPieceTokenizer.windows``'s, and their padded
    batch equals ``collate`` of those windows, including windows that cut a long text."""
    long_text = " ".join(" ".join(words) for words in sentences)
    texts = [" ".join(words) for words in sentences[:6]] + ["", long_text * 4, "one"]
    tok = WordPieceTokenizer.from_pretrained(tok.source, max_length=64)
    encoded = tok.encode_texts(texts)
    windows = batching.units(tok, encoded)
    expected = [(n, k, w) for n, text in enumerate(texts) if text
                for k, w in enumerate(tok.windows(tok.encode_text(text)))]
    assert [(int(i), int(k)) for i, k in zip(windows.item, windows.number)] == [(n, k) for n, k, _ in expected]
    assert max(k for _, k, _ in expected) > 3
    for rows in ([0, 1, 2], list(range(len(windows))), [len(windows) - 1, 6]):
        got = batching.collate_units(tok, encoded, windows, rows)
        want = batching.collate(tok, [expected[r][2] for r in rows])
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
    assert windows.lengths.tolist() == [len(w.input_ids) for _, _, w in expected]


def test_collate_refuses_a_window_too_long(tok):
    pieces = tok.encode_words(["word"] * 600)
    with pytest.raises(ValueError, match="more than max_length - 2"):
        batching.collate(tok, [pieces])


@pytest.mark.parametrize("casing", ["shape", "chars"])
def test_collate_units_casing_inputs_equal_collate(minilm_dir, sentences, casing):
    """The casing inputs from flat arrays (``flat_casing_tensors``) equal ``casing_tensors`` of
    the windows' words: real sentences, random texts of every character class (cased, uncased,
    digits, punctuation, CJK, titlecase, long words), and the later windows of a long text
    (whose first word is not the first of its input)."""
    tok = WordPieceTokenizer.from_pretrained(minilm_dir, max_length=48)
    extra = ["ǅemal McDONALD iPhone A U.S. 1st F16 3.5 -- , $ 中文 Straße ÉCOLE x" + "y" * 30, "a"]
    texts = [" ".join(words) for words in sentences] + random_texts(400, seed=7) + extra
    texts.append(" ".join(texts[:20]))  # windowed
    encoded = tok.encode_texts(texts)
    windows = batching.units(tok, encoded)
    assert (windows.number > 0).sum() > 3
    expected = [w for n, text in enumerate(texts) if encoded.word_counts[n]
                for w in tok.windows(encoded.pieces(n))]
    for rows in (np.arange(len(windows)), np.arange(len(windows))[::-7], np.flatnonzero(windows.item == len(texts) - 1)):
        got = batching.collate_units(tok, encoded, windows, rows, casing=casing)
        want = batching.collate(tok, [expected[r] for r in rows], casing=casing)
        assert got.keys() == want.keys() and "word_shapes" in got
        for key in want:
            assert torch.equal(got[key], want[key]), key
