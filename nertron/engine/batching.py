"""One batching path for training, evaluation and tagging.

``NerData`` (training / evaluation), ``Tagger`` (inference) and ``nertron.pipeline`` all turn
inputs into model batches the same way:

1. ``encode``: a batch of texts (split into words, offsets kept) or of word lists ->
   ``WordPieces``, in one batched tokenizer call; an input without words gives None;
2. ``split_windows``: each input longer than the model's positions -> overlapping windows on
   word boundaries (``WordPieceTokenizer.windows``), nothing truncated;
3. ``bucket``: windows sorted by length and cut into batches under a padded-token budget
   (and, optionally, a batch-size cap);
4. ``collate``: a batch of windows -> padded sub-token inputs ``(B, T)`` and word-level
   ``word_index`` / ``word_mask`` (and ``labels`` / ``intents`` when given);
5. ``merge``: the word predictions of an input's windows -> one prediction per word
   (``merge_windows``: each word takes the window where it has most context).

The tagger runs the same steps on flat arrays (``Encoded``: one chunk of inputs, from
``WordPieceTokenizer.encode_texts`` / ``encode_word_lists``), without a Python object per
input, word or row: ``units`` (the windows, by ``window_bounds``) and ``collate_units`` (the
same padding as ``collate``, ``_pad``). Tests check that both give the same batches.

``check_text`` / ``check_words`` validate one input, naming its index.
"""
from __future__ import annotations

import random
from itertools import chain
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from nertron.engine.casing import casing_tensors, flat_casing_tensors, word_casing
from nertron.engine.tokenizer import (IGNORE_INDEX, Encoded, WordPieces, WordPieceTokenizer, check_words,
                                      default_stride, merge_windows, window_bounds)

__all__ = ["Window", "Units", "check_text", "check_words_item", "encode", "split_windows", "units", "bucket",
           "collate", "collate_units", "merge"]

SPECIAL_TOKENS_PER_ROW = 2  # [CLS] and [SEP]


class Window(NamedTuple):
    """One window of one input."""

    item: int  # index of its input in the encoded batch
    number: int  # window number within that input (0 for an input that fits)
    pieces: WordPieces  # the window (``word_index`` / ``token_index`` locate it in its input)


def check_text(index: int, text: Any) -> str:
    """``text`` if it is a str encodable as UTF-8; else TypeError / ValueError naming item ``index``."""
    if not isinstance(text, str):
        raise TypeError(f"item {index} is {type(text).__name__}, not str: {text!r:.80}")
    if text.isascii():  # no surrogate possible: skip the encoding
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"item {index} is not valid Unicode text: lone surrogate {text[err.start]!r} at "
                         f"character {err.start} (cannot be encoded as UTF-8)") from None
    return text


def check_words_item(index: int, words: Any) -> list[str]:
    """``words`` as a list if it is a sequence of non-empty str encodable as UTF-8 (an empty list
    is allowed); else TypeError / ValueError naming item ``index`` (and the word)."""
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise TypeError(f"item {index} is {type(words).__name__}, not a list of words (str)")
    words = list(words)
    check_words(words, f"item {index}: ", allow_empty=True)
    try:
        "".join(words).encode("utf-8")
    except UnicodeEncodeError:
        bad = next(w for w, word in enumerate(words) if not word.isascii() and _not_utf8(word))
        raise ValueError(f"item {index}: word {bad} is not valid Unicode text (lone surrogate)") from None
    return words


def _not_utf8(word: str) -> bool:
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def encode(tokenizer: WordPieceTokenizer, items: Sequence[str] | Sequence[Sequence[str]],
           words: bool) -> list[WordPieces | None]:
    """Tokenise a batch of inputs in one batched call.

    Args:
        tokenizer: the model's tokenizer.
        items: N texts (``words=False``: split with ``split_text``, offsets into each text) or
            N word lists (``words=True``), already validated.
        words: whether ``items`` are word lists.

    Returns:
        N entries: the input's ``WordPieces``, or None for an input without words (an empty
        list, an empty or whitespace-only text, or only characters BERT's normaliser removes).
    """
    if words:
        present = [n for n, sentence in enumerate(items) if sentence]
        encoded = tokenizer.encode_words_batch([items[n] for n in present])
    else:
        present = list(range(len(items)))
        encoded = tokenizer.encode_text_batch(items)
    pieces: list[WordPieces | None] = [None] * len(items)
    for n, p in zip(present, encoded):
        pieces[n] = p if p.words else None
    return pieces


def split_windows(tokenizer: WordPieceTokenizer, pieces: Sequence[WordPieces | None]) -> list[Window]:
    """Every window of every input (``tokenizer.windows``), inputs in order, windows in order.

    Args:
        pieces: N inputs' ``WordPieces`` (None: an input without words, which has no window).

    Returns:
        The windows, each with the index of its input and its number within that input.
    """
    result: list[Window] = []
    for n, p in enumerate(pieces):
        if p is None:
            continue
        result.extend(Window(n, k, window) for k, window in enumerate(tokenizer.windows(p)))
    return result


def bucket(lengths: Sequence[int], budget: int, max_batch_size: int | None = None,
           rng: random.Random | None = None) -> list[list[int]]:
    """Length-sorted batches under a padded-token budget.

    Args:
        lengths: N sub-token counts (without [CLS]/[SEP]).
        budget: the most padded tokens per batch, ``rows * (longest + 2)``; an item longer
            than that is a batch alone.
        max_batch_size: the most rows per batch (None: no cap).
        rng: breaks ties between equal lengths at random (one ``rng.random()`` per item, in
            index order); None keeps index order.

    Returns:
        Batches of indices into ``lengths``, shortest first; every index exactly once.
    """
    if rng is None:  # by length, ties in index order
        order = np.argsort(np.asarray(lengths, np.int64), kind="stable").tolist()
    else:
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    cap = len(lengths) + 1 if max_batch_size is None else max_batch_size
    for i in order:
        length = lengths[i] + SPECIAL_TOKENS_PER_ROW
        if current and ((longest if longest > length else length) * (len(current) + 1) > budget
                        or len(current) >= cap):
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        if length > longest:
            longest = length
    if current:
        groups.append(current)
    return groups


class Units(NamedTuple):
    """Every window of every input of an ``Encoded``, as ranges of its flat arrays (U windows).

    An input that fits the model is one window holding all of it; a longer one has the windows
    of ``WordPieceTokenizer.windows``; an input without words has none.
    """

    item: np.ndarray  # (U,) int64: the input of each window
    number: np.ndarray  # (U,) int64: the window's number within its input
    tokens: np.ndarray  # (U, 2) int64: its [start, end) global sub-token range
    words: np.ndarray  # (U, 2) int64: its [start, end) global word range

    def __len__(self) -> int:
        return len(self.item)

    @property
    def lengths(self) -> np.ndarray:
        """``(U,)`` sub-tokens per window (without [CLS]/[SEP])."""
        return self.tokens[:, 1] - self.tokens[:, 0]


def units(tokenizer: WordPieceTokenizer, encoded: Encoded) -> Units:
    """The windows of all inputs (inputs in order, windows in order), vectorised over the
    inputs that fit; the few longer ones are cut by ``window_bounds`` like
    ``WordPieceTokenizer.windows`` (its default overlap, ``default_stride``)."""
    size = tokenizer.max_length - 2
    lengths, counts = encoded.lengths, encoded.word_counts
    item = np.flatnonzero(counts > 0)
    long = item[lengths[item] > size]
    if not len(long):
        return Units(item, np.zeros(len(item), np.int64),
                     np.stack([encoded.token_ptr[item], encoded.token_ptr[item + 1]], 1),
                     np.stack([encoded.word_ptr[item], encoded.word_ptr[item + 1]], 1))
    rows: list[tuple[int, int, int, int, int, int]] = []
    for n in item.tolist():
        t0, t1, w0, w1 = (int(v) for v in (encoded.token_ptr[n], encoded.token_ptr[n + 1],
                                           encoded.word_ptr[n], encoded.word_ptr[n + 1]))
        if t1 - t0 <= size:
            rows.append((n, 0, t0, t1, w0, w1))
            continue
        first = encoded.word_first[w0:w1]
        for k, (start, end) in enumerate(window_bounds((first - t0).tolist(), t1 - t0, size, default_stride(size))):
            # the words the window touches: from the word of its first sub-token to that of its last
            a = int(np.searchsorted(first, t0 + start, "right")) - 1
            b = int(np.searchsorted(first, t0 + end - 1, "right"))
            rows.append((n, k, t0 + start, t0 + end, w0 + a, w0 + b))
    table = np.array(rows, np.int64).reshape(-1, 6)
    return Units(table[:, 0], table[:, 1], table[:, 2:4], table[:, 4:6])


def collate_units(tokenizer: WordPieceTokenizer, encoded: Encoded, windows: Units,
                  rows: Sequence[int] | np.ndarray, casing: str = "none") -> dict[str, torch.Tensor]:
    """Pad the windows ``rows`` of ``windows`` into model input, with no Python loop over rows.

    Returns:
        As ``collate``: ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(B, T)``,
        ``word_index`` ``(B, W)``, ``word_mask`` ``(B, W)``; the casing inputs of ``casing``.
    """
    rows = np.asarray(rows, np.int64)
    batch = _pad(tokenizer, encoded.ids, windows.tokens[rows], encoded.word_first, windows.words[rows])
    if casing != "none":
        first = windows.words[rows, 0]
        starts = first == encoded.word_ptr[windows.item[rows]]  # the window starts its input
        if "casing" not in encoded.cache:  # once per chunk, for all its batches
            encoded.cache["casing"] = word_casing(encoded.texts, encoded.word_chars, encoded.word_item)
        batch.update(flat_casing_tensors(encoded.cache["casing"], np.stack([first, windows.words[rows, 1], starts], 1),
                                         casing))
    return batch


def _pad(tokenizer: WordPieceTokenizer, ids: np.ndarray, tokens: np.ndarray, word_first: np.ndarray,
         words: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows ``[CLS] ids[a:b] [SEP] [PAD]...`` for each sub-token range ``tokens[r] = (a, b)``,
    and the model-input position of the first sub-token of each word ``words[r]`` inside it (a
    window's first word may start before the window: then at the window's first sub-token)."""
    B = len(tokens)
    length = tokens[:, 1] - tokens[:, 0]  # shape: (B,)
    T = int(length.max()) + SPECIAL_TOKENS_PER_ROW
    if T > tokenizer.max_length:
        raise ValueError(f"a window has {T - 2} sub-tokens, more than max_length - 2 = {tokenizer.max_length - 2}; "
                         "split it with windows() first")
    column = np.arange(T)
    inside = (column >= 1) & (column <= length[:, None])  # shape: (B, T)
    input_ids = np.full((B, T), tokenizer.pad_token_id, np.int64)
    input_ids[inside] = ids[(tokens[:, :1] + column - 1)[inside]]
    input_ids[:, 0] = tokenizer.cls_token_id
    input_ids[np.arange(B), length + 1] = tokenizer.sep_token_id
    attention_mask = (column <= length[:, None] + 1).astype(np.int64)
    count = words[:, 1] - words[:, 0]  # shape: (B,)
    W = max(int(count.max()), 1)
    word_column = np.arange(W)
    word_mask = word_column < count[:, None]  # shape: (B, W)
    first = word_first[np.where(word_mask, words[:, :1] + word_column, words[:, :1])]
    word_index = np.where(word_mask, np.maximum(first, tokens[:, :1]) - tokens[:, :1] + 1, 0)
    input_ids = torch.from_numpy(input_ids)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.from_numpy(attention_mask),
        "token_type_ids": torch.zeros_like(input_ids),
        "word_index": torch.from_numpy(word_index),
        "word_mask": torch.from_numpy(word_mask),
    }


def collate(tokenizer: WordPieceTokenizer, windows: Sequence[WordPieces],
            labels: Sequence[Sequence[int] | None] | None = None,
            intents: Sequence[int | None] | None = None, casing: str = "none") -> dict[str, torch.Tensor]:
    """Pad a batch of windows into model input.

    Args:
        windows: B windows (at most ``max_length - 2`` sub-tokens each).
        labels: per window, one label id per word (or None); added as ``labels`` when every
            window has them.
        intents: per window, an intent id (or None); added as ``intents`` when every window has one.
        casing: the casing inputs to add (``nertron.engine.casing``): ``'none'``, ``'shape'``, ``'chars'``.

    Returns:
        ``input_ids``, ``attention_mask``, ``token_type_ids``: ``(B, T)`` int64;
        ``word_index``: ``(B, W)`` int64, the model-input position of each word's first
        sub-token (0 at padding); ``word_mask``: ``(B, W)`` bool; optional ``labels``:
        ``(B, W)`` int64 (``IGNORE_INDEX`` at padding); optional ``intents``: ``(B,)`` int64;
        the casing inputs (``casing_tensors``), from the windows' original words.
    """
    if not windows:
        raise ValueError("empty batch: no WordPieces given")
    for n, window in enumerate(windows):
        if not isinstance(window, WordPieces):
            raise TypeError(f"batch item {n} is {type(window).__name__}, not WordPieces")
    # the windows as flat arrays, padded like any batch of the tagger
    token_counts = np.fromiter((len(window.input_ids) for window in windows), np.int64, len(windows))
    word_counts = np.fromiter((len(window.word_spans) for window in windows), np.int64, len(windows))
    token_ptr = np.concatenate([[0], np.cumsum(token_counts)])
    word_ptr = np.concatenate([[0], np.cumsum(word_counts)])
    ids = np.fromiter(chain.from_iterable(window.input_ids for window in windows), np.int64, int(token_ptr[-1]))
    word_first = np.fromiter(chain.from_iterable(window.word_starts for window in windows), np.int64,
                             int(word_ptr[-1])) + np.repeat(token_ptr[:-1], word_counts)
    batch = _pad(tokenizer, ids, np.stack([token_ptr[:-1], token_ptr[1:]], 1), word_first,
                 np.stack([word_ptr[:-1], word_ptr[1:]], 1))
    if labels is not None and len(labels) and all(row is not None for row in labels):
        label_tensor = torch.full(batch["word_mask"].shape, IGNORE_INDEX, dtype=torch.long)
        for row, values in enumerate(labels):
            label_tensor[row, :len(values)] = torch.tensor(values, dtype=torch.long)
        batch["labels"] = label_tensor
    if intents is not None and len(intents) and all(intent is not None for intent in intents):
        batch["intents"] = torch.tensor(list(intents))
    if casing != "none":
        batch.update(casing_tensors(windows, casing))
    return batch


def merge(pieces: WordPieces, windows: Sequence[WordPieces], predictions: Sequence[Sequence[Any]]) -> list[Any]:
    """One prediction per word of an input from its windows' word predictions.

    Args:
        pieces: the input (W words); windows: its windows, in order; predictions: per window,
            one prediction per word of that window.

    Returns:
        W predictions: the single window's own for an input that fits, else ``merge_windows``'s.
    """
    if len(windows) == 1:
        return list(predictions[0])
    return merge_windows(pieces, windows, predictions)
