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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tokenizers import Encoding, Tokenizer, models, normalizers, pre_tokenizers

# label id of continuation sub-tokens and padding (cross_entropy's default ignore_index), defined once
from nertron.engine.data.vocab import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "CONTINUATION_LABEL",
    "SPECIAL_TOKENS",
    "WordPieces",
    "WordPieceTokenizer",
    "align_labels",
    "merge_subtoken_predictions",
    "merge_windows",
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
        self._char_classes: dict[str, str] = {}  # cache for split_text

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
        encoding = self._backend.encode(list(words), is_pretokenized=True, add_special_tokens=False)
        return self._assemble(list(words), _joined_offsets(words), " ".join(words), encoding)

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
        if not sentences:
            return []
        encodings = self._backend.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
        return [
            self._assemble(words, _joined_offsets(words), " ".join(words), encoding)
            for words, encoding in zip(sentences, encodings)
        ]

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
        splits = [self.split_text(text) for text in texts]
        word_lists = [[text[a:b] for a, b in offsets] for text, offsets in zip(texts, splits)]
        present = [n for n, words in enumerate(word_lists) if words]
        encodings = self._backend.encode_batch([word_lists[n] for n in present], is_pretokenized=True,
                                               add_special_tokens=False) if present else []
        result = [WordPieces([], [], [], [], [], [], text) for text in texts]
        for n, encoding in zip(present, encodings):
            result[n] = self._assemble(word_lists[n], splits[n], texts[n], encoding, drop_empty=True)
        return result

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
        shadow = "".join(self._char_class(char) for char in text)
        offsets = []
        for match in _WORD_PATTERN.finditer(shadow):
            # Characters the normaliser removes belong to no word's edge (nor form a word).
            start, end = match.span()
            core = match.group().strip("z")
            if core:
                start += len(match.group()) - len(match.group().lstrip("z"))
                offsets.append((start, start + len(core)))
        return offsets

    def _char_class(self, char: str) -> str:
        """One ASCII stand-in per character, so that one regex splits text of any script.

        ' ' whitespace; 'a' letter or other word character; 'z' a character the normaliser
        removes (control, zero-width: part of a word as in BERT, but never at its edges);
        's' the letter s (for possessive 's);
        '0' decimal digit; the punctuation marks - . , : / ' as themselves (’ as '); '!' any
        other punctuation. Whitespace and punctuation are what BERT's normaliser and
        pre-tokeniser treat as such, found by asking them (cached per character).
        """
        cls = self._char_classes.get(char)
        if cls is not None:
            return cls
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
        self._char_classes[char] = cls
        return cls

    def _assemble(
        self,
        words: list[str],
        word_offsets: list[tuple[int, int]],
        text: str,
        encoding: Encoding,
        drop_empty: bool = False,
    ) -> WordPieces:
        """Group an ``is_pretokenized`` encoding's sub-tokens by word (``word_ids``).

        Offsets of a pre-tokenised encoding are relative to each word; they are shifted to
        ``text``. A word with no sub-token gets one [UNK] (or is dropped with ``drop_empty``).
        """
        ids, tokens, offsets, word_ids = encoding.ids, encoding.tokens, encoding.offsets, encoding.word_ids
        out_words, out_offsets, out_ids, out_tokens, out_token_offsets, spans = [], [], [], [], [], []
        j, n = 0, len(ids)
        for w, (word, (start, end)) in enumerate(zip(words, word_offsets)):
            first = len(out_ids)
            while j < n and word_ids[j] == w:
                a, b = offsets[j]
                out_ids.append(ids[j])
                out_tokens.append(tokens[j])
                out_token_offsets.append((start + a, start + b))
                j += 1
            if len(out_ids) == first:
                if drop_empty:
                    continue
                # Emptied by the normaliser: keep the word (labels stay aligned) as one [UNK].
                out_ids.append(self.unk_token_id)
                out_tokens.append(UNK)
                out_token_offsets.append((start, end))
            out_words.append(word)
            out_offsets.append((start, end))
            spans.append((first, len(out_ids)))
        if j != n:  # word_ids not grouped in order: a tokenizers behaviour this module relies on changed
            raise RuntimeError(f"tokenizers returned sub-tokens out of word order ({n - j} left unassigned)")
        return WordPieces(out_words, out_offsets, out_tokens, out_ids, spans, out_token_offsets, text)

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
        stride = size // 4 if stride is None else stride
        if not _is_int(stride) or not 0 <= stride < size:
            raise ValueError(f"stride must be an int in [0, {size}) for windows of {size} sub-tokens, got {stride!r}")
        total = len(pieces.input_ids)
        if total <= size:
            return [pieces]
        bounds = pieces.word_starts + [total]  # sub-token indices where a word starts (and the end)
        word_of_token = pieces.word_ids
        result: list[WordPieces] = []
        start = 0
        while True:
            limit = start + size
            if limit >= total:
                end = total
            else:
                end = bounds[bisect_right(bounds, limit) - 1]  # last word boundary that fits
                if end <= start:
                    end = limit  # one word longer than a window: cut it
            result.append(_slice(pieces, start, end, word_of_token))
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

# split_text's word pattern, over the one-character-per-character stand-ins of _char_class:
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


def _joined_offsets(words: Sequence[str]) -> list[tuple[int, int]]:
    """Character offsets of the words in ``" ".join(words)``."""
    offsets, position = [], 0
    for word in words:
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    return offsets


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
