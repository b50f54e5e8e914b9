"""CRF benchmarks: nertron ``CRF`` vs pytorch-crf (torchcrf 0.7.2), same run; the workload and
the timed calls are ``nertron.bench.crf``'s (the ``crf`` section of ``nertron bench``).

1. pytest-benchmark suite: ``decode`` (Viterbi, Python lists out, as pytorch-crf returns them),
   ``nll`` (negative log-likelihood forward + backward w.r.t. emissions and all parameters) and,
   on CUDA, ``decode_tensor`` (``decode(as_tensor=True)``, nertron only) over B in {1, 32, 256,
   2048}, T in {32, 128, 512}, K in {9, 33, 129}, batch-first fp32 emissions (and bf16 on CUDA,
   nertron only) with a full mask. Each benchmark group holds the nertron row and its torchcrf
   twin. On CPU nertron runs its PyTorch reference path (what CPU users get); on CUDA its
   Triton kernels (``backend='auto'``). Rounds adapt to the cost of a warm-up call
   (``nertron.bench.harness.pedantic``). pytorch-crf is skipped where it cannot run here: its
   NLL keeps a ``(B, K, K)`` fp32 tensor per time step for autograd (skipped above 4 GB); on
   CUDA its decode does one ``.item()`` per tag (skipped above B*T = 131072).

       python -m pytest bench/bench_crf.py --benchmark-json bench/results/crf_cpu.json
       python bench/bench_crf.py table bench/results/crf_cpu.json bench/results/crf_cpu.md

2. ``gpu``: ``triton.testing.do_bench`` on a GPU (``python bench/crf_gpu.py`` is the same):
   the issue's targets at B=256, T=128, K=9 (decode >= 100x and NLL fwd+bwd >= 20x pytorch-crf,
   reported PASS/FAIL, never asserted) and kernel-only timings at B=4096, T=128 with the bytes
   of emissions read per call divided by the time, as a fraction of the measured
   device-to-device copy bandwidth and of the nominal peak; writes ``crf_gpu_<device>.json``,
   ``.csv`` and ``.md`` into ``--out`` (default ``$OUT`` or ``bench/results``).

       python bench/bench_crf.py gpu [--out DIR]
       TRITON_INTERPRET=1 python bench/bench_crf.py gpu --smoke --out /tmp/x   # CPU dry run, tiny shapes
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without an installed nertron

from nertron.bench import crf  # noqa: E402
from nertron.bench.harness import NOMINAL_GBPS, Bench, dtype_name, label_benchmark, lookup, pedantic  # noqa: E402
from nertron.engine.files import open_atomic  # noqa: E402

BENCH = Bench.here()
BS = [1, 32, 256, 2048]
TS = [32, 128, 512]
KS = [9, 33, 129]
DTYPES = [torch.float32, torch.bfloat16] if BENCH.cuda else [torch.float32]
TORCHCRF_NLL_MAX_BYTES = 4e9
TORCHCRF_CUDA_DECODE_MAX_BT = 131072


def _case(benchmark, op, impl, B, T, K, dtype):
    if impl == "torchcrf" and dtype != torch.float32:
        pytest.skip("pytorch-crf: fp32 only")
    label_benchmark(benchmark, BENCH, f"{op} B={B} T={T} K={K}" + ("" if dtype == torch.float32 else f" {dtype_name(dtype)}"),
                    op=op, impl=impl, B=B, T=T, K=K, dtype=dtype_name(dtype))
    w = crf.workload(BENCH, [T] * B, K, dtype)
    return w, (w.ours if impl == "nertron" else w.ref)


GRID = pytest.mark.parametrize("K", KS)
GRID_T = pytest.mark.parametrize("T", TS)
GRID_B = pytest.mark.parametrize("B", BS)
GRID_DTYPE = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
IMPLS = pytest.mark.parametrize("impl", ["nertron", "torchcrf"])


@IMPLS
@GRID_DTYPE
@GRID
@GRID_T
@GRID_B
def test_decode(benchmark, impl, B, T, K, dtype):
    if impl == "torchcrf" and BENCH.cuda and B * T > TORCHCRF_CUDA_DECODE_MAX_BT:
        pytest.skip("pytorch-crf decode on CUDA: one .item() per tag, too slow at this size")
    w, module = _case(benchmark, "decode", impl, B, T, K, dtype)
    pedantic(benchmark, crf.decoder(BENCH, module, w))


@pytest.mark.skipif(not BENCH.cuda, reason="the tensor decode is timed on CUDA (on CPU it is the list decode)")
@GRID_DTYPE
@GRID
@GRID_T
@GRID_B
def test_decode_tensor(benchmark, B, T, K, dtype):
    w, module = _case(benchmark, "decode_tensor", "nertron", B, T, K, dtype)
    pedantic(benchmark, crf.decoder(BENCH, module, w, as_tensor=True))


@IMPLS
@GRID_DTYPE
@GRID
@GRID_T
@GRID_B
def test_nll(benchmark, impl, B, T, K, dtype):
    if impl == "torchcrf" and B * T * K * K * 4 > TORCHCRF_NLL_MAX_BYTES:
        pytest.skip(f"pytorch-crf NLL autograd keeps {B * T * K * K * 4 / 1e9:.0f} GB of (B, K, K) steps")
    w, module = _case(benchmark, "nll", impl, B, T, K, dtype)
    pedantic(benchmark, crf.nll(BENCH, module, w))


# ------------------------------------------------------------------ ratio table
def table(json_path: str) -> str:
    """Markdown table of nertron vs torchcrf times (median, ms) and speed-ups."""
    with open(json_path) as f:
        data = json.load(f)
    rows = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        op = info["op"] + ("" if info.get("dtype", "float32") == "float32" else f" {info['dtype']}")
        key = (op, info["B"], info["T"], info["K"])
        rows[key][info["impl"]] = bench["stats"]["median"] * 1e3
        rows[key]["rounds"] = max(rows[key].get("rounds", 0), bench["stats"]["rounds"])
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}).get("brand_raw", mi.get("processor", "?"))
    device = next((b["extra_info"].get("device_name") for b in data["benchmarks"]), "?")
    lines = [
        f"# CRF benchmarks: nertron vs pytorch-crf ({device})",
        "",
        f"Machine: {cpu}, {mi.get('cpu', {}).get('count', '?')} cores, python {mi.get('python_version', '?')}; "
        f"run {data.get('datetime', '?')}. Median of the rounds shown (1 round for the biggest shapes).",
        "On CPU the timings were taken on a shared 2-core machine while other work was running: "
        "expect noise of tens of percent; the ratios are what matters.",
        "Emissions fp32 unless said, full mask. decode returns Python lists for both; nll is "
        "forward + backward. `-`: pytorch-crf skipped (see bench/bench_crf.py).",
        "",
    ]
    for op in sorted({k[0] for k in rows}, key=lambda o: (o.split()[0] != "decode", o)):
        keys = sorted(k for k in rows if k[0] == op)
        ratios = [rows[k]["torchcrf"] / rows[k]["nertron"] for k in keys
                  if "torchcrf" in rows[k] and "nertron" in rows[k]]
        gm = statistics.geometric_mean(ratios) if ratios else float("nan")
        lines += [f"## {op} (geometric mean speed-up {gm:.1f}x over {len(ratios)} shapes)", "",
                  "| B | T | K | nertron ms | torchcrf ms | speed-up | rounds |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for k in keys:
            r = rows[k]
            ours, theirs = r.get("nertron"), r.get("torchcrf")
            fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
            ratio = "-" if ours is None or theirs is None else f"{theirs / ours:.1f}x"
            lines.append(f"| {k[1]} | {k[2]} | {k[3]} | {fmt(ours)} | {fmt(theirs)} | {ratio} | {r['rounds']} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ do_bench on a GPU
def bench_ms(bench: Bench, fn, slow_first_s: float = 0.5) -> float:
    """do_bench for fast calls; for a first call slower than ``slow_first_s`` (pytorch-crf at
    large sizes) or on CPU (the dry run), the median of 3 wall-clock calls."""
    import triton.testing

    bench.sync()
    t0 = time.perf_counter()
    fn()
    bench.sync()
    first = time.perf_counter() - t0
    if first > slow_first_s or not bench.cuda:
        times = [first]
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            bench.sync()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)
    return float(triton.testing.do_bench(fn, warmup=25, rep=100))


def copy_bandwidth_gbps(bench: Bench) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written), 1 GiB fp32."""
    import triton.testing

    if not bench.cuda:
        return float("nan")
    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=100)
    return 2 * x.numel() * 4 / (ms * 1e-3) / 1e9


def targets(bench: Bench, B: int, T: int, K: int) -> tuple[list[dict], dict]:
    """nertron vs pytorch-crf at the issue's shape, fp32: (timings, speed-ups with PASS/FAIL)."""
    w = crf.workload(bench, [T] * B, K, torch.float32, backend="triton")
    base = dict(B=B, T=T, K=K, dtype="float32")
    calls = {("decode_tensor", "nertron"): crf.decoder(bench, w.ours, w, as_tensor=True),
             ("decode", "nertron"): crf.decoder(bench, w.ours, w),
             ("nll", "nertron"): crf.nll(bench, w.ours, w),
             ("decode", "torchcrf"): crf.decoder(bench, w.ref, w),
             ("nll", "torchcrf"): crf.nll(bench, w.ref, w)}
    rows = []
    for (op, impl), fn in calls.items():
        rows.append(dict(base, op=op, impl=impl, ms=bench_ms(bench, fn)))
        print(json.dumps(rows[-1]), flush=True)
    t = {(r["op"], r["impl"]): r["ms"] for r in rows}
    speedups = {
        "decode_speedup": t[("decode", "torchcrf")] / t[("decode", "nertron")],
        "decode_tensor_speedup": t[("decode", "torchcrf")] / t[("decode_tensor", "nertron")],
        "nll_speedup": t[("nll", "torchcrf")] / t[("nll", "nertron")],
    }
    speedups["decode_pass_100x"] = speedups["decode_speedup"] >= 100
    speedups["nll_pass_20x"] = speedups["nll_speedup"] >= 20
    return rows, speedups


def bandwidth(bench: Bench, B: int, T: int, Ks, copy_gbps: float, peak: float | None) -> list[dict]:
    """Kernel-only calls (emissions read once per pass): GB/s of emissions and its fractions."""
    from nertron.kernels import crf as kernels

    dev = bench.device
    rows = []
    for K in Ks:
        for dtype in (torch.float32, torch.bfloat16):
            em = torch.randn(B, T, K, device=dev).to(dtype)
            lengths = torch.full((B,), T, dtype=torch.int32, device=dev)
            s, e, tr = torch.randn(K, device=dev), torch.randn(K, device=dev), torch.randn(K, K, device=dev)
            nbytes = em.numel() * em.element_size()
            z, alpha = kernels.crf_forward(em, lengths, s, e, tr, store_alpha=True)
            g = torch.ones_like(z)
            calls = {
                "viterbi": lambda: kernels.crf_viterbi(em, lengths, s, e, tr),
                "forward": lambda: kernels.crf_forward(em, lengths, s, e, tr),
                "forward_store_alpha": lambda: kernels.crf_forward(em, lengths, s, e, tr, store_alpha=True),
                "backward": lambda: kernels.crf_backward(em, lengths, e, tr, alpha, z, g),
            }
            for op, fn in calls.items():
                ms = bench_ms(bench, fn)
                gbps = nbytes / (ms * 1e-3) / 1e9
                rows.append(dict(op=op, B=B, T=T, K=K, dtype=dtype_name(dtype), ms=ms, emission_gbps=gbps,
                                 fraction_of_copy=gbps / copy_gbps, fraction_of_nominal=(gbps / peak if peak else None)))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def gpu_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/crf_gpu.py", description="CRF do_bench on a GPU: the targets "
                                 "at B=256, T=128, K=9 and the kernels' emission-read bandwidth at B=4096, T=128 "
                                 "(the B x T x K grid is the pytest-benchmark suite bench/bench_crf.py)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    ap.add_argument("--quick", action="store_true", help="accepted for bench/gpu_check.sh: the run is always "
                    "the targets and the bandwidth (the grid is `pytest bench/bench_crf.py`)")
    ap.add_argument("--smoke", action="store_true", help="CPU dry run (TRITON_INTERPRET=1), tiny shapes")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("crf_gpu.py needs a CUDA device", file=sys.stderr)
        return 2
    bench = Bench("cpu" if args.smoke else "cuda", compile_baselines=False)
    target = (4, 8, 5) if args.smoke else (256, 128, 9)
    bw_B, bw_T, bw_Ks = (4, 8, (5,)) if args.smoke else (4096, 128, (9, 33, 129))

    import torchcrf
    import triton

    name = "smoke-cpu-interpreter" if args.smoke else torch.cuda.get_device_name()
    rows, speedups = targets(bench, *target)
    copy_gbps = copy_bandwidth_gbps(bench)
    _, peak = lookup(NOMINAL_GBPS, name)
    bw = bandwidth(bench, bw_B, bw_T, bw_Ks, copy_gbps, peak)
    result = dict(
        device=name, date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        torch=torch.__version__, triton=triton.__version__, torchcrf=torchcrf.__version__,
        cuda=torch.version.cuda, smoke=args.smoke, python=platform.python_version(),
        copy_bandwidth_gbps=copy_gbps, nominal_bandwidth_gbps=peak,
        targets=speedups, bandwidth=bw, timings=rows,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    stem = out / f"crf_gpu_{slug}"
    with open_atomic(stem.with_suffix(".json")) as f:
        f.write(json.dumps(result, indent=1))
    with open_atomic(stem.with_suffix(".csv"), newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["op", "impl", "B", "T", "K", "dtype", "ms"])
        writer.writeheader()
        writer.writerows(rows)
    md = [f"# CRF on {name}", "",
          f"{result['date']}; torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}",
          "", f"## Targets (B, T, K = {target}, fp32)", "",
          f"- decode (lists, as pytorch-crf): {speedups['decode_speedup']:.1f}x "
          f"({'PASS' if speedups['decode_pass_100x'] else 'FAIL'} >= 100x); "
          f"decode as_tensor: {speedups['decode_tensor_speedup']:.1f}x",
          f"- NLL forward+backward: {speedups['nll_speedup']:.1f}x "
          f"({'PASS' if speedups['nll_pass_20x'] else 'FAIL'} >= 20x)", "",
          f"## Emission-read bandwidth at B={bw_B}, T={bw_T} (copy bandwidth {copy_gbps:.0f} GB/s"
          + (f", nominal {peak} GB/s)" if peak else ")"), "",
          "| kernel | K | dtype | ms | GB/s | of copy | of nominal |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in bw:
        nom = "-" if r["fraction_of_nominal"] is None else f"{r['fraction_of_nominal']:.0%}"
        md.append(f"| {r['op']} | {r['K']} | {r['dtype']} | {r['ms']:.3f} | {r['emission_gbps']:.0f} | "
                  f"{r['fraction_of_copy']:.0%} | {nom} |")
    with open_atomic(stem.with_suffix(".md")) as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {stem}.json/.csv/.md")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["gpu"]:
        return gpu_main(argv[1:])
    if len(argv) < 2 or argv[0] != "table":
        print("usage: python bench/bench_crf.py table RESULTS.json [OUT.md] | gpu [--out DIR] [--smoke]",
              file=sys.stderr)
        return 2
    text = table(argv[1])
    if len(argv) > 2:
        with open_atomic(argv[2]) as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
