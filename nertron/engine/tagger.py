"""``Tagger``: named entities of raw text (or pre-split words) with a trained nertron model.

    >>> from nertron import Tagger
    >>> tagger = Tagger.load()                    # the default model shipped with nertron
    >>> tagger.tag("Angela Merkel met Emmanuel Macron in Paris.")
    [Entity(text='Angela Merkel', label='PER', start=0, end=13, score=0.99...), ...]

Pipeline, per chunk of input (``tag_iter`` reads any iterable in bounded chunks), on the
batching path shared with training (``nertron.engine.batching``):

1. texts are split into words with the tokenizer's pre-tokenisation (``split_text``), which
   keeps each word's character offsets, and tokenised in one batched call (``batching.encode``);
2. a text longer than the model's positions is cut into overlapping windows on word
   boundaries (``WordPieceTokenizer.windows``): nothing is truncated;
3. the windows are sorted by length and packed into batches under a padded-token budget
   (``batch_tokens``; ``batching.bucket`` / ``collate``); each batch runs BERT + the head, is decoded on the device (Viterbi
   for CRF models, greedy for NMT models), and its entity spans and their scores are found
   there too, with one transfer back per batch;
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
from collections.abc import Mapping, Set
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from nertron.engine import batching
from nertron.engine.files import open_atomic
from nertron.engine.models import NerModel
from nertron.engine.tokenizer import WordPieces, WordPieceTokenizer
from nertron.tags import TagError, end_of_chunk, normalize_scheme, split_tag, start_of_chunk

__all__ = ["Entity", "TaggedText", "Tagger", "DEFAULT_MODEL_DIR", "InputFileError", "read_lines", "open_output",
           "format_record", "check_input", "check_output", "resolve_device"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "resources" / "default_model"
DEFAULT_BATCH_TOKENS = 4096  # padded sub-tokens per batch
DEFAULT_CHUNK_SIZE = 1024  # texts read (and held) at a time by tag_iter
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
        return asdict(self)


@dataclass
class TaggedText:
    """One input's full result (``Tagger.tag_lines``): its words, one tag name per word, its entities."""

    words: list[str]
    tags: list[str]
    entities: list[Entity]


@dataclass
class _Unit:
    """One window of one input, waiting for (or holding) its predictions."""

    item: int  # position of its input in the chunk
    number: int  # window number within the input
    window: WordPieces
    tags: list[int] | None = None
    entities: list[tuple[int, int, int, float]] | None = None  # (label id, first, last word, score)
    scores: Tensor | None = None  # (W, K) kept for multi-window inputs: emissions (CRF) or log-probs (NMT)


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


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
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
        if tags.device not in self._on:
            self._on[tags.device] = (self.starts.to(tags.device), self.ends.to(tags.device))
        starts, ends = self._on[tags.device]
        B = tags.shape[0]
        # shape: (B, W)
        y = tags.masked_fill(~mask, self.outside)
        boundary = y.new_full((B, 1), self.outside)
        prev = torch.cat([boundary, y[:, :-1]], 1)
        nxt = torch.cat([y[:, 1:], boundary], 1)
        first = starts[prev, y] & mask  # shape: (B, W)
        last = ends[y, nxt] & mask
        begin = first.nonzero()  # shape: (N, 2)
        finish = last.nonzero()
        if begin.shape[0] != finish.shape[0]:  # the rules pair every start with an end
            raise RuntimeError(f"chunk rules found {begin.shape[0]} entity starts but {finish.shape[0]} ends")
        spans = torch.cat([begin, finish[:, 1:]], 1)
        return spans, y[begin[:, 0], begin[:, 1]]


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
    """

    def __init__(self, model: NerModel, tokenizer: WordPieceTokenizer | None = None,
                 device: str | int | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS):
        self.device = resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        if not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
        self.batch_tokens = batch_tokens
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
             batch_tokens: int = DEFAULT_BATCH_TOKENS) -> "Tagger":
        """Load a model saved by ``NerModel.save`` / ``nertron train``.

        Args:
            path: the model directory (``model.json``, ``head.safetensors``); None: the default
                model shipped inside nertron (``nertron/resources/default_model``).
            device, dtype, batch_tokens: see ``Tagger``.
            checkpoint: the BERT checkpoint directory, if it moved since training.

        Raises:
            FileNotFoundError: no model there (for the default: none is installed).
            ValueError: a low-precision dtype on CPU, an unknown dtype, an unknown device or a
                CUDA device on a machine without one.
        """
        device_ = resolve_device(device)
        _resolve_dtype(dtype, device_)  # fail before loading anything
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
        return cls(model, device=device_, dtype=dtype, batch_tokens=batch_tokens)

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
                 batch_tokens: int | None = None) -> int:
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
        count = 0
        with open_output(out_path) as out:
            for text, result in self.tag_lines(lines, batch_tokens):
                out.write(format_record(text, result, format))
                count += 1
        return count

    def tag_lines(self, lines: Iterable[str], batch_tokens: int | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[tuple[str, TaggedText]]:
        """Each text with its full result (words, tags, entities), lazily, in input order.

        What ``tag_file``, ``nertron tag`` and the distributed tagger write (``format_record``).

        Args:
            lines: an iterable of str (e.g. ``read_lines(path)``).
            batch_tokens, chunk_size: as for ``tag_iter``.

        Yields:
            ``(text, TaggedText)`` pairs, one per input text.
        """
        if isinstance(lines, str):
            raise TypeError("tag_lines takes an iterable of texts, not a str")
        _check_iterable(lines, "tag_lines", "an iterable of str")
        _check_budget(batch_tokens, chunk_size)
        return self._lines(lines, batch_tokens, chunk_size)

    def _lines(self, lines: Iterable[str], batch_tokens: int | None,
               chunk_size: int) -> Iterator[tuple[str, TaggedText]]:
        pending: deque[str] = deque()  # the lines read but not yet returned (at most a chunk)

        def remember(stream: Iterable[str]) -> Iterator[str]:
            for line in stream:
                pending.append(line)
                yield line

        for result in self._stream(remember(lines), words=False, batch_tokens=batch_tokens, chunk_size=chunk_size):
            yield pending.popleft(), result

    # --- internals ------------------------------------------------------------------------------

    def _stream(self, items: Iterable, words: bool, batch_tokens: int | None = None,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[TaggedText]:
        """Results of ``items`` chunk by chunk. An error of the iterable (wrapped in a
        RuntimeError naming the item; ``InputFileError`` from ``read_lines`` as it is) or of an
        item's check is raised after the results of the items before it were yielded."""
        _check_budget(batch_tokens, chunk_size)
        budget = self.batch_tokens if batch_tokens is None else batch_tokens
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
                    error = RuntimeError(f"the input iterable raised at item {index} "
                                         f"({type(err).__name__}): {err}")
                    error.__cause__ = err
                    break
                try:
                    item = check(index, item)
                except (TypeError, ValueError) as err:
                    error = err
                    break
                chunk.append(item)
                index += 1
                chars += len(item)
            if chunk:
                yield from self._tag_chunk(chunk, words, budget)
            if error is not None:
                raise error
            if exhausted:
                return

    def _tag_chunk(self, chunk: list, words: bool, budget: int) -> list[TaggedText]:
        pieces = batching.encode(self.tokenizer, chunk, words)
        units = [_Unit(window.item, window.number, window.pieces)
                 for window in batching.split_windows(self.tokenizer, pieces)]
        windows_of: list[list[_Unit]] = [[] for _ in chunk]
        for unit in units:
            windows_of[unit.item].append(unit)
        multi = {n for n, group in enumerate(windows_of) if len(group) > 1}
        for group in batching.bucket([len(unit.window.input_ids) for unit in units], budget):
            self._run_batch([units[u] for u in group], multi)
        results = []
        for n, item in enumerate(chunk):
            p = pieces[n]
            if p is None:
                results.append(TaggedText([], [], []))
            elif n in multi:
                results.append(self._merge(p, windows_of[n], item, words))
            else:
                unit = windows_of[n][0]
                results.append(self._result(p, unit.tags, unit.entities, item, words))
        return results

    @torch.inference_mode()
    def _run_batch(self, units: list[_Unit], multi: set[int]) -> None:
        """Run one batch; store each window's word tags and its entities with scores."""
        batch = batching.collate(self.tokenizer, [unit.window for unit in units])
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        mask = batch["word_mask"]  # shape: (B, W)
        autocast = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            out = self.model(batch)
        tags = out.tags  # shape: (B, W), -1 at padding
        scores = self._score_tensor(out.emissions)  # shape: (B, W, K) fp32
        spans, label_ids = self._rules.spans(tags, mask)
        log_probs = self._span_log_probs(scores, mask, tags, spans)  # shape: (N,)
        # one transfer back per batch
        tags_cpu = tags.cpu().tolist()
        spans_cpu = spans.cpu().tolist()
        labels_cpu = label_ids.cpu().tolist()
        probs_cpu = log_probs.exp().clamp(max=1.0).cpu().tolist()
        per_row: list[list[tuple[int, int, int, float]]] = [[] for _ in units]
        for (row, first, last), label, prob in zip(spans_cpu, labels_cpu, probs_cpu):
            per_row[row].append((label, first, last, prob))
        for row, unit in enumerate(units):
            n = len(unit.window.word_spans)
            unit.tags = tags_cpu[row][:n]
            unit.entities = per_row[row]
            if unit.item in multi:
                unit.scores = scores[row, :n].cpu()

    def _score_tensor(self, emissions: Tensor) -> Tensor:
        """What spans are scored from: CRF emissions, or the NMT decoder's log-probabilities (fp32)."""
        if self.model.decoder == "crf":
            return emissions.float()
        return torch.log_softmax(emissions.float(), -1)

    def _span_log_probs(self, scores: Tensor, mask: Tensor, tags: Tensor, spans: Tensor) -> Tensor:
        """``(N,)`` log-probabilities of the spans' tags (see the module doc)."""
        if self.model.decoder == "crf":
            return self.model.crf.span_log_probs(scores, tags, spans, mask)
        if spans.shape[0] == 0:
            return scores.new_zeros((0,))
        # shape: (B, W): log-probability of each decoded tag
        picked = scores.gather(2, tags.clamp(min=0).unsqueeze(2)).squeeze(2)
        b, i, j = spans.unbind(1)
        positions = i.unsqueeze(1) + torch.arange(int((j - i).max()) + 1, device=spans.device)  # shape: (N, L)
        inside = positions <= j.unsqueeze(1)
        values = picked[b.unsqueeze(1), positions.clamp(max=picked.shape[1] - 1)]
        return torch.where(inside, values, values.new_zeros(())).sum(1)

    def _merge(self, pieces: WordPieces, units: list[_Unit], item: Any, words: bool) -> TaggedText:
        """Merge the windows of a long input; score each entity in the window that owns it."""
        units = sorted(units, key=lambda unit: unit.number)
        windows = [unit.window for unit in units]
        merged = batching.merge(pieces, windows, [[(tag, k) for tag in unit.tags] for k, unit in enumerate(units)])
        tags = [tag for tag, _ in merged]
        owner = [k for _, k in merged]
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
            K = units[0].scores.shape[1]
            scores = torch.zeros(len(order), width, K)
            mask = torch.zeros(len(order), width, dtype=torch.bool)
            local_tags = torch.full((len(order), width), -1, dtype=torch.long)
            span_rows, targets = [], []
            for row, k in enumerate(order):
                n = len(windows[k].words)
                offset = windows[k].word_index - pieces.word_index
                scores[row, :n] = units[k].scores
                mask[row, :n] = True
                local_tags[row, :n] = torch.tensor(tags[offset:offset + n])
                for first, last, slot in rows[k]:
                    span_rows.append((row, first, last))
                    targets.append(slot)
            device = self.device
            log_probs = self._span_log_probs(scores.to(device), mask.to(device), local_tags.to(device),
                                             torch.tensor(span_rows, device=device))
            for slot, prob in zip(targets, log_probs.exp().clamp(max=1.0).cpu().tolist()):
                probs[slot] = prob
        entities = [(label, first, last, prob)
                    for (_, first, last), label, prob in zip(spans.tolist(), label_ids.tolist(), probs)]
        return self._result(pieces, tags, entities, item, words)

    def _result(self, pieces: WordPieces, tags: list[int], entities: list[tuple[int, int, int, float]],
                item: Any, words: bool) -> TaggedText:
        found = []
        for label, first, last, prob in entities:
            kind = self._rules.types[label]
            if words:
                found.append(Entity(" ".join(item[first:last + 1]), kind, first, last + 1, prob))
            else:
                start, end = pieces.word_offsets[first][0], pieces.word_offsets[last][1]
                found.append(Entity(item[start:end], kind, start, end, prob))
        names = [self.labels[t] for t in tags]
        return TaggedText(list(pieces.words), names, found)


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


def format_record(text: str, result: TaggedText, format: str) -> str:
    """One input's output record: a JSON line (``jsonl``) or a CoNLL block (``conll``)."""
    if format == "jsonl":
        return json.dumps({"text": text, "entities": [e.to_dict() for e in result.entities]},
                          ensure_ascii=False) + "\n"
    if format == "conll":
        return "".join(f"{word}\t{tag}\n" for word, tag in zip(result.words, result.tags)) + "\n"
    raise ValueError(f"unknown output format {format!r}; expected jsonl or conll")
