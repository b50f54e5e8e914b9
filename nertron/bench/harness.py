"""The timing harness shared by every benchmark section (``nertron.bench.<op>``) and the
pytest-benchmark suites (``bench/bench_<op>.py``).

Device conventions: on CUDA nertron runs its Triton kernels (``backend='auto'``) in bf16 and
times with ``triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])``; on CPU it runs its
PyTorch reference path in fp32, timed with ``time.perf_counter`` (median, p20, p80 over
repeats). Baselines run in the same dtype. Peak memory: ``torch.cuda.max_memory_allocated``
above the allocation before the call on GPU; on CPU the process's peak resident set size above
its level before the call (VmHWM reset through ``/proc/self/clear_refs``, freed heap returned by
``malloc_trim`` first), one extra call per measurement.
"""
from __future__ import annotations

import ctypes
import gc
import json
import math
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

DATA = Path(__file__).resolve().parent / "data"

# Grids. "kernel": the cheap sections (crf, pooling, attention, gemm, layernorm); "model": the
# encoder and the tagger. Batch sweeps use CoNLL-2003 length mixes, length sweeps a fixed
# length at batch `fixed_batch`. torch.compile runs at the `compile_at` points only (one
# compilation per shape).
GRIDS = {
    "cuda": {
        "kernel": dict(batches=(1, 8, 32, 128, 256), lengths=(32, 64, 128, 256, 512), fixed_batch=32),
        "model": dict(batches=(1, 8, 32, 128, 256), lengths=(32, 64, 128, 256, 512), fixed_batch=32),
        "compile_at": {("batch", 32)},  # compiling bert-base per shape costs tens of seconds
        "budget_s": None,
    },
    "cpu": {
        "kernel": dict(batches=(1, 8, 32, 128), lengths=(16, 32, 64, 128, 256), fixed_batch=8),
        "model": dict(batches=(1, 8, 32, 64), lengths=(32, 64, 128, 256), fixed_batch=8),
        "compile_at": {("batch", 8), ("length", 64)},
        "budget_s": 0.5,
    },
    "quick": {
        "kernel": dict(batches=(1, 4), lengths=(8, 16), fixed_batch=2),
        "model": dict(batches=(1, 4), lengths=(8, 16), fixed_batch=2),
        "compile_at": set(),
        "budget_s": 0.03,
    },
}


# Data-sheet figures, matched against the device name longest key first (``lookup``).
# Dense (no structured sparsity) bf16 tensor-core peaks, TFLOP/s.
DENSE_BF16_TFLOPS = {
    "H100 NVL": 835, "H100 PCIe": 756, "H100": 989, "H800 PCIe": 756, "H800": 989,
    "H200 NVL": 835, "H200": 989, "GH200": 989,
    "A100": 312, "L40S": 362, "L40": 181, "L4": 121,
}
# Nominal memory bandwidth, GB/s.
NOMINAL_GBPS = {
    "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "H200 NVL": 4800, "H200": 4800,
    "GH200": 4000, "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L40": 864, "L4": 300,
    "A10G": 600, "RTX 4090": 1008, "V100": 900,
}


def lookup(table: dict[str, float], name: str) -> tuple[str | None, float | None]:
    """(key, value) of the longest key of ``table`` in the device ``name``, or (None, None)."""
    for key in sorted(table, key=len, reverse=True):
        if key in name:
            return key, table[key]
    return None, None


# ====================================================================== measurement
class Bench:
    """Timing, memory and run-wide settings shared by the sections."""

    def __init__(self, device: str, quick: bool = False, compile_baselines: bool = True,
                 interpret_kernels: bool = False):
        self.device = device
        self.cuda = device.startswith("cuda")
        self.quick = quick
        self.grid = GRIDS["quick" if quick else ("cuda" if self.cuda else "cpu")]
        self.compile_baselines = compile_baselines
        # --interpret-kernels: run the GPU-only rows' Triton kernels on CPU in the interpreter
        # (a dry run of the GPU code paths; its timings mean nothing).
        self.kernels = self.cuda or interpret_kernels
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.memory_method = (
            "torch.cuda.max_memory_allocated() above memory_allocated() before the call"
            if self.cuda else cpu_memory_method()
        )
        self.timing_method = (
            "triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]) after one warm-up call"
            if self.cuda else
            "time.perf_counter over repeats after one warm-up call (repeats sized to the warm-up: "
            f"about {self.grid['budget_s']} s per measurement, 3 to 30 repeats); median, p20, p80"
        )

    @classmethod
    def here(cls) -> "Bench":
        """The device there is (cuda if present, else cpu), for the pytest-benchmark suites."""
        return cls("cuda" if torch.cuda.is_available() else "cpu", compile_baselines=False)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def compile_here(self, sweep: str, point: int) -> bool:
        return self.compile_baselines and (sweep, point) in self.grid["compile_at"]

    def time(self, fn: Callable[[], Any]) -> dict[str, Any]:
        """Median / p20 / p80 milliseconds of ``fn`` (which must synchronise itself on GPU)."""
        t0 = time.perf_counter()
        fn()
        self.sync()
        first = time.perf_counter() - t0
        if self.cuda:
            import triton.testing

            median, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
            return dict(ms=median, p20_ms=p20, p80_ms=p80, first_call_ms=first * 1e3, method="do_bench")
        budget = self.grid["budget_s"]
        repeats = max(3, min(30, int(budget / max(first, 1e-6))))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return dict(ms=quantile(times, 0.5), p20_ms=quantile(times, 0.2), p80_ms=quantile(times, 0.8),
                    repeats=repeats, first_call_ms=first * 1e3, method="perf_counter")

    def memory(self, fn: Callable[[], Any]) -> float | None:
        """Peak memory of one call of ``fn`` above the level before it, in MB."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        return cpu_peak_rss_delta_mb(fn)


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = q * (len(values) - 1)
    low = int(math.floor(pos))
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _clear_refs_works() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def cpu_memory_method() -> str:
    if _clear_refs_works():
        return ("peak RSS delta: VmHWM after the call minus VmRSS before it, VmHWM reset via "
                "/proc/self/clear_refs and freed heap returned with malloc_trim before each measured call")
    return ("peak RSS delta: resource.getrusage().ru_maxrss after minus before (lifetime peak: "
            "0 when the call stays under an earlier peak)")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_peak_rss_delta_mb(fn: Callable[[], Any]) -> float:
    gc.collect()
    _malloc_trim()
    if _clear_refs_works():
        before = _status_kb("VmRSS")
        fn()
        return max(0, _status_kb("VmHWM") - before) / 1024
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) < 2000 else text[:2000] + " ..."


def measure(bench: Bench, fn: Callable[[], Any], *, tokens: int, sentences: int | None = None,
            label: str = "", **extra: Any) -> dict[str, Any]:
    """Time + memory of one implementation, or {"error": ...} if it fails (the run goes on)."""
    try:
        result = bench.time(fn)
        result["peak_mem_mb"] = bench.memory(fn)
    except Exception as err:  # noqa: BLE001 - a failing row is reported, not fatal
        print(f"  {label}: FAILED {error_text(err)}", file=sys.stderr, flush=True)
        traceback.print_exc(limit=3, file=sys.stderr)
        if bench.cuda:
            torch.cuda.empty_cache()
        return {"error": error_text(err), **extra}
    seconds = result["ms"] * 1e-3
    result["tokens_per_s"] = tokens / seconds
    if sentences is not None:
        result["sentences_per_s"] = sentences / seconds
    result.update(extra)
    print(f"  {label}: {result['ms']:.3f} ms [{result['p20_ms']:.3f}, {result['p80_ms']:.3f}] "
          f"{result['tokens_per_s']:.4g} tok/s, peak {result['peak_mem_mb']:.1f} MB", flush=True)
    return result


def first_call(make: Callable[[], Callable[[], Any]], sync: Callable[[], None]) -> tuple[Callable[[], Any], float]:
    """``fn = make()`` and the seconds of its first, synchronised call (where torch.compile compiles)."""
    fn = make()
    t0 = time.perf_counter()
    fn()
    sync()
    return fn, time.perf_counter() - t0


def compiled_measure(bench: Bench, make: Callable[[], Callable[[], Any]], **kwargs: Any) -> dict[str, Any]:
    """Like ``measure`` for a ``torch.compile``d baseline: compilation (the first call) is
    timed on its own and reported as ``compile_s``; a failure is recorded, not raised."""
    import torch._dynamo

    torch._dynamo.reset()  # fresh caches: no silent fallback to eager after the recompile limit
    try:
        fn, compile_s = first_call(make, bench.sync)
    except Exception as err:  # noqa: BLE001
        print(f"  {kwargs.get('label', '')}: torch.compile FAILED {error_text(err)}", file=sys.stderr, flush=True)
        return {"error": "torch.compile: " + error_text(err)}
    return measure(bench, fn, compile_s=compile_s, **kwargs)


def measure_all(bench: Bench, calls: dict[str, Callable[[], Any]], *, label: str, **kwargs: Any) -> dict[str, dict]:
    """``measure`` each of ``calls`` (implementation name -> timed call), in order."""
    return {name: measure(bench, fn, label=f"{label} {name}", **kwargs) for name, fn in calls.items()}


def make_row(section: str, op: str, sweep: str, config: dict[str, Any], impls: dict[str, dict], baseline: str,
             tokens: int, sentences: int | None = None, **extra: Any) -> dict[str, Any]:
    """One table row: the implementations' results and the ratios (baseline time / nertron time)."""
    row = dict(section=section, op=op, sweep=sweep, config=config, tokens=tokens, sentences=sentences,
               baseline=baseline, impls=impls, **extra)
    ours = impls.get("nertron", {}).get("ms")
    base = impls.get(baseline, {}).get("ms")
    # x = baseline time / nertron time; for nertron's other entry points ("nertron ..."):
    # the main baseline's time / theirs.
    row["ratios"] = {name: (base / r["ms"] if name.startswith("nertron ") else r["ms"] / ours)
                     for name, r in impls.items()
                     if name != "nertron" and r.get("ms") and (base if name.startswith("nertron ") else ours)}
    row["ratio"] = row["ratios"].get(baseline)
    return row


def status_row(section: str, op: str, status: str, note: str, baseline: str | None = None) -> dict[str, Any]:
    """A row without measurements: a section that failed ("error") or does not apply ("gpu only")."""
    return dict(section=section, op=op, sweep="-", config={}, tokens=None, sentences=None, baseline=baseline,
                impls={}, ratios={}, ratio=None, status=status, note=note)


# ====================================================================== inputs
def conll_lengths(count: int, seed: int = 0) -> list[int]:
    """``count`` sentence lengths (sub-tokens with [CLS]/[SEP]) drawn from CoNLL-2003 train."""
    histogram = json.loads((DATA / "conll2003_lengths.json").read_text())["histogram"]
    values, weights = zip(*((int(k), v) for k, v in histogram.items()))
    return random.Random(seed).choices(values, weights=weights, k=count)


def sweep_points(bench: Bench, kind: str) -> Iterator[tuple[str, int, list[int]]]:
    """(sweep, point, lengths): the batch sweep (CoNLL length mix) then the length sweep."""
    grid = bench.grid[kind]
    for batch in grid["batches"]:
        yield "batch", batch, conll_lengths(batch, seed=batch)
    for length in grid["lengths"]:
        yield "length", length, [length] * grid["fixed_batch"]


def sweep_cases(bench: Bench, kind: str) -> dict[str, list]:
    """``sweep_points``' lengths as ``pytest.mark.parametrize`` keywords (argvalues, ids)."""
    points = list(sweep_points(bench, kind))
    return dict(argvalues=[lengths for _, _, lengths in points],
                ids=[f"B{len(lengths)}-{'conll' if sweep == 'batch' else f'T{point}'}" for sweep, point, lengths in points])


def make_config(sweep: str, point: int, lengths: list[int], **more: Any) -> dict[str, Any]:
    return dict(B=len(lengths), T=max(lengths), lengths="conll" if sweep == "batch" else point,
                real_tokens=sum(lengths), padded_tokens=len(lengths) * max(lengths), **more)


def padding_mask(lengths: list[int], device: str) -> torch.Tensor:
    """(B, max(lengths)) bool, True on real positions (right padding)."""
    return (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).to(device)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def bind(fn: Callable, *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


def synced(bench: Bench, run: Callable[[], Any], no_autograd: Callable = torch.inference_mode) -> Callable[[], Any]:
    """One timed call: ``run()`` without autograd, then a device sync."""
    def fn():
        with no_autograd():
            out = run()
        bench.sync()
        return out
    return fn


# ====================================================================== pytest-benchmark
def pedantic(benchmark, fn: Callable[[], Any], budget_s: float = 2.0) -> None:
    """Run ``fn`` under pytest-benchmark with rounds sized to a first (warm-up) call: about
    ``budget_s`` of rounds, 3 to 30 of them, a single one for calls over ``budget_s`` (so that a
    hiccup of a shared machine cannot decide a median alone where a call is cheap). With
    ``--benchmark-disable``: one call, a run-through."""
    if getattr(benchmark, "disabled", False):
        benchmark(fn)
        return
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    rounds = 1 if first > budget_s else max(3, min(30, int(budget_s / max(first, 1e-6))))
    benchmark.extra_info["first_call_s"] = first
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def label_benchmark(benchmark, bench: Bench, group: str, **info: Any) -> None:
    """pytest-benchmark group and extra_info (device, threads and ``info``) of one case."""
    benchmark.group = group
    benchmark.extra_info.update(info, device=bench.device,
                                device_name=torch.cuda.get_device_name() if bench.cuda else "cpu",
                                threads=torch.get_num_threads())
