"""Casing features from the original words, for encoders that cannot see case.

all-MiniLM-L6-v2 (nertron's default encoder) is uncased: its tokenizer lower-cases every
word before WordPiece, so "Apple" and "apple", "US" and "us" reach BERT as the same
sub-tokens, and capital letters, the strongest single cue for English named entities, are
lost. A NER head with ``casing`` on reads two extra inputs computed here, on the host, from
each window's **original** words (``WordPieces.words``: the text as given, never the
lower-cased sub-tokens):

- ``word_shapes`` ``(B, W)`` int64: one id per word: its shape (lower, Title, ALL CAPS,
  mixed case, number, letters with digits, punctuation, other) combined with whether it is
  the first word of its input (a capital there says less); 0 at padding.
- ``word_chars`` ``(B, W, C)`` int64 (``casing='chars'`` only): the word's first
  ``MAX_CHARS`` characters as ids (``char_id``), 0 at padding, for a character-level CNN.

The work per word is one dictionary lookup (shapes are memoised per distinct word); the
character ids of a whole batch are one UTF-32 encoding scattered by NumPy: cheap next to BERT.

Modes (``ModelConfig.casing``): ``'none'`` (no extra inputs; models saved before the option
existed), ``'shape'`` (shape ids), ``'chars'`` (shape ids and character ids).
"""
from __future__ import annotations

import unicodedata
from typing import NamedTuple, Sequence

import numpy as np
import torch

from nertron.engine.tokenizer import WordPieces, join_texts
from nertron.kernels import text_cpu

__all__ = ["CASING_MODES", "SHAPES", "NUM_SHAPE_IDS", "CHAR_BUCKETS", "MAX_CHARS", "word_shape", "shape_id",
           "char_id", "casing_tensors", "check_casing", "WordCasing", "word_casing", "flat_casing_tensors"]

CASING_MODES = ("none", "shape", "chars")

# Word shapes; a word's id is 1 + 2 * shape + (first word of its input), 0 is padding.
SHAPES = ("lower", "title", "upper", "mixed", "number", "alnum", "punct", "other")
NUM_SHAPE_IDS = 1 + 2 * len(SHAPES)

# Character ids: 1 + code point modulo CHAR_BUCKETS - 1 (0 is padding). 2047 keeps ASCII,
# Latin-1, Latin Extended, Greek and Cyrillic (U+0000..U+07FE) apart; rarer scripts share
# buckets, which a character CNN tolerates.
CHAR_BUCKETS = 2048
MAX_CHARS = 20  # longer words keep their first MAX_CHARS characters (prefix and stem)


def word_shape(word: str) -> str:
    """The shape of one word, from its original characters: one of ``SHAPES``.

    ``lower`` "apple"; ``title`` "Apple", "A"; ``upper`` "USA", "U.S."; ``mixed`` "iPhone",
    "McDonald"; ``number`` "1996", "3.5", "12-10"; ``alnum`` "F16", "1st" (letters and digits);
    ``punct`` ",", "--"; ``other`` symbols and letters without case (CJK, ...).
    """
    has_digit = any(c.isdigit() for c in word)
    cased = [c for c in word if c.isupper() or c.islower()]
    if cased:
        if has_digit:
            return "alnum"
        if all(c.islower() for c in cased):
            return "lower"
        if len(cased) > 1 and all(c.isupper() for c in cased):
            return "upper"
        if cased[0].isupper() and all(c.islower() for c in cased[1:]):
            return "title"
        return "mixed"
    if has_digit:
        return "number"
    if any(c.isalpha() for c in word):
        return "other"  # letters without case
    if word and all(unicodedata.category(c).startswith("P") for c in word):
        return "punct"
    return "other"  # symbols ($, %, +), marks


_SHAPE_INDEX = {name: i for i, name in enumerate(SHAPES)}


def shape_id(word: str, first: bool) -> int:
    """The id ``word_shapes`` holds for ``word`` (``first``: the first word of its input)."""
    return 1 + 2 * _SHAPE_INDEX[word_shape(word)] + int(first)


def char_id(char: str) -> int:
    """The id of one character in ``word_chars`` (1 .. CHAR_BUCKETS - 1)."""
    return 1 + ord(char) % (CHAR_BUCKETS - 1)


_SHAPE_OF: dict[str, int] = {}  # word -> shape id as a non-first word: one lookup per word seen before
_SHAPE_CACHE_SIZE = 1 << 18


def _shape_ids(words: list[str]) -> list[int]:
    """The non-first shape id of each word, memoised per distinct word (bounded: cleared when full)."""
    known = _SHAPE_OF
    out = []
    for word in words:
        value = known.get(word)
        if value is None:
            if len(known) >= _SHAPE_CACHE_SIZE:
                known.clear()
            value = known[word] = shape_id(word, False)
        out.append(value)
    return out


def check_casing(casing: str | bool) -> str:
    """``casing`` as one of ``CASING_MODES`` (False means ``'none'``); ValueError otherwise."""
    if casing is False or casing is None:
        return "none"
    if casing not in CASING_MODES:
        raise ValueError(f"casing must be one of {CASING_MODES}, got {casing!r}")
    return casing


def casing_tensors(windows: Sequence[WordPieces], casing: str) -> dict[str, torch.Tensor]:
    """The casing inputs of a batch of windows, from their original words.

    Args:
        windows: B windows, or any objects with ``words`` (as given by the user) and
            ``word_index`` (0 for a window that starts its input).
        casing: ``'shape'`` or ``'chars'`` (``'none'``: no tensors).

    Returns:
        ``word_shapes``: ``(B, W)`` int64 (0 at padding); with ``'chars'`` also ``word_chars``:
        ``(B, W, C)`` int64, ``C`` the longest word's length in the batch (at most
        ``MAX_CHARS``), 0 at padding. ``W`` is the most words of a window.
    """
    casing = check_casing(casing)
    if casing == "none":
        return {}
    B = len(windows)
    counts = np.fromiter((len(window.words) for window in windows), np.int64, B)
    W = int(counts.max()) if B else 0
    words = [word for window in windows for word in window.words]
    # the flat position (row * W + column) of every word in the padded (B, W) grid
    starts = np.cumsum(counts) - counts  # shape: (B,)
    slot = np.arange(len(words)) - np.repeat(starts, counts) + np.repeat(np.arange(B) * W, counts)
    shapes = np.zeros(B * W, np.int64)
    shapes[slot] = _shape_ids(words)
    first = np.array([window.word_index == 0 for window in windows], bool) & (counts > 0)
    shapes[(np.arange(B) * W)[first]] += 1  # the first word of its input
    out = {"word_shapes": torch.from_numpy(shapes.reshape(B, W))}
    if casing == "chars":
        # every word's first MAX_CHARS code points in one array, scattered into (B * W, C)
        cut = [word[:MAX_CHARS] for word in words]
        lengths = np.fromiter(map(len, cut), np.int64, len(cut))
        codes = np.frombuffer("".join(cut).encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.int64)
        C = max(int(lengths.max()) if len(lengths) else 0, 1)
        grid = np.zeros((B * W, C), np.int64)
        word_of = np.repeat(np.arange(len(cut)), lengths)  # shape: (characters,)
        column = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        grid[slot[word_of], column] = 1 + codes % (CHAR_BUCKETS - 1)  # char_id, vectorised
        out["word_chars"] = torch.from_numpy(grid.reshape(B, W, C))
    return out


# --- the same inputs from flat arrays (the tagger's host pipeline) -----------------------------

_UPPER, _LOWER, _DIGIT, _ALPHA, _PUNCT, _OTHER = range(6)


class _CaseClasses(dict):
    """ord -> the character's class for ``word_shape`` (a ``str.translate`` table, filled on
    first sight): upper, lower, digit, a letter without case, punctuation, other."""

    def __missing__(self, code: int) -> int:
        char = chr(code)
        if char.isupper():
            cls = _UPPER
        elif char.islower():
            cls = _LOWER
        elif char.isdigit():
            cls = _DIGIT
        elif char.isalpha():
            cls = _ALPHA
        elif unicodedata.category(char).startswith("P"):
            cls = _PUNCT
        else:
            cls = _OTHER
        self[code] = cls
        return cls


_CASE_CLASSES = _CaseClasses()
_SHAPE_CODE = {name: 1 + 2 * i for i, name in enumerate(SHAPES)}
# the shape codes in the order text_cpu.word_casing tests the shapes
_C_SHAPE_CODES = np.array([_SHAPE_CODE[s] for s in ("alnum", "lower", "upper", "title", "mixed", "number", "other",
                                                    "punct")], np.int64)


class WordCasing(NamedTuple):
    """The casing of every word of a chunk of texts, computed once (``word_casing``) and cut
    into batches by ``flat_casing_tensors``."""

    shape: np.ndarray  # (V,) int64: shape id of each word as a non-first word
    length: np.ndarray  # (V,) int64: its length in characters
    chars: np.ndarray  # (V, MAX_CHARS) int64: its first MAX_CHARS char ids (``char_id``), 0 after its end


def word_casing(texts: Sequence[str], word_chars: np.ndarray, word_item: np.ndarray) -> WordCasing:
    """Shapes (``word_shape``) and characters of all the words of ``texts`` at once.

    Args:
        texts: N texts; word_chars: ``(V, 2)`` (start, end) offsets of every word in its
            text; word_item: ``(V,)`` the text of each word.
    """
    joined, base = join_texts(texts)
    start = base[word_item] + word_chars[:, 0]
    length = word_chars[:, 1] - word_chars[:, 0]
    shadow = joined.translate(_CASE_CLASSES).encode("latin-1")
    if text_cpu.available():  # the same features in C, without the GIL
        points = np.frombuffer(joined.encode("utf-32-le"), np.uint32)
        shape, chars = text_cpu.word_casing(shadow, points, start, length, MAX_CHARS, CHAR_BUCKETS, _C_SHAPE_CODES)
        return WordCasing(shape, length, chars)
    classes = np.frombuffer(shadow, np.uint8)
    end = start + length

    def count(cls: int) -> np.ndarray:  # characters of class cls in each word, from prefix sums
        total = np.zeros(len(classes) + 1, np.int64)
        np.cumsum(classes == cls, out=total[1:])  # one 1-D sum per class: 15x faster than one (n, 5) sum
        return total[end] - total[start]

    upper, lower, digit, alpha, punct = (count(c) for c in (_UPPER, _LOWER, _DIGIT, _ALPHA, _PUNCT))
    cased = upper + lower
    # the first cased character of each word: the nearest cased one at or after its start
    is_cased = np.append(classes <= _LOWER, True)
    position = np.where(is_cased, np.arange(len(classes) + 1), len(classes))
    nearest = np.minimum.accumulate(position[::-1])[::-1]
    first_upper = np.append(classes == _UPPER, False)[nearest[start]]
    shape = np.select(
        [(cased > 0) & (digit > 0), (cased > 0) & (upper == 0), (cased > 1) & (lower == 0),
         (cased > 0) & first_upper & (upper == 1), cased > 0,
         digit > 0, alpha > 0, (length > 0) & (punct == length)],
        [_SHAPE_CODE[s] for s in ("alnum", "lower", "upper", "title", "mixed", "number", "other", "punct")],
        _SHAPE_CODE["other"])
    codes = 1 + np.frombuffer(joined.encode("utf-32-le"), np.uint32).astype(np.int64) % (CHAR_BUCKETS - 1)
    # every word's first MAX_CHARS char ids, 0 beyond its end: shape (V, MAX_CHARS)
    column = np.arange(MAX_CHARS)
    chars = np.where(column < length[:, None], codes[np.minimum(start[:, None] + column, len(codes) - 1)], 0) \
        if len(codes) else np.zeros((len(start), MAX_CHARS), np.int64)
    return WordCasing(shape, length, chars)


def flat_casing_tensors(words: WordCasing, rows: np.ndarray, casing: str) -> dict[str, torch.Tensor]:
    """``casing_tensors`` of a batch given as ranges of words (``word_casing``'s).

    Args:
        words: the casing of every word of the chunk.
        rows: ``(B, 3)``: each row's first word, end word (global) and whether the row starts
            its input (1) or is a later window of it (0).
        casing: ``'shape'`` or ``'chars'``.

    Returns:
        The same tensors as ``casing_tensors`` for those rows' words.
    """
    casing = check_casing(casing)
    if casing == "none":
        return {}
    B = len(rows)
    counts = rows[:, 1] - rows[:, 0]
    W = int(counts.max()) if B else 0
    # the words of the batch, row by row, and their slots in the padded (B, W) grid
    offsets = np.cumsum(counts) - counts
    within = np.arange(int(counts.sum())) - np.repeat(offsets, counts)
    word = np.repeat(rows[:, 0], counts) + within
    slot = np.repeat(np.arange(B) * W, counts) + within
    shapes = np.zeros(B * W, np.int64)
    shapes[slot] = words.shape[word]
    starts_input = (rows[:, 2] > 0) & (counts > 0)
    shapes[(np.arange(B) * W)[starts_input]] += 1  # the first word of its input
    out = {"word_shapes": torch.from_numpy(shapes.reshape(B, W))}
    if casing == "chars":
        C = max(min(int(words.length[word].max()) if len(word) else 0, MAX_CHARS), 1)
        grid = np.zeros((B * W, C), np.int64)
        grid[slot] = words.chars[word, :C]
        out["word_chars"] = torch.from_numpy(grid.reshape(B, W, C))
    return out
