"""The quick GPU check's dry run: ``bash bench/gpu_check.sh quick --dry-run`` runs the GPU
call's code path on CPU (tiny shapes, Triton's interpreter, wall-clock timing) so that the
first, short GPU session does not die of a typo. It must exit 0, print the one table with
every headline row, leave no row in error and write at most 8 files (the device tool
returns no more)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torchcrf")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
FILES = {"device.txt", "tests.log", "tests.xml", "quick.log", "quick.md", "quick.json"}
HEADLINES = (  # (table title, group in quick.json, roles every group must hold)
    ("End-to-end tagger, CoNLL-2003 length mix", "e2e", ("nertron", "baseline")),
    ("BERT encoder, fraction of dense bf16 peak", "encoder", ("nertron", "baseline")),
    ("CRF Viterbi decode", "crf decode", ("nertron", "baseline")),
    ("CRF forward (log Z)", "crf forward", ("nertron", "baseline")),
    ("Weighted-layer pooling, fraction of HBM bandwidth", "pooling", ("nertron", "baseline")),
    ("Device ceilings (measured)", "ceilings", ("ceiling",)),
    ("Tagger host pipeline and GPU busy fraction (1,500 CoNLL sentences)", "host", ("nertron", "reference")),
    ("nertron.pipeline vs transformers.pipeline (token classification)", "pipeline", ("nertron", "baseline")),
)
IMPLS = (  # implementations the table must compare
    "nertron model", "nertron Tagger.tag_words", "transformers BertModel (sdpa) + same head + pytorch-crf, eager",
    "transformers BertModel torch.compile", "nertron BertModel", "transformers BertModel (sdpa), eager",
    "transformers BertModel (sdpa), torch.compile", "nertron CRF.decode(as_tensor=True)", "pytorch-crf CRF.decode",
    "nertron CRF.forward", "pytorch-crf CRF.forward", "nertron LayerPooling", "device-to-device copy", "cuBLAS GEMM",
    "nertron Tagger.tag end to end", "nertron Tagger host work, 1 thread(s)", "tokenizers encode_batch, 1 thread(s)",
    "nertron.pipeline (fused encoder)", "transformers.pipeline (sdpa)",
)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quick_dry_run(tmp_path, minilm_dir):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), NERTRON_CHECKPOINT=str(minilm_dir), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)  # the script must set it itself
    proc = subprocess.run(["bash", str(SCRIPT), "quick", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) <= 8, written
    assert {p.name for p in written} == FILES, written

    device = (out / "device.txt").read_text()
    assert "torch" in device and "triton" in device and "TRITON_INTERPRET 1" in device
    assert "collected" in (out / "tests.log").read_text()  # pytest --collect-only -m gpu ran

    md = (out / "quick.md").read_text()
    assert "DRY RUN" in md and "NOT measurements" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    for title, _, _ in HEADLINES:
        assert any(f"**{title}**" in line for line in table), title
    for impl in IMPLS:
        assert any(impl in line for line in table), impl
    assert "| headline |" in log  # the table is printed too

    report = json.loads((out / "quick.json").read_text())
    assert report["complete"] is True
    env_ = report["environment"]
    assert env_["dry_run"] is True and env_["measured"] is False and env_["triton_interpret"] == "1"
    assert env_["dense_bf16_peak_tflops"] == 989  # looked up under the dry run's stand-in name
    rows = report["rows"]
    errors = [(r["group"], r["impl"], r["error"]) for r in rows if "error" in r]
    assert not errors, errors
    for _, group, roles in HEADLINES:
        for role in roles:
            assert any(r["group"] == group and r["role"] == role for r in rows), (group, role)
    for row in rows:
        assert row["ms"] > 0 and row["p20_ms"] <= row["ms"] <= row["p80_ms"], row
        if row["role"] == "baseline":
            assert row["speedups"] and all(v > 0 for v in row["speedups"].values()), row
    by_impl = {r["impl"]: r for r in rows}
    e2e = by_impl["nertron model: batch in, tags out (Triton kernels)"]
    assert e2e["tokens_per_s"] > 0 and e2e["tags_agree"] >= 0.9  # same weights, fp32
    assert by_impl["nertron CRF.decode(as_tensor=True) (Triton Viterbi + back-trace)"]["tags_agree"] == 1.0
    assert by_impl["nertron CRF.forward (Triton log Z + path score)"]["rel_diff"] < 1e-4
    assert by_impl["nertron BertModel (fused Triton encoder)"]["rel_diff"] < 1e-3
    encoder = [r for r in rows if r["group"] == "encoder"]
    assert all("fraction_of_peak" in r and "tflops" in r for r in encoder)
    pooling = [r for r in rows if r["group"] == "pooling"]
    assert all("fraction_of_copy" in r and "fraction_of_nominal" in r for r in pooling)
    assert sum("compile" in r["impl"] for r in rows) == 2  # e2e and encoder under torch.compile
    host = by_impl["nertron Tagger.tag end to end (texts in, entities out)"]
    assert 0 < host["gpu_busy"] and "busy" in host["note"] and host["tokens_per_s"] > 0
    assert "same entities: True" in by_impl["nertron.pipeline (fused encoder)"]["config"]
