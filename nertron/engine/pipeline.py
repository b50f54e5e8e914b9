"""``nertron.pipeline``: ``transformers.pipeline("token-classification")`` on nertron's engine.

    from nertron import pipeline              # instead of: from transformers import pipeline
    ner = pipeline("ner", model="path/to/bert-ner", aggregation_strategy="simple")
    ner("Angela Merkel met Emmanuel Macron in Paris.")
    # [{'entity_group': 'PER', 'score': np.float32(0.99..), 'word': 'Angela Merkel', 'start': 0, 'end': 13}, ...]

For a Hugging Face BERT token-classification checkpoint the output is ``transformers``' own:
the same keys, entities, order, ``numpy.float32`` scores (within float rounding), the same
``ignore_labels`` and ``stride`` behaviour (the aggregation below is a port of
``TokenClassificationPipeline.postprocess`` onto arrays). What differs is how it runs:

1. inputs are read in chunks and tokenised per chunk in one batched ``tokenizers`` call;
2. their encodings (and ``stride`` windows) are sorted by length and cut into batches of
   ``batch_size`` rows, each padded to its own longest row only;
3. each batch runs nertron's ``BertModel`` (fused Triton kernels on CUDA, the PyTorch
   reference path on CPU) and the linear head; the softmax runs on the device, in fp32;
4. the aggregation works on each window's score array (argmax, word grouping, entity
   grouping by array operations), and only the entities returned become dicts.

For a nertron model directory (CRF or NMT heads, ``model.json``), ``Tagger`` runs the model and
the results take the same dict shapes (see ``pipeline``).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from nertron.engine import batching
from nertron.engine.progress import Progress

__all__ = ["pipeline", "TokenClassificationPipeline", "TaggerPipeline", "AGGREGATION_STRATEGIES", "TASKS"]

TASKS = ("token-classification", "ner")
AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")
DEFAULT_BATCH_SIZE = 32
CHUNK_BATCHES = 64  # texts read, tokenised and sorted together: this many batches' worth
# On CPU a batch also holds at most batch_size * CPU_TOKENS_PER_ROW padded tokens: the long
# tail of a length-sorted input then runs in smaller batches with less padding (compute there
# is proportional to padded tokens; results do not depend on the batching). On CUDA the fused
# encoder packs the real tokens, so padding costs nothing and batch_size alone decides.
CPU_TOKENS_PER_ROW = 64


def _strategy(value: Any) -> str:
    """An aggregation strategy name: a str (any case) or transformers' ``AggregationStrategy``."""
    value = getattr(value, "value", value)  # transformers' AggregationStrategy enum
    if isinstance(value, str) and value.lower() in AGGREGATION_STRATEGIES:
        return value.lower()
    raise ValueError(f"unknown aggregation_strategy {value!r}; expected one of {', '.join(AGGREGATION_STRATEGIES)}")


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class _Base:
    """Input handling shared by both pipelines: a str, a list / tuple, or any iterable."""

    def __init__(self, aggregation_strategy: Any, batch_size: int | None, stride: int | None,
                 ignore_labels: Sequence[str] | None, progress: bool | None):
        self.aggregation_strategy = _strategy(aggregation_strategy)
        self.batch_size = _positive("batch_size", DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
        self.stride = stride
        self.ignore_labels = ignore_labels
        self.progress = progress
        self._check_stride(self.aggregation_strategy, stride)

    def _check_stride(self, strategy: str, stride: int | None) -> None:
        if stride is None:
            return
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0:
            raise ValueError(f"stride must be a non-negative int or None, got {stride!r}")
        if strategy == "none":
            raise ValueError('`stride` was provided to process all the text but `aggregation_strategy="none"`, '
                             "please select another one instead.")

    def __call__(self, inputs: str | Iterable[str], *, aggregation_strategy: Any = None, batch_size: int | None = None,
                 stride: int | None = None, ignore_labels: Sequence[str] | None = None,
                 progress: bool | None = None) -> list[dict] | list[list[dict]] | Iterator[list[dict]]:
        """Entities of a text (a list of dicts), of each text of a list (a list of lists), or,
        for any other iterable, an iterator of one list per text, read in bounded chunks.

        The keywords override the pipeline's own for this call. ``progress``: a tqdm bar on
        stderr (texts/s, tokens/s); default off for a str, list or tuple, on for other iterables.
        """
        ignore = self.ignore_labels if ignore_labels is None else ignore_labels
        params = dict(
            aggregation_strategy=self.aggregation_strategy if aggregation_strategy is None
            else _strategy(aggregation_strategy),
            batch_size=self.batch_size if batch_size is None else _positive("batch_size", batch_size),
            stride=self.stride if stride is None else stride,
            ignore_labels=["O"] if ignore is None else ignore,  # transformers' default
        )
        self._check_stride(params["aggregation_strategy"], params["stride"])
        self._check_params(params)
        show = self.progress if progress is None else progress
        if isinstance(inputs, str):
            return self._run([batching.check_text(0, inputs)], params, bool(show))[0]
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise ValueError("At least one input is required.")
            texts = [batching.check_text(n, text) for n, text in enumerate(inputs)]
            return self._run(texts, params, bool(show), total=len(texts))
        _check_iterable(inputs)
        total = len(inputs) if hasattr(inputs, "__len__") else None
        return self._stream(inputs, params, True if show is None else bool(show), total)

    def _run(self, texts: list[str], params: dict, show: bool, total: int | None = None) -> list[list[dict]]:
        results: list[list[dict]] = []
        size = params["batch_size"] * CHUNK_BATCHES
        with Progress(total=total, enabled=show, desc="nertron.pipeline") as bar:
            for begin in range(0, len(texts), size):
                results.extend(self._process(texts[begin:begin + size], params, bar, begin))
        return results

    def _stream(self, items: Iterable, params: dict, show: bool, total: int | None) -> Iterator[list[dict]]:
        size = params["batch_size"] * CHUNK_BATCHES
        iterator = iter(items)
        index = 0
        with Progress(total=total, enabled=show, desc="nertron.pipeline") as bar:
            while True:
                chunk, first, error = [], index, None
                try:
                    for item in iterator:
                        chunk.append(batching.check_text(index, item))
                        index += 1
                        if len(chunk) == size:
                            break
                except (TypeError, ValueError) as err:  # a bad item: the results before it come first
                    error = err
                if chunk:
                    yield from self._process(chunk, params, bar, first)
                if error is not None:
                    raise error
                if not chunk:
                    return

    def _check_params(self, params: dict) -> None:
        """Checks that need the model (the stride against its length)."""

    def _process(self, texts: list[str], params: dict, bar: Progress, first: int) -> list[list[dict]]:
        """Results of a chunk of checked texts, ``first`` the index of its first text in the input."""
        raise NotImplementedError


def _check_iterable(items: Any) -> None:
    what = type(items).__name__
    if isinstance(items, (bytes, bytearray, memoryview)):
        raise TypeError(f"pipeline inputs must be str or an iterable of str, not {what}: decode it first")
    if isinstance(items, (Mapping, Set)):
        raise TypeError(f"pipeline inputs must be str or an ordered iterable of str, not a {what}")
    try:
        iter(items)
    except TypeError:
        raise TypeError(f"pipeline inputs must be str or an iterable of str, not {what}: {items!r:.80}") from None


class _Window:
    """One encoding of one text: its ids, offsets and special-token mask as arrays."""

    __slots__ = ("item", "last", "ids", "offsets", "special", "type_ids")

    def __init__(self, item: int, last: bool, encoding):
        self.item = item
        self.last = last  # the text's last window
        self.ids = np.asarray(encoding.ids, dtype=np.int64)  # shape: (T,)
        self.type_ids = encoding.type_ids
        self.offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)  # shape: (T, 2)
        self.special = np.asarray(encoding.special_tokens_mask, dtype=bool)  # shape: (T,)


class TokenClassificationPipeline(_Base):
    """A Hugging Face BERT token-classification model on nertron's engine (see ``pipeline``).

    Args:
        model: ``nertron.engine.hf_token_classification.TokenClassifier``.
        tokenizer: its ``HFTokenizer``.
        device, dtype: as ``pipeline``.
        aggregation_strategy, batch_size, stride, ignore_labels, progress: defaults for calls.
    """

    def __init__(self, model, tokenizer, device: Any = None, dtype: Any = None, aggregation_strategy: Any = "none",
                 batch_size: int | None = None, stride: int | None = None,
                 ignore_labels: Sequence[str] | None = None, progress: bool | None = None):
        from nertron.engine.tagger import resolve_dtype, resolve_device

        self.device = resolve_device(device)
        self.dtype = resolve_dtype("fp32" if dtype is None else dtype, self.device)
        self.tokenizer = tokenizer
        super().__init__(aggregation_strategy, batch_size, stride, ignore_labels, progress)
        self._check_params(dict(stride=stride))
        model = model.to(self.device).eval()
        model.bert.to(self.dtype)
        self.model = model
        labels = model.labels
        self.labels = labels
        # Label tables for the aggregation (transformers' get_tag and group_sub_entities):
        # "B-X" opens a group, "I-X" and unprefixed "X" continue one of the same type.
        tags = [label[2:] if label.startswith(("B-", "I-")) else label for label in labels]
        names = {tag: n for n, tag in enumerate(dict.fromkeys(tags))}
        self._tag_key = np.array([names[tag] for tag in tags], dtype=np.int64)  # shape: (K,)
        self._begins = np.array([label.startswith("B-") for label in labels], dtype=bool)  # shape: (K,)
        self._group_names = [label.split("-", 1)[-1] for label in labels]

    def __repr__(self) -> str:
        return (f"nertron.pipeline(token-classification, BertForTokenClassification, {len(self.labels)} labels, "
                f"device={self.device}, dtype={str(self.dtype).replace('torch.', '')}, "
                f"aggregation_strategy={self.aggregation_strategy!r}, batch_size={self.batch_size})")

    def _check_params(self, params: dict) -> None:
        stride = params.get("stride")
        if stride is None:
            return
        length = self.tokenizer.model_max_length
        if stride >= length:
            raise ValueError("`stride` must be less than `tokenizer.model_max_length` (or even lower if the "
                             "tokenizer adds special tokens)")
        room = length - self.tokenizer.num_special
        if stride >= room:
            raise ValueError(f"stride={stride} must be less than {room}: model_max_length={length} minus "
                             f"{self.tokenizer.num_special} special tokens")

    # --- running ------------------------------------------------------------------------------

    def _process(self, texts: list[str], params: dict, bar: Progress, first: int) -> list[list[dict]]:
        encoded = self.tokenizer.encode(texts, params["stride"])
        windows: list[_Window] = []
        truncated = []
        for n, encodings in enumerate(encoded):
            if params["stride"] is None and encodings[0].overflowing:
                truncated.append(first + n)
            for k, encoding in enumerate(encodings):
                windows.append(_Window(n, k == len(encodings) - 1, encoding))
        if truncated:
            warnings.warn(
                f"{len(truncated)} text(s) (the first: item {truncated[0]}) are longer than "
                f"model_max_length={self.tokenizer.model_max_length} tokens and were truncated, as "
                "transformers.pipeline does; pass stride=N (and an aggregation_strategy) to tag all of them",
                stacklevel=4)
        # Windows with no token but [CLS]/[SEP] (empty texts) have no entity: no forward needed.
        busy = [w for w, window in enumerate(windows) if not window.special.all()]
        bar.update(texts=sum(1 for window in windows if window.last and window.special.all()))
        scores: dict[int, np.ndarray] = {}
        per_row = self.tokenizer.model_max_length if self.device.type == "cuda" else CPU_TOKENS_PER_ROW
        for group in batching.bucket([len(windows[w].ids) - 2 for w in busy], params["batch_size"] * per_row,
                                     max_batch_size=params["batch_size"]):
            rows = [windows[busy[i]] for i in group]
            probs = self._forward(rows)  # shape: (B, T, K)
            for row, i in enumerate(group):
                scores[busy[i]] = probs[row, :len(rows[row].ids)]
            bar.update(texts=sum(window.last for window in rows),
                       tokens=int(sum(int((~window.special).sum()) for window in rows)))
        results: list[list[dict]] = [[] for _ in texts]
        for w, window in enumerate(windows):
            if w in scores:
                results[window.item].extend(self._postprocess(texts[window.item], window, scores[w], params))
        for n, encodings in enumerate(encoded):
            if len(encodings) > 1:  # transformers merges the entities of a text's stride windows
                results[n] = aggregate_overlapping_entities(results[n])
        return results

    def _forward(self, rows: list[_Window]) -> np.ndarray:
        """Softmax scores ``(B, T, K)`` fp32 of a batch of windows, padded to its longest."""
        width = max(len(window.ids) for window in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)  # shape: (B, T)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for row, window in enumerate(rows):
            ids[row, :len(window.ids)] = window.ids
            mask[row, :len(window.ids)] = 1
            types[row, :len(window.ids)] = window.type_ids
        device = self.device
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(ids).to(device, non_blocking=True),
                                torch.from_numpy(mask).to(device, non_blocking=True),
                                torch.from_numpy(types).to(device, non_blocking=True))
            probs = torch.softmax(logits.float(), dim=-1)  # shape: (B, T, K), fp32 as transformers' numpy softmax
        return probs.cpu().numpy()

    # --- aggregation (transformers' TokenClassificationPipeline.postprocess, on arrays) -----------

    def _postprocess(self, text: str, window: _Window, scores: np.ndarray, params: dict) -> list[dict]:
        """Entities of one window: ``scores`` ``(T, K)`` are its tokens' softmax scores."""
        strategy, ignore = params["aggregation_strategy"], params["ignore_labels"]
        positions = np.flatnonzero(~window.special)  # the pre-entities: every non-special token
        if positions.size == 0:
            return []
        scores = scores[positions]  # shape: (N, K)
        ids = window.ids[positions]
        starts, ends = window.offsets[positions, 0], window.offsets[positions, 1]
        unknown = ids == self.tokenizer.unk_token_id if self.tokenizer.unk_token_id is not None else np.zeros(
            len(ids), dtype=bool)

        def word(j: int) -> str:  # the token's text: its vocabulary entry, or the input's characters for [UNK]
            return text[starts[j]:ends[j]] if unknown[j] else self.tokenizer.token(int(ids[j]))

        if strategy in ("none", "simple"):
            labels = scores.argmax(-1)  # shape: (N,)
            best = scores[np.arange(len(labels)), labels]  # shape: (N,) float32
            if strategy == "none":
                ignored = np.array([label in ignore for label in self.labels], dtype=bool)
                return [{"entity": self.labels[labels[j]], "score": best[j], "index": int(positions[j]),
                         "word": word(j), "start": int(starts[j]), "end": int(ends[j])}
                        for j in np.flatnonzero(~ignored[labels])]
            return self._group(labels, best, [word(j) for j in range(len(ids))], starts, ends, ignore)
        return self._group(*self._aggregate_words(text, strategy, scores, ids, starts, ends, unknown, word), ignore)

    def _aggregate_words(self, text, strategy, scores, ids, starts, ends, unknown, word):
        """transformers' ``aggregate_words``: one label and score per word (tokens joined by
        ``is_subword``), by the first token, the token with the highest score, or the mean scores."""
        if self.tokenizer.word_aware:
            # WordPiece: a piece whose vocabulary entry is not as long as its text is a "##" piece.
            subword = self.tokenizer.token_lengths[ids] != (ends - starts)
        else:
            if strategy in ("first", "average", "max"):
                warnings.warn("Tokenizer does not support real words, using fallback heuristic", UserWarning)
            subword = np.array([s > 0 and " " not in text[s - 1:s + 1] for s in starts.tolist()], dtype=bool)
        subword &= ~unknown
        subword[0] = False  # the first token always opens a word
        firsts = np.flatnonzero(~subword)  # shape: (Wd,)
        word_of = np.cumsum(~subword) - 1  # shape: (N,)
        count = len(firsts)
        if strategy == "first":
            rows = scores[firsts]  # shape: (Wd, K)
        elif strategy == "max":
            peak = scores.max(-1)  # shape: (N,)
            word_peak = np.maximum.reduceat(peak, firsts)  # shape: (Wd,)
            # python's max() keeps the first of equal maxima: the first token reaching its word's peak
            hits = np.flatnonzero(peak == word_peak[word_of])
            _, first_hit = np.unique(word_of[hits], return_index=True)
            rows = scores[hits[first_hit]]
        else:  # average: np.nanmean over the word's tokens
            valid = ~np.isnan(scores)
            sums = np.add.reduceat(np.where(valid, scores, 0), firsts, axis=0)
            counts = np.add.reduceat(valid.astype(np.float32), firsts, axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                rows = (sums / counts).astype(np.float32)
        labels = rows.argmax(-1)  # shape: (Wd,)
        best = rows[np.arange(count), labels]
        bounds = np.append(firsts, len(ids))
        words = [self.tokenizer.decode_tokens([word(j) for j in range(bounds[w], bounds[w + 1])])
                 for w in range(count)]
        return labels, best, words, starts[firsts], ends[bounds[1:] - 1]

    def _group(self, labels: np.ndarray, best: np.ndarray, words: list[str], starts: np.ndarray, ends: np.ndarray,
               ignore: Sequence[str]) -> list[dict]:
        """transformers' ``group_entities`` then the ``ignore_labels`` filter: adjacent tokens (or
        words) of one type form an entity unless a ``B-`` tag opens a new one; its score is the
        mean of theirs, its word their decoded join."""
        tag = self._tag_key[labels]  # shape: (N,)
        opens = np.empty(len(labels), dtype=bool)
        opens[0] = True
        opens[1:] = (tag[1:] != tag[:-1]) | self._begins[labels[1:]]
        heads = np.flatnonzero(opens)
        clean = not np.isnan(best).any()
        tails = np.append(heads[1:], len(labels))
        out = []
        for a, b in zip(heads.tolist(), tails.tolist()):
            name = self._group_names[labels[a]]
            if name in ignore:
                continue
            # transformers: np.mean(np.nanmean(scores)), a float32; the same without its overhead
            # when there is no NaN (a lone token's score is its own mean).
            score = best[a] if b - a == 1 else np.float32(best[a:b].mean()) if clean else np.mean(np.nanmean(best[a:b]))
            out.append({"entity_group": name, "score": score,
                        "word": self.tokenizer.decode_tokens(words[a:b]), "start": int(starts[a]),
                        "end": int(ends[b - 1])})
        return out


def aggregate_overlapping_entities(entities: list[dict]) -> list[dict]:
    """transformers' merge of the entities of a text's ``stride`` windows: sorted by start, of
    overlapping entities the longer one (then the higher score) is kept."""
    if len(entities) == 0:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    aggregated_entities = []
    previous_entity = entities[0]
    for entity in entities:
        if previous_entity["start"] <= entity["start"] < previous_entity["end"]:
            current_length = entity["end"] - entity["start"]
            previous_length = previous_entity["end"] - previous_entity["start"]
            if (current_length > previous_length
                    or current_length == previous_length and entity["score"] > previous_entity["score"]):
                previous_entity = entity
        else:
            aggregated_entities.append(previous_entity)
            previous_entity = entity
    aggregated_entities.append(previous_entity)
    return aggregated_entities


class TaggerPipeline(_Base):
    """A nertron model (CRF or NMT head) behind the pipeline's call and dict shapes (see ``pipeline``)."""

    def __init__(self, tagger, aggregation_strategy: Any = "none", batch_size: int | None = None,
                 stride: int | None = None, ignore_labels: Sequence[str] | None = None,
                 progress: bool | None = None):
        super().__init__(aggregation_strategy, batch_size, stride, ignore_labels, progress)
        self.tagger = tagger
        self.device = tagger.device
        self.dtype = tagger.dtype

    def __repr__(self) -> str:
        return (f"nertron.pipeline(token-classification, {self.tagger!r}, "
                f"aggregation_strategy={self.aggregation_strategy!r})")

    def _process(self, texts: list[str], params: dict, bar: Progress, first: int) -> list[list[dict]]:
        strategy, ignore = params["aggregation_strategy"], params["ignore_labels"]
        results = []
        for text, tagged in self.tagger.tag_lines(texts, word_probs=strategy == "none"):
            if strategy == "none":
                offsets = self.tagger.tokenizer.split_text(text)
                if len(offsets) != len(tagged.words):
                    raise RuntimeError(f"the tagger gave {len(tagged.words)} words but the text splits into "
                                       f"{len(offsets)}")
                results.append([{"entity": tag, "score": np.float32(prob), "index": w, "word": word,
                                 "start": start, "end": end}
                                for w, (tag, prob, word, (start, end))
                                in enumerate(zip(tagged.tags, tagged.probs, tagged.words, offsets))
                                if tag not in ignore])
            else:
                results.append([d for d in (entity.to_dict() for entity in tagged.entities)
                                if d["entity_group"] not in ignore])
            bar.update(texts=1, tokens=len(tagged.words))
        return results


def pipeline(task: str = "token-classification", model: Any = None, tokenizer: Any = None, *,
             aggregation_strategy: Any = "none", device: str | int | torch.device | None = None,
             batch_size: int | None = None, stride: int | None = None, ignore_labels: Sequence[str] | None = None,
             dtype: str | torch.dtype | None = None, progress: bool | None = None) -> _Base:
    """A token-classification pipeline, a drop-in for ``transformers.pipeline("ner", ...)``.

    Args:
        task: ``"token-classification"`` or its alias ``"ner"``.
        model: one of
            - a directory of a Hugging Face BERT token-classification checkpoint (``config.json``
              with ``id2label``, ``model.safetensors`` or ``pytorch_model.bin``, the tokenizer's
              ``tokenizer.json`` or ``vocab.txt``): the output equals ``transformers.pipeline``'s
              (same keys, entities, order; ``score`` a ``numpy.float32`` equal to rounding);
            - a loaded ``transformers.BertForTokenClassification`` (then pass ``tokenizer``: its
              fast tokenizer or its directory); its weights are copied;
            - a nertron model directory (``model.json``: CRF and NMT heads) or a ``nertron.Tagger``;
            - None: nertron's default model (a CoNLL-2003 CRF tagger).
        tokenizer: with a model object, its tokenizer (a transformers fast tokenizer or a directory
            of tokenizer files); with a checkpoint directory, one to use instead of its own.
        aggregation_strategy: ``"none"`` (one dict per token: ``entity``, ``score``, ``index``,
            ``word``, ``start``, ``end``), ``"simple"``, ``"first"``, ``"average"``, ``"max"``
            (one dict per entity: ``entity_group``, ``score``, ``word``, ``start``, ``end``), as in
            transformers.
        device: ``-1`` the CPU, ``N`` / ``"cuda:N"`` a GPU, None: CUDA when available, else the CPU.
        batch_size: encodings per forward pass (default 32); unlike transformers they are sorted
            by length first, so a batch is padded to lengths alike.
        stride: tag texts longer than the model's ``model_max_length`` in overlapping windows
            (``stride`` tokens of overlap) merged as transformers does; needs a grouping strategy.
            Without it a longer text is truncated, as transformers does, with a warning.
        ignore_labels: labels (``"none"``) or entity groups to drop; default ``["O"]``.
        dtype: the encoder's dtype: ``"fp32"`` (the default, as transformers), or on a GPU
            ``"bf16"`` / ``"fp16"``; the head and the softmax stay fp32.
        progress: a tqdm bar on stderr with texts/s and tokens/s: None (default) shows it for
            iterables other than a list or tuple; True / False always / never.

    For nertron models (``model.json``) the dicts have the same shapes, with word-level
    content: ``"none"`` gives one dict per word (``index`` is the word's number, ``score`` the
    CRF marginal probability of its decoded tag; NMT: its softmax probability), and every
    grouping strategy gives the entities of the constrained Viterbi path, ``score`` being the
    exact CRF probability of the entity's tags (``Entity.to_dict()``), not a mean of token
    scores. Long texts are always windowed whole by the Tagger (``stride`` changes nothing);
    batches are cut by the Tagger's token budget, not ``batch_size``.

    Returns:
        A callable: ``p(text)`` -> list of dicts; ``p(list_of_texts)`` -> one list per text;
        ``p(iterable)`` -> an iterator of one list per text (streams in bounded chunks).

    Raises:
        ValueError: unknown task or strategy, a checkpoint nertron cannot run (no ``id2label``, a
            non-BERT architecture), a bad device or dtype.
        FileNotFoundError: no such model directory, or no weights / tokenizer file in it.
    """
    if task not in TASKS:
        raise ValueError(f"unsupported task {task!r}; nertron.pipeline runs {' / '.join(TASKS)}")
    options = dict(aggregation_strategy=aggregation_strategy, batch_size=batch_size, stride=stride,
                   ignore_labels=ignore_labels, progress=progress)
    _strategy(aggregation_strategy)  # fail before loading anything
    from nertron.engine import hf_token_classification as hf
    from nertron.engine.tagger import Tagger, resolve_dtype, resolve_device

    resolve_dtype("fp32" if dtype is None else dtype, resolve_device(device))  # likewise
    nertron_model = isinstance(model, Tagger) or model is None or (
        isinstance(model, (str, Path)) and (Path(model) / "model.json").is_file())
    if nertron_model and tokenizer is not None:
        raise ValueError("tokenizer= is for Hugging Face models; a nertron model uses its own checkpoint's tokenizer")
    if isinstance(model, Tagger):
        return TaggerPipeline(model, **options)
    if model is None or isinstance(model, (str, Path)):
        path = None if model is None else Path(model)
        if nertron_model:
            return TaggerPipeline(Tagger.load(path, device=device, dtype=dtype), **options)
        classifier, hf_tokenizer = hf.load_token_classifier(path, tokenizer)
    else:
        classifier, hf_tokenizer = hf.from_transformers(model, tokenizer)
    return TokenClassificationPipeline(classifier, hf_tokenizer, device=device, dtype=dtype, **options)
