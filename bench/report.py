"""The benchmark suite: every nertron component against the baseline a user would otherwise
use, measured in the same run on whatever device is there, written as a Markdown report, a
JSON file and PNG plots.

    python bench/report.py                       # the device there is (cuda if present, else cpu)
    python bench/report.py --quick --out /tmp/r  # tiny grid: CPU/CI smoke test
    python bench/report.py --sections crf,e2e    # some sections only
    nertron bench ...                            # the same, through the CLI

Sections (rows: nertron, its baseline, the baseline under ``torch.compile``):

- ``crf``: CRF Viterbi decode and NLL forward + backward vs ``torchcrf.CRF`` (pytorch-crf).
- ``pooling``: weighted-layer pooling (``LayerPooling``) forward and forward + backward vs an
  AllenNLP-style ``ScalarMix`` written inline (softmax weights, list of layers, sum).
- ``attention``: GPU: nertron's varlen flash attention over packed tokens; CPU: nertron's
  reference attention (SDPA, additive key mask); both vs transformers' ``sdpa`` and eager
  attention functions on the padded batch.
- ``gemm``: GEMM with bias / GELU / residual epilogue vs ``F.linear`` (+ ``F.gelu``, ``+``);
  GPU only.
- ``layernorm``: LayerNorm vs ``F.layer_norm``; GPU only.
- ``encoder``: nertron ``BertModel`` vs ``transformers.BertModel`` (``attn_implementation='sdpa'``)
  on the real all-MiniLM-L6-v2 checkpoint, and on GPU a bert-base-shaped model (random weights).
- ``e2e``: the tagger (BERT + weighted pooling + BiLSTM + attention + CRF decode,
  ``BertBiLSTMAttnCRF`` over the checkpoint, word batches collated as the learner does) vs
  transformers BertModel + the same head in plain PyTorch + ``torchcrf`` decode; plus
  ``nertron.engine.tagger.Tagger.tag_words`` when that module exists.

Device conventions: on CUDA nertron runs its Triton kernels (``backend='auto'``) in bf16 and
times with ``triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])``; on CPU it runs its
PyTorch reference path (the kernels run on CPU only in Triton's interpreter, which is not for
timing) in fp32, timed with ``time.perf_counter`` (median, p20, p80 over repeats). Baselines
run in the same dtype. Peak memory: ``torch.cuda.max_memory_allocated`` above the allocation
before the call on GPU; on CPU the process's peak resident set size above its level before
the call (VmHWM reset through ``/proc/self/clear_refs``, freed heap returned by
``malloc_trim`` first), one extra call per measurement.

Ratio (``x``) = baseline median time / nertron median time: above 1, nertron is faster.
Tokens/s count real (non-padding) positions: sub-tokens for the encoder, attention, GEMM,
LayerNorm, pooling and the tagger, words (tagged positions) for the CRF.

Outputs under ``--out`` (default ``bench/results``): ``report_<device>.md``,
``report_<device>.json`` (device, versions, date, every row with its config and the raw
quantiles) and ``report_<device>_<section>.png``.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import functools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):  # run from a checkout: nertron and bench/encoder_gpu importable
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

SECTIONS = ("crf", "pooling", "attention", "gemm", "layernorm", "encoder", "e2e")
GPU_ONLY = ("gemm", "layernorm")
CRF_TAGS = 9  # CoNLL-2003 IOB2: O + B/I x PER/ORG/LOC/MISC
TORCHCRF_CUDA_DECODE_MAX_BT = 16384  # pytorch-crf's CUDA decode does one .item() per tag
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)

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


# ====================================================================== measurement
class Bench:
    """Timing, memory and run-wide settings shared by the sections."""

    def __init__(self, device: str, quick: bool, compile_baselines: bool, interpret_kernels: bool = False):
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
            if self.cuda else _cpu_memory_method()
        )
        self.timing_method = (
            "triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]) after one warm-up call"
            if self.cuda else
            "time.perf_counter over repeats after one warm-up call (repeats sized to the warm-up: "
            f"about {self.grid['budget_s']} s per measurement, 3 to 30 repeats); median, p20, p80"
        )

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
        return dict(ms=_quantile(times, 0.5), p20_ms=_quantile(times, 0.2), p80_ms=_quantile(times, 0.8),
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
        return _cpu_peak_rss_delta_mb(fn)


def _quantile(values: list[float], q: float) -> float:
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


def _cpu_memory_method() -> str:
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


def _cpu_peak_rss_delta_mb(fn: Callable[[], Any]) -> float:
    import gc

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


def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) < 2000 else text[:2000] + " ..."


def measure(bench: Bench, fn: Callable[[], Any], *, tokens: int, sentences: int | None = None,
            label: str = "", **extra: Any) -> dict[str, Any]:
    """Time + memory of one implementation, or {"error": ...} if it fails (the run goes on)."""
    try:
        result = bench.time(fn)
        result["peak_mem_mb"] = bench.memory(fn)
    except Exception as err:  # noqa: BLE001 - a failing row is reported, not fatal
        print(f"  {label}: FAILED {_error_text(err)}", file=sys.stderr, flush=True)
        traceback.print_exc(limit=3, file=sys.stderr)
        if bench.cuda:
            torch.cuda.empty_cache()
        return {"error": _error_text(err), **extra}
    seconds = result["ms"] * 1e-3
    result["tokens_per_s"] = tokens / seconds
    if sentences is not None:
        result["sentences_per_s"] = sentences / seconds
    result.update(extra)
    print(f"  {label}: {result['ms']:.3f} ms [{result['p20_ms']:.3f}, {result['p80_ms']:.3f}] "
          f"{result['tokens_per_s']:.4g} tok/s, peak {result['peak_mem_mb']:.1f} MB", flush=True)
    return result


def compiled_measure(bench: Bench, make: Callable[[], Callable[[], Any]], **kwargs: Any) -> dict[str, Any]:
    """Like ``measure`` for a ``torch.compile``d baseline: compilation (the first call) is
    timed on its own and reported as ``compile_s``; a failure is recorded, not raised."""
    import torch._dynamo

    torch._dynamo.reset()  # fresh caches: no silent fallback to eager after the recompile limit
    try:
        fn = make()
        t0 = time.perf_counter()
        fn()
        bench.sync()
        compile_s = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001
        print(f"  {kwargs.get('label', '')}: torch.compile FAILED {_error_text(err)}", file=sys.stderr, flush=True)
        return {"error": "torch.compile: " + _error_text(err)}
    return measure(bench, fn, compile_s=compile_s, **kwargs)


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


# ====================================================================== inputs
def conll_lengths(count: int, seed: int = 0) -> list[int]:
    """``count`` sentence lengths (sub-tokens with [CLS]/[SEP]) drawn from CoNLL-2003 train."""
    histogram = json.loads((HERE / "data" / "conll2003_lengths.json").read_text())["histogram"]
    values, weights = zip(*((int(k), v) for k, v in histogram.items()))
    return random.Random(seed).choices(values, weights=weights, k=count)


def sweep_points(bench: Bench, kind: str):
    """(sweep, point, lengths): the batch sweep (CoNLL length mix) then the length sweep."""
    grid = bench.grid[kind]
    for batch in grid["batches"]:
        lengths = conll_lengths(batch, seed=batch)
        yield "batch", batch, lengths
    for length in grid["lengths"]:
        yield "length", length, [length] * grid["fixed_batch"]


def _config(sweep: str, point: int, lengths: list[int], **more: Any) -> dict[str, Any]:
    return dict(B=len(lengths), T=max(lengths), lengths="conll" if sweep == "batch" else point,
                real_tokens=sum(lengths), padded_tokens=len(lengths) * max(lengths), **more)


def _mask(lengths: list[int], device: str) -> torch.Tensor:
    return (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).to(device)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ====================================================================== sections
def section_crf(bench: Bench) -> list[dict]:
    import torchcrf

    from nertron import CRF

    device, dtype, K = bench.device, bench.dtype, CRF_TAGS
    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        B, T = len(lengths), max(lengths)
        torch.manual_seed(0)
        ref = torchcrf.CRF(K, batch_first=True).to(device)
        ours = CRF(K, batch_first=True).to(device)
        ours.load_state_dict(ref.state_dict())
        emissions = torch.randn(B, T, K, device=device, dtype=dtype)
        tags = torch.randint(0, K, (B, T), device=device)
        mask = _mask(lengths, device)
        words = sum(lengths)
        config = _config(sweep, point, lengths, K=K, dtype=_dtype_name(dtype),
                         path="triton" if bench.cuda else "reference (torch)")

        def decoder(module, m):
            def fn():
                with torch.no_grad():
                    out = module.decode(emissions, m)  # lists, as pytorch-crf returns them
                bench.sync()
                return out
            return fn

        def nll(module, m, em):
            def fn():
                module.zero_grad(set_to_none=True)
                em.grad = None
                loss = -module(em, tags, m, reduction="mean")
                loss.backward()
                bench.sync()
                return loss
            return fn

        label = f"crf B={B} T={T}"
        # decode
        impls = {"nertron": measure(bench, decoder(ours, mask), tokens=words, sentences=B, label=label + " decode nertron")}
        if bench.cuda and B * T > TORCHCRF_CUDA_DECODE_MAX_BT:
            impls["torchcrf"] = {"error": f"skipped: pytorch-crf's CUDA decode does one .item() per tag "
                                          f"(B*T > {TORCHCRF_CUDA_DECODE_MAX_BT} takes seconds to minutes)"}
        else:
            impls["torchcrf"] = measure(bench, decoder(ref, mask), tokens=words, sentences=B,
                                        label=label + " decode torchcrf")
            if bench.compile_here(sweep, point):
                impls["torchcrf+compile"] = compiled_measure(
                    bench, lambda: decoder(_Compiled(ref, "decode"), mask), tokens=words,
                    sentences=B, label=label + " decode torchcrf+compile")
        rows.append(make_row("crf", "decode", sweep, config, impls, "torchcrf", words, B))
        # NLL forward + backward
        em_ours = emissions.clone().requires_grad_()
        em_ref = emissions.clone().requires_grad_()
        impls = {"nertron": measure(bench, nll(ours, mask, em_ours), tokens=words, sentences=B,
                                    label=label + " nll nertron"),
                 "torchcrf": measure(bench, nll(ref, mask, em_ref), tokens=words, sentences=B,
                                     label=label + " nll torchcrf")}
        if bench.compile_here(sweep, point):
            impls["torchcrf+compile"] = compiled_measure(
                bench, lambda: nll(_Compiled(ref, "forward"), mask, em_ref), tokens=words,
                sentences=B, label=label + " nll torchcrf+compile")
        rows.append(make_row("crf", "nll fwd+bwd", sweep, config, impls, "torchcrf", words, B))
    return rows


class _Compiled:
    """A module whose ``method`` runs through ``torch.compile``; other attributes pass through."""

    def __init__(self, module: torch.nn.Module, method: str):
        self._module = module
        self._fn = torch.compile(getattr(module, method), dynamic=False)
        self._method = method

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def zero_grad(self, set_to_none: bool = True):
        self._module.zero_grad(set_to_none=set_to_none)


class AllenNLPScalarMix(torch.nn.Module):
    """The baseline: AllenNLP's ScalarMix (no layer norm), as users write it: softmax over
    per-layer scalars, a Python list of layers, a sum of scaled tensors, times gamma."""

    def __init__(self, mixture_size: int):
        super().__init__()
        self.scalar_parameters = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(1)) for _ in range(mixture_size)])
        self.gamma = torch.nn.Parameter(torch.ones(1))

    def forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        weights = torch.split(torch.softmax(torch.cat(list(self.scalar_parameters)), dim=0), 1)
        pieces = [w * t for w, t in zip(weights, tensors)]
        return self.gamma * sum(pieces)


def section_pooling(bench: Bench) -> list[dict]:
    from nertron import LayerPooling

    device, dtype = bench.device, bench.dtype
    shape = "bert-base" if bench.cuda else "minilm"
    layers, hidden = (12, 768) if bench.cuda else (6, 384)
    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        B, T = len(lengths), max(lengths)
        g = torch.Generator().manual_seed(0)
        states = [torch.randn(B, T, hidden, generator=g).to(device, dtype) for _ in range(layers + 1)]
        ours = LayerPooling(layers, mode="softmax").to(device)
        ref = AllenNLPScalarMix(layers).to(device)
        tokens = sum(lengths)
        config = _config(sweep, point, lengths, layers=layers, hidden=hidden, shape=shape, dtype=_dtype_name(dtype),
                         path="triton" if bench.cuda else "reference (torch)")
        label = f"pooling B={B} T={T}"

        def forward(run):
            return _synced(bench, run, torch.no_grad)

        def train(module, run):
            def fn():
                module.zero_grad(set_to_none=True)
                out = run()
                out.backward(torch.ones_like(out))
                bench.sync()
                return out
            return fn

        run_ours = lambda: ours(states)  # noqa: E731 - LayerPooling skips states[0] (embeddings)
        run_ref = lambda: ref(states[1:])  # noqa: E731
        impls = {"nertron": measure(bench, forward(run_ours), tokens=tokens, label=label + " fwd nertron"),
                 "allennlp-scalarmix": measure(bench, forward(run_ref), tokens=tokens, label=label + " fwd allennlp")}
        if bench.compile_here(sweep, point):
            impls["allennlp-scalarmix+compile"] = compiled_measure(
                bench, lambda: forward(_bind(torch.compile(ref, dynamic=False), states[1:])), tokens=tokens,
                label=label + " fwd allennlp+compile")
        rows.append(make_row("pooling", "mix forward", sweep, config, impls, "allennlp-scalarmix", tokens))
        impls = {"nertron": measure(bench, train(ours, run_ours), tokens=tokens, label=label + " fwd+bwd nertron"),
                 "allennlp-scalarmix": measure(bench, train(ref, run_ref), tokens=tokens,
                                               label=label + " fwd+bwd allennlp")}
        if bench.compile_here(sweep, point):
            impls["allennlp-scalarmix+compile"] = compiled_measure(
                bench, lambda: train(ref, _bind(torch.compile(ref, dynamic=False), states[1:])), tokens=tokens,
                label=label + " fwd+bwd allennlp+compile")
        rows.append(make_row("pooling", "mix fwd+bwd (weights learn, layers frozen)", sweep, config, impls,
                             "allennlp-scalarmix", tokens))
    return rows


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _bind(fn: Callable, *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


def _synced(bench: "Bench", run: Callable[[], Any], no_autograd: Callable = torch.inference_mode) -> Callable[[], Any]:
    """One timed call: ``run()`` without autograd, then a device sync."""
    def fn():
        with no_autograd():
            out = run()
        bench.sync()
        return out
    return fn


class _AttnModule(torch.nn.Module):
    """What transformers' attention functions read from the calling module."""

    is_causal = False

    def __init__(self):
        super().__init__()
        self.eval()


def section_attention(bench: Bench) -> list[dict]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.bert.modeling_bert import eager_attention_forward

    device, dtype = bench.device, bench.dtype
    heads, head_dim = (12, 64) if bench.cuda else (12, 32)
    hidden = heads * head_dim
    holder = _AttnModule()
    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        B, T = len(lengths), max(lengths)
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, heads, T, head_dim, generator=g).to(device, dtype) for _ in range(3))
        keep = _mask(lengths, device)
        bias = torch.zeros(B, 1, 1, T, dtype=dtype, device=device).masked_fill(~keep[:, None, None, :],
                                                                                 torch.finfo(dtype).min)
        tokens = sum(lengths)
        config = _config(sweep, point, lengths, heads=heads, head_dim=head_dim, dtype=_dtype_name(dtype),
                         path="triton varlen (packed tokens)" if bench.kernels else "reference (torch SDPA, additive mask)")
        label = f"attention B={B} T={T}"

        wrap = functools.partial(_synced, bench)

        if bench.kernels:
            from nertron.kernels.attention import attention

            # Packed (tokens, 3H) QKV from the same values: what the fused encoder feeds the kernel.
            qkv = torch.cat([t.permute(0, 2, 1, 3).reshape(B, T, hidden) for t in (q, k, v)], -1)[keep].contiguous()
            lens = torch.tensor(lengths, dtype=torch.int32, device=device)
            starts = torch.zeros(B, dtype=torch.int32, device=device)
            starts[1:] = lens.cumsum(0)[:-1]
            run_ours = lambda: attention(qkv, heads, starts, lens, lens, T)  # noqa: E731
        else:
            run_ours = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # noqa: E731
        run_sdpa = lambda: sdpa_attention_forward(holder, q, k, v, bias, dropout=0.0, scaling=head_dim ** -0.5)[0]  # noqa: E731
        run_eager = lambda: eager_attention_forward(holder, q, k, v, bias, scaling=head_dim ** -0.5)[0]  # noqa: E731
        impls = {"nertron": measure(bench, wrap(run_ours), tokens=tokens, label=label + " nertron"),
                 "transformers-sdpa": measure(bench, wrap(run_sdpa), tokens=tokens, label=label + " hf sdpa"),
                 "transformers-eager": measure(bench, wrap(run_eager), tokens=tokens, label=label + " hf eager")}
        if bench.compile_here(sweep, point):
            impls["transformers-sdpa+compile"] = compiled_measure(
                bench, lambda: wrap(_bind(torch.compile(sdpa_attention_forward, dynamic=False), holder, q, k, v, bias)),
                tokens=tokens, label=label + " hf sdpa+compile")
        with torch.inference_mode():  # agreement on real positions, (tokens, H)
            ref_out = run_sdpa().reshape(B, T, hidden)[keep]
            ours_out = run_ours() if bench.kernels else run_ours().transpose(1, 2).reshape(B, T, hidden)[keep]
        rows.append(make_row("attention", "self-attention (key padding)", sweep, config, impls, "transformers-sdpa",
                             tokens, max_abs_diff=_max_diff(ours_out, ref_out)))
    return rows


def _gpu_only_row(section: str, op: str, reason: str) -> dict:
    return dict(section=section, op=op, sweep="-", config={}, tokens=None, sentences=None, baseline=None,
                impls={}, ratios={}, ratio=None, status="gpu only", note=reason)


def section_gemm(bench: Bench) -> list[dict]:
    ops = (("qkv: x @ W^T + b", "qkv", None, False), ("ffn-in: gelu(x @ W^T + b)", "ffn_in", "gelu", False),
           ("ffn-out: x @ W^T + b + residual", "ffn_out", None, True))
    if not bench.kernels:
        return [_gpu_only_row("gemm", name, "nertron's GEMM + epilogue is a Triton kernel; on CPU nertron runs "
                              "torch's F.linear, the baseline itself") for name, *_ in ops]
    from nertron.kernels.matmul import linear

    device, dtype = bench.device, bench.dtype
    h, inner = (768, 3072) if bench.cuda else (64, 128)
    dims = {"qkv": (3 * h, h), "ffn_in": (inner, h), "ffn_out": (h, inner)}
    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        M = sum(lengths)  # packed real tokens, as the fused encoder runs them
        for name, key, act, residual in ops:
            N, K = dims[key]
            g = torch.Generator().manual_seed(0)
            x = torch.randn(M, K, generator=g).to(device, dtype)
            w = (torch.randn(N, K, generator=g) * K ** -0.5).to(device, dtype)
            b = torch.randn(N, generator=g).to(device, dtype)
            r = torch.randn(M, N, generator=g).to(device, dtype) if residual else None

            def torch_op(x, w, b, r, act=act):
                y = torch.nn.functional.linear(x, w, b)
                if act == "gelu":
                    y = torch.nn.functional.gelu(y)
                return y + r if r is not None else y

            wrap = functools.partial(_synced, bench)

            flops = 2.0 * M * N * K
            label = f"gemm {key} M={M}"
            config = _config(sweep, point, lengths, M=M, N=N, K=K, dtype=_dtype_name(dtype), path="triton")
            impls = {"nertron": measure(bench, wrap(lambda: linear(x, w, b, act, r)), tokens=M, label=label + " nertron"),
                     "torch": measure(bench, wrap(lambda: torch_op(x, w, b, r)), tokens=M, label=label + " torch")}
            if bench.compile_here(sweep, point):
                impls["torch+compile"] = compiled_measure(
                    bench, lambda: wrap(_bind(torch.compile(torch_op, dynamic=False), x, w, b, r)), tokens=M,
                    label=label + " torch+compile")
            for result in impls.values():
                if result.get("ms"):
                    result["tflops"] = flops / (result["ms"] * 1e-3) / 1e12
            with torch.inference_mode():
                diff = _max_diff(linear(x, w, b, act, r), torch_op(x, w, b, r))
            rows.append(make_row("gemm", name, sweep, config, impls, "torch", M, max_abs_diff=diff))
    return rows


def section_layernorm(bench: Bench) -> list[dict]:
    op = "LayerNorm (rows, H)"
    if not bench.kernels:
        return [_gpu_only_row("layernorm", op, "nertron's LayerNorm is a Triton kernel; on CPU nertron runs "
                              "F.layer_norm, the baseline itself")]
    from nertron.kernels.layernorm import layernorm

    device, dtype = bench.device, bench.dtype
    hidden = 768 if bench.cuda else 64
    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        M = sum(lengths)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(M, hidden, generator=g).to(device, dtype)
        w = torch.randn(hidden, generator=g).to(device, dtype)
        b = torch.randn(hidden, generator=g).to(device, dtype)

        wrap = functools.partial(_synced, bench)

        label = f"layernorm M={M}"
        config = _config(sweep, point, lengths, M=M, hidden=hidden, dtype=_dtype_name(dtype), path="triton")
        ln = lambda x, w, b: torch.nn.functional.layer_norm(x, (hidden,), w, b, 1e-12)  # noqa: E731
        impls = {"nertron": measure(bench, wrap(lambda: layernorm(x, w, b, 1e-12)), tokens=M, label=label + " nertron"),
                 "torch": measure(bench, wrap(lambda: ln(x, w, b)), tokens=M, label=label + " torch")}
        if bench.compile_here(sweep, point):
            impls["torch+compile"] = compiled_measure(
                bench, lambda: wrap(_bind(torch.compile(ln, dynamic=False), x, w, b)), tokens=M,
                label=label + " torch+compile")
        with torch.inference_mode():
            diff = _max_diff(layernorm(x, w, b, 1e-12), ln(x, w, b))
        rows.append(make_row("layernorm", op, sweep, config, impls, "torch", M, max_abs_diff=diff))
    return rows


# ---------------------------------------------------------------------- encoder
def checkpoint_dir() -> Path:
    from nertron.engine.checkpoint import default_checkpoint_dir

    return Path(default_checkpoint_dir())


def load_encoders(bench: Bench, shape: str):
    """(nertron BertModel, transformers BertModel with sdpa), same weights, eval, in the run's dtype."""
    import transformers

    from nertron import BertConfig, BertModel

    if shape == "minilm":
        path = checkpoint_dir()
        hf = transformers.BertModel.from_pretrained(str(path), attn_implementation="sdpa")
        ours = BertModel.from_pretrained(path)
    else:
        torch.manual_seed(0)
        hf_config = transformers.BertConfig(**BERT_BASE)
        hf_config._attn_implementation = "sdpa"
        hf = transformers.BertModel(hf_config)
        ours = BertModel(BertConfig(**BERT_BASE))
        ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k != "embeddings.position_ids"})
    hf = hf.to(bench.device, bench.dtype).eval().requires_grad_(False)
    ours = ours.to(bench.device, bench.dtype).eval().requires_grad_(False)
    return ours, hf


def encoder_batch(lengths: list[int], vocab: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = _mask(lengths, "cpu")
    ids = torch.randint(1000, vocab, mask.shape, generator=g).masked_fill(~mask, 0)
    return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device),
            "token_type_ids": torch.zeros_like(ids).to(device)}


def section_encoder(bench: Bench) -> list[dict]:
    rows = []
    shapes = ["minilm", "bert-base"] if bench.cuda else ["minilm"]
    for shape in shapes:
        try:
            ours, hf = load_encoders(bench, shape)
        except Exception as err:  # noqa: BLE001 - e.g. the checkpoint package is not installed
            rows.append(dict(section="encoder", op=f"BertModel {shape}", sweep="-", config={}, tokens=None,
                             sentences=None, baseline="transformers", impls={}, ratios={}, ratio=None,
                             status="error", note=_error_text(err)))
            continue
        c = ours.config
        for sweep, point, lengths in sweep_points(bench, "model"):
            batch = encoder_batch(lengths, c.vocab_size, bench.device, seed=len(lengths))
            tokens, B = sum(lengths), len(lengths)
            config = _config(sweep, point, lengths, shape=shape, layers=c.num_hidden_layers, hidden=c.hidden_size,
                             heads=c.num_attention_heads, dtype=_dtype_name(bench.dtype),
                             weights="all-MiniLM-L6-v2 checkpoint" if shape == "minilm" else "random",
                             path="triton (fused, packed)" if bench.cuda else "reference (torch)")
            label = f"encoder {shape} B={B} T={max(lengths)}"

            def wrap(model):
                def fn():
                    with torch.inference_mode():
                        out = model(**batch).last_hidden_state
                    bench.sync()
                    return out
                return fn

            impls = {"nertron": measure(bench, wrap(ours), tokens=tokens, sentences=B, label=label + " nertron"),
                     "transformers": measure(bench, wrap(hf), tokens=tokens, sentences=B, label=label + " transformers")}
            if bench.compile_here(sweep, point):
                impls["transformers+compile"] = compiled_measure(
                    bench, lambda model=hf: wrap(torch.compile(model, dynamic=False)), tokens=tokens, sentences=B,
                    label=label + " transformers+compile")
            rows.append(make_row("encoder", f"BertModel {shape}", sweep, config, impls, "transformers", tokens, B))
        del ours, hf
        if bench.cuda:
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------- end to end
def conll_sentences() -> tuple[list, str]:
    """Real CoNLL-2003 sentences (eng.testb) if the shared data is there, else None."""
    from nertron.engine.data.readers import read_dataset

    root = Path(os.environ.get("NERTRON_DATA", REPO.parent / "shared" / "data"))
    path = root / "conll2003" / "eng.testb"
    if path.is_file():
        return list(read_dataset(path, "conll")), "CoNLL-2003 eng.testb (conll2003/eng.testb of the shared data)"
    return None, "missing"


def synthetic_sentences(tokenizer, count: int, seed: int = 0) -> list:
    """Sentences of whole-word vocabulary entries with CoNLL-2003 sub-token lengths (no data)."""
    from nertron.engine.data.readers import Sentence

    vocab = [w for w in tokenizer.vocab if w.isalpha() and len(w) > 2] if hasattr(tokenizer, "vocab") else None
    vocab = vocab or ["Peter", "Blackburn", "Germany", "rejects", "call", "boycott", "British", "lamb", "the", "said"]
    rng = random.Random(seed)
    return [Sentence([rng.choice(vocab) for _ in range(max(1, n - 2))], ["O"] * max(1, n - 2))
            for n in conll_lengths(count, seed)]


class BaselineTagger(torch.nn.Module):
    """The baseline a user would write: transformers BertModel (sdpa) with all hidden states,
    the weighted layer mix inline, first sub-token gather, then the same head as nertron's
    model (its BiLSTM / attention / emission modules are plain PyTorch; copied with their
    weights) and ``torchcrf.CRF`` Viterbi decode (nertron's BIO constraints baked into the
    transition scores as -10000)."""

    def __init__(self, hf, model):
        super().__init__()
        import torchcrf

        self.hf = hf
        pooling = model.features.pooling
        self.mode = pooling.mode
        self.weights = torch.nn.Parameter(pooling.weights.detach().clone())
        self.gamma = torch.nn.Parameter(pooling.gamma.detach().clone())
        self.lstm = copy.deepcopy(model.lstm.lstm)
        self.attention = copy.deepcopy(model.attention)
        self.emissions = copy.deepcopy(model.emissions)
        K = model.config.label_size
        self.crf = torchcrf.CRF(K, batch_first=True)
        start, end, trans = model.crf._scores(constrained=True)
        with torch.no_grad():
            for dst, src in ((self.crf.start_transitions, start), (self.crf.end_transitions, end),
                             (self.crf.transitions, trans)):
                dst.copy_(torch.nan_to_num(src.detach().float(), neginf=-10000.0))

    def forward(self, batch: dict[str, torch.Tensor], encoder=None) -> list[list[int]]:
        out = (self.hf if encoder is None else encoder)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"], output_hidden_states=True)
        layers = out.hidden_states[1:]
        s = torch.softmax(self.weights, 0) if self.mode == "softmax" else self.weights
        mixed = self.gamma * sum(w * h.float() for w, h in zip(s, layers))  # shape: (B, T, H)
        index = batch["word_index"].unsqueeze(-1).expand(-1, -1, mixed.shape[-1])
        x = mixed.gather(1, index)  # shape: (B, W, H)
        mask = batch["word_mask"]
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        x, _ = self.lstm(packed)
        x, _ = torch.nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=mask.shape[1])
        x = self.attention(x, mask)
        return self.crf.decode(self.emissions(x).float(), mask)


def section_e2e(bench: Bench) -> list[dict]:
    import transformers

    from nertron.engine.data.loader import NerData
    from nertron.engine.data.vocab import LabelVocab
    from nertron.engine.models import BertBiLSTMAttnCRF
    from nertron.engine.tokenizer import WordPieceTokenizer

    op = "BertBiLSTMAttnCRF tag (minilm)"
    try:
        path = checkpoint_dir()
        tokenizer = WordPieceTokenizer.from_pretrained(path)
        sentences, source = conll_sentences()
        if sentences is None:
            sentences, source = synthetic_sentences(tokenizer, 2000), "synthetic (vocabulary words, CoNLL-2003 lengths)"
        vocab = LabelVocab.from_sentences(sentences)
        data = NerData.from_sentences(sentences, None, tokenizer, vocab=vocab)
        torch.manual_seed(0)
        model = BertBiLSTMAttnCRF.create(vocab.num_labels, path, labels=vocab.labels).eval()
        hf = transformers.BertModel.from_pretrained(str(path), attn_implementation="sdpa").eval().requires_grad_(False)
        baseline = BaselineTagger(hf, model).eval()
        model.to(bench.device)
        baseline.to(bench.device)
        if bench.cuda:  # frozen encoder in bf16, head under bf16 autocast (as the learner runs on GPU)
            model.features.bert.to(torch.bfloat16)
            hf.to(torch.bfloat16)
    except Exception as err:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return [dict(section="e2e", op=op, sweep="-", config={}, tokens=None, sentences=None,
                     baseline="transformers+torchcrf", impls={}, ratios={}, ratio=None, status="error",
                     note=_error_text(err))]
    tagger = _make_tagger(model, tokenizer, vocab, bench)
    autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=bench.cuda)
    rng = random.Random(0)
    rows = []
    for sweep, point, lengths in sweep_points(bench, "model"):
        B = len(lengths)
        if sweep == "batch":  # B real sentences
            word_lists = [list(sentences[i].words) for i in rng.sample(range(len(sentences)), B)]
        else:  # sentences of `point` sub-tokens: consecutive real words up to the length
            word_lists = _sentences_of_length(data, sentences, point, B, rng)
        # word lists -> window examples -> padded batch, as NerLearner.predict does
        batch = data.collate(data.encode(word_lists))
        tokens = int(batch["attention_mask"].sum())
        words = int(batch["word_mask"].sum())
        config = dict(B=B, T=int(batch["input_ids"].shape[1]), lengths="conll" if sweep == "batch" else point,
                      real_tokens=tokens, padded_tokens=int(batch["input_ids"].numel()), words=words,
                      labels=vocab.num_labels, data=source, dtype="bf16 encoder + bf16 autocast" if bench.cuda
                      else "fp32", path="triton" if bench.cuda else "reference (torch)")
        label = f"e2e B={B} T={config['T']}"

        def run_ours(batch=batch):
            with torch.no_grad(), torch.autocast(**autocast):
                out = model({k: v.to(bench.device, non_blocking=True) for k, v in batch.items()})
            return out.tags.cpu().tolist()  # the learner's .cpu().tolist(): synchronises

        def run_base(encoder=None, batch=batch):
            with torch.no_grad(), torch.autocast(**autocast):
                out = baseline({k: v.to(bench.device, non_blocking=True) for k, v in batch.items()}, encoder)
            bench.sync()
            return out

        impls = {"nertron": measure(bench, run_ours, tokens=tokens, sentences=B, label=label + " nertron"),
                 "transformers+torchcrf": measure(bench, run_base, tokens=tokens, sentences=B,
                                                  label=label + " transformers+torchcrf")}
        if bench.compile_here(sweep, point):
            def make_compiled():  # the encoder compiled; the head's packed LSTM and torchcrf stay eager
                compiled = torch.compile(hf, dynamic=False)
                return lambda: run_base(compiled)
            impls["transformers(compiled)+torchcrf"] = compiled_measure(
                bench, make_compiled, tokens=tokens, sentences=B, label=label + " transformers(compiled)+torchcrf")
        if tagger is not None:
            impls["nertron Tagger.tag_words"] = measure(bench, lambda w=word_lists: tagger(w), tokens=tokens,
                                                        sentences=B, label=label + " Tagger.tag_words",
                                                        note="words in: tokenization, batching, decode and entity spans with their CRF scores")
        agree = _agreement(run_ours(), run_base(), batch["word_mask"])
        rows.append(make_row("e2e", op, sweep, config, impls, "transformers+torchcrf", tokens, B,
                             tags_agree=agree))
    return rows


def _sentences_of_length(data, sentences, length: int, count: int, rng: random.Random) -> list[list[str]]:
    """``count`` word lists of exactly ``length`` sub-tokens with [CLS]/[SEP] where possible:
    real words taken in order from a random starting sentence, the last word cut to fit."""
    words_all = [w for s in sentences for w in s.words]
    tokenizer = data.tokenizer
    pieces_of: dict[str, int] = {}
    out = []
    for _ in range(count):
        start = rng.randrange(max(1, len(words_all) - 4 * length))
        words, used = [], 2
        for word in words_all[start:]:
            if word not in pieces_of:
                pieces_of[word] = len(tokenizer.encode_words([word]).input_ids)
            pieces = pieces_of[word]
            if used + pieces > length:
                break
            words.append(word)
            used += pieces
        out.append(words or ["x"])
    return out


def _agreement(ours: list[list[int]], theirs: list[list[int]], mask: torch.Tensor) -> float | None:
    """Fraction of words where both decoders give the same tag (same weights: ~1 in fp32)."""
    same = total = 0
    for row, (a, b) in enumerate(zip(ours, theirs)):
        n = int(mask[row].sum())
        same += sum(int(x == y) for x, y in zip(a[:n], b[:n]))
        total += n
    return same / total if total else None


def _make_tagger(model, tokenizer, vocab, bench: Bench):
    """A callable ``words_batch -> tags`` over ``nertron.engine.tagger.Tagger`` if that module
    exists (written alongside this suite), else None."""
    try:
        from nertron.engine import tagger as tagger_module
    except ImportError:
        return None
    Tagger = getattr(tagger_module, "Tagger", None)
    if Tagger is None or not hasattr(Tagger, "tag_words"):
        return None
    try:
        instance = _construct_tagger(Tagger, model, tokenizer, vocab, bench)
    except Exception as err:  # noqa: BLE001
        print(f"  Tagger: could not be built ({_error_text(err)})", file=sys.stderr)
        return None
    return lambda words: instance.tag_words(words)


def _construct_tagger(Tagger, model, tokenizer, vocab, bench: Bench):
    import inspect

    params = inspect.signature(Tagger).parameters
    kwargs = {}
    for name, value in (("tokenizer", tokenizer), ("vocab", vocab), ("labels", vocab), ("device", bench.device)):
        if name in params:
            kwargs[name] = value
    return Tagger(model, **kwargs)


# ====================================================================== report
SECTION_TITLES = {
    "crf": "CRF (K = 9 tags, CoNLL-2003 IOB2)",
    "pooling": "Weighted-layer pooling",
    "attention": "Attention",
    "gemm": "GEMM + epilogue",
    "layernorm": "LayerNorm",
    "encoder": "BERT encoder",
    "e2e": "End-to-end tagger (BERT + weighted pooling + BiLSTM + attention + CRF decode)",
}
RUNNERS = {
    "crf": section_crf,
    "pooling": section_pooling,
    "attention": section_attention,
    "gemm": section_gemm,
    "layernorm": section_layernorm,
    "encoder": section_encoder,
    "e2e": section_e2e,
}


def environment(bench: Bench) -> dict[str, Any]:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    if bench.cuda:
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return {
        "device": bench.device,
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "pytorch-crf": version("pytorch-crf"),
        "nertron": version("nertron"),
        "dtype": _dtype_name(bench.dtype),
        "nertron_path": "Triton kernels (backend='auto')" if bench.cuda else "PyTorch reference path",
        "timing": bench.timing_method,
        "memory": bench.memory_method,
        "quick": bench.quick,
        "grid": {k: (sorted(v) if isinstance(v, set) else v) for k, v in bench.grid.items()},
    }


def _fmt(value: float | None, spec: str = "{:.3g}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return spec.format(value)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _impl_cell(result: dict | None) -> str:
    if not result:
        return "-"
    if "error" in result:
        text = result["error"]
        return "error: " + (text[:70] + "..." if len(text) > 70 else text).replace("|", "/").replace("\n", " ")
    return f"{result['ms']:.3g} [{result['p20_ms']:.3g}, {result['p80_ms']:.3g}]"


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return statistics.geometric_mean(values) if values else None


def headline(rows: list[dict]) -> list[dict]:
    """Per (section, op): geometric mean ratio vs each baseline over the rows that have it."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        if not row.get("ratios"):
            continue
        group = groups.setdefault((row["section"], row["op"]), {})
        for impl, ratio in row["ratios"].items():
            group.setdefault(impl, []).append(ratio)
    return [dict(section=s, op=o, ratios={impl: dict(geomean=geomean(v), min=min(v), max=max(v), rows=len(v))
                                          for impl, v in g.items()})
            for (s, o), g in groups.items()]


def markdown(env: dict, rows: list[dict], sections: list[str], plots: dict[str, str]) -> str:
    lines = [
        f"# nertron benchmark report: {env['device']} ({env['device_name']})",
        "",
        f"Run {env['date']}; python {env['python']}, torch {env['torch']}, triton {env['triton']}, "
        f"transformers {env['transformers']}, pytorch-crf {env['pytorch-crf']}; "
        f"{env['cpu_count']} CPU cores, torch threads {env['torch_threads']}.",
        "",
        f"- nertron: {env['nertron_path']}, {env['dtype']}; baselines in the same dtype, same inputs, same run.",
        f"- Timing: {env['timing']}. Cells give the median ms [p20, p80].",
        f"- Peak memory: {env['memory']}.",
        "- `x` = baseline median time / nertron median time (above 1: nertron is faster); for nertron's "
        "other entry points (`nertron Tagger.tag_words`): the main baseline's time / theirs.",
        "- Tokens/s count real (non-padding) positions: sub-tokens, words for the CRF. `conll`: the "
        "batch's lengths are drawn from the CoNLL-2003 train sub-token length distribution; a number: "
        "every sequence has that length.",
        "- `+compile`: the baseline under `torch.compile(dynamic=False)`, measured at one point per sweep "
        "(compile time, the first call, in the JSON as `compile_s`).",
    ]
    if env["device"] == "cpu":
        lines.append("- CPU timings come from a shared machine; expect noise of tens of percent on single rows.")
    if env["quick"]:
        lines.append("- **--quick**: a tiny smoke-test grid; these numbers say nothing about speed.")
    lines += ["", "## Summary (geometric mean of `x` over each op's rows)", "",
              "| section | op | comparison | x (geomean) | min..max | rows |", "|---|---|---|---:|---:|---:|"]
    baselines = {(r["section"], r["op"]): r["baseline"] for r in rows}
    for item in headline(rows):
        for impl, stats in item["ratios"].items():
            what = (f"{impl} vs {baselines[(item['section'], item['op'])]}" if impl.startswith("nertron ")
                    else f"nertron vs {impl}")
            lines.append(f"| {item['section']} | {item['op']} | {what} | {_fmt(stats['geomean'], '{:.3g}')} | "
                         f"{stats['min']:.3g}..{stats['max']:.3g} | {stats['rows']} |")
    for section in sections:
        srows = [r for r in rows if r["section"] == section]
        lines += ["", f"## {SECTION_TITLES[section]}", ""]
        if section in plots:
            lines += [f"![{section}]({plots[section]})", ""]
        for row in [r for r in srows if r.get("status")]:
            lines.append(f"- **{row['op']}: {row['status']}** — {row.get('note', '')}")
        srows = [r for r in srows if not r.get("status")]
        if not srows:
            continue
        order = list(dict.fromkeys(r["op"] for r in srows))
        srows.sort(key=lambda r: order.index(r["op"]))  # stable: each op's batch sweep, then its length sweep
        impls = []
        for row in srows:
            for name in row["impls"]:
                if name not in impls:
                    impls.append(name)
        baseline = srows[0]["baseline"]
        others = [i for i in impls if i != "nertron"]
        first = srows[0]["config"]
        path = first.get("path", "")
        extra = {"crf": f"K={first.get('K')}", "pooling": f"{first.get('layers')} layers x hidden {first.get('hidden')}",
                 "attention": f"{first.get('heads')} heads x {first.get('head_dim')}",
                 "layernorm": f"hidden {first.get('hidden')}"}.get(section, "")
        lines.append(f"nertron path: {path}; dtype {first.get('dtype')}{'; ' + extra if extra else ''}. "
                     f"Baseline for `x`: {baseline}.")
        if section == "e2e":
            lines.append(f"Data: {first.get('data')}; word batches collated with `NerData.collate` (tokenization "
                         "outside the timing except in the Tagger row); `tags agree` = fraction of words where "
                         "nertron and the baseline decode the same tag (same weights).")
        lines.append("")
        header = ["op", "B", "lengths", "T", "tokens", "nertron ms", "nertron tok/s"]
        if section in ("encoder", "e2e"):
            header.append("nertron sent/s")
        for name in others:
            header += [f"{name} ms", f"x ({baseline} / {name})" if name.startswith("nertron ") else f"x {name}"]
        header.append(f"peak MB nertron / {baseline}")
        if section == "e2e":
            header.append("tags agree")
        if section in ("attention", "gemm", "layernorm"):
            header.append("max abs diff")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
        for row in srows:
            c, ours = row["config"], row["impls"].get("nertron", {})
            cells = [row["op"], str(c.get("B", "")), str(c.get("lengths", "")), str(c.get("T", "")),
                     str(row["tokens"]), _impl_cell(ours), _rate(ours.get("tokens_per_s"))]
            if section in ("encoder", "e2e"):
                cells.append(_rate(ours.get("sentences_per_s")))
            for name in others:
                cells += [_impl_cell(row["impls"].get(name)), _fmt(row["ratios"].get(name), "{:.3g}")]
            base = row["impls"].get(baseline, {})
            cells.append(f"{_fmt(ours.get('peak_mem_mb'), '{:.1f}')} / {_fmt(base.get('peak_mem_mb'), '{:.1f}')}")
            if section == "e2e":
                cells.append(_fmt(row.get("tags_agree"), "{:.3f}"))
            if section in ("attention", "gemm", "layernorm"):
                cells.append(_fmt(row.get("max_abs_diff"), "{:.2g}"))
            lines.append("| " + " | ".join(cells) + " |")
    errors = [(r, n, i["error"]) for r in rows for n, i in r["impls"].items() if "error" in i]
    if errors:
        lines += ["", "## Errors and skipped measurements", ""]
        for row, name, text in errors:
            c = row["config"]
            lines.append(f"- {row['section']} / {row['op']} B={c.get('B')} T={c.get('T')} {name}: "
                         f"`{text.splitlines()[0][:300] if text else ''}`")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], section: str, path: Path, title: str) -> bool:
    """Tokens/s vs batch size and vs sequence length (log scales), one line per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    srows = [r for r in rows if r["section"] == section and not r.get("status")]
    ops = list(dict.fromkeys(r["op"] for r in srows))
    if not ops:
        return False
    fig, axes = plt.subplots(len(ops), 2, figsize=(10, 3.0 * len(ops)), squeeze=False)
    for i, op in enumerate(ops):
        for j, (sweep, xlabel) in enumerate((("batch", "batch size (CoNLL-2003 length mix)"),
                                             ("length", "sequence length (fixed batch)"))):
            ax = axes[i][j]
            points = [r for r in srows if r["op"] == op and r["sweep"] == sweep]
            impls = list(dict.fromkeys(n for r in points for n in r["impls"]))
            for name in impls:
                xs, ys = [], []
                for r in points:
                    result = r["impls"].get(name, {})
                    if result.get("tokens_per_s"):
                        xs.append(r["config"]["B"] if sweep == "batch" else r["config"]["lengths"])
                        ys.append(result["tokens_per_s"])
                if xs:
                    style = "o-" if len(xs) > 1 else "s"
                    ax.plot(xs, ys, style, label=name, linewidth=2 if name == "nertron" else 1, markersize=4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel("tokens/s", fontsize=8)
            ax.set_title(op if len(op) < 60 else op[:57] + "...", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/report.py", description="nertron's benchmark suite: every "
                                     "component vs its baseline, as Markdown, JSON and PNG plots.")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--out", default=str(HERE / "results"), help="output directory (default: bench/results)")
    parser.add_argument("--quick", action="store_true", help="tiny grid: a smoke test (CPU / CI), not a measurement")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--interpret-kernels", action="store_true",
                        help="CPU only: also run the GPU-only rows' Triton kernels in the interpreter "
                        "(a dry run of the GPU code paths; meaningless timings)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/report.py: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.interpret_kernels:
        if device != "cpu":
            parser.error("--interpret-kernels is for CPU runs")
        if "nertron.kernels" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated (first import)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(device, args.quick, not args.no_compile, args.interpret_kernels)
    env = environment(bench)
    stem = f"report_{device.split(':')[0]}"
    print(f"nertron bench: {device} ({env['device_name']}), sections {','.join(sections)} -> {out}/{stem}.*",
          flush=True)
    rows: list[dict] = []
    timings = {}
    for section in sections:
        print(f"== {section}", flush=True)
        t0 = time.perf_counter()
        try:
            rows += RUNNERS[section](bench)
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc(file=sys.stderr)
            rows.append(dict(section=section, op=section, sweep="-", config={}, tokens=None, sentences=None,
                             baseline=None, impls={}, ratios={}, ratio=None, status="error", note=_error_text(err)))
        timings[section] = round(time.perf_counter() - t0, 1)
    env["section_seconds"] = timings
    plots = {}
    for section in sections:
        name = f"{stem}_{section}.png"
        try:
            if plot(rows, section, out / name, f"{SECTION_TITLES[section]} - {env['device_name']}, {env['dtype']}"):
                plots[section] = name
        except Exception as err:  # noqa: BLE001
            print(f"plot {section} failed: {_error_text(err)}", file=sys.stderr)
    report = {"environment": env, "sections": sections, "summary": headline(rows), "rows": rows, "plots": plots}
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown(env, rows, sections, plots)
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / (stem + '.md')}, {out / (stem + '.json')} and {len(plots)} plots", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
