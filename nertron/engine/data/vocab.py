"""``LabelVocab``: tag label <-> class id, saved with the model as JSON.

Id 0 is the padding label ``<pad>`` (so zero-filled label tensors are padding). The seed's
continuation label ``X`` (sub-tokens after a word's first) is not a class: it encodes to
``IGNORE_INDEX`` (-100, what ``torch.nn.functional.cross_entropy`` skips) and decodes back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence, overload

__all__ = ["LabelVocab", "UnknownLabelError", "PAD", "IGNORE_LABEL", "IGNORE_INDEX"]

PAD = "<pad>"
IGNORE_LABEL = "X"
IGNORE_INDEX = -100
_FORMAT = "nertron-labels"
_VERSION = 1


class UnknownLabelError(KeyError):
    """A label (or id) the vocabulary does not hold."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0])


def _label_key(label: str) -> tuple:
    # O first, then by entity type, then B, I, E, S: ids stay stable whatever the data order.
    if label == "O":
        return (0, "", 0, label)
    prefix, _, type_ = label.partition("-")
    return (1, type_, "BIES".find(prefix) if len(prefix) == 1 else 9, label)


class LabelVocab:
    """Labels of a tagging model: ``labels[0]`` is ``<pad>``, ``X`` is ignored (id -100).

    Args:
        labels: the class labels in id order; ``<pad>`` is put first if absent, ``X`` left
            out, duplicates rejected.
    """

    def __init__(self, labels: Iterable[str]):
        labels = [label for label in labels if label != IGNORE_LABEL]
        if PAD in labels and labels[0] != PAD:
            raise ValueError(f"{PAD} must be the first label (id 0)")
        if not labels or labels[0] != PAD:
            labels.insert(0, PAD)
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"duplicate labels: {', '.join(duplicates)}")
        self.labels: list[str] = labels
        self._ids = {label: i for i, label in enumerate(labels)}

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> "LabelVocab":
        """The distinct labels, sorted (O first, then by type and prefix)."""
        return cls(sorted(set(labels) - {PAD, IGNORE_LABEL}, key=_label_key))

    @classmethod
    def from_sentences(cls, sentences: Iterable) -> "LabelVocab":
        """All tags of sentences (objects with ``.tags``, or tag lists)."""
        return cls.from_labels(tag for s in sentences for tag in getattr(s, "tags", s))

    @classmethod
    def from_file(cls, path: str | Path, format: str = "auto") -> "LabelVocab":
        """A saved vocabulary (``.json``), or the labels of a dataset file (``read_dataset``)."""
        path = Path(path)
        if path.suffix == ".json":
            return cls.load(path)
        from nertron.engine.data.readers import read_dataset

        return cls.from_sentences(read_dataset(path, format))

    # --- mapping --------------------------------------------------------------------------

    @property
    def num_labels(self) -> int:
        """Number of classes, ``<pad>`` included (the model's output size)."""
        return len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self._ids or label == IGNORE_LABEL

    def _unknown(self, label: str) -> UnknownLabelError:
        known = ", ".join(self.labels[:30]) + (" ..." if len(self.labels) > 30 else "")
        return UnknownLabelError(f"unknown label {label!r}; known labels: {known}")

    @overload
    def encode(self, labels: str) -> int: ...
    @overload
    def encode(self, labels: Sequence[str]) -> list[int]: ...

    def encode(self, labels):
        """Label -> id (``X`` -> -100); a list of labels -> a list of ids.

        Raises:
            UnknownLabelError: (a KeyError) naming the label and the known ones.
        """
        if isinstance(labels, str):
            if labels == IGNORE_LABEL:
                return IGNORE_INDEX
            try:
                return self._ids[labels]
            except KeyError:
                raise self._unknown(labels) from None
        return [self.encode(label) for label in labels]

    @overload
    def decode(self, ids: int) -> str: ...
    @overload
    def decode(self, ids: Sequence[int]) -> list[str]: ...

    def decode(self, ids):
        """Id -> label (-100 -> ``X``); a sequence of ids -> a list of labels.

        Raises:
            UnknownLabelError: an id outside ``[0, num_labels)`` other than -100.
        """
        if isinstance(ids, Sequence) or (hasattr(ids, "tolist") and getattr(ids, "ndim", 0) > 0):
            return [self.decode(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        index = int(ids)
        if index == IGNORE_INDEX:
            return IGNORE_LABEL
        if not 0 <= index < len(self.labels):
            raise UnknownLabelError(f"label id {index} outside [0, {len(self.labels)})")
        return self.labels[index]

    # --- persistence ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": _VERSION, "labels": self.labels, "pad": PAD,
                "ignore_label": IGNORE_LABEL, "ignore_index": IGNORE_INDEX}

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (``labels.json`` beside the model)."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "LabelVocab":
        """Read a vocabulary written by ``save``.

        Raises:
            ValueError: not JSON, or not a label vocabulary, naming the file.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON label vocabulary ({err})") from None
        if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
            raise ValueError(f"{path}: not a label vocabulary (no 'labels' list)")
        if data.get("version", _VERSION) > _VERSION:
            raise ValueError(f"{path}: label vocabulary version {data['version']} is newer than this nertron reads")
        labels = data["labels"]
        if not labels or labels[0] != PAD or not all(isinstance(label, str) for label in labels):
            raise ValueError(f"{path}: labels must be strings starting with {PAD!r}")
        return cls(labels)

    # --- comparison -----------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelVocab) and self.labels == other.labels

    def __hash__(self) -> int:
        return hash(tuple(self.labels))

    def __repr__(self) -> str:
        return f"LabelVocab({self.labels!r})"
