"""``Tagger``: named entities of raw text (or pre-split words) with a trained nertron model.

    >>> from nertron import Tagger
    >>> tagger = Tagger.load()                    # the default model shipped with nertron
    >>> tagger.tag("Angela Merkel met Emmanuel Macron in Paris.")
    [Entity(text='Angela Merkel', label='PER', start=0, end=13, score=0.99...), ...]

Pipeline, per chunk of input (``tag_iter`` reads any iterable in chunks of
``DEFAULT_CHUNK_SIZE`` texts), on the batching path shared with training
(``nertron.engine.batching``):

1. the chunk is tokenised in one call (``WordPieceTokenizer.encode_texts``: one
   ``encode_batch_fast``; words by ``split_text``'s rules in one regex pass; each sub-token
   assigned to its word on flat arrays, ``Encoded``); the ``tokenizers`` call runs in a
   worker thread, chunks ahead (``threads``), the rest in the calling thread;
2. a text longer than the model's positions is cut into overlapping windows on word
   boundaries (``batching.units``, the bounds of ``WordPieceTokenizer.windows``): nothing is
   truncated;
3. the windows are sorted by length and packed into batches under a padded-token budget
   (``batch_tokens``; ``batching.bucket`` / ``collate_units``, no loop over rows); each batch
   runs BERT + the head, is decoded on the device (Viterbi for CRF models, greedy for NMT
   models), and its entity boundaries and their scores are found there too, in fixed shapes,
   with one packed copy back per batch (on CUDA queued while the host reads the previous one);
4. windows are merged (``batching.merge``: each word takes the tag of the window where it
   has most context) and results come back in input order.

Entities
--------
Tags are read into entities with the CoNLL ``conlleval`` chunk rules (``schemes.spans``), so
IOB2, IOB1 and BIOES models all work. An ``Entity`` has ``start``/``end`` character offsets
into the input text (``text[start:end] == entity.text``); ``tag_words`` gives word indices
instead (``end`` exclusive). ``score`` is the model's probability of the entity's tags:

* CRF models: the exact CRF probability that words ``i..j`` carry the decoded tags,
  ``P(y_i..y_j | x)``, the tags outside the entity summed over (forward-backward, fp32, with
  the same constrained transitions as the decoder; ``CRF.span_log_probs``);
* NMT models: the product of the decoder's softmax probabilities of the entity's tags.

In a text cut into windows, an entity is scored in the window that holds it whole and
decided its first word (else the first window holding it whole; else, for an entity longer
than the window overlap, the window of its first word, over the part inside that window).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Set, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from nertron.engine import batching
from nertron.engine.files import open_atomic
from nertron.engine.models import NerModel
from nertron.engine.progress import Progress, shown as progress_shown
from nertron.engine.tokenizer import Encoded, WordPieceTokenizer
from nertron.tags import TagError, end_of_chunk, normalize_scheme, split_tag, start_of_chunk

__all__ = ["Entity", "TaggedText", "Tagger", "DEFAULT_MODEL_DIR", "InputFileError", "read_lines", "count_lines",
           "file_progress", "open_output", "format_record", "check_input", "check_output", "resolve_device",
           "resolve_dtype"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "resources" / "default_model"
DEFAULT_BATCH_TOKENS = 4096  # padded sub-tokens per batch
DEFAULT_CHUNK_SIZE = 256  # texts read, prepared and batched at a time (small enough to pipeline)
MAX_CHUNK_CHARS = 4_000_000  # ... or fewer, once their characters reach this
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Entity:
    """A named entity found by ``Tagger``.

    Attributes:
        text: the entity's text: ``input[start:end]`` for ``tag``; for ``tag_words`` its words
            joined by single spaces.
        label: the entity type (``PER``, ``LOC``, ...), the tag without its ``B-``/``I-`` prefix.
        start, end: character offsets into the input text (``tag``, ``tag_iter``,
            ``tag_file``), or word indices (``tag_words``); ``end`` is exclusive.
        score: the model's probability of the entity's tags, in (0, 1] (see the module doc).
    """

    text: str
    label: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        """The entity as a Hugging Face token-classification pipeline reports a grouped entity
        (``aggregation_strategy="simple"`` and the like): ``{"entity_group": label, "score":
        numpy.float32, "word": text, "start": start, "end": end}``. (``tag_file``'s JSON lines
        keep nertron's own field names: ``dataclasses.asdict(entity)``.)"""
        return {"entity_group": self.label, "score": np.float32(self.score), "word": self.text,
                "start": self.start, "end": self.end}


class TaggedText:
    """One input's full result (``Tagger.tag_lines``): its words, one tag name per word, its
    entities, and (``word_probs=True``) the probability of each word's tag.

    ``words``, ``tags`` and ``probs`` are built when first read, so a caller that wants only
    the entities does not pay for them.
    """

    __slots__ = ("entities", "_words", "_tags", "_probs", "_source")

    def __init__(self, words: list[str], tags: list[str], entities: list[Entity], probs: list[float] | None = None):
        self.entities = entities
        self._words, self._tags, self._probs = words, tags, probs
        self._source = None

    @classmethod
    def _lazy(cls, entities: list[Entity], source: tuple) -> "TaggedText":
        """``source``: ``(encoded, n, tag ids (W,) array, label names, word probs (W,) array or None)``."""
        result = cls.__new__(cls)
        result.entities, result._source = entities, source
        return result

    def _load(self) -> None:
        encoded, n, tags, names, probs = self._source
        self._words = encoded.words(n)
        self._tags = [names[t] for t in tags.tolist()]
        self._probs = None if probs is None else probs.tolist()
        self._source = None

    @property
    def words(self) -> list[str]:
        if self._source is not None:
            self._load()
        return self._words

    @property
    def tags(self) -> list[str]:
        if self._source is not None:
            self._load()
        return self._tags

    @property
    def probs(self) -> list[float] | None:
        """Per word, the model's probability of its tag (CRF: the marginal ``P(y_w = tag | x)``;
        NMT: the decoder's softmax probability), when asked for (``word_probs=True``); else None."""
        if self._source is not None:
            self._load()
        return self._probs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaggedText):
            return NotImplemented
        return (self.words, self.tags, self.entities, self.probs) == (other.words, other.tags, other.entities,
                                                                       other.probs)

    def __repr__(self) -> str:
        probs = "" if self.probs is None else f", probs={self.probs!r}"
        return f"TaggedText(words={self.words!r}, tags={self.tags!r}, entities={self.entities!r}{probs})"


@dataclass
class _Chunk:
    """One chunk of input on its way through the pipeline: prepared on the host (``_prepare``,
    from the tokenizer's encodings made in a worker thread), run batch by batch (``_launch`` /
    ``_land``), then turned into results (``_results``)."""

    items: list  # the texts (or word lists)
    words: bool
    encoded: Encoded
    windows: batching.Units
    groups: list[np.ndarray]  # the window indices of each batch
    batches: list[dict[str, Tensor]]  # collated (pinned on CUDA)
    multi: np.ndarray  # (U,) bool: the window belongs to an input of several windows
    outputs: list["_Output | None"]


@dataclass
class _Output:
    """One batch's results on the host: ``(B, W)`` arrays, -1 / 0 at padding."""

    tags: np.ndarray  # decoded tag ids
    starts: np.ndarray  # bool: an entity starts at this word
    ends: np.ndarray  # the last word of the entity starting here
    probs: np.ndarray  # the probability of the entity starting here
    word_probs: np.ndarray | None  # the probability of each word's tag (``word_probs=True``)
    scores: dict[int, Tensor]  # row -> (W, K) scores, for the windows of multi-window inputs


@dataclass
class _Pending:
    """A launched batch: its packed results on their way to the host."""

    packed: Tensor  # (planes, B, W) fp32 on the host (pinned on CUDA, filled when ``event`` is reached)
    event: Any  # torch.cuda.Event, or None on the CPU
    scores: dict[int, Tensor]
    word_probs: bool


def resolve_device(device: str | int | torch.device | None) -> torch.device:
    """The torch device a ``device`` argument names, checked before anything heavy is loaded.

    None: CUDA when available, else the CPU. An int follows Hugging Face pipelines: ``-1`` is
    the CPU, ``N >= 0`` is ``cuda:N``. A str or ``torch.device``: ``cpu``, ``cuda``,
    ``cuda:N``, ... .

    Raises:
        ValueError: an unknown device, or a CUDA (or MPS) device this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool) or not isinstance(device, (int, str, torch.device)):
        raise ValueError(f"device must be a str (cpu, cuda, cuda:N), an int (-1: cpu, N: cuda:N) or a torch.device, "
                         f"not {type(device).__name__}: {device!r:.80}")
    if isinstance(device, int):
        if device < -1:
            raise ValueError(f"device {device}: an int device is -1 (the CPU) or a CUDA device index N >= 0")
        device = "cpu" if device == -1 else f"cuda:{device}"
    if isinstance(device, str):
        try:
            device = torch.device(device.strip())
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} needs CUDA, which this machine does not have "
                             "(no GPU, or a CPU-only torch build); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device} needs Apple MPS, which this machine does not have; use cpu")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {str(device)!r}; expected cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """BERT's compute dtype for ``dtype`` on ``device``: None is bf16 on CUDA, fp32 elsewhere;
    ``fp32``/``bf16``/``fp16`` (and torch dtypes); low precision only on CUDA (a ValueError)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of fp32, bf16, fp16")
        dtype = _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be fp32, bf16 or fp16, got {dtype}")
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"{str(dtype).replace('torch.', '')} inference needs a CUDA device; "
                         f"on {device.type} use fp32 (the default there)")
    return dtype


def _check_iterable(items: Any, method: str, accepted: str) -> None:
    """TypeError unless ``items`` is an ordered iterable: not None or a number, not bytes, not
    a mapping (whose keys would be tagged), not a set (whose order is arbitrary)."""
    what = type(items).__name__
    if isinstance(items, (bytes, bytearray, memoryview)):
        raise TypeError(f"{method} takes {accepted}, not {what}: decode it first (e.g. data.decode('utf-8'))")
    if isinstance(items, Mapping):
        raise TypeError(f"{method} takes {accepted}, not a mapping ({what}), whose keys would be tagged: "
                        "pass list(d.values()) or list(d) explicitly")
    if isinstance(items, Set):
        raise TypeError(f"{method} takes {accepted}, not a {what}, whose order is arbitrary (the results "
                        "could not be matched to the texts): pass a list, e.g. sorted(s)")
    try:
        iter(items)
    except TypeError:
        raise TypeError(f"{method} takes {accepted}, not {what}: {items!r:.80}") from None


def _check_budget(batch_tokens: Any, chunk_size: Any) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if batch_tokens is not None and (not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool)
                                     or batch_tokens < 1):
        raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")


class _ChunkRules:
    """The conlleval chunk rules as lookup tables over tag ids, for span finding on the device.

    Row/column ``K`` is a virtual ``O`` (before the first and after the last word); labels
    outside the scheme (``<pad>``) read as ``O``.
    """

    def __init__(self, labels: Sequence[str], scheme: str):
        scheme = normalize_scheme(scheme)
        parsed = []
        for label in labels:
            try:
                parsed.append(split_tag(label, frozenset("BIES") if scheme == "BIOES" else frozenset("BI")))
            except TagError:
                parsed.append(("O", ""))
        parsed.append(("O", ""))
        size = len(parsed)
        # shape: (K + 1, K + 1); [prev, cur]
        self.starts = torch.tensor([[start_of_chunk(p, c, pt, ct) for c, ct in parsed] for p, pt in parsed])
        self.ends = torch.tensor([[end_of_chunk(p, c, pt, ct) for c, ct in parsed] for p, pt in parsed])
        self.types = [t for _, t in parsed]
        self.outside = size - 1
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def spans(self, tags: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Entities of a batch of tag sequences.

        Args:
            tags: ``(B, W)`` int64 tag ids; mask: ``(B, W)`` bool prefix mask.

        Returns:
            ``spans (N, 3)`` int64 rows ``(b, first, last)`` (inclusive), row-major order, and
            ``labels (N,)``, the tag id of each entity's first word.
        """
        first, last, end = self.boundaries(tags, mask)  # shape: (B, W) each
        begin = first.nonzero()  # shape: (N, 2)
        if begin.shape[0] != int(last.sum()):  # the rules pair every start with an end
            raise RuntimeError(f"chunk rules found {begin.shape[0]} entity starts but {int(last.sum())} ends")
        b, i = begin.unbind(1)
        return torch.stack([b, i, end[b, i]], 1), tags[b, i]

    def boundaries(self, tags: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Entity boundaries of a batch without a host sync (fixed shapes, for the device).

        Args:
            tags: ``(B, W)`` int64 tag ids; mask: ``(B, W)`` bool prefix mask.

        Returns:
            ``first (B, W)`` bool (an entity starts here), ``last (B, W)`` bool (one ends here)
            and ``end (B, W)`` int64, the first ``last`` position at or after each word (``W``
            if none): the last word of the entity that starts there.
        """
        starts, ends = self._tables(tags.device)
        B, W = tags.shape
        y = tags.masked_fill(~mask, self.outside)  # shape: (B, W)
        boundary = y.new_full((B, 1), self.outside)
        prev = torch.cat([boundary, y[:, :-1]], 1)
        nxt = torch.cat([y[:, 1:], boundary], 1)
        first = starts[prev, y] & mask
        last = ends[y, nxt] & mask
        position = torch.arange(W, device=tags.device).expand(B, W)
        after = torch.where(last, position, torch.full_like(position, W))
        end = after.flip(1).cummin(1).values.flip(1)  # nearest end at or after each word
        return first, last, end

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._on:
            self._on[device] = (self.starts.to(device), self.ends.to(device))
        return self._on[device]


class Tagger:
    """Tags named entities with a trained ``NerModel``.

    Build with ``Tagger.load(path)``, or ``Tagger(model, tokenizer)`` around a model in memory.

    Args:
        model: a ``NerModel`` (CRF or NMT decoder); put in eval mode and on ``device``.
        tokenizer: its BERT checkpoint's ``WordPieceTokenizer`` (None: read from
            ``model.config.checkpoint_dir``).
        device: default CUDA when available, else CPU; an int as in Hugging Face pipelines
            (``-1``: the CPU, ``N``: ``cuda:N``); a CUDA device without CUDA is a ValueError.
        dtype: BERT's compute dtype: default bf16 on CUDA, fp32 on CPU; fp16/bf16 need CUDA
            (a ValueError otherwise). The head's weights stay fp32 (autocast on CUDA).
        batch_tokens: padded sub-tokens per batch (a window longer than that runs alone).
        threads: host worker threads that run the tokenizer (the ``tokenizers`` library's
            call, which releases the GIL) on the next chunks of input, ``threads + 1`` chunks
            ahead, while the calling thread does the rest (words, windows, batches, the model's
            launches, results: Python, in one thread, so that no two threads wait for each
            other's GIL); 0 tokenises in the calling thread too; None: 1 when the process may
            use two CPUs or more (its CPU affinity), else 0. The tokenizer's call itself uses
            the ``tokenizers`` thread pool (``RAYON_NUM_THREADS``, ``TOKENIZERS_PARALLELISM``).
        max_batch_size: at most this many windows per batch (None: ``batch_tokens`` alone decides).
    """

    def __init__(self, model: NerModel, tokenizer: WordPieceTokenizer | None = None,
                 device: str | int | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS, threads: int | None = None,
                 max_batch_size: int | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if not isinstance(batch_tokens, int) or isinstance(batch_tokens, bool) or batch_tokens < 1:
            raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
        if threads is None:
            threads = 1 if _usable_cpus() > 1 else 0
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
            raise ValueError(f"threads must be an int >= 0 (host worker threads) or None, got {threads!r}")
        if max_batch_size is not None and (not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool)
                                           or max_batch_size < 1):
            raise ValueError(f"max_batch_size must be a positive int or None, got {max_batch_size!r}")
        self.batch_tokens = batch_tokens
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.casing: str = getattr(model.config, "casing", "none")
        labels = model.config.labels
        if labels is None:
            raise ValueError("the model has no label names (config.labels): save it with its labels to tag text")
        self.labels: list[str] = list(labels)
        self.scheme = normalize_scheme(model.config.tag_scheme)
        model = model.to(device=self.device, dtype=torch.float32)
        model.features.bert.to(self.dtype)
        self.model = model.eval()
        if tokenizer is None:
            tokenizer = WordPieceTokenizer.from_pretrained(
                model.config.checkpoint_dir, max_length=model.features.bert.config.max_position_embeddings)
        self.tokenizer = tokenizer
        self._rules = _ChunkRules(self.labels, self.scheme)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | int | torch.device | None = None,
             dtype: str | torch.dtype | None = None, checkpoint: str | Path | None = None,
             batch_tokens: int = DEFAULT_BATCH_TOKENS, threads: int | None = None,
             max_batch_size: int | None = None) -> "Tagger":
        """Load a model saved by ``NerModel.save`` / ``nertron train``.

        Args:
            path: the model directory (``model.json``, ``head.safetensors``); None: the default
                model shipped inside nertron (``nertron/resources/default_model``).
            device, dtype, batch_tokens, threads, max_batch_size: see ``Tagger``.
            checkpoint: the BERT checkpoint directory, if it moved since training.

        Raises:
            FileNotFoundError: no model there (for the default: none is installed).
            ValueError: a low-precision dtype on CPU, an unknown dtype, an unknown device or a
                CUDA device on a machine without one.
        """
        device_ = resolve_device(device)
        resolve_dtype(dtype, device_)  # fail before loading anything
        if path is None:
            if not (DEFAULT_MODEL_DIR / "model.json").is_file():
                raise FileNotFoundError(
                    f"no default model is installed with nertron (expected one in {DEFAULT_MODEL_DIR}); "
                    "pass the directory of a trained model: Tagger.load(path) / nertron tag --model DIR")
            path = DEFAULT_MODEL_DIR
        path = Path(path)
        if not (path / "model.json").is_file():
            raise FileNotFoundError(f"no nertron model in {path} (model.json missing); "
                                    "give a directory written by `nertron train` or NerModel.save")
        model = NerModel.load(path, checkpoint_dir=checkpoint)
        return cls(model, device=device_, dtype=dtype, batch_tokens=batch_tokens, threads=threads,
                   max_batch_size=max_batch_size)

    def __repr__(self) -> str:
        return (f"Tagger({type(self.model).__name__}, {len(self.labels)} labels ({self.scheme}), "
                f"device={self.device}, dtype={str(self.dtype).replace('torch.', '')}, "
                f"batch_tokens={self.batch_tokens})")

    # --- public API ---------------------------------------------------------------------------

    def tag(self, texts: str | Sequence[str]) -> list[Entity] | list[list[Entity]]:
        """Entities of a text, or of each text of a list.

        Args:
            texts: a str, or a list of str (any length; long texts are windowed).

        Returns:
            For a str, its entities; for a list, one entity list per text, in input order.
            Entities are in text order; ``text[e.start:e.end] == e.text``. An empty (or
            whitespace-only) text has none.

        Raises:
            TypeError: ``texts`` neither a str nor an ordered iterable of str (None, a number,
                bytes, a dict, a set: the type is named), or an item that is not a str (its
                index and type are named).
            ValueError: a str with lone surrogates (not encodable as UTF-8), naming its index.
            RuntimeError: the iterable itself raised, naming the item (the error as ``__cause__``).
        """
        if isinstance(texts, str):
            return self.tag([texts])[0]
        _check_iterable(texts, "tag", "a str, or a list (or other iterable) of str")
        return list(self.tag_iter(texts))

    def tag_words(self, sentences: Sequence[Sequence[str]]) -> list[list[Entity]]:
        """Entities of pre-split sentences (e.g. CoNLL words).

        Args:
            sentences: N word lists (non-empty str words; an empty list has no entities).

        Returns:
            N entity lists. Here ``start``/``end`` are **word indices** (``end`` exclusive:
            the entity is ``words[start:end]``) and ``text`` is those words joined by spaces.
        """
        if isinstance(sentences, str):
            raise TypeError("tag_words takes a list of word lists, not a str; use tag() for raw text")
        _check_iterable(sentences, "tag_words", "a list (or other iterable) of word lists")
        return [result.entities for result in self._stream(sentences, words=True)]

    def tag_iter(self, texts: Iterable[str], batch_tokens: int | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[list[Entity]]:
        """Entities of each text of an iterable, lazily, in input order.

        The iterable is read ``chunk_size`` texts at a time (fewer once they hold
        ``MAX_CHUNK_CHARS`` characters), so memory stays bounded for an input of any length;
        each chunk is sorted by length and batched by ``batch_tokens``.

        Args:
            texts: an iterable of str (a generator, a file's lines, ...).
            batch_tokens: padded sub-tokens per batch (default: the tagger's).
            chunk_size: texts held at a time.

        Yields:
            One entity list per text (as ``tag``).

        Raises:
            TypeError: ``texts`` is a str (use ``tag``), bytes, a dict, a set or not iterable
                (at the call); an item that is not a str (when it is reached).
            RuntimeError: the iterable raised while it was read: "the input iterable raised at
                item N: ...", the original error as ``__cause__``; the results of the items
                before it are yielded first.
        """
        if isinstance(texts, str):
            raise TypeError("tag_iter takes an iterable of texts, not a str (it would tag each character); "
                            "use tag(text), or tag_iter([text])")
        _check_iterable(texts, "tag_iter", "an iterable of str")
        _check_budget(batch_tokens, chunk_size)
        return (result.entities for result in
                self._stream(texts, words=False, batch_tokens=batch_tokens, chunk_size=chunk_size))

    def tag_file(self, in_path: str | Path, out_path: str | Path, format: str = "jsonl",
                 batch_tokens: int | None = None, progress: bool | None = None) -> int:
        """Tag a text file, one text per line, streaming.

        The input is checked before the output is touched, and the output is written to a
        temporary file beside it that replaces it only when every line is tagged: an existing
        output is replaced all at once on success, and left as it was when the input is bad
        (missing, invalid UTF-8 on any line, ...) or tagging fails. An output that is the
        input (the same path, a symlink or a hard link to it) is refused.

        Args:
            in_path: UTF-8 input, one text per line (``-``: standard input).
            out_path: output file (``-``: standard output).
            format: ``jsonl``: one JSON object per input line, ``{"text": ..., "entities":
                [{"text", "label", "start", "end", "score"}, ...]}``; ``conll``: one
                ``word<TAB>tag`` line per word, a blank line after each text (so an empty
                text is a lone blank line).
            batch_tokens: padded sub-tokens per batch (default: the tagger's).
            progress: a progress bar on stderr (texts of the file's total, texts/s,
                sub-tokens/s; never on stdout): None (default) when stderr is a terminal,
                True always, False never.

        Returns:
            The number of texts (lines) tagged.

        Raises:
            ValueError: invalid UTF-8, naming the file and line; an unknown format; an
                output that is the input, a directory or in a missing directory; an input
                that is not a regular file (a directory, a named pipe).
            FileNotFoundError: no input file.
            PermissionError: an unreadable input.
        """
        if format not in ("jsonl", "conll"):
            raise ValueError(f"unknown output format {format!r}; expected jsonl or conll")
        lines = read_lines(in_path)  # checks the input now, before the output is touched
        check_output(out_path, in_path)
        bar = file_progress(in_path, progress)
        count = 0
        with open_output(out_path) as out:
            for text, result in self.tag_lines(lines, batch_tokens, progress=bar):
                out.write(format_record(text, result, format))
                count += 1
        return count

    def tag_lines(self, lines: Iterable[str], batch_tokens: int | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, word_probs: bool = False,
                  progress: bool | Progress = False) -> Iterator[tuple[str, TaggedText]]:
        """Each text with its full result (words, tags, entities), lazily, in input order.

        What ``tag_file``, ``nertron tag`` and the distributed tagger write (``format_record``).

        Args:
            lines: an iterable of str (e.g. ``read_lines(path)``).
            batch_tokens, chunk_size: as for ``tag_iter``.
            word_probs: also the probability of each word's tag (``TaggedText.probs``): for
                CRF models the marginal ``P(y_w = tag | x)`` (forward-backward, fp32, the
                decoder's constrained transitions), for NMT models the decoder's softmax
                probability. Costs one forward-backward per batch.
            progress: a progress bar on stderr (texts, texts/s, sub-tokens/s; a total when
                ``lines`` has a length), or a ``Progress`` to update; off by default.

        Yields:
            ``(text, TaggedText)`` pairs, one per input text.
        """
        if isinstance(lines, str):
            raise TypeError("tag_lines takes an iterable of texts, not a str")
        _check_iterable(lines, "tag_lines", "an iterable of str")
        _check_budget(batch_tokens, chunk_size)
        if not isinstance(progress, Progress):
            progress = Progress(total=len(lines) if isinstance(lines, Sized) else None, enabled=bool(progress))
        return self._lines(lines, batch_tokens, chunk_size, bool(word_probs), progress)

    def _lines(self, lines: Iterable[str], batch_tokens: int | None, chunk_size: int, word_probs: bool,
               progress: Progress) -> Iterator[tuple[str, TaggedText]]:
        pending: deque[str] = deque()  # the lines read but not yet returned (at most a chunk)

        def remember(stream: Iterable[str]) -> Iterator[str]:
            for line in stream:
                pending.append(line)
                yield line

        with progress:
            for result in self._stream(remember(lines), words=False, batch_tokens=batch_tokens,
                                       chunk_size=chunk_size, word_probs=word_probs,
                                       progress=progress if progress.enabled else None):
                yield pending.popleft(), result

    # --- internals ------------------------------------------------------------------------------

    def _stream(self, items: Iterable, words: bool, batch_tokens: int | None = None,
                chunk_size: int = DEFAULT_CHUNK_SIZE, word_probs: bool = False,
                progress: Progress | None = None) -> Iterator[TaggedText]:
        """Results of ``items``, in order, through the pipeline.

        Chunks are read here (in the caller's thread: any iterable works), and the worker
        threads run the tokenizer's own call on them (``backend_encodings``: Rust, without the
        GIL), ``threads + 1`` chunks ahead. Everything else that runs Python (words, windows,
        batches, results) runs here, in one thread: two Python threads would each wait for the
        GIL the other holds, and the worker's tokenizer call waits for it only at its start and
        end. A chunk's batches are all queued on the device before the previous chunk's
        results are read, so the device works while the host prepares the next chunk and builds
        the results of the last (on the CPU the model runs at ``_launch``: nothing to overlap).
        An error of the iterable (wrapped in a RuntimeError naming the item; ``InputFileError``
        from ``read_lines`` as it is) or of an item's check is raised after the results of the
        items before it."""
        _check_budget(batch_tokens, chunk_size)
        budget = self.batch_tokens if batch_tokens is None else batch_tokens
        reader = _read_chunks(items, words, chunk_size)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nertron-tokenizer") if self.threads > 0 else None
        # chunks in the tokenizer ahead of the one being prepared; without workers, none
        # (the next chunk is read once this one is done)
        depth = self.threads + 1 if pool is not None else 1
        ahead: deque[tuple[list, Any, BaseException | None]] = deque()  # chunks read: items, encodings, error
        read_all = False

        def read_ahead() -> None:
            """Read chunks (and start tokenising them) until ``depth`` are ahead."""
            nonlocal read_all
            while not read_all and len(ahead) < depth:
                try:
                    chunk, error = next(reader)
                except StopIteration:
                    read_all = True
                    return
                read_all = error is not None  # nothing after an error is read
                future = pool.submit(self.tokenizer.backend_encodings, chunk, words) if pool is not None else None
                ahead.append((chunk, future, error))

        launched: tuple[_Chunk, list[_Pending | None]] | None = None  # on the device, not read back yet
        error: BaseException | None = None
        try:
            read_ahead()
            while ahead:
                chunk_items, future, error = ahead.popleft()
                if pool is not None:
                    read_ahead()  # the next chunks are tokenised while this one is prepared and run
                chunk = self._prepare(chunk_items, words, budget, None if future is None else future.result())
                pending: list[_Pending | None] = []
                for b in range(len(chunk.batches)):
                    pending.append(self._launch(chunk, b, word_probs))
                    if pending[b].event is None:  # the CPU ran it already: nothing to overlap
                        self._land(chunk, b, pending[b])
                        pending[b] = None
                if launched is not None:  # the previous chunk ran while this one was prepared
                    yield from self._landed(*launched, word_probs, progress)
                    launched = None
                if any(launch is not None for launch in pending):
                    launched = (chunk, pending)
                else:  # all run already (CPU), or no batches (no words): its results now
                    yield from self._finished(chunk, word_probs, progress)
                read_ahead()
            if launched is not None:
                yield from self._landed(*launched, word_probs, progress)
            if error is not None:
                raise error
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _landed(self, chunk: _Chunk, pending: list[_Pending | None], word_probs: bool,
                progress: Progress | None) -> list[TaggedText]:
        """Wait for the chunk's batches still on the device; its results."""
        for b, launch in enumerate(pending):
            if launch is not None:
                self._land(chunk, b, launch)
        return self._finished(chunk, word_probs, progress)

    def _finished(self, chunk: _Chunk, word_probs: bool, progress: Progress | None) -> list[TaggedText]:
        results = self._results(chunk, word_probs)
        if progress is not None:
            progress.update(texts=len(chunk.items), tokens=int(chunk.encoded.token_ptr[-1]))
        return results

    def _prepare(self, items: list, words: bool, budget: int, encodings: list | None = None) -> _Chunk:
        """Host work before the device: tokenise the chunk in one call (or from ``encodings``,
        ``backend_encodings``' result), cut long inputs into windows, sort the windows into
        batches under ``budget`` and pad them (on flat arrays)."""
        tokenizer = self.tokenizer
        encoded = tokenizer.encode_word_lists(items, encodings) if words else tokenizer.encode_texts(items, encodings=encodings)
        windows = batching.units(tokenizer, encoded)
        per_item = np.bincount(windows.item, minlength=len(items))
        multi = per_item[windows.item] > 1
        groups = [np.asarray(group, np.int64)
                  for group in batching.bucket(windows.lengths.tolist(), budget, self.max_batch_size)]
        pin = self.device.type == "cuda"
        batches = []
        for group in groups:
            batch = batching.collate_units(tokenizer, encoded, windows, group, casing=self.casing)
            batches.append({key: value.pin_memory() for key, value in batch.items()} if pin else batch)
        return _Chunk(items, words, encoded, windows, groups, batches, multi, [None] * len(groups))

    @torch.inference_mode()
    def _launch(self, chunk: _Chunk, b: int, word_probs: bool) -> _Pending:
        """Queue batch ``b`` of ``chunk`` on the device: BERT + head + decode, the entity
        boundaries and the probability of each entity, all of fixed shapes (no host sync), and
        the copy of their packed results back to the host."""
        batch = {key: value.to(self.device, non_blocking=True) for key, value in chunk.batches[b].items()}
        mask = batch["word_mask"]  # shape: (B, W)
        autocast = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            out = self.model(batch)
        tags = out.tags  # shape: (B, W), -1 at padding
        scores = self._score_tensor(out.emissions)  # shape: (B, W, K) fp32
        first, last, end = self._rules.boundaries(tags, mask)
        B, W = tags.shape
        # a span (b, i, end[b, i]) at every entity start, (b, 0, 0) elsewhere (valid, unread):
        # a fixed number of spans, so nothing waits for the device to count them
        rows = torch.arange(B, device=tags.device).repeat_interleave(W)
        position = torch.arange(W, device=tags.device).expand(B, W)
        begin = torch.where(first, position, 0).flatten()
        stop = torch.where(first, end.clamp(max=W - 1), 0).flatten()
        log_probs = self._span_log_probs(scores, mask, tags, torch.stack([rows, begin, stop], 1))
        probs = torch.where(first, log_probs.view(B, W).exp().clamp(max=1.0), 0.0)
        planes = [tags.float(), first.float(), last.float(), end.float(), probs]
        if word_probs:
            planes.append(self._word_probs(scores, tags, mask))
        packed = torch.stack(planes)  # shape: (planes, B, W), one copy back
        kept = {}
        multi_rows = np.flatnonzero(chunk.multi[chunk.groups[b]])
        for row in multi_rows.tolist():
            kept[row] = scores[row]
        if self.device.type == "cuda":
            packed = packed.to("cpu", non_blocking=True)
            kept = {row: value.to("cpu", non_blocking=True) for row, value in kept.items()}
            event = torch.cuda.Event()
            event.record()
            return _Pending(packed, event, kept, word_probs)
        return _Pending(packed, None, kept, word_probs)

    def _land(self, chunk: _Chunk, b: int, pending: _Pending) -> None:
        """Wait for batch ``b``'s results and keep them as host arrays."""
        if pending.event is not None:
            pending.event.synchronize()
        planes = pending.packed.numpy()
        first = planes[1] > 0
        if int(first.sum()) != int((planes[2] > 0).sum()):  # the rules pair every start with an end
            raise RuntimeError(f"chunk rules found {int(first.sum())} entity starts but {int((planes[2] > 0).sum())} ends")
        chunk.outputs[b] = _Output(planes[0].astype(np.int64), first, planes[3].astype(np.int64), planes[4],
                                   planes[5] if pending.word_probs else None, pending.scores)

    def _word_probs(self, scores: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """``(B, W)`` fp32 probability of each word's decoded tag: the CRF marginal (with the
        decoder's constrained transitions), or the NMT decoder's softmax probability; 0 at padding."""
        if self.model.decoder == "crf":
            probs = self.model.crf.marginals(scores, mask)  # shape: (B, W, K)
        else:
            probs = scores.exp()
        picked = probs.gather(2, tags.clamp(min=0).unsqueeze(2)).squeeze(2)
        # exp(alpha + beta - log Z) in fp32 can pass 1 by an ulp or so: a probability is at most 1
        return torch.where(mask, picked.clamp(max=1.0), 0.0)

    def _score_tensor(self, emissions: Tensor) -> Tensor:
        """What spans are scored from: CRF emissions, or the NMT decoder's log-probabilities (fp32)."""
        if self.model.decoder == "crf":
            return emissions.float()
        return torch.log_softmax(emissions.float(), -1)

    def _span_log_probs(self, scores: Tensor, mask: Tensor, tags: Tensor, spans: Tensor) -> Tensor:
        """``(N,)`` log-probabilities of the spans' tags (see the module doc)."""
        if self.model.decoder == "crf":
            return self.model.crf.span_log_probs(scores, tags, spans, mask)
        # NMT: the sum of the decoded tags' log-probabilities over the span, from prefix sums
        picked = scores.gather(2, tags.clamp(min=0).unsqueeze(2)).squeeze(2)  # shape: (B, W)
        picked = torch.where(mask, picked, 0.0)
        total = torch.nn.functional.pad(picked.cumsum(1), (1, 0))  # shape: (B, W + 1)
        b, i, j = spans.unbind(1)
        return total[b, j + 1] - total[b, i]

    def _results(self, chunk: _Chunk, word_probs: bool) -> list[TaggedText]:
        """The chunk's results in input order, from its batches' host arrays: entities of
        single-window inputs are gathered for the whole chunk at once; multi-window inputs are
        merged (``_merge``)."""
        encoded, windows = chunk.encoded, chunk.windows
        n_items = len(chunk.items)
        # where each window's row is: batch, row
        unit_batch = np.zeros(len(windows), np.int64)
        unit_row = np.zeros(len(windows), np.int64)
        for b, group in enumerate(chunk.groups):
            unit_batch[group] = b
            unit_row[group] = np.arange(len(group))
        entity_parts = []
        for b, (group, output) in enumerate(zip(chunk.groups, chunk.outputs)):
            row, first = np.nonzero(output.starts)
            keep = ~chunk.multi[group[row]]
            row, first = row[keep], first[keep]
            entity_parts.append((windows.item[group[row]], first, output.ends[row, first],
                                 output.tags[row, first], output.probs[row, first]))
        merged: dict[int, TaggedText] = {}
        for n in np.unique(windows.item[chunk.multi]).tolist():
            units = np.flatnonzero(windows.item == n)
            merged[n] = self._merge(chunk, n, units[np.argsort(windows.number[units])], unit_batch, unit_row)
        if entity_parts:
            item, first, last, label, prob = (np.concatenate(part) for part in zip(*entity_parts))
        else:
            item = first = last = label = np.zeros(0, np.int64)
            prob = np.zeros(0)
        order = np.lexsort((first, item))
        item, first, last, label, prob = item[order], first[order], last[order], label[order], prob[order]
        entities = self._entities(chunk, item, first, last, label, prob)
        bounds = np.searchsorted(item, np.arange(n_items + 1)).tolist()
        # each single-window input's row
        single = np.full(n_items, -1, np.int64)
        sole = ~chunk.multi
        single[windows.item[sole]] = np.flatnonzero(sole)
        names = self.labels
        outputs = chunk.outputs
        batch_of, row_of, widths = unit_batch.tolist(), unit_row.tolist(), encoded.word_counts.tolist()
        results = []
        for n, u in enumerate(single.tolist()):
            if u >= 0:
                output = outputs[batch_of[u]]
                row, width = row_of[u], widths[n]
                probs = None if output.word_probs is None else output.word_probs[row, :width]
                results.append(TaggedText._lazy(entities[bounds[n]:bounds[n + 1]],
                                                (encoded, n, output.tags[row, :width], names, probs)))
            elif n in merged:
                results.append(merged[n])
            else:
                results.append(TaggedText([], [], [], [] if word_probs else None))
        return results

    def _entities(self, chunk: _Chunk, item: np.ndarray, first: np.ndarray, last: np.ndarray,
                  label: np.ndarray, prob: np.ndarray) -> list[Entity]:
        """``Entity`` objects for entities given as arrays (input, first and last word within
        the input, tag id, probability): offsets looked up for all at once."""
        types = self._rules.types
        if chunk.words:
            return [Entity(" ".join(chunk.items[n][i:j + 1]), types[t], i, j + 1, p)
                    for n, i, j, t, p in zip(item.tolist(), first.tolist(), last.tolist(), label.tolist(),
                                             prob.tolist())]
        base = chunk.encoded.word_ptr[item]
        starts = chunk.encoded.word_chars[base + first, 0].tolist()
        ends = chunk.encoded.word_chars[base + last, 1].tolist()
        texts = chunk.items
        return [Entity(texts[n][a:e], types[t], a, e, p)
                for n, a, e, t, p in zip(item.tolist(), starts, ends, label.tolist(), prob.tolist())]

    def _merge(self, chunk: _Chunk, n: int, units: np.ndarray, unit_batch: np.ndarray,
               unit_row: np.ndarray) -> TaggedText:
        """Merge the windows of a long input (``units``, in order); score each entity in the
        window that owns it (see the module doc)."""
        pieces = chunk.encoded.pieces(n)
        windows = self.tokenizer.windows(pieces)
        if len(windows) != len(units):
            raise RuntimeError(f"input {n}: {len(units)} windows batched but windows() gives {len(windows)}")
        window_tags, window_probs, window_scores = [], [], []
        for u, window in zip(units.tolist(), windows):
            output = chunk.outputs[unit_batch[u]]
            row, width = int(unit_row[u]), len(window.words)
            window_tags.append(output.tags[row, :width].tolist())
            window_probs.append(None if output.word_probs is None else output.word_probs[row, :width].tolist())
            window_scores.append(output.scores[row][:width].cpu())
        merged = batching.merge(pieces, windows, [[(tag, k, None if probs is None else probs[j])
                                                   for j, tag in enumerate(tags)]
                                                  for k, (tags, probs) in enumerate(zip(window_tags, window_probs))])
        tags = [tag for tag, _, _ in merged]
        owner = [k for _, k, _ in merged]
        word_probs = None if window_probs[0] is None else [p for _, _, p in merged]
        tag_tensor = torch.tensor([tags])
        spans, label_ids = self._rules.spans(tag_tensor, torch.ones_like(tag_tensor, dtype=torch.bool))
        # choose a window for each entity and put its span in that window's coordinates
        rows: dict[int, list[tuple[int, int, int]]] = {}
        assigned = []
        for _, first, last in spans.tolist():
            k = owner[first]
            holds = [m for m, w in enumerate(windows)
                     if w.word_index - pieces.word_index <= first and last < w.word_index - pieces.word_index + len(w.words)]
            if holds:
                k = k if k in holds else holds[0]
            offset = windows[k].word_index - pieces.word_index
            local_last = min(last, offset + len(windows[k].words) - 1)
            rows.setdefault(k, []).append((first - offset, local_last - offset, len(assigned)))
            assigned.append(k)
        probs = [0.0] * len(assigned)
        if assigned:
            order = sorted(rows)
            width = max(len(windows[k].words) for k in order)
            K = window_scores[0].shape[1]
            scores = torch.zeros(len(order), width, K)
            mask = torch.zeros(len(order), width, dtype=torch.bool)
            local_tags = torch.full((len(order), width), -1, dtype=torch.long)
            span_rows, targets = [], []
            for row, k in enumerate(order):
                count = len(windows[k].words)
                offset = windows[k].word_index - pieces.word_index
                scores[row, :count] = window_scores[k]
                mask[row, :count] = True
                local_tags[row, :count] = torch.tensor(tags[offset:offset + count])
                for first, last, slot in rows[k]:
                    span_rows.append((row, first, last))
                    targets.append(slot)
            device = self.device
            with torch.inference_mode():
                log_probs = self._span_log_probs(scores.to(device), mask.to(device), local_tags.to(device),
                                                 torch.tensor(span_rows, device=device))
            for slot, prob in zip(targets, log_probs.exp().clamp(max=1.0).cpu().tolist()):
                probs[slot] = prob
        spans = spans.numpy()
        entities = self._entities(chunk, np.full(len(spans), n, np.int64), spans[:, 1], spans[:, 2],
                                  label_ids.numpy(), np.array(probs))
        names = self.labels
        return TaggedText(list(pieces.words), [names[t] for t in tags], entities, word_probs)


def _usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _read_chunks(items: Iterable, words: bool, chunk_size: int) -> Iterator[tuple[list, BaseException | None]]:
    """``items`` in chunks of ``chunk_size`` (fewer once they hold ``MAX_CHUNK_CHARS``
    characters), each item checked; a chunk cut short by an error comes with the error (the
    iterable's, wrapped in a RuntimeError naming the item; ``InputFileError`` as it is; an
    item's TypeError / ValueError), and is the last."""
    check = batching.check_words_item if words else batching.check_text
    iterator = iter(items)
    index = 0
    while True:
        chunk: list = []
        chars = 0
        error: BaseException | None = None
        exhausted = False
        while len(chunk) < chunk_size and chars < MAX_CHUNK_CHARS:
            try:
                item = next(iterator)
            except StopIteration:
                exhausted = True
                break
            except InputFileError as err:
                error = err
                break
            except Exception as err:
                error = RuntimeError(f"the input iterable raised at item {index} ({type(err).__name__}): {err}")
                error.__cause__ = err
                break
            try:
                item = check(index, item)
            except (TypeError, ValueError) as err:
                error = err
                break
            chunk.append(item)
            index += 1
            chars += len(item) if not words else sum(map(len, item))
        if chunk or error is not None:
            yield chunk, error
        if error is not None or exhausted:
            return


# --- file helpers (shared with nertron.engine.distributed) ---------------------------------------


class InputFileError(ValueError):
    """A bad input file (``read_lines``): not valid UTF-8, naming the file and line."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_input(path: str | Path, stdin: bool = True) -> None:
    """Check an input before any output is opened: a regular, readable file (or ``-``,
    standard input, where ``stdin`` allows it).

    Raises:
        FileNotFoundError: no such file. PermissionError: not readable.
        ValueError: a directory, a named pipe or another non-regular file; ``-`` where a
            file is needed.
    """
    if str(path) == "-":
        if not stdin:
            raise ValueError("'-' (standard input) cannot be used here: give an input file")
        return
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no input file {path}") from None
    except OSError as err:
        raise ValueError(f"cannot read the input {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"the input {path} is {_kind(info.st_mode)}; give a regular text file"
                         + (" (or '-' for standard input)" if stdin else ""))
    if not os.access(path, os.R_OK):
        raise PermissionError(f"the input {path} is not readable (permission denied)")


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | Path, input_path: str | Path | None = None) -> None:
    """Check an output before it is written: ``-`` (standard output), or a file that is not
    the input (same path, a symlink or a hard link to it), not a directory or other
    non-regular file, in a directory that exists.

    Raises:
        ValueError: naming the problem.
    """
    if str(path) == "-":
        return
    if input_path is not None and str(input_path) != "-" and _same_file(path, input_path):
        raise ValueError(f"the output {path} is the input file {input_path}: writing it would erase the texts; "
                         "give another output file")
    target = os.path.realpath(path)
    if os.path.lexists(target):
        mode = os.stat(target).st_mode if os.path.exists(target) else 0
        if stat.S_ISDIR(mode):
            raise ValueError(f"the output {path} is a directory; give a file name (e.g. {Path(path) / 'out.jsonl'})")
        if not stat.S_ISREG(mode):
            raise ValueError(f"the output {path} is {_kind(mode)}; give a regular file, or '-' for standard output")
    parent = os.path.dirname(target) or "."
    if not os.path.isdir(parent):
        raise ValueError(f"cannot write {path}: the directory {os.path.dirname(str(path)) or '.'} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: the directory {parent} is not writable (permission denied)")


def read_lines(path: str | Path, stride: int = 1, offset: int = 0) -> Iterator[str]:
    """The lines of a UTF-8 text file (``-``: standard input), without line ends, streaming.

    The file is checked (``check_input``) when ``read_lines`` is called, not when the first
    line is read.

    Args:
        path: the file.
        stride, offset: yield only lines ``offset``, ``offset + stride``, ... (for sharding;
            the other lines are skipped undecoded).

    Raises:
        InputFileError (a ValueError): a line that is not valid UTF-8, naming the file and line number.
        FileNotFoundError, PermissionError, ValueError: see ``check_input``.
    """
    check_input(path)
    return _read_lines(path, stride, offset)


def count_lines(path: str | Path) -> int | None:
    """The number of lines ``read_lines`` will give for ``path`` (None for standard input),
    counted in binary blocks: a progress bar's total."""
    if str(path) == "-":
        return None
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def file_progress(path: str | Path, enabled: bool | None, stride: int = 1, offset: int = 0,
                  desc: str = "tagging") -> Progress:
    """A progress bar over the lines ``read_lines(path, stride, offset)`` gives, their count
    (``count_lines``, read only when the bar is shown) as its total; ``enabled`` as for
    ``Progress`` (None: when stderr is a terminal)."""
    show = progress_shown(enabled)
    total = count_lines(path) if show else None
    if total is not None:
        total = max(0, -(-(total - offset) // stride))  # lines offset, offset + stride, ...
    return Progress(total=total, enabled=show, desc=desc)


def _read_lines(path: str | Path, stride: int, offset: int) -> Iterator[str]:
    stream = sys.stdin.buffer if str(path) == "-" else None
    handle = stream if stream is not None else open(path, "rb")
    try:
        for number, raw in enumerate(handle):
            if number % stride != offset:
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputFileError(f"{path}: line {number + 1}: not valid UTF-8 ({err.reason} at byte "
                                     f"{err.start} of the line: {raw[err.start:err.start + 4]!r})") from None
            if line.endswith("\n"):
                line = line[:-2] if line.endswith("\r\n") else line[:-1]
            yield line
    finally:
        if stream is None:
            handle.close()


def open_output(path: str | Path) -> contextlib.AbstractContextManager[IO[str]]:
    """``with open_output(path) as out``: a UTF-8 text file to write (``\\n`` line ends) that
    replaces ``path`` only when the block ends without an error (``files.open_atomic``; a
    symlink's target is replaced, the link kept), or for ``-`` standard output (left open
    when the ``with`` block ends, only flushed)."""
    if str(path) == "-":
        return _Unclosed(sys.stdout)
    return open_atomic(os.path.realpath(path))


class _Unclosed(io.TextIOBase):
    """Standard output in a ``with`` block that must not close it."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def close(self) -> None:
        self._stream.flush()


_JSON = json.JSONEncoder(ensure_ascii=False)


def format_record(text: str, result: TaggedText, format: str) -> str:
    """One input's output record: a JSON line (``jsonl``) or a CoNLL block (``conll``)."""
    if format == "jsonl":  # the dicts built directly: dataclasses.asdict deep-copies, 3x slower
        entities = [{"text": e.text, "label": e.label, "start": e.start, "end": e.end, "score": e.score}
                    for e in result.entities]
        return _JSON.encode({"text": text, "entities": entities}) + "\n"
    if format == "conll":
        return "".join(f"{word}\t{tag}\n" for word, tag in zip(result.words, result.tags)) + "\n"
    raise ValueError(f"unknown output format {format!r}; expected jsonl or conll")
