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

``check_text`` / ``check_words`` validate one input, naming its index.
"""
from __future__ import annotations

import random
from typing import Any, NamedTuple, Sequence

import torch

from nertron.engine.tokenizer import IGNORE_INDEX, WordPieces, WordPieceTokenizer, check_words, merge_windows

__all__ = ["Window", "check_text", "check_words_item", "encode", "split_windows", "bucket", "collate", "merge"]

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
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random() if rng is not None else i))
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = lengths[i] + SPECIAL_TOKENS_PER_ROW
        if current and (max(longest, length) * (len(current) + 1) > budget
                        or (max_batch_size is not None and len(current) >= max_batch_size)):
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        groups.append(current)
    return groups


def collate(tokenizer: WordPieceTokenizer, windows: Sequence[WordPieces],
            labels: Sequence[Sequence[int] | None] | None = None,
            intents: Sequence[int | None] | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch of windows into model input.

    Args:
        windows: B windows (at most ``max_length - 2`` sub-tokens each).
        labels: per window, one label id per word (or None); added as ``labels`` when every
            window has them.
        intents: per window, an intent id (or None); added as ``intents`` when every window has one.

    Returns:
        ``input_ids``, ``attention_mask``, ``token_type_ids``: ``(B, T)`` int64;
        ``word_index``: ``(B, W)`` int64, the model-input position of each word's first
        sub-token (0 at padding); ``word_mask``: ``(B, W)`` bool; optional ``labels``:
        ``(B, W)`` int64 (``IGNORE_INDEX`` at padding); optional ``intents``: ``(B,)`` int64.
    """
    batch = tokenizer.batch(list(windows))
    width = max(len(window.word_spans) for window in windows)
    word_index = torch.zeros(len(windows), width, dtype=torch.long)
    word_mask = torch.zeros(len(windows), width, dtype=torch.bool)
    for row, window in enumerate(windows):
        starts = window.word_starts
        word_index[row, :len(starts)] = torch.tensor(starts) + 1  # +1: [CLS] comes first
        word_mask[row, :len(starts)] = True
    batch.update(word_index=word_index, word_mask=word_mask)
    if labels is not None and len(labels) and all(row is not None for row in labels):
        label_tensor = torch.full((len(windows), width), IGNORE_INDEX, dtype=torch.long)
        for row, values in enumerate(labels):
            label_tensor[row, :len(values)] = torch.tensor(values, dtype=torch.long)
        batch["labels"] = label_tensor
    if intents is not None and len(intents) and all(intent is not None for intent in intents):
        batch["intents"] = torch.tensor(list(intents))
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
