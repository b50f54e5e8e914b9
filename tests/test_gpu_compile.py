"""The ahead-of-time compile gate (bench/gpu_compile.py): every Triton kernel, with exactly what
the launchers pass for realistic shapes, compiled to a cubin for real GPU targets on this
machine with no GPU.

The interpreter that runs the other kernel tests proves the math, not the kernel: it does not
type-check, lower ``tl.dot`` or know registers, shared memory and grid limits. These tests run
the gate in a subprocess without ``TRITON_INTERPRET`` (the launchers then pick their GPU
configs, and ``@triton.jit`` gives compilable functions):

- ``NERTRON_COMPILE_GATE=quick`` (the default): one realistic case per kernel and flag
  (bf16 MiniLM encoder, fp32 encoder, CRF K=9 and K=129, pooling, a batch of 8192 short
  sequences), for sm_90; about a minute.
- ``NERTRON_COMPILE_GATE=full`` (``.ci/run`` sets it): bert-base and MiniLM, fp32 / TF32 /
  fp16 / bf16, CRF K from 2 to 256 in every dtype, pooling at two widths, for sm_90 and sm_80;
  this is what writes ``bench/results/gpu_compile.md``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATE = REPO / "bench" / "gpu_compile.py"
MATRIX = os.environ.get("NERTRON_COMPILE_GATE", "quick")
TARGETS = "sm_90,sm_80" if MATRIX == "full" else "sm_90"

pytest.importorskip("triton.backends.nvidia.compiler")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_compile")
    cmd = [sys.executable, str(GATE), "--matrix", MATRIX, "--targets", TARGETS,
           "--json", str(out / "gate.json"), "--markdown", str(out / "gate.md")]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=3600)
    report = json.loads((out / "gate.json").read_text()) if (out / "gate.json").is_file() else None
    return proc, report, out


def test_gate_passes(gate):
    """Every variant compiles for every target and fits; every grid is within CUDA's limits."""
    proc, report, _ = gate
    assert report is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["failures"] == [], "\n".join(report["failures"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for target in TARGETS.split(","):
        summary = report["summary"][target]
        assert summary["variants"] > 0 and summary["failed"] == 0, summary


def test_every_kernel_is_launched(gate):
    """The scenarios reach every ``*_kernel`` of nertron.kernels through the real launchers."""
    _, report, _ = gate
    assert report["unexercised"] == []
    layernorm = {v["label"] for v in report["variants"] if v["kernel"] == "_layernorm_kernel"}
    assert any("EMBEDDINGS=1" in label for label in layernorm) and any("EMBEDDINGS=0" in label for label in layernorm)
    kernels = {v["kernel"] for v in report["variants"]}
    for name in ("_linear_kernel", "_attention_kernel", "_layernorm_kernel",
                 "_crf_viterbi_kernel", "_crf_forward_kernel", "_crf_backward_kernel",
                 "_pooling_stats_kernel", "_pooling_fwd_kernel", "_pooling_bwd_kernel"):
        assert name in kernels, name


def test_crf_backward_single_tile_compiles(gate):
    """Regression: the register-resident backward (every K <= 64) did not compile at all
    (a loop-carried name changed type from pointer to tensor), so CRF training and
    ``CRF.marginals`` failed on every GPU."""
    _, report, _ = gate
    single = [v for v in report["variants"] if v["kernel"] == "_crf_backward_kernel" and "SINGLE_TILE=1" in v["label"]]
    assert single and all(v["status"] == "ok" for v in single)
    assert {("PAIRWISE=1" in v["label"]) for v in single} == {True, False}
    assert any("STORE_BETA=1" in v["label"] for v in single)  # the tagger's span scores


def test_gemm_autotune_is_small(gate):
    """Each GEMM call tunes among at most three configs of its kind (first use compiles them all)."""
    _, report, _ = gate
    calls = [c for c in report["autotuned_calls"] if c["kernel"].endswith("_linear_kernel")]
    assert calls
    assert max(len(c["configs"]) for c in calls) <= 3


def test_tensor_cores_for_half_precision(gate):
    """fp16/bf16 GEMMs and attention lower to wgmma on sm_90 (mma on sm_80), never to FMA."""
    _, report, _ = gate
    for v in report["variants"]:
        if v["kernel"] in ("_linear_kernel", "_attention_kernel") and v["label"].startswith(("bf16", "fp16")):
            assert v["lowering"] == {"sm_90": "wgmma", "sm_80": "mma"}[v["target"]], v


def test_no_heavy_spills(gate):
    """Tiles and warps are chosen so that no variant spills more than a few dozen bytes per
    thread (the 128x256 GEMM and 64-wide CRF backward spilled hundreds to tens of thousands)."""
    _, report, _ = gate
    heavy = [(v["kernel"], v["label"], v["config"], v["target"], v.get("spill_stores"))
             for v in report["variants"] if (v.get("spill_stores") or 0) > 64]
    assert heavy == []


def test_table_written(gate):
    _, _, out = gate
    text = (out / "gate.md").read_text()
    assert "| target | limit | variants |" in text and "Gate: **PASS**" in text


_BAD_KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def _unstable_kernel(x_ptr, n, BLOCK: tl.constexpr):
    acc = x_ptr  # a pointer ...
    for i in range(n):
        acc = tl.load(x_ptr + tl.arange(0, BLOCK))  # ... then a tensor: GPU compilation fails
    tl.store(x_ptr + tl.arange(0, BLOCK), acc)


@triton.jit
def _fine_kernel(x_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2)
'''

_DRIVER = '''
import sys
import torch
sys.path.insert(0, {bench!r})
sys.path.insert(0, {here!r})
import gpu_compile as g
import bad_kernels

rec = g.Recorder(["sm_90"])
x = torch.empty(64)
with rec.active():
    with rec.scene("unstable"):
        bad_kernels._unstable_kernel[(1,)](x, 3, BLOCK=16)
    with rec.scene("huge grid"):
        bad_kernels._fine_kernel[(4, 70000)](x, BLOCK=16)
variants = g.variants_of(rec)
g.compile_all(variants, rec.functions, jobs=1, progress=False)
findings = g.judge(rec, variants, {{}})
# the verdicts on shared memory, on synthetic compile results
v = variants[0]
fake = [g.Variant("k", "sm_90", v.spec, "a", "", "cfg-a", groups={{1}}, result=dict(status="ok", shared=300 * 1024, num_warps=4)),
        g.Variant("k", "sm_90", v.spec, "b", "", "cfg-b", groups={{1}}, result=dict(status="ok", shared=64 * 1024, num_warps=4)),
        g.Variant("k", "sm_90", v.spec, "c", "", "cfg-c", groups={{2}}, result=dict(status="ok", shared=300 * 1024, num_warps=4))]
smem = g.judge(g.Recorder(["sm_90"]), fake, {{"k": None}})
print("FINDINGS", findings["failures"])
print("VERDICTS", [f.result["verdict"] for f in fake])
print("SMEM", smem["failures"])
'''


def test_gate_catches_what_the_interpreter_misses(tmp_path):
    """The gate fails on a type-unstable kernel, a grid over CUDA's limits, a kernel no
    scenario launches, and shared memory over the target's limit (unless the autotuner would
    drop that config for another of the same call that fits)."""
    (tmp_path / "bad_kernels.py").write_text(_BAD_KERNELS)
    script = tmp_path / "drive.py"
    script.write_text(_DRIVER.format(bench=str(REPO / "bench"), here=str(tmp_path)))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines() if " " in line}
    findings = lines["FINDINGS"]
    assert "_unstable_kernel" in findings and "Loop-carried variable" in findings
    assert "_fine_kernel" in findings and "grid (4, 70000, 1)" in findings
    verdicts = lines["VERDICTS"]
    assert "dropped by the autotuner" in verdicts  # group 1: another config fits
    assert verdicts.count("FAIL") == 1  # group 2: nothing fits
    smem = lines["SMEM"]
    assert "needs 300 KiB shared memory, sm_90 has 227" in smem
    assert "k (k) is never launched by any scenario" in smem
