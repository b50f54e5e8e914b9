"""nertron: kernel-optimised BERT named-entity recognition.

The public API is listed in ``__all__``. Names are imported lazily (PEP 562) so that
``import nertron`` and ``nertron --help`` do not pay for importing torch.
"""
from importlib import import_module

from nertron._version import __version__

_EXPORTS = {
    "BertConfig": "nertron.engine.config",
    "BertModel": "nertron.engine.bert",
    "BertOutput": "nertron.engine.bert",
    "load_checkpoint": "nertron.engine.checkpoint",
    "WordPieceTokenizer": "nertron.engine.tokenizer",
    "WordPieces": "nertron.engine.tokenizer",
    "align_labels": "nertron.engine.tokenizer",
    "merge_subtoken_predictions": "nertron.engine.tokenizer",
    "merge_windows": "nertron.engine.tokenizer",
    "ScalarMix": "nertron.bindings.pooling",
    "LayerPooling": "nertron.bindings.pooling",
    "patch": "nertron.bindings.patch",
    "unpatch": "nertron.bindings.patch",
    "CRF": "nertron.bindings.crf",
    "allowed_transitions": "nertron.bindings.crf",
    "Tagger": "nertron.engine.tagger",
    "Entity": "nertron.engine.tagger",
    "pipeline": "nertron.engine.pipeline",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nertron' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
