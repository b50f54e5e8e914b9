"""Training loop for nertron's NER models (the seed's ``NerLearner``).

``NerLearner(model, data, best_model_path, lr, clip, ...)`` with ``fit(epochs, target_metric)``,
``evaluate()`` and ``predict(batches)``. AdamW with linear warm-up and decay, gradient
clipping, mixed precision on GPU, the best checkpoint by the target metric on the
validation set, resume from a checkpoint, tqdm progress with the running loss, and a JSON
lines training log.

BERT is frozen in ner-bert's models, so its hidden states for the training set do not
change between epochs: with ``cache_features`` (on by default when they fit in memory) the
word-level states are computed once, in fp16, and every later epoch costs only the head.
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import time
import warnings
import zipfile
from array import array
from pathlib import Path
from typing import Any, Iterable

import safetensors.torch
import torch
from tqdm.auto import tqdm

from nertron.engine.data.loader import NerData
from nertron.engine.files import write_atomic
from nertron.engine.metrics import sentence_scores, span_scores, token_scores
from nertron.engine.models import ModelFileError, NerModel

TRAINER_STATE = "trainer_state.pt"
STATE_KEYS = ("epoch", "best_metric", "optimizer", "scheduler", "model")


def check_output_dir(directory: str | Path, log_path: str | Path | None = None) -> None:
    """Refuse to train afresh into ``directory`` when it (or ``log_path``) holds a training run.

    Raises:
        OutputNotEmptyError: a file where the directory should be, a non-empty directory, or a
            non-empty log; the message names both ways out (resume, overwrite).
    """
    directory = Path(directory)
    log_path = Path(log_path) if log_path is not None else directory / "train_log.jsonl"
    if directory.exists() and not directory.is_dir():
        raise OutputNotEmptyError(f"{directory} is a file, not a directory to save the model in")
    held = directory.is_dir() and any(directory.iterdir())
    if held or (log_path.is_file() and log_path.stat().st_size > 0):
        what = directory if held else log_path
        raise OutputNotEmptyError(
            f"{what} already holds a training run (a trained model or its log): pass resume=True "
            "(--resume) to continue it, or overwrite=True (--overwrite) to replace it")


class OutputNotEmptyError(ValueError, FileExistsError):
    """``fit`` was asked to train into a directory that already holds files (a trained model),
    without ``resume=True`` or ``overwrite=True``."""


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class NerLearner:
    """Fits a ``NerModel`` on ``NerData``.

    Args:
        model: a model from ``nertron.engine.models``.
        data: ``NerData`` with train and validation sets.
        best_model_path: directory where the best model (by ``target_metric``) is saved.
        lr: peak learning rate; clip: max gradient norm (None = no clipping).
        bert_lr: peak learning rate of a fine-tuned BERT's top layer (None: ``lr``); a head
            learns at 1e-3 while pre-trained weights need ~1e-5..1e-4.
        layer_decay: a fine-tuned BERT's layer ``l`` (of ``L``; the embeddings are layer 0)
            learns at ``bert_lr * layer_decay ** (L - l)`` (1.0: all at ``bert_lr``).
        warmup: fraction of the steps spent warming up linearly, then linear decay to 0.
        weight_decay: AdamW's decoupled weight decay (not applied to biases and norms).
        device: default CUDA when available, else CPU.
        amp: bf16 autocast on CUDA (fp32 on CPU).
        cache_features: True, False or 'auto' (cache when the estimate fits in
            ``cache_budget_gb``): the frozen BERT's states of every split (train, valid,
            test) are computed once, so later epochs and evaluations cost only the head.
        cache_dir: also keep the cached states on disk there, keyed by encoder, pooling and
            data, so other runs on the same data (other heads, resumed runs) skip BERT.
        log_path: JSON lines log (default ``best_model_path/train_log.jsonl``).

    Every file is written atomically (a temporary file renamed into place): a crash or a
    Ctrl-C leaves each file either as it was or complete, never half-written.
    """

    def __init__(
        self,
        model: NerModel,
        data: NerData,
        best_model_path: str | Path,
        lr: float = 1e-3,
        clip: float | None = 5.0,
        warmup: float = 0.1,
        weight_decay: float = 0.01,
        device: str | torch.device | None = None,
        amp: bool = True,
        cache_features: bool | str = "auto",
        cache_budget_gb: float = 8.0,
        cache_dir: str | Path | None = None,
        log_path: str | Path | None = None,
        seed: int = 0,
        progress: bool = True,
        bert_lr: float | None = None,
        layer_decay: float = 1.0,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device)
        self.data = data
        data.casing = model.config.casing  # the data's batches carry the casing inputs the model reads
        self.best_model_path = Path(best_model_path)
        self.lr, self.clip, self.warmup, self.weight_decay = lr, clip, warmup, weight_decay
        self.bert_lr = lr if bert_lr is None else bert_lr
        self.layer_decay = layer_decay
        self.amp = amp and self.device.type == "cuda"
        self.log_path = Path(log_path) if log_path else self.best_model_path / "train_log.jsonl"
        self.seed = seed
        self.progress = progress
        self.epoch = 0
        self.best_metric: float | None = None
        self.history: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self._features: dict[str, tuple[torch.Tensor, list[int]]] = {}
        self.cache_features = cache_features
        self.cache_budget_gb = cache_budget_gb
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._claimed = False  # fit has checked (or resumed from) best_model_path
        self._log_lines: list[str] = []  # the log's lines, rewritten whole (atomically) each epoch
        self._check_labels()

    def _check_labels(self) -> None:
        if self.model.config.label_size != self.data.vocab.num_labels:
            raise ValueError(
                f"the model predicts {self.model.config.label_size} labels but the data's label vocabulary has "
                f"{self.data.vocab.num_labels}: build the model with label_size=data.vocab.num_labels "
                "(or load a checkpoint trained on this label set)"
            )

    # --- feature cache -----------------------------------------------------------------------

    def _cache_estimate_gb(self) -> float:
        features = self.model.features
        words = sum(len(e.word_starts) for split in self.data.splits for e in self.data.examples(split))
        return words * features.cached_layers() * features.hidden_size * 2 / 2**30

    def _want_cache(self) -> bool:
        if not self.model.config.freeze:
            return False  # a fine-tuned BERT changes every step
        if self.cache_features == "auto":
            return self._cache_estimate_gb() <= self.cache_budget_gb
        return bool(self.cache_features)

    def _cache_key(self, split: str) -> str:
        """Identifies the states of a split: the encoder's weights and config, the pooled layers and
        every example's sub-tokens. Equal keys <=> equal cached tensors, so runs can share a cache."""
        digest = hashlib.sha1()
        checkpoint = Path(self.model.config.checkpoint_dir)
        for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
            file = checkpoint / name
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        digest.update(f"{self.model.features.cached_layers()}:{self.model.config.bert_mode}".encode())
        for e in self.data.examples(split):
            digest.update(array("i", e.input_ids).tobytes())
            digest.update(array("i", e.word_starts).tobytes())
        return f"{split}-{digest.hexdigest()[:20]}"

    @torch.no_grad()
    def _build_cache(self, split: str) -> None:
        """Word-level states of every example of ``split``, one fp16 tensor (words, L, H) on the CPU,
        loaded from / saved to ``cache_dir`` when one is given."""
        examples = self.data.examples(split)
        offsets = [0]
        for e in examples:
            offsets.append(offsets[-1] + len(e.word_starts))
        file = None
        if self.cache_dir is not None:
            file = self.cache_dir / f"{self._cache_key(split)}.safetensors"
            states = self._load_cache_file(file)
            features = self.model.features
            if states is not None and tuple(states.shape) == (offsets[-1], features.cached_layers(), features.hidden_size):
                self._features[split] = (states, offsets)
                return
        self.model.eval()
        features = self.model.features
        states = torch.empty(offsets[-1], features.cached_layers(), features.hidden_size, dtype=torch.float16)
        batches = self.data.batches(split, shuffle=False)
        for batch, group in tqdm(batches, desc=f"caching BERT states ({split})", disable=not self.progress,
                                 leave=False):
            hidden = features.hidden_states(_to(batch, self.device))  # shape: (L, B, W, H)
            for i, e in enumerate(group):
                n = len(e.word_starts)
                states[offsets[e.index] : offsets[e.index] + n] = hidden[:, i, :n].transpose(0, 1).to("cpu", torch.float16)
        self._features[split] = (states, offsets)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(file, lambda path: safetensors.torch.save_file({"states": states}, str(path)))

    @staticmethod
    def _load_cache_file(file: Path) -> torch.Tensor | None:
        """A cache file's states, or None when it is absent or unreadable (a cache is only ever
        a copy of what BERT computes: a damaged one is computed again and replaced)."""
        if not file.is_file():
            return None
        try:
            states = safetensors.torch.load_file(str(file)).get("states")
        except Exception:  # safetensors' own error for a truncated or foreign file
            return None
        return states if isinstance(states, torch.Tensor) and states.ndim == 3 else None

    def _cached(self, split: str, examples) -> torch.Tensor | None:
        """The cached states of a batch's examples as (L, B, W, H), or None when ``split`` is not cached."""
        if split not in self._features:
            return None
        states, offsets = self._features[split]
        width = max(len(e.word_starts) for e in examples)
        out = torch.zeros(states.shape[1], len(examples), width, states.shape[2], dtype=torch.float16)
        for i, e in enumerate(examples):
            chunk = states[offsets[e.index] : offsets[e.index + 1]]  # shape: (W_i, L, H)
            out[:, i, : chunk.shape[0]] = chunk.transpose(0, 1)
        return out.to(self.device, non_blocking=True)

    # --- training ----------------------------------------------------------------------------

    def _param_lr(self, name: str) -> float:
        """The peak learning rate of one parameter: the head's ``lr``; a fine-tuned BERT's
        ``bert_lr``, decayed by ``layer_decay`` per layer below the top."""
        prefix = "features.bert."
        if not name.startswith(prefix):
            return self.lr
        layers = self.model.features.bert.config.num_hidden_layers
        rest = name[len(prefix):]
        depth = layers  # the pooler and anything above the layers: the top
        if rest.startswith("embeddings."):
            depth = 0
        elif rest.startswith("encoder.layer."):
            depth = int(rest.split(".")[2]) + 1
        return self.bert_lr * self.layer_decay ** (layers - depth)

    def _make_optimizer(self, total_steps: int) -> None:
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            decays = not (param.dim() < 2 or "norm" in name.lower())
            groups.setdefault((self._param_lr(name), decays), []).append(param)
        # one group per (learning rate, decay): the schedule scales every group's own peak rate
        self.optimizer = torch.optim.AdamW(
            [{"params": params, "lr": lr, "weight_decay": self.weight_decay if decays else 0.0}
             for (lr, decays), params in sorted(groups.items(), key=lambda item: (-item[0][0], not item[0][1]))],
            lr=self.lr,
        )
        warmup_steps = max(1, int(self.warmup * total_steps))

        def schedule(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def fit(self, epochs: int, target_metric: str = "span_f1", resume: bool = False,
            overwrite: bool = False) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs (in total, counting a resumed run's), saving the best model.

        Args:
            epochs: total number of epochs.
            target_metric: a key of ``evaluate()``'s result (``span_f1``, ``token_f1``,
                ``intent_accuracy``, or ``-loss``), higher is better.
            resume: continue from ``best_model_path``'s trainer state (the log continues).
            overwrite: train into a ``best_model_path`` that already holds files (a trained
                model): its files are replaced one by one, each only when its new version is
                complete, and the log starts afresh. Without ``resume`` or ``overwrite``, a
                non-empty ``best_model_path`` (or an existing log) is refused.

        Returns:
            The per-epoch log records.

        Raises:
            OutputNotEmptyError: ``best_model_path`` holds files and neither option was given.
            ModelFileError: ``resume`` with a trainer state that cannot be read or does not fit.
        """
        if resume and overwrite:
            raise ValueError("resume=True continues the training in "
                             f"{self.best_model_path}, overwrite=True replaces it: choose one")
        if not resume and not overwrite and not self._claimed:
            check_output_dir(self.best_model_path, self.log_path)
        torch.manual_seed(self.seed)
        steps_per_epoch = len(self.data.batches("train", shuffle=True, epoch=0))
        if self.optimizer is None:
            self._make_optimizer(epochs * steps_per_epoch)
        if resume:
            self._resume()
            self._log_lines = self._read_log()
        elif not self._claimed:
            self._log_lines = []  # a new run (overwrite or an empty directory): the log starts afresh
        self._claimed = True
        if self._want_cache():
            for split in self.data.splits:
                if split not in self._features:
                    self._build_cache(split)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        while self.epoch < epochs:
            record = self._train_epoch(epochs)
            record.update({f"valid_{k}" if not k.startswith("valid") else k: v for k, v in self.evaluate().items()
                           if not isinstance(v, dict)})
            metric = record.get(f"valid_{target_metric}")
            if metric is None:
                raise KeyError(f"target_metric {target_metric!r} is not one of {sorted(k[6:] for k in record if k.startswith('valid_'))}")
            improved = self.best_metric is None or metric > self.best_metric
            if improved:
                self.best_metric = metric
                joint = self.model.joint and self.data.intent_vocab is not None  # a tagger alone has no intents
                intents = self.data.intent_vocab.names if joint else None
                self.model.save(self.best_model_path, self.data.vocab, intents=intents)
            record["best"] = improved
            self.history.append(record)
            self._log_lines.append(json.dumps(record) + "\n")
            text = "".join(self._log_lines)
            write_atomic(self.log_path, lambda path: path.write_text(text, encoding="utf-8"))
            self._save_trainer_state()  # last: a crash before it redoes this epoch (its log line is dropped)
            if self.progress:
                shown = {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}
                tqdm.write(f"epoch {self.epoch}/{epochs} {shown}{' *' if improved else ''}")
        return self.history

    def _read_log(self) -> list[str]:
        """The existing log's complete lines up to the resumed epoch (a line a crash cut short, or
        an epoch the trainer state does not hold, is dropped: that epoch runs again)."""
        if not self.log_path.is_file():
            return []
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        kept = []
        for line in lines:
            if not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] > self.epoch:
                continue
            kept.append(line)
        return kept

    def _train_epoch(self, epochs: int) -> dict[str, Any]:
        self.model.train()
        start = time.time()
        batches = self.data.batches("train", shuffle=True, epoch=self.epoch)
        total, count = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{epochs}", disable=not self.progress, leave=False)
        for batch, examples in bar:
            batch = _to(batch, self.device)
            features = self._cached("train", examples)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model(batch, features=features, decode=False)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.scheduler.step()
            loss = out.loss.item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss} in epoch {self.epoch + 1}")
            total, count = total + loss, count + 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        self.epoch += 1
        return {"epoch": self.epoch, "train_loss": total / max(count, 1), "lr": self.scheduler.get_last_lr()[0],
                "seconds": round(time.time() - start, 2)}

    # --- evaluation and prediction ------------------------------------------------------------

    @torch.no_grad()
    def predict(self, split: str | Iterable = "valid") -> tuple[list[list[str]], list[str] | None]:
        """Predicted tags per sentence (word-level, in input order) and intents (joint models).

        Args:
            split: ``'train'``, ``'valid'``, ``'test'`` or an iterable of sentences (words lists
                or objects with ``.words``).
        """
        self.model.eval()
        examples = self.data.examples(split) if isinstance(split, str) else self.data.encode(split)
        window_tags: dict[int, list[int]] = {}
        intents: dict[int, int] = {}
        for batch, batch_examples in self.data.batches(examples, shuffle=False):
            features = self._cached(split, batch_examples) if isinstance(split, str) else None
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model(_to(batch, self.device), features=features)
            tags = out.tags.cpu().tolist()
            for i, example in enumerate(batch_examples):
                window_tags[example.index] = tags[i][: len(example.word_starts)]
                if out.intent_logits is not None:
                    intents.setdefault(example.sentence_id, int(out.intent_logits[i].argmax()))
        sentences = self.data.merge(examples, window_tags)
        tag_names = [[self.data.vocab.decode(t) for t in sentence] for sentence in sentences]
        intent_names = None
        if intents:
            intent_names = [self.data.intent_vocab.decode(intents[i]) for i in range(len(sentences))]
        return tag_names, intent_names

    def evaluate(self, split: str = "valid") -> dict[str, Any]:
        """Span and token scores (and intent scores for joint models) on a split."""
        predicted, intents = self.predict(split)
        gold = self.data.sentences(split)
        scheme = self.data.tag_scheme
        spans = span_scores([s.tags for s in gold], predicted, scheme=scheme)
        tokens = token_scores([s.tags for s in gold], predicted)
        result = {"span_precision": spans["precision"], "span_recall": spans["recall"], "span_f1": spans["f1"],
                  "token_precision": tokens["precision"], "token_recall": tokens["recall"], "token_f1": tokens["f1"],
                  "per_type": spans["per_type"]}
        if intents is not None:
            scores = sentence_scores([s.intent for s in gold], intents)
            result["intent_accuracy"] = scores["accuracy"]
            result["intent_f1"] = scores["f1"]
        return result

    # --- checkpoints ----------------------------------------------------------------------------

    def _save_trainer_state(self) -> None:
        """What resuming needs and nothing else: the trained weights (not a frozen BERT's, which
        the checkpoint holds), the optimizer, the schedule and the epoch; written atomically."""
        state = {"epoch": self.epoch, "best_metric": self.best_metric, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "model": self.model.trained_state_dict()}
        write_atomic(self.best_model_path / TRAINER_STATE, lambda path: torch.save(state, path))

    def _resume(self) -> None:
        path = self.best_model_path / TRAINER_STATE
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: no {TRAINER_STATE} in {self.best_model_path}")
        state = _load_trainer_state(path, self.device)
        try:
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ModelFileError(f"cannot resume from {path}: it was saved from a different model or label set: "
                                 f"{str(err).splitlines()[0]}") from None
        missing = [k for k in missing if k in self.model.trained_state_dict()]  # a frozen BERT is not in it
        if missing or unexpected:
            raise ModelFileError(f"cannot resume from {path}: it was saved from a different model or label set: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as err:
            raise ModelFileError(f"cannot resume from {path}: its optimizer or schedule state does not fit this "
                                 f"model: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        self.epoch, self.best_metric = state["epoch"], state["best_metric"]


def _load_trainer_state(path: Path, device: torch.device) -> dict[str, Any]:
    """``trainer_state.pt`` loaded safely (``weights_only=True``: tensors and plain containers,
    never code), or a ``ModelFileError`` saying why it cannot be resumed from (torch's own text,
    which suggests ``weights_only=False``, is never passed on)."""
    def fail(why: str) -> ModelFileError:
        return ModelFileError(f"cannot resume from {path}: {why}")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warning on foreign files
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):
            raise fail("it holds Python objects other than tensors and plain containers, which nertron "
                       "never unpickles (they could run code); it was not written by nertron") from None
        raise fail("it is not a PyTorch file (corrupt, or not written by nertron)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, IndexError, KeyError,
            AttributeError, TypeError, UnicodeDecodeError, MemoryError):
        size = path.stat().st_size if path.exists() else 0
        raise fail("the file is empty" if size == 0 else
                   "it is truncated or corrupt (not a complete PyTorch file)") from None
    if not isinstance(state, dict):
        raise fail(f"it holds {type(state).__name__}, not nertron's trainer state")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise fail(f"it lacks {', '.join(missing)} (not nertron's trainer state)")
    if not isinstance(state["epoch"], int) or isinstance(state["epoch"], bool) or state["epoch"] < 0:
        raise fail(f"its epoch is {state['epoch']!r}, not a count of epochs")
    if state["best_metric"] is not None and not isinstance(state["best_metric"], (int, float)):
        raise fail(f"its best_metric is {type(state['best_metric']).__name__}, not a number")
    for key in ("optimizer", "scheduler", "model"):
        if not isinstance(state[key], dict):
            raise fail(f"its {key} entry is {type(state[key]).__name__}, not a state dict")
    return state
