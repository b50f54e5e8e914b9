"""Convert Google's TensorFlow BERT checkpoints to a nertron / Hugging Face directory.

Google's checkpoints (``bert_model.ckpt.{index,data-*}`` + ``bert_config.json`` +
``vocab.txt``) name variables ``bert/encoder/layer_3/attention/self/query/kernel`` and
store dense kernels as (in, out), where PyTorch's ``nn.Linear`` keeps (out, in). The
converter reads the checkpoint with TensorFlow (``tf.train.load_checkpoint``, the one
dependency of the ``tf`` extra), maps every variable of the encoder and pooler to its
Hugging Face name, transposes kernels, skips optimizer slots (``adam_m``/``adam_v``) and
``global_step``, and writes ``model.safetensors`` + ``config.json`` (+ ``vocab.txt``).
Pre-training heads (``cls/...``) are not part of the encoder: they are skipped and reported.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nertron.engine.checkpoint import CheckpointError, load_state_dict_into
from nertron.engine.config import BertConfig

# Google name (after "bert/") -> Hugging Face name, for the parts outside the layer stack.
_FIXED = {
    "embeddings/word_embeddings": "embeddings.word_embeddings.weight",
    "embeddings/position_embeddings": "embeddings.position_embeddings.weight",
    "embeddings/token_type_embeddings": "embeddings.token_type_embeddings.weight",
    "embeddings/LayerNorm/gamma": "embeddings.LayerNorm.weight",
    "embeddings/LayerNorm/beta": "embeddings.LayerNorm.bias",
    "pooler/dense/kernel": "pooler.dense.weight",
    "pooler/dense/bias": "pooler.dense.bias",
}
# Inside "encoder/layer_N/": the dense and LayerNorm blocks, named alike in both worlds.
_LAYER_BLOCKS = (
    "attention/self/query",
    "attention/self/key",
    "attention/self/value",
    "attention/output/dense",
    "attention/output/LayerNorm",
    "intermediate/dense",
    "output/dense",
    "output/LayerNorm",
)
_LEAVES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_LAYER = re.compile(r"^encoder/layer_(\d+)/(.+)/(kernel|bias|gamma|beta)$")
_OPTIMIZER = re.compile(r"(^|/)(adam_m|adam_v|global_step|Momentum|LAMB\w*)$")
_HEADS = ("cls/",)
# Bookkeeping entries TF writes into some checkpoints; they hold no tensor of the model.
_METADATA = ("_CHECKPOINTABLE_OBJECT_GRAPH",)


@dataclass
class ConversionReport:
    """What ``convert_tf_checkpoint`` wrote and what it left out (and why)."""

    output_dir: Path
    converted: list[str] = field(default_factory=list)
    skipped_optimizer: list[str] = field(default_factory=list)
    skipped_heads: list[str] = field(default_factory=list)
    copied_vocab: bool = False


def tf_name_to_torch(name: str) -> tuple[str, bool] | None:
    """Map a Google variable name to ``(hugging_face_name, transpose)``; None if not an encoder variable."""
    if not name.startswith("bert/"):
        return None
    rest = name[len("bert/") :]
    if rest in _FIXED:
        return _FIXED[rest], rest.endswith("/kernel")
    match = _LAYER.match(rest)
    if match is None or match.group(2) not in _LAYER_BLOCKS:
        return None
    layer, block, leaf = match.groups()
    return f"encoder.layer.{layer}.{block.replace('/', '.')}.{_LEAVES[leaf]}", leaf == "kernel"


def convert_tf_checkpoint(
    tf_checkpoint: str | Path,
    bert_config: str | Path,
    output_dir: str | Path,
    vocab_file: str | Path | None = None,
) -> ConversionReport:
    """Convert a Google TF BERT checkpoint into ``output_dir``.

    Args:
        tf_checkpoint: the checkpoint prefix (``DIR/bert_model.ckpt``) or its directory.
        bert_config: Google's ``bert_config.json``.
        output_dir: created if needed; receives ``model.safetensors``, ``config.json`` and
            ``vocab.txt`` (from ``vocab_file``, else the one beside the checkpoint, if any).

    Returns:
        A ``ConversionReport`` listing converted and skipped variables.

    Raises:
        ImportError: TensorFlow is not installed (``pip install 'nertron[tf]'``).
        CheckpointError: unknown variables, or tensors that do not fit the config.
    """
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError("convert-tf reads TF checkpoints with TensorFlow: pip install 'nertron[tf]'") from err
    from safetensors.torch import save_file

    from nertron.engine.bert import BertModel

    tf_checkpoint, output_dir = Path(tf_checkpoint), Path(output_dir)
    config = BertConfig.from_json_file(bert_config)
    prefix = tf.train.latest_checkpoint(str(tf_checkpoint)) if tf_checkpoint.is_dir() else str(tf_checkpoint)
    if prefix is None or not Path(prefix + ".index").is_file():
        raise FileNotFoundError(f"no TensorFlow checkpoint at {tf_checkpoint} (expected {tf_checkpoint}.index)")
    reader = tf.train.load_checkpoint(prefix)

    report = ConversionReport(output_dir)
    state_dict: dict[str, torch.Tensor] = {}
    unknown = []
    for name in sorted(reader.get_variable_to_shape_map()):
        if name in _METADATA:
            continue
        if _OPTIMIZER.search(name):
            report.skipped_optimizer.append(name)
            continue
        if name.startswith(_HEADS):
            report.skipped_heads.append(name)
            continue
        mapped = tf_name_to_torch(name)
        if mapped is None:
            unknown.append(name)
            continue
        torch_name, transpose = mapped
        array = np.asarray(reader.get_tensor(name), dtype=np.float32)
        if transpose:
            array = array.T  # TF dense kernels are (in, out); nn.Linear weights are (out, in)
        state_dict[torch_name] = torch.from_numpy(np.ascontiguousarray(array))
        report.converted.append(name)
    if unknown:
        raise CheckpointError(f"{prefix}: variables nertron does not know how to map: {', '.join(unknown)}")

    # Load into a model first: this checks every tensor is there with the config's shapes
    # before anything is written.
    has_pooler = any(key.startswith("pooler.") for key in state_dict)
    load_state_dict_into(BertModel(config, add_pooling_layer=has_pooler), state_dict, source=prefix)

    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(output_dir / "model.safetensors"), metadata={"format": "pt", "converted_from": prefix})
    values = config.to_dict()
    values.setdefault("model_type", "bert")
    values.setdefault("architectures", ["BertModel"])
    BertConfig.from_dict(values).to_json_file(output_dir / "config.json")
    vocab = Path(vocab_file) if vocab_file is not None else Path(prefix).parent / "vocab.txt"
    if vocab.is_file():
        shutil.copyfile(vocab, output_dir / "vocab.txt")
        report.copied_vocab = True
    elif vocab_file is not None:
        raise FileNotFoundError(f"vocab file not found: {vocab}")
    return report
