"""WordPiece tokenisation and sub-token <-> word alignment for NER.

BERT reads sub-tokens (WordPiece pieces); NER labels belong to words. This module turns words
(a pre-split CoNLL sentence, or raw text that it splits itself) into ``WordPieces`` that
remember, for each word, its sub-token span and character offsets, and maps labels and
predictions between words and sub-tokens.

Alignment convention
--------------------
* The **first sub-token** of each word carries the word's label; every **continuation**
  sub-token gets ``continuation_label``: ``"X"`` as in the ner-bert seed, or ``IGNORE_INDEX``
  (-100) once labels are ids, which ``torch.nn.functional.cross_entropy`` skips. Metrics are
  computed per word, so continuations count in neither the loss nor the metrics.
* The inverse, ``merge_subtoken_predictions``, reads each word's prediction off its first
  sub-token: ``merge_subtoken_predictions(p, align_labels(p, labels)) == labels``.
* Every input word gets at least one sub-token. A word that the BERT normaliser empties (a
  control or zero-width character, a lone combining mark, only whitespace) becomes one
  ``[UNK]`` instead of vanishing, so word counts (and label counts) never change. Hugging
  Face drops such words: one of two cases where ids differ from ``BertTokenizerFast``.
  ``encode_text`` splits the text itself and does not make such a run a word at all.
* Special-token strings in the input (a literal ``"[SEP]"``) are plain text, tokenised like
  any other (``[ sep ]``): input text never injects special tokens. (Hugging Face matches them
  as special tokens, the second, deliberate, difference.)
* A word that BERT's pre-tokeniser splits (``"U.S."`` -> ``u . s .``; ``"Jean-Pierre"``)
  keeps all its pieces under the one word.

Long texts
----------
Nothing is truncated. ``WordPieceTokenizer.windows`` cuts a sequence longer than the model's
positions into overlapping windows on word boundaries (by default a quarter of a window,
127 sub-tokens at 512 positions, overlaps the previous one); each window records the index of its
first word (``word_index``) and first sub-token (``token_index``) in the original, and
``merge_windows`` gives every word the prediction of the window where it has most context.

Apart from those two cases, ids equal ``transformers.BertTokenizerFast`` / ``BertTokenizer``
for the same vocab and casing (and so do character offsets): the tokenisation itself is the ``tokenizers`` library's BERT normaliser,
pre-tokeniser and WordPiece model.
"""
from __future__ import annotations

import json
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer, models, normalizers, pre_tokenizers

# label id of continuation sub-tokens and padding (cross_entropy's default ignore_index), defined once
from nertron.engine.data.vocab import IGNORE_INDEX
from nertron.kernels import text_cpu

__all__ = [
    "IGNORE_INDEX",
    "CONTINUATION_LABEL",
    "SPECIAL_TOKENS",
    "WordPieces",
    "Encoded",
    "WordPieceTokenizer",
    "align_labels",
    "merge_subtoken_predictions",
    "merge_windows",
    "window_bounds",
    "default_stride",
    "join_texts",
    "check_words",
]

CONTINUATION_LABEL = "X"  # string label of continuation sub-tokens (the ner-bert seed's convention)
UNK, CLS, SEP, PAD = "[UNK]", "[CLS]", "[SEP]", "[PAD]"
SPECIAL_TOKENS = (UNK, CLS, SEP, PAD)
MAX_INPUT_CHARS_PER_WORD = 100  # BERT's limit: a longer pre-token becomes [UNK]
DEFAULT_MAX_LENGTH = 512
_SANE_MAX_LENGTH = 1_000_000  # HF writes model_max_length=1e30 when it is unknown


@dataclass
class WordPieces:
    """A word sequence as WordPiece sub-tokens, with the word <-> sub-token alignment.

    ``input_ids`` has no ``[CLS]``/``[SEP]``; ``WordPieceTokenizer.batch`` adds them, so a
    sub-token index ``i`` here is position ``i + 1`` in the model input.

    Attributes:
        words: the words (W,).
        word_offsets: (start, end) character offsets of each word in ``text`` (W,).
        tokens: sub-token strings (T,).
        input_ids: sub-token ids (T,), without special tokens.
        word_spans: (start, end) sub-token range of each word in ``input_ids`` (W,); the
            spans are contiguous, in order, cover ``input_ids`` exactly, and none is empty.
        token_offsets: (start, end) character offsets of each sub-token in ``text`` (T,). A
            ``[UNK]`` standing for an emptied word spans the whole word.
        text: the text the offsets refer to: the input of ``encode_text``; for
            ``encode_words`` the words joined by single spaces.
        word_index: for a window, the index of its first word in the original sequence; 0
            otherwise.
        token_index: for a window, the index of its first sub-token in the original
            sequence; 0 otherwise.
    """

    words: list[str]
    word_offsets: list[tuple[int, int]]
    tokens: list[str]
    input_ids: list[int]
    word_spans: list[tuple[int, int]]
    token_offsets: list[tuple[int, int]]
    text: str
    word_index: int = 0
    token_index: int = 0

    def __len__(self) -> int:
        """Number of sub-tokens (without [CLS]/[SEP])."""
        return len(self.input_ids)

    @property
    def word_ids(self) -> list[int]:
        """For each sub-token, the index in ``words`` of the word it belongs to (T,)."""
        ids: list[int] = []
        for w, (start, end) in enumerate(self.word_spans):
            ids.extend([w] * (end - start))
        return ids

    @property
    def word_starts(self) -> list[int]:
        """Index in ``input_ids`` of each word's first sub-token, the one that is labelled (W,)."""
        return [start for start, _ in self.word_spans]


@dataclass
class Encoded:
    """N inputs tokenised in one call, as flat arrays: the tagger's fast path, without a
    Python object per sub-token or per word (``pieces(n)`` gives one input as ``WordPieces``).

    Input ``n`` has sub-tokens ``token_ptr[n]:token_ptr[n + 1]`` and words
    ``word_ptr[n]:word_ptr[n + 1]`` of the flat arrays (global indices); a word's sub-tokens
    run from ``word_first[w]`` to the next word's first (or the input's end). Offsets index
    ``texts[n]``: the input text, or for word lists the words joined by single spaces.

    Attributes:
        texts: the N texts.
        ids: ``(S,)`` int64 sub-token ids, without [CLS]/[SEP].
        token_chars: ``(S, 2)`` int64 (start, end) character offsets of each sub-token, or
            None when they were not asked for (``encode_texts(..., offsets=False)``):
            ``pieces`` then finds those of the one input it is asked for.
        token_ptr: ``(N + 1,)`` int64.
        word_chars: ``(V, 2)`` int64 (start, end) character offsets of each word.
        word_first: ``(V,)`` int64 global index of each word's first sub-token.
        word_ptr: ``(N + 1,)`` int64.
        tokens: id -> sub-token string (the tokenizer's inverse vocab), for ``pieces``.
    """

    texts: list[str]
    ids: np.ndarray
    token_chars: np.ndarray | None
    token_ptr: np.ndarray
    word_chars: np.ndarray
    word_first: np.ndarray
    word_ptr: np.ndarray
    tokens: Sequence[str]
    backend: Tokenizer | None = None  # re-encodes one text for its offsets (token_chars None)
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # per-chunk results of users

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def lengths(self) -> np.ndarray:
        """``(N,)`` sub-tokens per input."""
        return np.diff(self.token_ptr)

    @property
    def word_counts(self) -> np.ndarray:
        """``(N,)`` words per input."""
        return np.diff(self.word_ptr)

    @cached_property
    def word_item(self) -> np.ndarray:
        """``(V,)`` the input of each word."""
        return np.repeat(np.arange(len(self.texts)), self.word_counts)

    def words(self, n: int) -> list[str]:
        """The words of input ``n`` (slices of its text)."""
        text = self.texts[n]
        return [text[a:b] for a, b in self.word_chars[self.word_ptr[n]:self.word_ptr[n + 1]].tolist()]

    def _token_offsets(self, n: int, t0: int, t1: int) -> list[tuple[int, int]]:
        if self.token_chars is not None:
            return [tuple(pair) for pair in self.token_chars[t0:t1].tolist()]
        encoding = self.backend.encode(self.texts[n], add_special_tokens=False)
        if encoding.ids != self.ids[t0:t1].tolist():
            raise RuntimeError(f"input {n} tokenised differently on a second pass")
        return list(encoding.offsets)

    def pieces(self, n: int) -> WordPieces:
        """Input ``n`` as ``WordPieces`` (equal to ``encode_text`` / ``encode_words`` of it)."""
        t0, t1 = int(self.token_ptr[n]), int(self.token_ptr[n + 1])
        w0, w1 = int(self.word_ptr[n]), int(self.word_ptr[n + 1])
        ids = self.ids[t0:t1].tolist()
        starts = (self.word_first[w0:w1] - t0).tolist()
        word_offsets = [tuple(pair) for pair in self.word_chars[w0:w1].tolist()]
        text = self.texts[n]
        return WordPieces(
            words=[text[a:b] for a, b in word_offsets],
            word_offsets=word_offsets,
            tokens=[self.tokens[i] for i in ids],
            input_ids=ids,
            word_spans=list(zip(starts, starts[1:] + [t1 - t0])),
            token_offsets=self._token_offsets(n, t0, t1),
            text=text,
        )


# --- the tokenizer --------------------------------------------------------------------------------


class WordPieceTokenizer:
    """BERT WordPiece tokeniser that keeps track of words.

    Args:
        vocab: token -> id (a BERT ``vocab.txt`` read line by line).
        do_lower_case: lower-case before WordPiece (uncased checkpoints).
        strip_accents: remove accents; None follows ``do_lower_case`` as BERT does.
        max_length: model positions including [CLS] and [SEP] (>= 3).
        tokenize_chinese_chars: make every CJK character its own pre-token (BERT's default).
        source: where the vocab came from, for error messages.
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        do_lower_case: bool,
        strip_accents: bool | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        tokenize_chinese_chars: bool = True,
        source: str = "vocab",
    ):
        if not vocab:
            raise ValueError(f"the vocab ({source}) is empty")
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ValueError(
                f"the vocab ({source}) lacks {', '.join(missing)}: a BERT WordPiece vocab needs "
                f"{', '.join(SPECIAL_TOKENS)}"
            )
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 3:
            raise ValueError(f"max_length must be an int >= 3 ([CLS] + one sub-token + [SEP]), got {max_length!r}")
        self.vocab: dict[str, int] = dict(vocab)
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = self.do_lower_case if strip_accents is None else bool(strip_accents)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.max_length = max_length
        self.source = source
        self.unk_token_id = self.vocab[UNK]
        self.cls_token_id = self.vocab[CLS]
        self.sep_token_id = self.vocab[SEP]
        self.pad_token_id = self.vocab[PAD]
        self._backend = Tokenizer(
            models.WordPiece(self.vocab, unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
        )
        self._backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=self.tokenize_chinese_chars,
            strip_accents=self.strip_accents,
            lowercase=self.do_lower_case,
        )
        self._backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._id_tokens: list[str] = [UNK] * self.vocab_size  # id -> sub-token, for Encoded.pieces
        for token, index in self.vocab.items():
            self._id_tokens[index] = token
        # WordPiece continuations (a pre-token's first piece never starts with ##: # is punctuation)
        self._continuation = np.array([token.startswith("##") for token in self._id_tokens], bool)
        self._bert_classes = _BertClasses(self._backend.normalizer)

    @property
    def vocab_size(self) -> int:
        """Number of ids (the largest id + 1; equals the vocab length for a well-formed file)."""
        return max(self.vocab.values()) + 1

    def __repr__(self) -> str:
        return (
            f"WordPieceTokenizer({self.source}, vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
            f"strip_accents={self.strip_accents}, max_length={self.max_length})"
        )

    # --- loading ------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_dir: str | Path,
        do_lower_case: bool | None = None,
        max_length: int | None = None,
    ) -> "WordPieceTokenizer":
        """Load from a checkpoint folder (``vocab.txt``, optional ``tokenizer_config.json`` and
        ``config.json``) or from a ``vocab.txt`` path (configs are then read beside it).

        Args:
            path_or_dir: checkpoint folder or vocab file.
            do_lower_case: None detects it: ``tokenizer_config.json``'s ``do_lower_case`` if
                present, else from the vocab (an uncased vocab has no upper-case pieces). A
                bool overrides. Accents are stripped when lower-casing, as in BERT, unless
                ``tokenizer_config.json`` sets ``strip_accents``.
            max_length: model positions incl. [CLS]/[SEP]; None -> ``config.json``'s
                ``max_position_embeddings``, else a sane ``model_max_length`` from
                ``tokenizer_config.json``, else 512.

        Returns:
            WordPieceTokenizer.

        Raises:
            FileNotFoundError: no such path, or a folder without ``vocab.txt``.
            ValueError: empty vocab, missing special tokens, unreadable config.
        """
        path = Path(path_or_dir)
        if not path.exists():
            raise FileNotFoundError(f"no vocab file or checkpoint folder at {path}")
        if path.is_dir():
            folder, vocab_path = path, path / "vocab.txt"
            if not vocab_path.is_file():
                raise FileNotFoundError(f"the checkpoint folder {path} has no vocab.txt (looked for {vocab_path})")
        else:
            folder, vocab_path = path.parent, path
        if do_lower_case is not None and not isinstance(do_lower_case, bool):
            raise TypeError(f"do_lower_case must be a bool or None, got {type(do_lower_case).__name__}")
        vocab = _load_vocab(vocab_path)
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
        model_config = _read_json(folder / "config.json")

        if do_lower_case is None:
            configured = tokenizer_config.get("do_lower_case")
            do_lower_case = configured if isinstance(configured, bool) else not _vocab_is_cased(vocab)
        strip_accents = tokenizer_config.get("strip_accents")
        strip_accents = strip_accents if isinstance(strip_accents, bool) else None  # None: follow lower-casing
        chinese = tokenizer_config.get("tokenize_chinese_chars", True)

        if max_length is None:
            positions = model_config.get("max_position_embeddings")
            configured = tokenizer_config.get("model_max_length")
            if _is_int(positions) and positions >= 3:
                max_length = positions
            elif _is_int(configured) and 3 <= configured <= _SANE_MAX_LENGTH:
                max_length = configured
            else:
                max_length = DEFAULT_MAX_LENGTH
        return cls(vocab, do_lower_case, strip_accents, max_length, chinese is not False, source=str(vocab_path))

    # --- encoding -----------------------------------------------------------------------------------

    def encode_words(self, words: Sequence[str]) -> WordPieces:
        """Tokenise a pre-split sentence (e.g. the words of a CoNLL sentence).

        Args:
            words: the words (W,), non-empty strings.

        Returns:
            WordPieces whose ``text`` is the words joined by single spaces; ``word_offsets``
            and ``token_offsets`` index that text.

        Raises:
            ValueError: no words ("empty text"), or an empty word (its index is named).
            TypeError: ``words`` is a str or holds a non-str.
        """
        check_words(words)
        return self.encode_word_lists([list(words)]).pieces(0)

    def encode_words_batch(self, sentences: Sequence[Sequence[str]]) -> list[WordPieces]:
        """``encode_words`` for many sentences at once (one ``encode_batch`` call, parallel in Rust).

        Args:
            sentences: N word lists.

        Returns:
            N WordPieces.
        """
        if isinstance(sentences, str):
            raise TypeError("encode_words_batch takes a list of word lists, not a str")
        sentences = [list(check_words(words, f"sentence {n}: ")) for n, words in enumerate(sentences)]
        encoded = self.encode_word_lists(sentences)
        return [encoded.pieces(n) for n in range(len(sentences))]

    def backend_encodings(self, items: Sequence, words: bool = False) -> list[Encoding]:
        """The one ``tokenizers`` call of ``encode_texts`` (``words=False``: texts) or
        ``encode_word_lists`` (``words=True``: word lists), alone.

        That call is the Rust part of tokenising a chunk: it releases the GIL and runs on the
        ``tokenizers`` thread pool. The tagger runs it in a worker thread, chunks ahead, and
        hands its result to ``encode_texts(..., encodings=)`` / ``encode_word_lists(...,
        encodings=)`` in the thread that does the rest (Python, which holds the GIL).

        Args:
            items: N texts, or N word lists (already checked, as for those methods).
            words: the items are word lists.

        Returns:
            The ``tokenizers`` encodings: one per text; one per non-empty word list.
        """
        if words:
            present = [word_list for word_list in _word_lists(items) if word_list]
            return self._backend.encode_batch(present, is_pretokenized=True, add_special_tokens=False) \
                if present else []
        texts = items if isinstance(items, list) else list(items)
        return self._backend.encode_batch_fast(texts, add_special_tokens=False) if texts else []

    def encode_word_lists(self, sentences: Sequence[Sequence[str]], encodings: list[Encoding] | None = None) -> Encoded:
        """Pre-split sentences (already checked: lists of non-empty str) as one ``Encoded``,
        in one ``encode_batch`` call (or from ``encodings``, that call's result made
        beforehand by ``backend_encodings(sentences, words=True)``). A word the normaliser
        empties becomes one ``[UNK]`` spanning the word; an empty list is an input without words."""
        sentences = _word_lists(sentences)
        texts = [" ".join(words) for words in sentences]
        counts = np.fromiter((len(words) for words in sentences), np.int64, len(sentences))
        word_ptr = _pointers(counts)
        # character offsets of the words in their joined text
        lengths = np.fromiter((len(word) for word in chain.from_iterable(sentences)), np.int64, int(word_ptr[-1]))
        ends = np.cumsum(lengths + 1) - 1
        starts = ends - lengths
        starts -= np.repeat(starts[word_ptr[:-1][counts > 0]], counts[counts > 0])
        word_chars = np.stack([starts, starts + lengths], 1)
        present = [n for n, words in enumerate(sentences) if words]
        if encodings is None:
            encodings = self.backend_encodings(sentences, words=True)
        elif len(encodings) != len(present):
            raise ValueError(f"encodings holds {len(encodings)} encodings for {len(present)} non-empty word lists")
        token_counts = np.zeros(len(sentences), np.int64)
        token_counts[present] = [len(encoding) for encoding in encodings]
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int64, int(token_counts.sum()))
        chars = _offsets(encodings, len(ids))
        # a pre-tokenised encoding's word ids and offsets are relative to its sentence / word
        local = np.fromiter(chain.from_iterable(e.word_ids for e in encodings), np.int64, len(ids))
        token_word = local + np.repeat(word_ptr[:-1], token_counts)
        chars += word_chars[token_word, :1]
        per_word = np.bincount(token_word, minlength=len(word_chars))
        if (per_word == 0).any():
            # emptied words: one [UNK] each, so that word (and label) counts never change
            slots = np.maximum(per_word, 1)
            old_first = _pointers(per_word)[:-1]
            where = _pointers(slots)[:-1][token_word] + np.arange(len(ids)) - old_first[token_word]
            new_ids = np.full(int(slots.sum()), self.unk_token_id, np.int64)
            new_chars = np.repeat(word_chars, slots, 0)
            new_ids[where], new_chars[where] = ids, chars
            ids, chars, per_word = new_ids, new_chars, slots
            token_counts = np.bincount(np.repeat(np.arange(len(sentences)), counts), weights=slots,
                                       minlength=len(sentences)).astype(np.int64)
        return Encoded(texts, ids, chars, _pointers(token_counts), word_chars, _pointers(per_word)[:-1], word_ptr,
                       self._id_tokens)

    def encode_text(self, text: str) -> WordPieces:
        """Tokenise raw text, splitting it into words first (see ``split_text``).

        Args:
            text: the text.

        Returns:
            WordPieces whose ``word_offsets``/``token_offsets`` index ``text``: ``text[a:b]`` of
            a word's offsets is the word. Runs that the normaliser empties (control or
            zero-width characters alone) are not words. The ids equal BERT's for the whole text.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: "empty text": nothing but whitespace / removed characters.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode_text takes a str, got {type(text).__name__}")
        pieces = self.encode_text_batch([text])[0]
        if not pieces.words:
            if not self.split_text(text):
                raise ValueError("empty text: nothing to tokenise" + (f" in {text!r}" if text else ""))
            raise ValueError(f"empty text: {text!r} has only characters that BERT's normaliser removes")
        return pieces

    def encode_text_batch(self, texts: Sequence[str]) -> list[WordPieces]:
        """``encode_text`` for many texts at once (one ``encode_batch`` call, parallel in Rust).

        Args:
            texts: N texts.

        Returns:
            N WordPieces, offsets into each text. Unlike ``encode_text``, a text without words
            (empty, whitespace, or only characters the normaliser removes) does not raise: its
            WordPieces has no words.

        Raises:
            TypeError: ``texts`` is a str, or holds a non-str (its index is named).
        """
        if isinstance(texts, str):
            raise TypeError("encode_text_batch takes a list of texts, not a str; use encode_text for one text")
        texts = list(texts)
        for n, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {n}: encode_text_batch takes str, got {type(text).__name__}")
        encoded = self.encode_texts(texts, offsets=True)
        return [encoded.pieces(n) for n in range(len(texts))]

    def encode_texts(self, texts: Sequence[str], offsets: bool = False,
                     encodings: list[Encoding] | None = None) -> Encoded:
        """Raw texts (already checked: str encodable as UTF-8) as one ``Encoded``.

        Each text is tokenised whole, all in one ``encode_batch`` call (so the ids are BERT's
        for the text); its words are ``split_text``'s, found by one pass over the character
        classes of all the texts (``_split_words``). A run of characters the normaliser removes
        has no sub-token and is no word.

        Each sub-token belongs to the word holding its BERT pre-token (the run of the text the
        pre-tokeniser made one piece). Without ``offsets`` the sub-tokens' character offsets
        are not computed (``encode_batch_fast``, a fifth of the tokeniser's time): a pre-token
        starts at each sub-token that is not a ``##`` continuation, and the pre-tokens' places
        in the text come from the normaliser's and pre-tokeniser's class of each character
        (asked of them once per character, as ``split_text`` does). A text with a character
        whose class that cannot tell, or whose pre-token count disagrees (never seen; checked
        for every text), is encoded with offsets instead.

        Args:
            texts: N texts.
            offsets: also the sub-tokens' character offsets (``Encoded.token_chars``).
            encodings: the ``encode_batch_fast`` call's result, made beforehand (in another
                thread) by ``backend_encodings(texts)``; None: made here. Not with ``offsets``.
        """
        texts = texts if isinstance(texts, list) else list(texts)
        if encodings is not None and offsets:
            raise ValueError("encodings (encode_batch_fast's, without offsets) cannot serve offsets=True")
        if encodings is not None and len(encodings) != len(texts):
            raise ValueError(f"encodings holds {len(encodings)} encodings for {len(texts)} texts")
        joined, base = join_texts(texts)  # one string for the word split and the pre-token classes
        word_item, word_chars = _split_words(joined, base)
        word_start = base[word_item] + word_chars[:, 0]  # in the texts joined by newlines
        if offsets or not texts:
            encodings = self._backend.encode_batch(texts, add_special_tokens=False) if texts else []
            token_counts = np.fromiter(map(len, encodings), np.int64, len(texts))
            ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int64, int(token_counts.sum()))
            chars = _offsets(encodings, len(ids))
            token_item = np.repeat(np.arange(len(texts)), token_counts)
            token_start = base[token_item] + chars[:, 0]
            token_end = base[token_item] + chars[:, 1]
        else:
            if encodings is None:
                encodings = self.backend_encodings(texts)
            token_counts = np.fromiter(map(len, encodings), np.int64, len(texts))
            ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int64, int(token_counts.sum()))
            token_item = np.repeat(np.arange(len(texts)), token_counts)
            located = self._pre_token_starts(joined, base, ids, token_item)
            if located is None:
                return self.encode_texts(texts, offsets=True)
            token_start, token_end, chars = located, None, None
        token_word = np.searchsorted(word_start, token_start, "right") - 1
        if len(ids) and ((token_word < 0).any() or (word_item[token_word] != token_item).any()
                         or (token_end is not None and (token_end > word_start[token_word]
                                                        + word_chars[token_word, 1] - word_chars[token_word, 0]).any())):
            # split_text's word boundaries are BERT pre-token boundaries by construction
            raise RuntimeError("a sub-token crosses a word boundary: tokenizers' BERT pre-tokeniser and "
                               "split_text disagree")
        per_word = np.bincount(token_word, minlength=len(word_chars))
        kept = per_word > 0  # a run of removed characters alone is no word
        word_item, word_chars, per_word = word_item[kept], word_chars[kept], per_word[kept]
        word_ptr = _pointers(np.bincount(word_item, minlength=len(texts)))
        return Encoded(texts, ids, chars, _pointers(token_counts), word_chars, _pointers(per_word)[:-1], word_ptr,
                       self._id_tokens, self._backend)

    def _pre_token_starts(self, joined: str, base: np.ndarray, ids: np.ndarray,
                          token_item: np.ndarray) -> np.ndarray | None:
        """Where each sub-token's BERT pre-token starts in ``joined`` (the texts joined by
        newlines, text n from ``base[n]``); None if a character's class is unknown or a text's
        pre-token count disagrees."""
        classes = np.frombuffer(joined.translate(self._bert_classes).encode("ascii"), np.uint8)
        if (classes == _MIXED).any():
            return None
        kept = np.flatnonzero(classes != _REMOVED)  # removed characters join what is around them
        kind = classes[kept]
        previous = np.empty_like(kind)
        previous[:1] = _SPACE
        previous[1:] = kind[:-1]
        starts = kept[(kind == _PIECE) | ((kind == _WORD) & (previous != _WORD))]  # shape: (P,)
        first = ~self._continuation[ids]  # a sub-token that starts a pre-token
        expected = np.bincount(np.searchsorted(base, starts, "right") - 1, minlength=len(base))
        if not np.array_equal(expected, np.bincount(token_item[first], minlength=len(base))):
            return None
        return starts[np.cumsum(first) - 1]

    def split_text(self, text: str) -> list[tuple[int, int]]:
        """Split raw text into CoNLL-like words; return their (start, end) character offsets.

        Words are runs of letters/digits/marks between whitespace and punctuation (BERT's own
        definitions, so every word boundary is also a BERT pre-token boundary and the ids equal
        those of the whole text). Kept together as in CoNLL-2003: letter abbreviations
        (``U.S.``), hyphenated words and numbers (``Jean-Pierre``, ``1996-08-22``), numbers
        with ``. , : /`` between digits (``3.5``, ``10:30``), inner apostrophes (``O'Neill``);
        a possessive ``'s`` is its own word; any other punctuation mark is a word of its own.

        Args:
            text: the text.

        Returns:
            (start, end) offsets of the words, in order.
        """
        return [(a, b) for a, b in _split_words(text, np.zeros(1, np.int64))[1].tolist()]

    # --- model input --------------------------------------------------------------------------------

    def batch(self, items: Sequence[WordPieces], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        """Pad WordPieces into model input, each row ``[CLS] ids [SEP] [PAD]...``.

        Args:
            items: B WordPieces (windows), each at most ``max_length - 2`` sub-tokens.
            pad_to_multiple_of: round the width T up to a multiple of this (e.g. 8 for tensor cores).

        Returns:
            ``input_ids``, ``attention_mask``, ``token_type_ids``: (B, T) int64 tensors.
        """
        if isinstance(items, WordPieces):
            raise TypeError("batch takes a list of WordPieces, not one WordPieces")
        if not items:
            raise ValueError("empty batch: no WordPieces given")
        if pad_to_multiple_of is not None and (not _is_int(pad_to_multiple_of) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        for n, item in enumerate(items):
            if not isinstance(item, WordPieces):
                raise TypeError(f"batch item {n} is {type(item).__name__}, not WordPieces")
            if len(item.input_ids) + 2 > self.max_length:
                raise ValueError(
                    f"batch item {n} has {len(item.input_ids)} sub-tokens, more than max_length - 2 = "
                    f"{self.max_length - 2}; split it with windows() first"
                )
        width = max(len(item.input_ids) for item in items) + 2
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            length = len(item.input_ids) + 2
            input_ids[row, :length] = torch.tensor([self.cls_token_id, *item.input_ids, self.sep_token_id])
            attention_mask[row, :length] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids),
        }

    def windows(self, pieces: WordPieces, max_length: int | None = None, stride: int | None = None) -> list[WordPieces]:
        """Split a long sequence into overlapping windows that fit the model.

        Windows start and end on word boundaries. Consecutive windows overlap by at least
        ``stride`` sub-tokens where whole words allow it, else by as many whole words as
        possible (never none while ``stride > 0`` and a window holds two words or more). A single
        word longer than a window (hundreds of punctuation pieces, say) is the exception: it is
        cut between sub-tokens, the next window restarting ``stride`` sub-tokens before the
        cut, so such a word appears partly in several windows; its prediction is then taken
        from a window holding its first sub-token (``merge_windows``).

        Args:
            pieces: the sequence (T sub-tokens).
            max_length: window size incl. [CLS]/[SEP]; None -> ``self.max_length``.
            stride: overlap in sub-tokens, ``0 <= stride < max_length - 2``; None -> a quarter
                of a window.

        Returns:
            ``[pieces]`` when it fits, else windows (WordPieces) with ``word_index`` /
            ``token_index`` set to the index of their first word / sub-token in ``pieces``'s
            original. Their ``word_offsets`` are those of whole words and offsets still index
            the original text.
        """
        max_length = self.max_length if max_length is None else max_length
        if not _is_int(max_length) or max_length < 3:
            raise ValueError(f"max_length must be an int >= 3 ([CLS] + one sub-token + [SEP]), got {max_length!r}")
        size = max_length - 2
        stride = default_stride(size) if stride is None else stride
        if not _is_int(stride) or not 0 <= stride < size:
            raise ValueError(f"stride must be an int in [0, {size}) for windows of {size} sub-tokens, got {stride!r}")
        total = len(pieces.input_ids)
        if total <= size:
            return [pieces]
        word_of_token = pieces.word_ids
        return [_slice(pieces, start, end, word_of_token)
                for start, end in window_bounds(pieces.word_starts, total, size, stride)]


def default_stride(size: int) -> int:
    """The overlap of consecutive windows of ``size`` sub-tokens when none is asked for: a quarter of a window."""
    return size // 4


def window_bounds(word_starts: Sequence[int], total: int, size: int, stride: int) -> list[tuple[int, int]]:
    """The sub-token ranges ``[start, end)`` of ``WordPieceTokenizer.windows`` (see there).

    Args:
        word_starts: the first sub-token of each word, ascending, from 0; total: sub-tokens;
        size: sub-tokens per window (positions minus [CLS]/[SEP]); stride: wanted overlap.
    """
    if total <= size:
        return [(0, total)]
    bounds = list(word_starts) + [total]  # sub-token indices where a word starts (and the end)
    result: list[tuple[int, int]] = []
    start = 0
    while True:
        limit = start + size
        if limit >= total:
            end = total
        else:
            end = bounds[bisect_right(bounds, limit) - 1]  # last word boundary that fits
            if end <= start:
                end = limit  # one word longer than a window: cut it
        result.append((start, end))
        if end == total:
            return result
        wanted = end - stride
        following = bounds[max(bisect_right(bounds, wanted) - 1, 0)]  # overlap >= stride, whole words
        if following <= start:
            # No whole-word start leaves that much overlap (long words): start at the
            # window's second word (less overlap, whole words; none if the window is one
            # word), or, after a cut inside a word, `stride` sub-tokens before the cut.
            second = bounds[bisect_right(bounds, start)]
            following = second if second <= end else wanted
        start = following


def _slice(pieces: WordPieces, start: int, end: int, word_of_token: list[int]) -> WordPieces:
    """The window of sub-tokens [start, end) of ``pieces``, with the words it touches."""
    first, last = word_of_token[start], word_of_token[end - 1]
    spans = [
        (max(a, start) - start, min(b, end) - start) for a, b in pieces.word_spans[first : last + 1]
    ]
    return WordPieces(
        words=pieces.words[first : last + 1],
        word_offsets=pieces.word_offsets[first : last + 1],
        tokens=pieces.tokens[start:end],
        input_ids=pieces.input_ids[start:end],
        word_spans=spans,
        token_offsets=pieces.token_offsets[start:end],
        text=pieces.text,
        word_index=pieces.word_index + first,
        token_index=pieces.token_index + start,
    )


# --- alignment ------------------------------------------------------------------------------------


def align_labels(
    pieces_or_words: WordPieces | Sequence[str],
    labels: Sequence[Any],
    continuation_label: Any = CONTINUATION_LABEL,
    *,
    tokenizer: WordPieceTokenizer | None = None,
) -> list[Any]:
    """Word labels -> sub-token labels: each word's first sub-token gets its label, the rest
    ``continuation_label`` (``"X"``; pass ``IGNORE_INDEX`` for label ids).

    Args:
        pieces_or_words: WordPieces, or the words (W,) together with ``tokenizer``.
        labels: one label per word (W,).
        continuation_label: the label of continuation sub-tokens.
        tokenizer: tokenises ``pieces_or_words`` when it is a word list.

    Returns:
        One label per sub-token (T,), without [CLS]/[SEP].

    Raises:
        ValueError: the number of labels differs from the number of words.
    """
    if isinstance(pieces_or_words, WordPieces):
        pieces = pieces_or_words
    elif tokenizer is not None:
        pieces = tokenizer.encode_words(pieces_or_words)
    else:
        raise TypeError(
            f"align_labels needs WordPieces, or words with tokenizer=..., got {type(pieces_or_words).__name__}"
        )
    labels = _as_list(labels, "labels")
    if len(labels) != len(pieces.words):
        raise ValueError(f"{len(labels)} labels for {len(pieces.words)} words: give exactly one label per word")
    aligned = [continuation_label] * len(pieces.input_ids)
    for (start, _), label in zip(pieces.word_spans, labels):
        aligned[start] = label
    return aligned


def merge_subtoken_predictions(pieces: WordPieces, predictions: Sequence[Any]) -> list[Any]:
    """Sub-token predictions -> one per word, read off each word's first sub-token.

    Args:
        pieces: the WordPieces (T sub-tokens, W words).
        predictions: one prediction per sub-token (T,), without [CLS]/[SEP] (a list or a 1-D tensor).

    Returns:
        One prediction per word (W,).
    """
    predictions = _as_list(predictions, "predictions")
    if len(predictions) != len(pieces.input_ids):
        raise ValueError(
            f"{len(predictions)} predictions for {len(pieces.input_ids)} sub-tokens: give one per sub-token, "
            "without [CLS]/[SEP]"
        )
    return [predictions[start] for start, _ in pieces.word_spans]


def merge_windows(
    pieces: WordPieces, windows: Sequence[WordPieces], window_predictions: Sequence[Sequence[Any]]
) -> list[Any]:
    """Word predictions of overlapping windows -> one prediction per word of ``pieces``.

    A word in several windows takes the prediction of the window where it sits farthest from
    a window edge that cuts the text (the start and end of the text itself cost no context),
    counted in sub-tokens; a window holding the word's first sub-token always wins over one
    holding only a later part of a cut word. Ties go to the earlier window.

    Args:
        pieces: the whole sequence (W words), as given to ``windows``.
        windows: its windows.
        window_predictions: for each window, one prediction per word of that window.

    Returns:
        One prediction per word (W,).
    """
    if len(windows) != len(window_predictions):
        raise ValueError(f"{len(window_predictions)} prediction lists for {len(windows)} windows")
    n_words, total = len(pieces.words), len(pieces.input_ids)
    best: list[Any] = [None] * n_words
    best_score: list[tuple | None] = [None] * n_words
    unbounded = total + 1  # distance to a text edge: more than any window edge
    for k, (window, predictions) in enumerate(zip(windows, window_predictions)):
        predictions = _as_list(predictions, f"window {k} predictions")
        if len(predictions) != len(window.words):
            raise ValueError(f"window {k} has {len(window.words)} words but {len(predictions)} predictions")
        start = window.token_index - pieces.token_index
        end = start + len(window.input_ids)
        first_word = window.word_index - pieces.word_index
        if start < 0 or end > total or first_word < 0 or first_word + len(window.words) > n_words:
            raise ValueError(f"window {k} (words {first_word}.., sub-tokens {start}..{end}) is not a window of pieces")
        for j, prediction in enumerate(predictions):
            w = first_word + j
            a, b = pieces.word_spans[w]
            left = max(a, start) - start if start > 0 else unbounded
            right = end - min(b, end) if end < total else unbounded
            score = (a >= start, min(left, right))
            if best_score[w] is None or score > best_score[w]:
                best_score[w], best[w] = score, prediction
    missing = [w for w, score in enumerate(best_score) if score is None]
    if missing:
        raise ValueError(f"{len(missing)} words are in no window (first: word {missing[0]})")
    return best


# --- helpers --------------------------------------------------------------------------------------

# split_text's word pattern, over the one-character-per-character stand-ins of _CharClasses:
# letter abbreviations (U.S.), a possessive 's, a word with inner hyphens / apostrophes and
# digit-separating . , : / (1996-08-22, O'Neill, 3.5), else one non-space character.
_RUN = "[a0sz]"
_WORD_PATTERN = re.compile(
    r"(?<![a0s])z*(?:[as]\.){2,}"
    rf"|'s(?!{_RUN})"
    rf"|{_RUN}+(?:(?:-|'(?!s(?!{_RUN}))|(?<=0)[.,:/](?=0)){_RUN}+)*"
    r"|[^ ]"
)
# The BERT normaliser's cleaning step alone (no casing/accents), and the pre-tokeniser, to
# classify characters exactly as BERT does.
_CLEANER = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
_PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()


class _CharClasses(dict):
    """ord -> ord of the character's class (``str.translate`` table), filled on first sight.

    ' ' whitespace; 'a' letter or other word character; 'z' a character the normaliser
    removes (control, zero-width: part of a word as in BERT, but never at its edges); 's' the
    letter s (for possessive 's); '0' decimal digit; the punctuation marks - . , : / ' as
    themselves (’ as '); '!' any other punctuation. Whitespace and punctuation are what BERT's
    normaliser and pre-tokeniser treat as such, found by asking them.
    """

    def __missing__(self, code: int) -> int:
        char = chr(code)
        cleaned = _CLEANER.normalize_str(char)
        if cleaned == "":
            cls = "z"
        elif cleaned.strip() == "":
            cls = " "
        elif len(_PRE_TOKENIZER.pre_tokenize_str("a" + char + "a")) == 3:
            cls = "'" if char == "\u2019" else char if char in "-.,:/'" else "!"
        elif unicodedata.category(char) == "Nd":
            cls = "0"
        elif char in "sS":
            cls = "s"
        else:
            cls = "a"
        self[code] = ord(cls)
        return ord(cls)


_CHAR_CLASSES = _CharClasses()

_REMOVED, _SPACE, _PIECE, _WORD, _MIXED = (ord(c) for c in "z pw?")


class _BertClasses(dict):
    """ord -> what one tokenizer's full BERT normaliser and pre-tokeniser make of the
    character (a ``str.translate`` table, filled on first sight): 'z' removed, ' ' whitespace,
    'p' a pre-token of its own (punctuation, a CJK character), 'w' part of a word, '?' none of
    these alone (it normalises to several kinds of character)."""

    def __init__(self, normalizer: Any):
        super().__init__()
        self._normalizer = normalizer

    def __missing__(self, code: int) -> int:
        normalized = self._normalizer.normalize_str(chr(code))
        core = normalized.strip()
        if normalized == "":
            cls = _REMOVED
        elif core == "":
            cls = _SPACE
        else:
            pieces = [piece for piece, _ in _PRE_TOKENIZER.pre_tokenize_str("a" + normalized + "a")]
            if pieces == ["a" + normalized + "a"]:
                cls = _WORD
            elif pieces == ["a", core, "a"] and len(core) == 1:
                cls = _PIECE
            else:
                cls = _MIXED
        self[code] = cls
        return cls


# the word pattern with a group: re.split then returns gaps and words alternately, as strings,
# whose lengths give the offsets without a match object per word
_WORD_SPLITTER = re.compile(f"({_WORD_PATTERN.pattern})")


def _split_words(joined: str, text_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``split_text`` of N texts at once: ``(V,)`` the text of each word, ``(V, 2)`` its
    (start, end) character offsets in that text.

    ``joined``: the texts joined by a newline (whitespace: no word crosses it), text n from
    ``text_starts[n]``. Their character classes are mapped in one ``str.translate``; one C
    loop (``nertron.kernels.text_cpu``) or, without a C compiler, one ``re.split``
    (``_split_shadow``) finds every word.
    """
    shadow = joined.translate(_CHAR_CLASSES)
    if text_cpu.available():  # the same split in C, without the GIL
        starts, ends = text_cpu.split_words(shadow.encode("ascii"))
    else:
        starts, ends = _split_shadow(shadow)
    item = np.searchsorted(text_starts, starts, "right") - 1
    offset = text_starts[item]
    return item, np.stack([starts - offset, ends - offset], 1)


def _split_shadow(shadow: str) -> tuple[np.ndarray, np.ndarray]:
    """``(V,)`` starts and ends of the words of ``shadow`` (``_CHAR_CLASSES`` stand-ins):
    ``_WORD_PATTERN``'s matches, each without the removed characters at its edges."""
    parts = _WORD_SPLITTER.split(shadow)
    bounds = np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)))
    starts, ends = bounds[::2][:-1], bounds[1::2]
    classes = np.frombuffer(shadow.encode("ascii"), np.uint8)
    removed = ord("z")
    if len(starts) and ((classes[starts] == removed) | (classes[ends - 1] == removed)).any():
        # characters the normaliser removes belong to no word's edge (nor form a word alone)
        keep = np.ones(len(starts), bool)
        for k in np.flatnonzero((classes[starts] == removed) | (classes[ends - 1] == removed)).tolist():
            word = parts[2 * k + 1]
            core = word.strip("z")
            keep[k] = bool(core)
            starts[k] += len(word) - len(word.lstrip("z"))
            ends[k] = starts[k] + len(core)
        starts, ends = starts[keep], ends[keep]
    return starts, ends


def join_texts(texts: Sequence[str]) -> tuple[str, np.ndarray]:
    """The texts joined by newlines (one string for a whole chunk's character passes: a
    newline is whitespace, so no word crosses it) and ``(N,)`` int64 where text n starts in it."""
    return "\n".join(texts), _pointers(np.fromiter(map(len, texts), np.int64, len(texts)) + 1)[:-1]


def _word_lists(sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each sentence as a list (as ``tokenizers`` takes pre-split words)."""
    return [words if isinstance(words, list) else list(words) for words in sentences]


def _pointers(counts: np.ndarray) -> np.ndarray:
    """``(N + 1,)`` int64 prefix sums of ``counts``, from 0: where each of N runs starts (and the end)."""
    pointers = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=pointers[1:])
    return pointers


def _offsets(encodings: Sequence[Encoding], total: int) -> np.ndarray:
    """``(total, 2)`` int64: the character offsets of all the encodings' sub-tokens."""
    flat = chain.from_iterable(chain.from_iterable(encoding.offsets for encoding in encodings))
    return np.fromiter(flat, np.int64, 2 * total).reshape(total, 2)


def check_words(words: Any, where: str = "", allow_empty: bool = False) -> Sequence[str]:
    """``words`` if it is a sequence of non-empty str; else TypeError / ValueError prefixed by ``where``.

    Args:
        words: the words to check.
        where: a prefix naming the input in messages (``"sentence 3: "``).
        allow_empty: accept an empty sequence (else "empty text").
    """
    if isinstance(words, str):
        raise TypeError(f"{where}encode_words takes a list of words, not a str; use encode_text for raw text")
    if not isinstance(words, Sequence):
        raise TypeError(f"{where}encode_words takes a list of str, got {type(words).__name__}")
    if len(words) == 0 and not allow_empty:
        raise ValueError(f"{where}empty text: no words to tokenise")
    for i, word in enumerate(words):
        if not isinstance(word, str):
            raise TypeError(f"{where}word {i} is {type(word).__name__}, not str: {word!r:.80}")
        if not word:
            raise ValueError(f"{where}word {i} is an empty string")
    return words


def _as_list(values: Any, name: str) -> list:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence, not a str")
    if hasattr(values, "tolist"):  # tensors and arrays: python scalars, not 0-d tensors
        values = values.tolist()
    if not isinstance(values, (list, tuple, Sequence)):
        raise TypeError(f"{name} must be a sequence, got {type(values).__name__}")
    return list(values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_vocab(path: Path) -> dict[str, int]:
    """``vocab.txt``: one token a line, id = line number (as BERT's ``load_vocab``)."""
    try:
        with open(path, encoding="utf-8") as lines:
            tokens = [line.rstrip("\n") for line in lines]
    except FileNotFoundError:
        raise FileNotFoundError(f"vocab file {path} not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"vocab file {path} is not UTF-8 text: {error}") from None
    if not tokens:
        raise ValueError(f"vocab file {path} is empty")
    # A repeated token keeps its last line's id, as transformers' load_vocab does.
    return {token: index for index, token in enumerate(tokens)}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _vocab_is_cased(vocab: Mapping[str, int]) -> bool:
    """A cased vocab has pieces that lower-casing changes; special tokens ([CLS], [unused0]) aside."""
    return any(token != token.lower() for token in vocab if not (token.startswith("[") and token.endswith("]")))
