"""BERT configuration, read from Google's ``bert_config.json`` or Hugging Face's ``config.json``.

Both files use the same keys. Keys nertron does not use are kept (``extra``) and written
back, so a configuration survives a round trip through nertron unchanged.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
# Activation names accepted in ``hidden_act`` (Google's and Hugging Face's spellings).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


class ConfigError(ValueError):
    """A BERT configuration file is missing, malformed or describes an unsupported model."""


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder.

    The required fields have no default: Google's and Hugging Face's files always carry them.
    ``layer_norm_eps`` defaults to 1e-12, the value Google's TF BERT hard-codes and its
    ``bert_config.json`` therefore omits.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self, source: str = "the configuration") -> None:
        """Raise ``ConfigError`` naming the first inconsistent value."""
        for key in REQUIRED_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{source}: {key!r} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{source}: hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"{source}: hidden_act={self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        if self.position_embedding_type != "absolute":
            raise ConfigError(
                f"{source}: position_embedding_type={self.position_embedding_type!r} is not supported; "
                "nertron implements BERT's absolute position embeddings"
            )
        if not 0.0 < float(self.layer_norm_eps) < 1.0:
            raise ConfigError(f"{source}: layer_norm_eps={self.layer_norm_eps!r} is out of range")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the configuration") -> "BertConfig":
        """Build a config from a dict of Google/Hugging Face keys; unknown keys go to ``extra``."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(values).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in values]
        if missing:
            raise ConfigError(f"{source}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        known = {name for name in cls.__dataclass_fields__ if name != "extra"}
        kwargs = {key: value for key, value in values.items() if key in known}
        extra = {key: value for key, value in values.items() if key not in known}
        config = cls.__new__(cls)
        # Set the fields by hand so that validation errors name the file, not just the value.
        for name, spec in cls.__dataclass_fields__.items():
            if name == "extra":
                continue
            default = spec.default
            setattr(config, name, kwargs.get(name, default))
        config.extra = extra
        config.validate(source)
        return config

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        """Read ``bert_config.json`` (Google) or ``config.json`` (Hugging Face)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"BERT config file not found: {path}")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        extra = values.pop("extra")
        return {**extra, **values}

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
