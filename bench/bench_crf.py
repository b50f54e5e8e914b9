"""pytest-benchmark: linear-chain CRF, nertron vs pytorch-crf (torchcrf 0.7.2), same run.

Two ops, ``decode`` (Viterbi, Python lists out, as pytorch-crf returns them) and ``nll``
(negative log-likelihood forward + backward w.r.t. emissions and all parameters), over
B in {1, 32, 256, 2048}, T in {32, 128, 512}, K in {9, 33, 129}, emissions ``(T, B, K)``
fp32 (pytorch-crf's default layout) with a full mask. Each benchmark group holds the
nertron row and its torchcrf twin. On CPU nertron runs its PyTorch reference path (what
CPU users get); on CUDA its Triton kernels (``backend='auto'``).

Rounds adapt to the cost of a warm-up call (``benchmark.pedantic``; 1 round above 2 s). pytorch-crf is skipped where it
cannot run here: its NLL keeps a ``(B, K, K)`` fp32 tensor per time step for autograd
(skipped above 4 GB); on CUDA its decode does one ``.item()`` per tag (skipped above
B*T = 131072, tens of seconds per call).

    python -m pytest bench/bench_crf.py --benchmark-json bench/results/crf_cpu.json
    python bench/bench_crf.py table bench/results/crf_cpu.json bench/results/crf_cpu.md
"""
import json
import statistics
import sys
import time
from collections import defaultdict

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BS = [1, 32, 256, 2048]
TS = [32, 128, 512]
KS = [9, 33, 129]
TORCHCRF_NLL_MAX_BYTES = 4e9
TORCHCRF_CUDA_DECODE_MAX_BT = 131072


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _setup(impl, B, T, K):
    import torchcrf

    from nertron import CRF

    torch.manual_seed(0)
    ref = torchcrf.CRF(K)
    module = ref if impl == "torchcrf" else CRF(K)
    if impl == "nertron":
        module.load_state_dict(ref.state_dict())
    module = module.to(DEVICE)
    emissions = torch.randn(T, B, K, device=DEVICE)
    tags = torch.randint(0, K, (T, B), device=DEVICE)
    mask = torch.ones(T, B, dtype=torch.uint8 if impl == "torchcrf" else torch.bool, device=DEVICE)
    return module, emissions, tags, mask


def _run(benchmark, fn, B, T, K):
    """Rounds from the time of a first (warm-up) call: about 2 s of rounds per benchmark,
    3 to 30 of them, a single one for calls over 2 s, so that the whole CPU grid finishes
    in about 15 minutes and a hiccup of the shared machine cannot decide a median alone
    where a call is cheap."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    rounds = 1 if first > 2.0 else max(3, min(30, int(2.0 / max(first, 1e-6))))
    benchmark.extra_info["first_call_s"] = first
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def _label(benchmark, op, impl, B, T, K):
    benchmark.group = f"{op} B={B} T={T} K={K}"
    benchmark.extra_info.update(op=op, impl=impl, B=B, T=T, K=K, device=DEVICE,
                                device_name=torch.cuda.get_device_name() if CUDA else "cpu",
                                threads=torch.get_num_threads())


GRID = pytest.mark.parametrize("K", KS)
GRID_T = pytest.mark.parametrize("T", TS)
GRID_B = pytest.mark.parametrize("B", BS)
IMPLS = pytest.mark.parametrize("impl", ["nertron", "torchcrf"])


@IMPLS
@GRID
@GRID_T
@GRID_B
def test_decode(benchmark, impl, B, T, K):
    if impl == "torchcrf" and CUDA and B * T > TORCHCRF_CUDA_DECODE_MAX_BT:
        pytest.skip("pytorch-crf decode on CUDA: one .item() per tag, too slow at this size")
    module, emissions, _, mask = _setup(impl, B, T, K)
    _label(benchmark, "decode", impl, B, T, K)

    def fn():
        with torch.no_grad():
            out = module.decode(emissions, mask)
        _sync()
        return out

    _run(benchmark, fn, B, T, K)


@IMPLS
@GRID
@GRID_T
@GRID_B
def test_nll(benchmark, impl, B, T, K):
    if impl == "torchcrf" and B * T * K * K * 4 > TORCHCRF_NLL_MAX_BYTES:
        pytest.skip(f"pytorch-crf NLL autograd keeps {B * T * K * K * 4 / 1e9:.0f} GB of (B, K, K) steps")
    module, emissions, tags, mask = _setup(impl, B, T, K)
    emissions.requires_grad_()
    _label(benchmark, "nll", impl, B, T, K)

    def fn():
        module.zero_grad(set_to_none=True)
        emissions.grad = None
        loss = -module(emissions, tags, mask, reduction="mean")
        loss.backward()
        _sync()
        return loss

    _run(benchmark, fn, B, T, K)


# ------------------------------------------------------------------ ratio table
def table(json_path: str) -> str:
    """Markdown table of nertron vs torchcrf times (median, ms) and speed-ups."""
    with open(json_path) as f:
        data = json.load(f)
    rows = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        key = (info["op"], info["B"], info["T"], info["K"])
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
        "Emissions (T, B, K) fp32, full mask. decode returns Python lists for both; nll is "
        "forward + backward. `-`: pytorch-crf skipped (see bench/bench_crf.py).",
        "",
    ]
    for op in ("decode", "nll"):
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


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "table":
        sys.exit("usage: python bench/bench_crf.py table RESULTS.json [OUT.md]")
    text = table(sys.argv[2])
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as f:
            f.write(text + "\n")
    print(text)
