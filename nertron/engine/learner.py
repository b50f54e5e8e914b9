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
import time
from array import array
from pathlib import Path
from typing import Any, Iterable

import safetensors.torch
import torch
from tqdm.auto import tqdm

from nertron.engine.data.loader import NerData
from nertron.engine.metrics import sentence_scores, span_scores, token_scores
from nertron.engine.models import NerModel, write_atomic

TRAINER_STATE = "trainer_state.pt"


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class NerLearner:
    """Fits a ``NerModel`` on ``NerData``.

    Args:
        model: a model from ``nertron.engine.models``.
        data: ``NerData`` with train and validation sets.
        best_model_path: directory where the best model (by ``target_metric``) is saved.
        lr: peak learning rate; clip: max gradient norm (None = no clipping).
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
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device)
        self.data = data
        self.best_model_path = Path(best_model_path)
        self.lr, self.clip, self.warmup, self.weight_decay = lr, clip, warmup, weight_decay
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
            if file.is_file():
                states = safetensors.torch.load_file(str(file))["states"]  # shape: (words, L, H)
                if states.shape[0] == offsets[-1]:
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
            partial = file.with_suffix(".partial")
            safetensors.torch.save_file({"states": states}, str(partial))
            partial.replace(file)

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

    def _make_optimizer(self, total_steps: int) -> None:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.dim() < 2 or "norm" in name.lower() else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        warmup_steps = max(1, int(self.warmup * total_steps))

        def schedule(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def fit(self, epochs: int, target_metric: str = "span_f1", resume: bool = False) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs (in total, counting a resumed run's), saving the best model.

        Args:
            epochs: total number of epochs.
            target_metric: a key of ``evaluate()``'s result (``span_f1``, ``token_f1``,
                ``intent_accuracy``, or ``-loss``), higher is better.
            resume: continue from ``best_model_path``'s trainer state.

        Returns:
            The per-epoch log records.
        """
        torch.manual_seed(self.seed)
        steps_per_epoch = len(self.data.batches("train", shuffle=True, epoch=0))
        if self.optimizer is None:
            self._make_optimizer(epochs * steps_per_epoch)
        if resume:
            self._resume()
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
                intents = self.data.intent_vocab.names if self.data.intent_vocab is not None else None
                self.model.save(self.best_model_path, self.data.vocab, intents=intents)
            record["best"] = improved
            self.history.append(record)
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            self._save_trainer_state()
            if self.progress:
                shown = {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}
                tqdm.write(f"epoch {self.epoch}/{epochs} {shown}{' *' if improved else ''}")
        return self.history

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
        state = torch.load(path, map_location=self.device, weights_only=True)
        try:
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        except RuntimeError as err:
            raise ValueError(f"{path} was saved from a different model or label set: {err}") from None
        missing = [k for k in missing if k in self.model.trained_state_dict()]  # a frozen BERT is not in it
        if missing or unexpected:
            raise ValueError(f"{path} was saved from a different model or label set: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_metric = state["epoch"], state["best_metric"]
