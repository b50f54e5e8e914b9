"""The headline GPU figures of nertron in ONE table, every figure measured side by side in
one run: the end of ``bash bench/gpu_check.sh quick`` (one call of a few minutes on a fresh
H100/H200 machine).

    python bench/gpu_quick.py --out DIR              # CUDA: full shapes, bf16, do_bench
    python bench/gpu_quick.py --out DIR --dry-run    # CPU: the same code path, tiny shapes,
                                                     # kernels in Triton's interpreter

Rows (nertron first in each group, then what a user would otherwise run, same inputs):

- ``e2e``: the tagger on CoNLL-2003 sentences (eng.testb, B sentences: the real length mix),
  nertron's shipped model (BertBiLSTMAttnCRF over all-MiniLM-L6-v2) on its Triton kernels,
  bf16 encoder + bf16 autocast head, word batch in -> tags out (``.cpu().tolist()``), and
  ``Tagger.tag_words`` (words in -> entities with scores out, tokenization included); vs
  transformers ``BertModel`` (sdpa) + the same head in plain PyTorch + pytorch-crf decode,
  eager and with the encoder under ``torch.compile`` (``nertron.bench.e2e.BaselineTagger``).
  Tokens/s count real (non-padding) sub-tokens.
- ``host``: ``Tagger.tag`` on 1,500 CoNLL-2003 test sentences (texts in, entities out) in
  batches of 128 sentences: end-to-end tokens/s and the fraction of the wall time the GPU is
  busy (device-only time, all batches prepared beforehand, over the end-to-end time); the
  tagger's host work alone (the model's part replayed) beside ``tokenizers.encode_batch`` for
  1, 2 and all threads, each in its own pinned process (``nertron.bench.host``).
- ``pipeline``: ``nertron.pipeline`` vs ``transformers.pipeline`` on the same
  ``BertForTokenClassification`` checkpoint (MiniLM + a seeded CoNLL head), 1,500 CoNLL test
  sentences, ``batch_size=32``, ``aggregation_strategy="simple"``, bf16 both; whether both
  return the same entities (``nertron.bench.pipeline``).
- ``encoder``: a bert-base-shaped encoder (random weights; 12 layers, H 768, 12 heads,
  FFN 3072) at B=256, T=128 (no padding), bf16: nertron's fused Triton encoder vs
  transformers ``BertModel`` (sdpa) eager and compiled; FLOPs (4 GEMMs per layer + QK^T and
  PV on real tokens) / time as a fraction of the device's dense bf16 peak (data sheet,
  looked up by device name; the peak used is printed) and of a measured cuBLAS bf16 GEMM.
- ``crf decode`` / ``crf forward``: ``CRF.decode(..., as_tensor=True)`` (Viterbi with the
  back-trace on the device) and ``CRF.forward`` (log-likelihood: log Z + gold path score)
  at B=256, T=128, K=9, fp32 emissions, vs pytorch-crf's ``decode`` / ``forward`` on the
  same data, in microseconds.
- ``pooling``: ``LayerPooling`` forward over 13 stored layers (one (13, B, T, H) buffer,
  B=256, T=128, H=768, bf16; embeddings output included): bytes read + written / time, as a
  fraction of a measured device-to-device copy bandwidth and of the nominal HBM bandwidth;
  beside an AllenNLP-style ScalarMix (eager) on the same layers.
- ``ceilings``: the measured copy bandwidth (1 GiB, bytes read + written) and cuBLAS bf16
  8192^3 (random data) that the fractions are read against.

Timing on CUDA: one warm-up call (compilation and autotuning stay out), then
``triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])`` with ``rep`` sized to give at least
~10 repeats; a call slower than 0.5 s (pytorch-crf's decode, which does one ``.item()`` per
tag) is timed as the median of 3 synchronised wall-clock calls instead. ``x`` = baseline
median time / nertron median time (above 1: nertron faster).

Dry run (``--dry-run``, CPU): ``TRITON_INTERPRET=1`` is set before nertron's kernels are
imported and every nertron row runs with ``backend='triton'`` in the interpreter, fp32,
tiny shapes (a 2-layer H=32 BERT written to a temporary checkpoint, a tiny head saved and
loaded like the shipped model), wall-clock timing, ``torch.compile(backend='aot_eager')``
in place of inductor. Its figures are NOT measurements: they check that the GPU run will
not die of a typo.

Writes exactly two files into ``--out``: ``quick.md`` (the table and how it was made) and
``quick.json`` (every row with its raw timings, the environment), rewritten after each
section so that a run stopped by its time limit leaves what it measured. ``--budget-s``:
a soft limit (SIGALRM) after which the row being measured is recorded as stopped and the
rest as skipped; the compiled baselines, measured last, are skipped when too little is left.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# The suite's shared pieces (they import torch, not nertron's kernels: TRITON_INTERPRET can still be set).
from nertron.bench.e2e import BaselineTagger, conll_sentences, synthetic_sentences  # noqa: E402
from nertron.bench.encoder import BERT_BASE, encoder_flops  # noqa: E402
from nertron.bench.harness import DENSE_BF16_TFLOPS, NOMINAL_GBPS, first_call, lookup  # noqa: E402
from nertron.bench.pooling import AllenNLPScalarMix  # noqa: E402

OUT_FILES = ("quick.md", "quick.json")  # all that this script writes under --out

DRY_STAND_IN = "NVIDIA H200"  # the dry run looks its peaks up under this name (labelled so)

TINY_BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=512, type_vocab_size=2)
# Shapes: (GPU, dry run)
SHAPES = {
    "e2e_sentences": (256, 2),
    "encoder": ((256, 128), (2, 16)),  # (B, T)
    "crf": ((256, 128, 9), (4, 8, 9)),  # (B, T, K)
    "pooling": ((13, 256, 128, 768), (13, 2, 8, 32)),  # (L, B, T, H)
    "copy_floats": (1 << 28, 1 << 20),  # 1 GiB fp32 on GPU
    "gemm": (8192, 128),
}
SLOW_CALL_S = 0.5  # slower first calls: median of 3 wall-clock calls instead of do_bench
# Seconds a compiled baseline needs (compile + timing) before it is started at all.
COMPILE_RESERVE_S = {"e2e": 60.0, "encoder": 80.0}
DRY_COMPILE_RESERVE_S = 10.0


class BudgetExceeded(Exception):
    """Raised by SIGALRM when --budget-s is spent; recorded in the row being measured."""


def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
    return text if len(text) < 600 else text[:600] + " ..."


def _nertron_version() -> str | None:
    try:
        from nertron._version import __version__
    except ImportError:
        return None
    return __version__


# ====================================================================== the run
class Quick:
    def __init__(self, dry_run: bool, budget_s: float, compile_baselines: bool, out: Path):
        import torch

        self.torch = torch
        self.dry = dry_run
        self.cuda = not dry_run
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.budget_s = budget_s
        self.compile_baselines = compile_baselines
        self.compile_backend = "inductor" if self.cuda else "aot_eager"
        self.out = out
        self.t0 = time.perf_counter()
        self.rows: list[dict[str, Any]] = []
        self.ceilings: dict[str, Any] = {}
        self.section_s: dict[str, float] = {}
        self.device_name = torch.cuda.get_device_name() if self.cuda else "cpu (dry run)"
        lookup_name = self.device_name if self.cuda else DRY_STAND_IN
        self.peak_key, peak = lookup(DENSE_BF16_TFLOPS, lookup_name)
        self.peak_tflops = peak
        self.bw_key, self.nominal_gbps = lookup(NOMINAL_GBPS, lookup_name)

    def shape(self, name: str):
        gpu, dry = SHAPES[name]
        return dry if self.dry else gpu

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    # ------------------------------------------------------------------ timing
    def time(self, fn: Callable[[], Any]) -> dict[str, Any]:
        """Median / p20 / p80 ms of ``fn`` after a warm-up call (``fn`` need not synchronise)."""
        t0 = time.perf_counter()
        fn()
        self.sync()
        first_ms = (time.perf_counter() - t0) * 1e3
        if self.dry:
            ms = self._wall(fn)
            return dict(ms=ms, p20_ms=ms, p80_ms=ms, first_ms=first_ms,
                        method="wall clock, one call after a warm-up call (dry run: not a measurement)")
        est = self._wall(fn)
        if est > SLOW_CALL_S * 1e3:
            times = [est] + [self._wall(fn) for _ in range(2)]
            return dict(ms=statistics.median(times), p20_ms=min(times), p80_ms=max(times), first_ms=first_ms,
                        method="median of 3 synchronised wall-clock calls (slow call)")
        import triton.testing

        rep = min(max(100.0, 12 * est), 1500.0)
        warmup = min(max(25.0, 2 * est), 300.0)
        median, p20, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return dict(ms=float(median), p20_ms=float(p20), p80_ms=float(p80), first_ms=first_ms,
                    method=f"triton.testing.do_bench(warmup={warmup:.0f}, rep={rep:.0f}, quantiles=[0.5, 0.2, 0.8])")

    def _wall(self, fn: Callable[[], Any]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3

    # ------------------------------------------------------------------ rows
    def measure(self, group: str, impl: str, fn: Callable[[], Any] | None, *, role: str, config: str,
                work: dict[str, float], note: str = "", skip: str | None = None, **extra: Any) -> dict[str, Any]:
        """Time ``fn`` into a row; a failure (or ``skip``) is recorded in the row, never raised."""
        row = dict(group=group, impl=impl, role=role, config=config, work=work, note=note, **extra)
        if skip is None and self.left() <= 0:
            skip = f"skipped: time budget (--budget-s {self.budget_s:.0f}) spent"
        if skip is not None:
            row["error"] = skip
        else:
            try:
                row.update(self.time(fn))
            except Exception as err:  # noqa: BLE001 - a failing row is reported, not fatal
                row["error"] = _error_text(err)
                print(f"  {group} / {impl}: FAILED {row['error']}", file=sys.stderr, flush=True)
                traceback.print_exc(limit=4, file=sys.stderr)
                self.free()
        if "ms" in row:
            print(f"  {group} / {impl}: {fmt_time(row['ms'])} [{fmt_time(row['p20_ms'])}, "
                  f"{fmt_time(row['p80_ms'])}] (first call {fmt_time(row['first_ms'])})", flush=True)
        self.rows.append(row)
        return row

    def compiled(self, group: str, impl: str, make: Callable[[], Callable[[], Any]], **kwargs: Any) -> dict[str, Any]:
        """A ``torch.compile``d baseline: compile (the first call, timed as ``compile_s``) then
        ``measure``; skipped when too little of the budget is left, a failure recorded."""
        torch = self.torch
        reserve = COMPILE_RESERVE_S.get(group, 60.0) if self.cuda else DRY_COMPILE_RESERVE_S
        skip = None
        if not self.compile_baselines:
            skip = "skipped: --no-compile"
        elif self.left() < reserve:
            skip = f"skipped: {self.left():.0f} s of the time budget left, a compile needs ~{reserve:.0f} s"
        if skip is not None:
            return self.measure(group, impl, None, skip=skip, **kwargs)
        import torch._dynamo

        torch._dynamo.reset()  # fresh caches: no silent fallback to eager after the recompile limit
        counters = torch._dynamo.utils.counters
        counters.clear()
        try:
            fn, compile_s = first_call(make, self.sync)
        except Exception as err:  # noqa: BLE001
            print(f"  {group} / {impl}: torch.compile FAILED {_error_text(err)}", file=sys.stderr, flush=True)
            traceback.print_exc(limit=4, file=sys.stderr)
            self.free()
            return self.measure(group, impl, None, skip="torch.compile failed: " + _error_text(err), **kwargs)
        breaks = sum(counters["graph_break"].values()) if "graph_break" in counters else 0
        note = kwargs.pop("note", "")
        note = (note + "; " if note else "") + f"compile {compile_s:.1f} s, {breaks} graph breaks"
        return self.measure(group, impl, fn, compile_s=compile_s, graph_breaks=breaks, note=note, **kwargs)

    def free(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()

    # ------------------------------------------------------------------ output
    def environment(self) -> dict[str, Any]:
        import importlib.metadata as md

        def version(name: str) -> str | None:
            try:
                return md.version(name)
            except md.PackageNotFoundError:
                return None

        torch = self.torch
        return {
            "device": self.device_name,
            "dry_run": self.dry,
            "measured": not self.dry,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": version("triton"),
            "transformers": version("transformers"),
            "pytorch-crf": version("pytorch-crf"),
            "nertron": _nertron_version(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "compile_backend": self.compile_backend,
            "dense_bf16_peak_tflops": self.peak_tflops,
            "peak_key": self.peak_key,
            "nominal_gbps": self.nominal_gbps,
            "bandwidth_key": self.bw_key,
            "budget_s": self.budget_s,
            "wall_s": round(time.perf_counter() - self.t0, 1),
            "section_s": self.section_s,
            "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        }

    def write(self, complete: bool) -> str:
        env = self.environment()
        rows = [finish(r, self) for r in self.rows]
        text = markdown(env, rows, self.ceilings, complete)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "quick.json").write_text(json.dumps(
            {"environment": env, "complete": complete, "ceilings": self.ceilings, "rows": rows},
            indent=1, default=str) + "\n")
        (self.out / "quick.md").write_text(text)
        return text


# ====================================================================== sections
def section_ceilings(q: Quick) -> None:
    """Measured device-to-device copy bandwidth and cuBLAS bf16 GEMM rate (random data)."""
    torch = q.torch
    n = q.shape("copy_floats")
    x = torch.randn(n, device=q.device)
    y = torch.empty_like(x)
    nbytes = 2 * n * 4  # read + write
    row = q.measure("ceilings", "device-to-device copy (torch copy_)", lambda y=y, x=x: y.copy_(x), role="ceiling",
                    config=f"{n * 4 / 2**30:.3g} GiB fp32, bytes read + written", work=dict(bytes=nbytes))
    if "ms" in row:
        q.ceilings["copy_gbps"] = nbytes / (row["ms"] * 1e-3) / 1e9
    del x, y
    m = q.shape("gemm")
    a = torch.randn(m, m, device=q.device).to(q.dtype)
    b = torch.randn(m, m, device=q.device).to(q.dtype)
    flops = 2.0 * m ** 3
    row = q.measure("ceilings", f"cuBLAS GEMM {m}^3 ({str(q.dtype).replace('torch.', '')}, random data)",
                    lambda a=a, b=b: a @ b, role="ceiling", config=f"M=N=K={m}", work=dict(flops=flops))
    if "ms" in row:
        q.ceilings["gemm_tflops"] = flops / (row["ms"] * 1e-3) / 1e12
    del a, b
    q.free()


def section_crf(q: Quick) -> None:
    torch = q.torch
    import torchcrf

    from nertron import CRF

    B, T, K = q.shape("crf")
    torch.manual_seed(0)
    ref = torchcrf.CRF(K, batch_first=True).to(q.device)
    ours = CRF(K, batch_first=True, backend="triton").to(q.device)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    emissions = torch.randn(B, T, K, generator=g).to(q.device)  # fp32: pytorch-crf's dtype
    tags = torch.randint(0, K, (B, T), generator=g).to(q.device)
    mask = torch.ones(B, T, dtype=torch.bool, device=q.device)
    config = f"B={B} T={T} K={K}, fp32 emissions, full mask"
    work = dict(positions=B * T)

    def ours_decode():
        with torch.inference_mode():
            return ours.decode(emissions, mask, as_tensor=True)

    def ref_decode():
        with torch.inference_mode():
            return ref.decode(emissions, mask)

    def ours_forward():
        with torch.inference_mode():
            return ours(emissions, tags, mask)

    def ref_forward():
        with torch.inference_mode():
            return ref(emissions, tags, mask)

    agree = rel = None
    try:
        ours_tags = ours_decode()[0].cpu()
        ref_tags = torch.tensor(ref_decode())
        agree = float((ours_tags == ref_tags).float().mean())
        a, b = ours_forward().double(), ref_forward().double()
        rel = float((a - b).abs() / b.abs().clamp(min=1e-30))
    except Exception as err:  # noqa: BLE001 - the timing rows say what failed
        print(f"  crf agreement check failed: {_error_text(err)}", file=sys.stderr)
    q.measure("crf decode", "nertron CRF.decode(as_tensor=True) (Triton Viterbi + back-trace)", ours_decode,
              role="nertron", config=config, work=work, tags_agree=agree,
              note=f"tags equal to pytorch-crf's: {fmt_frac(agree)}")
    q.measure("crf decode", "pytorch-crf CRF.decode (lists)", ref_decode, role="baseline", config=config, work=work)
    q.measure("crf forward", "nertron CRF.forward (Triton log Z + path score)", ours_forward, role="nertron",
              config=config, work=work, rel_diff=rel,
              note=f"rel. diff of the log-likelihood vs pytorch-crf: {fmt_sci(rel)}")
    q.measure("crf forward", "pytorch-crf CRF.forward", ref_forward, role="baseline", config=config, work=work)


def section_pooling(q: Quick) -> None:
    torch = q.torch

    from nertron import LayerPooling

    L, B, T, H = q.shape("pooling")
    torch.manual_seed(0)
    stored = torch.randn(L, B, T, H, device=q.device, dtype=q.dtype)  # (L, B, T, H): one buffer
    g = torch.Generator().manual_seed(0)
    layers = stored.unbind(0)  # equally spaced views: the kernel reads them in place
    ours = LayerPooling(L - 1, mode="softmax", include_embeddings=True, backend="triton").to(q.device)
    ref = AllenNLPScalarMix(L).to(q.device)
    with torch.no_grad():
        w = torch.randn(L, generator=g)
        ours.weights.copy_(w)
        for p, v in zip(ref.scalar_parameters, w):
            p.fill_(float(v))
    elt = stored.element_size()
    nbytes = (L + 1) * B * T * H * elt  # L layers read once, the mix written once
    dt = str(q.dtype).replace("torch.", "")
    config = f"{L} layers x B={B} T={T} H={H}, {dt}"
    diff = None
    try:
        with torch.inference_mode():
            diff = float((ours(layers).float() - ref(list(layers)).float()).abs().max())
    except Exception as err:  # noqa: BLE001
        print(f"  pooling agreement check failed: {_error_text(err)}", file=sys.stderr)

    def ours_fwd(layers=layers):
        with torch.inference_mode():
            return ours(layers)

    def ref_fwd(layers=layers):
        with torch.inference_mode():
            return ref(list(layers))

    q.measure("pooling", "nertron LayerPooling forward (Triton)", ours_fwd, role="nertron", config=config,
              work=dict(bytes=nbytes, tokens=B * T), max_abs_diff=diff,
              note=f"max abs diff vs ScalarMix: {fmt_sci(diff)}")
    q.measure("pooling", "AllenNLP-style ScalarMix forward (eager)", ref_fwd, role="baseline", config=config,
              work=dict(bytes=nbytes, tokens=B * T))
    del stored, layers
    q.free()


# ---------------------------------------------------------------------- encoder
def build_encoders(q: Quick):
    torch = q.torch
    import transformers

    from nertron import BertConfig, BertModel

    shape = TINY_BERT if q.dry else BERT_BASE
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**shape)
    hf_config._attn_implementation = "sdpa"
    hf = transformers.BertModel(hf_config)
    ours = BertModel(BertConfig(**shape), backend="triton")
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k != "embeddings.position_ids"})
    hf = hf.to(q.device, q.dtype).eval().requires_grad_(False)
    ours = ours.to(q.device, q.dtype).eval().requires_grad_(False)
    return shape, ours, hf


class EncoderState:
    """What the compiled encoder baseline (measured last) needs from the eager part."""


def section_encoder(q: Quick, state: EncoderState) -> None:
    torch = q.torch
    shape, ours, hf = build_encoders(q)
    B, T = q.shape("encoder")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, shape["vocab_size"], (B, T), generator=g).to(q.device)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    lengths = [T] * B
    flops = encoder_flops(lengths, shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"])
    dt = str(q.dtype).replace("torch.", "")
    name = "tiny 2-layer H=32 (dry run)" if q.dry else "bert-base (12 x 768, 12 heads, FFN 3072)"
    config = f"{name}, random weights, B={B} T={T} (no padding), {dt}"
    work = dict(tokens=B * T, flops=flops, sentences=B)

    def run(model):
        def fn():
            with torch.inference_mode():
                return model(**batch).last_hidden_state
        return fn

    rel = None
    try:
        with torch.inference_mode():
            a, b = run(ours)().float(), run(hf)().float()
        rel = float((a - b).norm() / b.norm())
    except Exception as err:  # noqa: BLE001
        print(f"  encoder agreement check failed: {_error_text(err)}", file=sys.stderr)
    q.measure("encoder", "nertron BertModel (fused Triton encoder)", run(ours), role="nertron", config=config,
              work=work, rel_diff=rel, note=f"rel. diff vs transformers: {fmt_sci(rel)}")
    q.measure("encoder", "transformers BertModel (sdpa), eager", run(hf), role="baseline", config=config, work=work)
    del ours
    q.free()
    state.hf, state.run, state.config, state.work = hf, run, config, work


def section_encoder_compiled(q: Quick, state: EncoderState) -> None:
    torch = q.torch
    if not hasattr(state, "hf"):
        raise RuntimeError("the eager encoder section did not finish")
    q.compiled("encoder", f"transformers BertModel (sdpa), torch.compile({q.compile_backend})",
               lambda: state.run(torch.compile(state.hf, dynamic=False, backend=q.compile_backend)),
               role="baseline", config=state.config, work=state.work)


# ---------------------------------------------------------------------- end to end
def _dry_model(q: Quick, tmp: Path) -> tuple[Path, Path]:
    """Dry run: a 2-layer H=32 BERT checkpoint (HF layout, the real checkpoint's vocabulary)
    and a tiny head saved like the shipped model, so that the common path loads both."""
    torch = q.torch
    import shutil

    import transformers

    from nertron.engine.checkpoint import default_checkpoint_dir
    from nertron.engine.models import MODEL_CLASSES
    from nertron.engine.tagger import DEFAULT_MODEL_DIR

    real = default_checkpoint_dir()
    ckpt = tmp / "tiny_bert"
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(str(ckpt))
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (real / name).is_file():
            shutil.copy(real / name, ckpt / name)
    meta = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    config = dict(meta["config"], enc_hidden_dim=16, num_heads=2, key_dim=8, val_dim=8)
    label_size = config.pop("label_size")
    config.pop("checkpoint_dir")
    model = MODEL_CLASSES[meta["class"]].create(label_size, ckpt, **config)
    model_dir = tmp / "tiny_model"
    model.save(model_dir)
    return model_dir, ckpt


class E2EState:
    """What the compiled e2e baseline (measured last) needs from the eager part."""


def section_e2e(q: Quick, state: E2EState) -> None:
    torch = q.torch
    import transformers

    from nertron import Tagger
    from nertron.engine.checkpoint import default_checkpoint_dir
    from nertron.engine.data.loader import NerData
    from nertron.engine.data.vocab import LabelVocab
    from nertron.engine.models import NerModel
    from nertron.engine.tagger import DEFAULT_MODEL_DIR
    from nertron.engine.tokenizer import WordPieceTokenizer

    if q.dry:
        state.tmp = tempfile.TemporaryDirectory(prefix="nertron-quick-")
        model_dir, ckpt = _dry_model(q, Path(state.tmp.name))
        what = "tiny head over a 2-layer H=32 BERT (dry run)"
    else:
        model_dir, ckpt = DEFAULT_MODEL_DIR, default_checkpoint_dir()
        what = "shipped model: BertBiLSTMAttnCRF over all-MiniLM-L6-v2"
    model = NerModel.load(model_dir, checkpoint_dir=ckpt, backend="triton")
    tokenizer = WordPieceTokenizer.from_pretrained(ckpt, max_length=model.features.bert.config.max_position_embeddings)
    # Tagger: model on the device, fp32 head, BERT in bf16 on CUDA (fp32 in the dry run)
    tagger = Tagger(model, tokenizer, device=q.device, dtype=q.dtype)
    model = tagger.model
    hf = transformers.BertModel.from_pretrained(str(ckpt), attn_implementation="sdpa")
    hf = hf.to(q.device, q.dtype).eval().requires_grad_(False)
    baseline = BaselineTagger(hf, model).to(q.device).eval()

    sentences, source = conll_sentences()
    if sentences is None:
        sentences, source = synthetic_sentences(tokenizer, 2000), "synthetic (vocabulary words, CoNLL-2003 lengths)"
    B = q.shape("e2e_sentences")
    picked = [list(sentences[i].words) for i in random.Random(0).sample(range(len(sentences)), B)]
    data = NerData.from_sentences([sentences[0]], None, tokenizer, vocab=LabelVocab(model.config.labels),
                                  casing=model.config.casing)
    batch = data.collate(data.encode(picked))  # word lists -> window examples -> padded batch (the learner's)
    tokens = int(batch["attention_mask"].sum())
    words = int(batch["word_mask"].sum())
    autocast = dict(device_type="cuda", dtype=torch.bfloat16, enabled=q.cuda)
    dt = "bf16 encoder + bf16 autocast head" if q.cuda else "fp32"
    config = (f"{what}; {B} sentences of {source.split(' (')[0]}, T={batch['input_ids'].shape[1]}, "
              f"{tokens} real tokens of {batch['input_ids'].numel()}; {dt}")
    work = dict(tokens=tokens, sentences=B, words=words)

    def run_ours():
        with torch.inference_mode(), torch.autocast(**autocast):
            out = model({k: v.to(q.device, non_blocking=True) for k, v in batch.items()})
        return out.tags.cpu().tolist()  # as the learner does: synchronises

    def run_base(encoder=None):
        with torch.inference_mode(), torch.autocast(**autocast):
            out = baseline({k: v.to(q.device, non_blocking=True) for k, v in batch.items()}, encoder)
        q.sync()
        return out

    def run_tagger():
        return tagger.tag_words(picked)

    agree = None
    try:
        ours_tags, base_tags = run_ours(), run_base()
        same = total = 0
        for row, (a, b) in enumerate(zip(ours_tags, base_tags)):
            n = int(batch["word_mask"][row].sum())
            same += sum(int(x == y) for x, y in zip(a[:n], b[:n]))
            total += n
        agree = same / total if total else None
    except Exception as err:  # noqa: BLE001
        print(f"  e2e agreement check failed: {_error_text(err)}", file=sys.stderr)
    q.measure("e2e", "nertron model: batch in, tags out (Triton kernels)", run_ours, role="nertron", config=config,
              work=work, tags_agree=agree, note=f"words with the same tag as the baseline: {fmt_frac(agree)}")
    q.measure("e2e", "nertron Tagger.tag_words: words in, entities + scores out", run_tagger, role="nertron",
              config=config, work=work, note="tokenization, batching, decode and entity scores included")
    q.measure("e2e", "transformers BertModel (sdpa) + same head + pytorch-crf, eager", run_base, role="baseline",
              config=config, work=work)
    state.hf, state.run_base, state.config, state.work = hf, run_base, config, work


def section_e2e_compiled(q: Quick, state: E2EState) -> None:
    torch = q.torch
    if not hasattr(state, "hf"):
        raise RuntimeError("the eager e2e section did not finish")

    def make():  # the encoder compiled; the head's packed LSTM and pytorch-crf stay eager
        encoder = torch.compile(state.hf, dynamic=False, backend=q.compile_backend)
        return lambda: state.run_base(encoder)

    q.compiled("e2e", f"transformers BertModel torch.compile({q.compile_backend}) + same head + pytorch-crf",
               make, role="baseline", config=state.config, work=state.work)


def section_host(q: Quick) -> None:
    """The tagger's host pipeline (``nertron.bench.host``): end-to-end tokens/s of
    ``Tagger.tag`` on 1,500 CoNLL test sentences in batches of 128 with the fraction of the
    wall time the GPU is busy, and the host work alone (model replayed) beside
    ``tokenizers.encode_batch`` for 1, 2 and all threads."""
    from nertron.bench.host import measure_host

    bench = type("HostBench", (), {"device": q.device, "quick": q.dry})()
    result = measure_host(bench, [1], 64, 2) if q.dry else measure_host(bench)
    share, texts, tokens = result["device_share"], result["texts"], result["tokens"]
    config = f"{texts} texts ({result['source'].split(' (')[0]}), {tokens} sub-tokens"
    q.rows.append(dict(group="host", impl="nertron Tagger.tag end to end (texts in, entities out)", role="nertron",
                       config=config, work={"tokens": tokens, "sentences": texts}, ms=share["full_s"] * 1e3,
                       p20_ms=share["full_s"] * 1e3, p80_ms=share["full_s"] * 1e3, gpu_busy=share["busy"],
                       method="best of 3 wall-clock runs (host)",
                       note=f"device busy {share['busy']:.1%} of the wall time (device-only {share['device_s']:.3f} s, "
                            f"{share['batches']} batches of {share['rows_per_batch']:.0f} rows)"))
    for t in result["threads"]:
        n = t["threads"]
        host_ms, enc_ms = t["host_us_per_text"] * texts * 1e-3, t["encode_us_per_text"] * texts * 1e-3
        q.rows.append(dict(group="host", impl=f"nertron Tagger host work, {n} thread(s), model replayed",
                           role="nertron", config="", work={"tokens": tokens, "sentences": texts}, ms=host_ms,
                           p20_ms=host_ms, p80_ms=host_ms, note=f"{t['host_us_per_text']:.1f} us/text; "
                           f"{t['host_over_encode']:.2f}x encode_batch; x{t['speedup_vs_1']:.2f} vs 1 thread"))
        q.rows.append(dict(group="host", impl=f"tokenizers encode_batch, {n} thread(s)", role="reference", config="",
                           work={"tokens": tokens, "sentences": texts}, ms=enc_ms, p20_ms=enc_ms, p80_ms=enc_ms,
                           note=f"{t['encode_us_per_text']:.1f} us/text"))
    for row in q.rows[-1 - 2 * len(result["threads"]):]:
        print(f"  host / {row['impl']}: {fmt_time(row['ms'])}; {row['note']}", flush=True)


def section_pipeline(q: Quick) -> None:
    """``nertron.pipeline`` vs ``transformers.pipeline`` on the same token-classification
    checkpoint (MiniLM + a seeded CoNLL head), 1,500 CoNLL test sentences, ``batch_size=32``,
    ``aggregation_strategy="simple"``, bf16 both (``nertron.bench.pipeline``)."""
    from nertron.bench.pipeline import Setup, same_output

    bench = type("PipelineBench", (), {"cuda": q.cuda, "quick": q.dry, "sync": lambda self: q.sync()})()
    s = Setup(bench, 32 if q.dry else 1500)
    agree = same_output(s.run_theirs(), s.run_ours())
    config = (f"{len(s.texts)} texts, batch_size {s.batch_size}, aggregation 'simple', "
              f"{'fp32' if q.dry else 'bf16'}; same entities: {agree}")
    work = {"tokens": s.tokens, "sentences": len(s.texts)}
    q.measure("pipeline", "nertron.pipeline (fused encoder)", s.run_ours, role="nertron", config=config, work=work)
    q.measure("pipeline", "transformers.pipeline (sdpa)", s.run_theirs, role="baseline", config=config, work=work)


# ====================================================================== table
GROUPS = {  # group -> headline title, in table order
    "e2e": "End-to-end tagger, CoNLL-2003 length mix",
    "host": "Tagger host pipeline and GPU busy fraction (1,500 CoNLL sentences)",
    "pipeline": "nertron.pipeline vs transformers.pipeline (token classification)",
    "encoder": "BERT encoder, fraction of dense bf16 peak",
    "crf decode": "CRF Viterbi decode",
    "crf forward": "CRF forward (log Z)",
    "pooling": "Weighted-layer pooling, fraction of HBM bandwidth",
    "ceilings": "Device ceilings (measured)",
}


SECTION_GROUP = {"ceilings": "ceilings", "crf": "crf decode", "pooling": "pooling", "e2e": "e2e", "host": "host",
                 "pipeline": "pipeline",
                 "encoder": "encoder", "e2e compiled": "e2e", "encoder compiled": "encoder"}


def fmt_time(ms: float | None) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms < 1.0:
        return f"{ms * 1e3:.3g} µs"
    if ms < 1e4:
        return f"{ms:.3g} ms"
    return f"{ms / 1e3:.3g} s"


def fmt_rate(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def fmt_frac(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fmt_sci(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2g}"


def finish(row: dict[str, Any], q: Quick) -> dict[str, Any]:
    """Derived figures of a timed row: throughput, fractions of the ceilings, speed-ups."""
    row = dict(row)
    ms = row.get("ms")
    if not ms:
        return row
    s = ms * 1e-3
    work = row["work"]
    if "tokens" in work:
        row["tokens_per_s"] = work["tokens"] / s
    if "sentences" in work:
        row["sentences_per_s"] = work["sentences"] / s
    if "positions" in work:
        row["positions_per_s"] = work["positions"] / s
    if "flops" in work:
        row["tflops"] = work["flops"] / s / 1e12
        if q.peak_tflops:
            row["fraction_of_peak"] = row["tflops"] / q.peak_tflops
        if q.ceilings.get("gemm_tflops") and row["group"] != "ceilings":
            row["fraction_of_cublas"] = row["tflops"] / q.ceilings["gemm_tflops"]
    if "bytes" in work:
        row["gbps"] = work["bytes"] / s / 1e9
        if q.ceilings.get("copy_gbps") and row["group"] != "ceilings":
            row["fraction_of_copy"] = row["gbps"] / q.ceilings["copy_gbps"]
        if q.nominal_gbps:
            row["fraction_of_nominal"] = row["gbps"] / q.nominal_gbps
    if row["role"] == "baseline":
        row["speedups"] = {r["impl"]: ms / r["ms"] for r in q.rows
                           if r["group"] == row["group"] and r["role"] == "nertron" and r.get("ms")}
    return row


def _fractions(row: dict[str, Any], labels, none: str) -> str:
    """``x% of <label>`` for each (key, label) the row has, or ``none``."""
    return "; ".join(f"{row[key]:.1%} of {label}" for key, label in labels if key in row) or none

def _cells(row: dict[str, Any], env: dict[str, Any]) -> tuple[str, str, str]:
    """(throughput, of ceiling, x) cells."""
    if "error" in row:
        return "-", "-", "-"
    group = row["group"]
    rate, ceiling = "-", "-"
    if group in ("e2e", "host", "pipeline"):
        rate = f"{fmt_rate(row.get('tokens_per_s'), 'tok/s')} ({fmt_rate(row.get('sentences_per_s'), 'sent/s')})"
    elif "tflops" in row:
        rate = f"{row['tflops']:.4g} TFLOP/s"
        if "tokens_per_s" in row:
            rate += f" ({fmt_rate(row['tokens_per_s'], 'tok/s')})"
        ceiling = _fractions(row, (("fraction_of_peak", f"{env['dense_bf16_peak_tflops']} TFLOP/s peak"),
                                   ("fraction_of_cublas", "cuBLAS")), "- (no peak known for this device)")
    elif "gbps" in row:
        rate = f"{row['gbps']:.4g} GB/s"
        ceiling = _fractions(row, (("fraction_of_copy", "copy"), ("fraction_of_nominal", f"{env['nominal_gbps']} GB/s nominal")),
                             "- (no nominal bandwidth known for this device)")
    elif "positions_per_s" in row:
        rate = fmt_rate(row["positions_per_s"], "tags/s")
    speed = "-"
    if row.get("speedups"):
        items = list(row["speedups"].items())
        if len(items) == 1:
            speed = f"{items[0][1]:.3g}x"
        else:
            speed = " / ".join(f"{v:.3g}x ({'Tagger' if 'Tagger' in k else 'model'})" for k, v in items)
    return rate, ceiling, speed


def _md(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(env: dict[str, Any], rows: list[dict[str, Any]], ceilings: dict[str, Any], complete: bool) -> str:
    dry = env["dry_run"]
    banner = ("**DRY RUN on CPU: tiny shapes, kernels in Triton's interpreter, wall-clock timing, fp32. "
              "These figures are NOT measurements** (they only show that the GPU run's code path works)."
              if dry else "Measured on the device below in one run; every figure beside its baseline.")
    peak = env["dense_bf16_peak_tflops"]
    lines = [
        f"# nertron quick GPU check: {env['device']}{' (DRY RUN)' if dry else ''}", "",
        banner, "",
        f"{env['date']}; python {env['python']}, torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, "
        f"transformers {env['transformers']}, pytorch-crf {env['pytorch-crf']}; nertron rows on Triton kernels "
        f"(backend='triton'{', TRITON_INTERPRET=1' if env['triton_interpret'] == '1' else ''}); "
        f"{env['wall_s']} s wall{'' if complete else ' (INCOMPLETE: stopped early)'}.",
        "",
        f"- Dense bf16 peak used: {peak if peak else 'unknown'} TFLOP/s (data sheet, matched '{env['peak_key']}'"
        f"{' as a dry-run stand-in' if dry else ''}); nominal memory bandwidth "
        f"{env['nominal_gbps'] if env['nominal_gbps'] else 'unknown'} GB/s. Measured: copy "
        f"{ceilings.get('copy_gbps', float('nan')):.4g} GB/s (read + write), cuBLAS "
        f"{ceilings.get('gemm_tflops', float('nan')):.4g} TFLOP/s.",
        "- `x` = baseline median time / nertron median time (above 1: nertron faster); e2e baselines: vs the "
        "model row and vs the Tagger row. Tokens count real (non-padding) sub-tokens.",
        f"- Baselines under `torch.compile(dynamic=False, backend='{env['compile_backend']}')`: compile time "
        "and graph breaks in the note; only the e2e encoder is compiled (its head and pytorch-crf stay eager).",
        "",
        "| headline | implementation | median [p20, p80] | throughput | of ceiling | x (baseline / nertron) "
        "| config; note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    titles = dict(GROUPS)
    titles.update({r["group"]: r["group"] for r in rows if r["group"] not in GROUPS})
    for group, title in titles.items():
        first = True
        shown = None  # a group's config is printed once
        for row in (r for r in rows if r["group"] == group):
            head = f"**{title}**{' (dry run)' if dry else ''}" if first else ""
            first = False
            if "error" in row:
                timing = "error: " + _md(row["error"])[:160]
            else:
                timing = f"{fmt_time(row['ms'])} [{fmt_time(row['p20_ms'])}, {fmt_time(row['p80_ms'])}]"
            rate, ceiling, speed = _cells(row, env)
            config = row.get("config", "")
            note = "; ".join(x for x in (config if config != shown else "", row.get("note", "")) if x)
            shown = config or shown
            lines.append(f"| {head} | {_md(row['impl'])} | {timing} | {rate} | {ceiling} | {speed} | {_md(note)} |")
        if first:
            lines.append(f"| **{title}** | (not run) | - | - | - | - | |")
    methods = sorted({r["method"] for r in rows if r.get("method")})
    lines += ["", "Timing: " + "; ".join(methods) + "." if methods else "", ""]
    if dry:
        lines += ["**DRY RUN: not measurements.**", ""]
    return "\n".join(lines)


# ====================================================================== main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results" / "quick"),
                        help="output folder (default: $OUT, else bench/results/quick)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU: tiny shapes, kernels in Triton's interpreter, wall-clock timing (not a measurement)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="soft time limit in seconds (default 240): rows after it are recorded as skipped")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    args = parser.parse_args(argv)
    if args.dry_run:
        if "nertron.kernels" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("gpu_quick.py --dry-run: nertron.kernels was imported before TRITON_INTERPRET=1 was set",
                  file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated (their first import)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_quick.py needs a CUDA device (or --dry-run on CPU)", file=sys.stderr)
        return 2
    q = Quick(args.dry_run, args.budget_s, not args.no_compile, Path(args.out))
    print(f"nertron quick GPU check: {q.device_name}{' (DRY RUN: not measurements)' if q.dry else ''}; "
          f"budget {args.budget_s:.0f} s; writing {', '.join(OUT_FILES)} to {q.out}", flush=True)

    def on_alarm(signum, frame):
        raise BudgetExceeded(f"stopped: time budget (--budget-s {args.budget_s:.0f}) spent")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(args.budget_s)))
    e2e, enc = E2EState(), EncoderState()
    # Run order: cheap sections first, the eager e2e and encoder, then the compiled baselines
    # (the slowest and most fragile) while the budget lasts. The table has its own order.
    sections = [
        ("ceilings", lambda: section_ceilings(q)),
        ("crf", lambda: section_crf(q)),
        ("pooling", lambda: section_pooling(q)),
        ("e2e", lambda: section_e2e(q, e2e)),
        ("host", lambda: section_host(q)),
        ("pipeline", lambda: section_pipeline(q)),
        ("encoder", lambda: section_encoder(q, enc)),
        ("e2e compiled", lambda: section_e2e_compiled(q, e2e)),
        ("encoder compiled", lambda: section_encoder_compiled(q, enc)),
    ]
    failed = []
    complete = True
    try:
        for name, run in sections:
            group = SECTION_GROUP[name]
            if q.left() <= 0:
                q.rows.append(dict(group=group, impl=f"section {name}", role="error", config="", work={}, note="",
                                   error=f"skipped: time budget (--budget-s {args.budget_s:.0f}) spent"))
                continue
            print(f"== {name} ({q.left():.0f} s of the budget left)", flush=True)
            t0 = time.perf_counter()
            try:
                run()
            except Exception as err:  # noqa: BLE001 - one broken section must not lose the others
                traceback.print_exc(file=sys.stderr)
                failed.append(name)
                q.rows.append(dict(group=group, impl=f"section {name}", role="error", config="", work={}, note="",
                                   error="section failed: " + _error_text(err)))
                q.free()
            q.section_s[name] = round(time.perf_counter() - t0, 1)
            q.write(complete=False)
    except KeyboardInterrupt:  # the outer `timeout -s INT`: keep what was measured
        complete = False
        print("interrupted: writing what was measured", file=sys.stderr, flush=True)
    finally:
        signal.alarm(0)
    text = q.write(complete=complete)
    print()
    print(text, flush=True)
    errors = [r for r in q.rows if "error" in r]
    print(f"wrote {', '.join(str(q.out / f) for f in OUT_FILES)}; {len(q.rows)} rows, {len(errors)} with errors "
          f"or skipped; {time.perf_counter() - q.t0:.0f} s", flush=True)
    return 1 if (failed or not complete) else 0


if __name__ == "__main__":
    sys.exit(main())
