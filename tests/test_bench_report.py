"""Smoke test of the benchmark suite (``nertron bench`` = ``nertron.bench.report.main``; from a
checkout ``python bench/report.py``): a --quick CPU run of three sections writes the Markdown
report, the JSON file and the plots, and every measured row holds the nertron timing, the
baseline timing and their ratio."""
import json
import runpy
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("transformers")
pytest.importorskip("torchcrf")

from nertron.bench import report as suite  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "report.py"


def test_checkout_script_is_the_package_entry_point():
    assert runpy.run_path(str(SCRIPT))["main"] is suite.main


def test_sections_are_modules_with_titles():
    assert list(suite.SECTIONS) == ["crf", "pooling", "attention", "gemm", "layernorm", "encoder", "e2e", "pipeline",
                                   "host"]
    for name, module in suite.SECTIONS.items():
        assert callable(module.section) and module.TITLE, name


def test_quick_report_on_cpu(tmp_path, minilm_dir):
    threads = torch.get_num_threads()
    try:
        code = suite.main(["--device", "cpu", "--quick", "--sections", "crf,pooling,e2e,host",
                           "--out", str(tmp_path), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    md, js = tmp_path / "report_cpu.md", tmp_path / "report_cpu.json"
    assert md.is_file() and js.is_file()
    report = json.loads(js.read_text())
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["date"]
    for section in ("crf", "pooling", "e2e"):
        png = tmp_path / f"report_cpu_{section}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", section
        assert f"report_cpu_{section}.png" in md.read_text()
    rows = report["rows"]
    assert {r["section"] for r in rows} == {"crf", "pooling", "e2e", "host"}
    ops = {(r["section"], r["op"]) for r in rows}
    assert ("crf", "decode") in ops and ("crf", "nll fwd+bwd") in ops
    # host: the replayed tagger beside encode_batch, one thread in --quick; no plot (no sweep)
    [host] = [r for r in rows if r["section"] == "host"]
    assert not host.get("status"), host
    ours, base = host["impls"]["nertron"], host["impls"][host["baseline"]]
    assert host["config"]["threads"] == 1 and ours["us_per_text"] > 0 and base["us_per_text"] > 0
    assert host["ratio"] == pytest.approx(base["ms"] / ours["ms"])
    assert 0 < host["device_share"]["busy"] and host["format_us_per_text"]["jsonl"] > 0
    assert "host / encode_batch" in md.read_text() and not (tmp_path / "report_cpu_host.png").exists()
    rows = [r for r in rows if r["section"] != "host"]
    for row in rows:
        assert not row.get("status"), row
        ours, base = row["impls"]["nertron"], row["impls"][row["baseline"]]
        for result in (ours, base):
            assert result["ms"] > 0 and result["p20_ms"] <= result["ms"] <= result["p80_ms"], row
            assert result["tokens_per_s"] > 0 and result["peak_mem_mb"] is not None
        assert row["ratio"] == pytest.approx(base["ms"] / ours["ms"])
    e2e = [r for r in rows if r["section"] == "e2e"]
    assert all(r["impls"]["nertron"]["sentences_per_s"] > 0 for r in e2e)
    assert all(r["tags_agree"] == pytest.approx(1.0) for r in e2e)  # same weights, fp32: same tags
