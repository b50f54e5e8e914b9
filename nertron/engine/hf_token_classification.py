"""Hugging Face BERT token-classification checkpoints on nertron's engine.

``load_token_classifier(dir)`` reads a directory written by
``BertForTokenClassification.save_pretrained`` (plus its tokenizer's ``save_pretrained``):

- ``config.json``: the BERT hyper-parameters (``nertron.BertConfig``) and ``id2label``;
- ``model.safetensors`` (sharded too) or ``pytorch_model.bin`` (``torch.load(weights_only=True)``),
  read by ``nertron.engine.checkpoint``: the encoder into nertron's ``BertModel`` (fused Triton
  kernels on CUDA, the PyTorch reference path on CPU), ``classifier.*`` into an ``nn.Linear``;
- the tokenizer: ``tokenizer.json`` through the ``tokenizers`` library, else BERT WordPiece
  built from ``vocab.txt`` and ``tokenizer_config.json`` as ``transformers.BertTokenizer`` builds
  it (lower-casing, accents, CJK characters, special tokens).

``from_transformers(model, tokenizer)`` does the same from a loaded
``transformers.BertForTokenClassification`` and its (fast) tokenizer.

Every problem with the input (no ``id2label``, another architecture, a missing tokenizer
file, a head that does not fit the labels) raises ``TokenClassificationCheckpointError`` (a
``ValueError``) or ``FileNotFoundError`` with one line naming it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tokenizers import AddedToken, Encoding, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from nertron.engine.bert import BertModel
from nertron.engine.checkpoint import CheckpointError, load_checkpoint, load_state_dict_into, normalize_names
from nertron.engine.config import BertConfig, ConfigError

__all__ = ["SUPPORTED_ARCHITECTURES", "TokenClassificationCheckpointError", "TokenClassifier", "HFTokenizer",
           "load_token_classifier", "load_tokenizer", "tokenizer_from", "from_transformers"]

SUPPORTED_ARCHITECTURES = ("BertForTokenClassification",)
SUPPORTED = ("Hugging Face BertForTokenClassification checkpoints (model_type 'bert') and nertron model "
             "directories (model.json)")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# transformers' VERY_LARGE_INTEGER: what tokenizer_config.json holds when the length is unknown.
_UNKNOWN_LENGTH = int(1e29)


class TokenClassificationCheckpointError(ValueError):
    """A directory or model object is not a BERT token-classification checkpoint nertron can run."""


class TokenClassifier(nn.Module):
    """``BertForTokenClassification`` at inference: nertron's ``BertModel`` + a linear head.

    Args:
        bert: the encoder (no pooler needed).
        classifier: ``Linear(hidden, K)``, kept in fp32 whatever the encoder's dtype.
        labels: the K label names, ``id2label`` in id order.
    """

    def __init__(self, bert: BertModel, classifier: nn.Linear, labels: list[str]):
        super().__init__()
        self.bert = bert
        self.classifier = classifier
        self.labels = list(labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Logits ``(B, T, K)`` fp32 of a right-padded batch ``(B, T)``."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # shape: (B, T, H)
        # The head runs in fp32 on the encoder's output (bf16/fp16 encoders included).
        return self.classifier(hidden.float())  # shape: (B, T, K)


@dataclass
class HFTokenizer:
    """A checkpoint's tokenizer as Hugging Face's fast tokenizer runs it, on the ``tokenizers`` library.

    Attributes:
        backend: the ``tokenizers.Tokenizer`` (normaliser, pre-tokeniser, WordPiece, [CLS]/[SEP]).
        model_max_length: the longest encoding, special tokens included (``tokenizer_config.json``'s
            ``model_max_length``, capped at the model's positions).
        unk_token_id: id of the unknown token (its text is the input's characters, as in HF).
        source: where it came from, for messages.
    """

    backend: Tokenizer
    model_max_length: int
    unk_token_id: int | None
    source: str
    _tokens: list[str] = field(default_factory=list, repr=False)
    _token_lengths: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.backend.no_padding()
        self.backend.no_truncation()
        vocab = self.backend.get_vocab(with_added_tokens=True)
        tokens = [""] * (max(vocab.values(), default=-1) + 1)
        for token, index in vocab.items():
            tokens[index] = token
        self._tokens = tokens
        self._token_lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        self.num_special = self.backend.num_special_tokens_to_add(False)
        prefix = getattr(self.backend.model, "continuing_subword_prefix", None)
        # HF: a tokenizer whose model marks continuing sub-words is "word aware" (WordPiece is);
        # others fall back to a whitespace heuristic.
        self.word_aware = bool(prefix)

    @property
    def token_lengths(self) -> np.ndarray:
        """``(V,)`` the length of each token string (``len`` of ``convert_ids_to_tokens(id)``)."""
        return self._token_lengths

    def token(self, token_id: int) -> str:
        """``convert_ids_to_tokens(token_id)``."""
        return self._tokens[token_id]

    def decode_tokens(self, tokens: list[str]) -> str:
        """``convert_tokens_to_string(tokens)``: the decoder's join (``##`` pieces glued, spaces cleaned)."""
        decoder = self.backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def encode(self, texts: list[str], stride: int | None) -> list[list[Encoding]]:
        """Each text's encodings, in one batched call: ``[CLS] ... [SEP]``, at most
        ``model_max_length`` long. Without ``stride`` a longer text is truncated (its first
        encoding only, as HF); with ``stride`` its overflowing windows follow, each
        overlapping the previous one by ``stride`` tokens.
        """
        self.backend.enable_truncation(self.model_max_length, stride=stride or 0, strategy="longest_first",
                                       direction="right")
        encodings = self.backend.encode_batch(texts, add_special_tokens=True)
        if stride is None:
            return [[encoding] for encoding in encodings]
        return [[encoding, *encoding.overflowing] for encoding in encodings]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenClassificationCheckpointError(
            f"{path}: cannot read the {what} ({type(err).__name__}: {err})") from None
    if not isinstance(value, dict):
        raise TokenClassificationCheckpointError(
            f"{path}: the {what} must be a JSON object, got {type(value).__name__}")
    return value


def _check_config(values: dict[str, Any], source: str) -> list[str]:
    """The label names of a token-classification config, after checking it is BERT's."""
    architectures = values.get("architectures") or []
    model_type = values.get("model_type")
    # As transformers' AutoModelForTokenClassification: model_type decides; any BERT class's
    # weights with a ``classifier`` of K x hidden and id2label load as BertForTokenClassification.
    foreign = [name for name in architectures if not str(name).startswith("Bert")]
    if model_type not in (None, "bert") or foreign:
        what = ", ".join(architectures) if architectures else f"model_type {model_type!r}"
        raise TokenClassificationCheckpointError(
            f"{source}: {what} is not supported; nertron.pipeline runs {SUPPORTED}")
    return _labels(values.get("id2label"), source)


def _labels(id2label: Any, source: str) -> list[str]:
    if not id2label:
        raise TokenClassificationCheckpointError(
            f"{source} has no id2label: not a token-classification checkpoint (save it with its labels, e.g. "
            "BertForTokenClassification.from_pretrained(..., id2label={0: 'O', 1: 'B-PER', ...}))")
    try:
        pairs = {int(key): str(value) for key, value in dict(id2label).items()}
    except (TypeError, ValueError):
        raise TokenClassificationCheckpointError(f"{source}: id2label keys must be label ids 0..K-1") from None
    if sorted(pairs) != list(range(len(pairs))):
        raise TokenClassificationCheckpointError(
            f"{source}: id2label keys must be the ids 0..{len(pairs) - 1}, got {sorted(pairs)}")
    return [pairs[i] for i in range(len(pairs))]


def _special(value: Any, default: str) -> str:
    """A special token from tokenizer_config.json: a str, or a dict with "content" (older files)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else default


def _wordpiece_from_vocab(vocab_file: Path, config: dict[str, Any]) -> Tokenizer:
    """BERT WordPiece as ``transformers.BertTokenizer`` builds it from ``vocab.txt``."""
    try:
        with open(vocab_file, encoding="utf-8") as lines:
            tokens = [line.rstrip("\n") for line in lines]
    except (OSError, UnicodeDecodeError) as err:
        raise TokenClassificationCheckpointError(f"{vocab_file}: cannot read the vocabulary ({err})") from None
    vocab = {token: index for index, token in enumerate(tokens)}  # a repeated token keeps its last id, as HF
    names = {key: _special(config.get(f"{key}_token"), f"[{key.upper()}]")
             for key in ("unk", "sep", "pad", "cls", "mask")}
    missing = [token for token in (names["unk"], names["cls"], names["sep"]) if token not in vocab]
    if missing:
        raise TokenClassificationCheckpointError(f"{vocab_file}: the vocabulary lacks {', '.join(missing)}")
    backend = Tokenizer(WordPiece(vocab, unk_token=names["unk"]))
    strip_accents = config.get("strip_accents")
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True) is not False,
        strip_accents=strip_accents if isinstance(strip_accents, bool) else None,
        lowercase=config.get("do_lower_case", True) is not False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    cls, sep = names["cls"], names["sep"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    # transformers registers the special tokens as added tokens: matched whole in the text.
    backend.add_special_tokens([AddedToken(names[key], special=True, normalized=False)
                                for key in ("unk", "sep", "pad", "cls", "mask") if names[key] in vocab])
    return backend


def load_tokenizer(directory: Path, max_positions: int) -> HFTokenizer:
    """The tokenizer saved in ``directory`` (``tokenizer.json``, else ``vocab.txt``)."""
    config_file = directory / "tokenizer_config.json"
    config = _read_json(config_file, "tokenizer configuration") if config_file.is_file() else {}
    if (directory / "tokenizer.json").is_file():
        source = directory / "tokenizer.json"
        try:
            backend = Tokenizer.from_file(str(source))
        except Exception as err:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
            raise TokenClassificationCheckpointError(f"{source}: not a tokenizers file ({err})") from None
    elif (directory / "vocab.txt").is_file():
        source = directory / "vocab.txt"
        backend = _wordpiece_from_vocab(source, config)
    else:
        raise FileNotFoundError(f"no tokenizer in {directory}: looked for {' and '.join(TOKENIZER_FILES)} "
                                "(save it beside the model with tokenizer.save_pretrained(dir))")
    unk = backend.token_to_id(_special(config.get("unk_token"), "[UNK]"))
    return HFTokenizer(backend, _max_length(config.get("model_max_length"), max_positions), unk, str(source))


def _max_length(value: Any, max_positions: int) -> int:
    """A tokenizer's ``model_max_length`` capped at the model's positions; the positions when
    it is unset, not a positive int, or transformers' "unknown" (``VERY_LARGE_INTEGER``)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value >= _UNKNOWN_LENGTH:
        return max_positions
    return min(value, max_positions)


def _build(config: BertConfig, state: dict[str, Tensor], labels: list[str], source: str) -> TokenClassifier:
    weight, bias = state.pop("classifier.weight", None), state.pop("classifier.bias", None)
    if weight is None:
        raise TokenClassificationCheckpointError(
            f"{source} has no classifier.weight: not a BertForTokenClassification checkpoint")
    if weight.dim() != 2 or tuple(weight.shape) != (len(labels), config.hidden_size):
        raise TokenClassificationCheckpointError(
            f"{source}: classifier.weight has shape {tuple(weight.shape)} but id2label has {len(labels)} labels "
            f"and the hidden size is {config.hidden_size}")
    bert = BertModel(config, add_pooling_layer=any(name.startswith("pooler.") for name in state))
    try:
        load_state_dict_into(bert, state, source=source)
    except CheckpointError as err:
        raise TokenClassificationCheckpointError(str(err)) from None
    classifier = nn.Linear(config.hidden_size, len(labels), bias=bias is not None)
    with torch.no_grad():
        classifier.weight.copy_(weight.float())
        if bias is not None:
            classifier.bias.copy_(bias.float())
    return TokenClassifier(bert, classifier, labels).eval()


def load_token_classifier(path: str | Path, tokenizer: Any = None) -> tuple[TokenClassifier, HFTokenizer]:
    """Model and tokenizer of a Hugging Face BERT token-classification directory (see the module doc).

    Args:
        path: the directory.
        tokenizer: None: the directory's own tokenizer; else another one (a transformers fast
            tokenizer object or a directory of tokenizer files), as ``transformers.pipeline`` takes.

    Raises:
        FileNotFoundError: no such directory, no ``config.json``, weights or tokenizer file.
        TokenClassificationCheckpointError: not a BERT token-classification checkpoint (no
            ``id2label``, another architecture, a head or tensors that do not fit).
    """
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"no model at {directory}")
    config_file = directory / "config.json"
    if not config_file.is_file():  # a file, or a directory without config.json
        raise FileNotFoundError(f"no model in {directory} (no config.json): expected {SUPPORTED}")
    values = _read_json(config_file, "model configuration")
    labels = _check_config(values, str(config_file))
    try:
        config = BertConfig.from_dict(values, source=str(config_file))
    except ConfigError as err:
        raise TokenClassificationCheckpointError(str(err)) from None
    hf_tokenizer = (load_tokenizer(directory, config.max_position_embeddings) if tokenizer is None  # before the
                    else tokenizer_from(tokenizer, config.max_position_embeddings))  # weights: fail fast
    try:
        checkpoint = load_checkpoint(directory)
    except CheckpointError as err:
        raise TokenClassificationCheckpointError(str(err)) from None
    model = _build(config, checkpoint.state_dict, labels, str(checkpoint.weights_file))
    return model, hf_tokenizer


def from_transformers(model: Any, tokenizer: Any) -> tuple[TokenClassifier, HFTokenizer]:
    """Model and tokenizer from a loaded ``transformers.BertForTokenClassification`` and its tokenizer.

    The weights are copied into nertron's modules (the transformers model is left as it is).

    Args:
        model: a ``BertForTokenClassification`` (any device or dtype).
        tokenizer: its fast tokenizer object (``backend_tokenizer``), or a directory holding
            the tokenizer files.
    """
    name = type(model).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        raise TokenClassificationCheckpointError(f"a {name} model object is not supported; nertron.pipeline runs "
                                                 f"{SUPPORTED}")
    hf_config = model.config
    source = f"{name} ({getattr(hf_config, 'name_or_path', '') or 'in memory'})"
    values = hf_config.to_dict()
    labels = _check_config({**values, "architectures": None}, source)
    try:
        config = BertConfig.from_dict(values, source=source)
    except ConfigError as err:
        raise TokenClassificationCheckpointError(str(err)) from None
    if tokenizer is None:
        raise TokenClassificationCheckpointError(
            "a model object needs its tokenizer: pipeline(model=model, tokenizer=tokenizer)")
    hf_tokenizer = tokenizer_from(tokenizer, config.max_position_embeddings)
    state = normalize_names({key: value.detach().to("cpu", torch.float32) for key, value in model.state_dict().items()})
    return _build(config, state, labels, source), hf_tokenizer


def tokenizer_from(tokenizer: Any, max_positions: int) -> HFTokenizer:
    """An ``HFTokenizer`` from a transformers fast tokenizer object or a directory of tokenizer files."""
    if isinstance(tokenizer, (str, Path)):
        return load_tokenizer(Path(tokenizer), max_positions)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise TokenClassificationCheckpointError(
            f"tokenizer {type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; pass "
            "AutoTokenizer.from_pretrained(dir) or the directory of its files")
    return HFTokenizer(Tokenizer.from_str(backend.to_str()),
                       _max_length(getattr(tokenizer, "model_max_length", None), max_positions),
                       getattr(tokenizer, "unk_token_id", None), type(tokenizer).__name__)
