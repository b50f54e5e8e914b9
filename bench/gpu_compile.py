"""Ahead-of-time compile gate: every Triton kernel of nertron, compiled for real GPUs on a
machine with no GPU and no driver.

Triton's interpreter (what the CPU test-suite runs) executes kernels as Python: it does not
type-check, does not lower ``tl.dot`` and knows nothing of registers, shared memory or grid
limits, so a kernel can pass every interpreter test and still fail to compile for a GPU.
This gate closes that hole:

1. **Record.** The real launchers (``nertron.kernels.*``, reached through the real modules:
   the fused BERT encoder, ``CRF``, ``crf_span_log_probs``, ``ScalarMix``/``LayerPooling``)
   are called on CPU tensors of realistic shapes (bert-base and MiniLM, B=256, T=128,
   ragged lengths; CRF K from 2 to 256; fp32/fp16/bf16) with ``JITFunction.run`` and
   ``Autotuner.run`` replaced by recorders: every launch is captured (grid, arguments,
   constexprs, ``num_warps``/``num_stages``, every autotune config the autotuner would
   benchmark) and nothing runs. So the variants below are exactly what the launchers pass;
   nothing is copied into this file.
2. **Specialise.** Each launch goes through Triton's own binder
   (``create_function_from_signature`` + ``JITFunction._pack_args``) for each target, which
   gives the signature, constexprs and divisibility attributes a GPU launch would compile.
3. **Compile.** Every distinct variant is compiled down to a cubin for ``sm_90`` (H100/H200)
   and ``sm_80`` (A100) with ``triton.compile(ASTSource(...), target=GPUTarget(...))``; the
   wheel bundles ``ptxas``, whose ``-v`` log gives registers and spills.
4. **Judge.** A variant fails when it does not compile, or needs more shared memory than the
   target has (227 KiB on sm_90, 163 KiB on sm_80) unless it is an autotune config that the
   autotuner would drop (it skips configs that run out of resources) while another config of
   the same call fits. A launch fails when its grid passes CUDA's limits (x < 2^31, y and
   z <= 65535), and the gate fails when a ``*_kernel`` of ``nertron.kernels`` is never
   launched by any scenario.

    python bench/gpu_compile.py                      # quick matrix, sm_90
    python bench/gpu_compile.py --matrix full --targets sm_90,sm_80 \\
        --markdown bench/results/gpu_compile.md --json /tmp/gpu_compile.json

Exit status 1 when the gate fails. Triton internals used here are private; they are pinned
by :func:`_check_triton`, which fails with a clear message on a Triton that changed them.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import inspect
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

# The interpreter must be off: it replaces @triton.jit functions by interpreted ones, picks
# interpreter-only configs in the launchers, and cannot be compiled. Set before nertron's
# kernels are imported (Triton reads it when @triton.jit decorates).
os.environ.pop("TRITON_INTERPRET", None)
# Compile into a private, throw-away cache: a cache hit would skip ptxas and lose its log.
if "TRITON_CACHE_DIR" not in os.environ:
    import atexit
    import shutil

    _CACHE = tempfile.mkdtemp(prefix="nertron-gpu-compile-")
    os.environ["TRITON_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import triton  # noqa: E402

KIB = 1024
# (compute capability, opt-in shared memory per block in bytes, what it is)
TARGETS = {
    "sm_90": (90, 227 * KIB, "H100/H200"),
    "sm_80": (80, 163 * KIB, "A100"),
}
GRID_LIMITS = (2**31 - 1, 65535, 65535)
MAX_THREADS = 1024


# --------------------------------------------------------------------------------------
# Triton internals (pinned)
# --------------------------------------------------------------------------------------
class TritonChanged(RuntimeError):
    pass


def _check_triton() -> None:
    """The private pieces of Triton this gate relies on; a clear error where one moved."""
    from triton import knobs
    from triton.runtime import autotuner, jit

    needs = {
        "triton.runtime.jit.create_function_from_signature": hasattr(jit, "create_function_from_signature"),
        "triton.runtime.jit.JITFunction._pack_args": hasattr(jit.JITFunction, "_pack_args"),
        "triton.runtime.jit.JITFunction.params": True,
        "triton.runtime.autotuner.Autotuner.prune_configs": hasattr(autotuner.Autotuner, "prune_configs"),
        "triton.compiler.ASTSource": hasattr(triton.compiler, "ASTSource"),
        "triton.compiler.make_backend": hasattr(triton.compiler, "make_backend"),
        "triton.backends.compiler.GPUTarget": _has("triton.backends.compiler", "GPUTarget"),
        "triton.knobs.nvidia.dump_ptxas_log": hasattr(knobs.nvidia, "dump_ptxas_log"),
        "triton.knobs.compilation.always_compile": hasattr(knobs.compilation, "always_compile"),
    }
    run_params = list(inspect.signature(jit.JITFunction.run).parameters)
    needs["JITFunction.run(self, *args, grid, warmup, **kwargs)"] = run_params == ["self", "args", "grid", "warmup", "kwargs"]
    missing = [name for name, ok in needs.items() if not ok]
    if missing:
        raise TritonChanged(
            f"the compile gate was written against Triton 3.9's internals; Triton {triton.__version__} "
            f"lacks or changed: {', '.join(missing)}. Update bench/gpu_compile.py for this version.")


def _has(module: str, name: str) -> bool:
    try:
        return hasattr(__import__(module, fromlist=[name]), name)
    except ImportError:
        return False


# --------------------------------------------------------------------------------------
# recording launches
# --------------------------------------------------------------------------------------
@dataclass
class Spec:
    """What one launch compiles to on one target (all plain data, no tensors)."""

    signature: dict
    constexprs: dict
    attrs: dict
    options: Any  # the backend's options dataclass (num_warps, num_stages, ...)


@dataclass
class Launch:
    kernel: str  # module.qualname of the @triton.jit function
    grid: tuple
    scenario: str
    specs: dict  # target -> Spec
    group: int | None = None  # autotuned call id (configs of one call share it)
    config: str = ""  # the autotune config, for the table


@dataclass
class Recorder:
    targets: list[str]
    scenario: str = ""
    launches: list[Launch] = field(default_factory=list)
    functions: dict = field(default_factory=dict)  # kernel name -> JITFunction
    tuned: list = field(default_factory=list)  # per autotuned call: kernel, scenario, configs
    _groups: int = 0
    _backends: dict = field(default_factory=dict)
    _binders: dict = field(default_factory=dict)

    def backend(self, target: str):
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        if target not in self._backends:
            self._backends[target] = make_backend(GPUTarget("cuda", TARGETS[target][0], 32))
        return self._backends[target]

    def record(self, fn, args: tuple, kwargs: dict, grid, group: int | None = None, config: str = "") -> None:
        """Specialise one launch of JITFunction ``fn`` for every target (Triton's own binder)."""
        from triton import knobs
        from triton.runtime.jit import create_function_from_signature

        name = f"{fn.module}.{fn.__name__}"
        self.functions[name] = fn
        kwargs = dict(kwargs)
        kwargs["debug"] = False
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
        specs = {}
        bound_args = None
        for target in self.targets:
            backend = self.backend(target)
            key = (name, target)
            if key not in self._binders:
                self._binders[key] = create_function_from_signature(fn.signature, fn.params, backend)
            bound_args, specialization, options = self._binders[key](*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
            specs[target] = Spec(signature, constexprs, attrs, options)
        if callable(grid):
            grid = grid(bound_args)
        grid = tuple(int(g) for g in grid)
        self.launches.append(Launch(name, grid, self.scenario, specs, group, config))

    @contextlib.contextmanager
    def active(self) -> Iterator["Recorder"]:
        """Replace kernel launches by recording, for the duration of the block."""
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction

        recorder = self
        jit_run, tune_run = JITFunction.run, Autotuner.run

        def record_jit(fn, *args, grid, warmup, **kwargs):
            recorder.record(fn, args, kwargs, grid)
            return None

        def record_tuned(tuner, *args, grid, warmup, **kwargs):
            # every config the autotuner would benchmark for this call (after its pruning)
            tuner.nargs = dict(zip(tuner.arg_names, args))
            configs = tuner.prune_configs(kwargs) if len(tuner.configs) > 1 else tuner.configs
            tuner.nargs = None
            recorder._groups += 1
            recorder.tuned.append({"kernel": f"{tuner.fn.module}.{tuner.fn.__name__}", "scenario": recorder.scenario,
                                   "configs": [_config_text(c) for c in configs]})
            for config in configs:
                recorder.record(tuner.fn, args, {**kwargs, **config.all_kwargs()}, grid,
                                group=recorder._groups, config=_config_text(config))
            return None

        JITFunction.run = record_jit
        Autotuner.run = record_tuned
        try:
            yield self
        finally:
            JITFunction.run, Autotuner.run = jit_run, tune_run

    @contextlib.contextmanager
    def scene(self, name: str):
        self.scenario = name
        yield


def _config_text(config) -> str:
    kw = config.kwargs
    blocks = "x".join(str(kw[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in kw)
    rest = " ".join(f"{k}={v}" for k, v in kw.items() if k not in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return f"{blocks} {rest} w{config.num_warps} s{config.num_stages}".strip()


def all_kernels() -> dict[str, Any]:
    """Every ``*_kernel`` @triton.jit function (or autotuned one) in ``nertron.kernels``."""
    import importlib
    import pkgutil

    import nertron.kernels as package
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for attr, value in vars(module).items():
            fn = value.fn if isinstance(value, Autotuner) else value
            if isinstance(fn, JITFunction) and attr.endswith("_kernel") and fn.module == module.__name__:
                found[f"{fn.module}.{fn.__name__}"] = fn
    return found


# --------------------------------------------------------------------------------------
# scenarios: realistic calls of the real modules and launchers
# --------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ENCODERS = {  # hidden, layers, heads, intermediate
    "minilm": (384, 6, 12, 1536),
    "bert-base": (768, 12, 12, 3072),
}


def _lengths(batch: int, length: int, seed: int) -> torch.Tensor:
    """Ragged lengths in [1, T], the first row full, the second of length 1."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    if batch > 1:
        lengths[1] = 1
    return lengths


def _mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    return torch.arange(length)[None, :] < lengths[:, None]


def _encoder(shape: str, dtype: torch.dtype):
    from nertron.engine.bert import BertModel
    from nertron.engine.config import BertConfig

    hidden, layers, heads, inner = ENCODERS[shape]
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inner, max_position_embeddings=512, type_vocab_size=2)
    with torch.device("meta"):
        model = BertModel(config, backend="triton")
    # weights are never read (nothing runs): allocate without initialising
    return model.to_empty(device="cpu").to(dtype).eval()


def scenario_encoder(rec: Recorder, shape: str, dtype_name: str, batch: int = 256, length: int = 128,
                     tf32: bool = False) -> None:
    from nertron.bindings.bert import fused_encoder_forward

    dtype = DTYPES[dtype_name]
    model = _encoder(shape, dtype)
    lengths = _lengths(batch, length, seed=1)
    mask = _mask(lengths, length)
    ids = torch.zeros(batch, length, dtype=torch.long)
    layer_mix = torch.full((ENCODERS[shape][1] + 1,), 0.1)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        tag = f"encoder {shape} {dtype_name}{' tf32' if tf32 else ''} B={batch} T={length}"
        with rec.scene(tag + " packed, layer_mix"):
            fused_encoder_forward(model, ids, mask, layer_mix=layer_mix)
        with rec.scene(tag + " padded"):
            fused_encoder_forward(model, ids, mask, packed=False)
    finally:
        torch.set_float32_matmul_precision(previous)


def scenario_crf(rec: Recorder, num_tags: int, dtype_name: str, batch: int = 256, length: int = 128) -> None:
    from nertron.bindings import crf as crf_binding
    from nertron.bindings.crf import CRF

    dtype = DTYPES[dtype_name]
    crf = CRF(num_tags, batch_first=True, backend="triton")
    lengths = _lengths(batch, length, seed=num_tags)
    mask = _mask(lengths, length)
    emissions = torch.randn(batch, length, num_tags).to(dtype).requires_grad_()
    tags = torch.randint(0, num_tags, (batch, length))
    tag = f"crf K={num_tags} {dtype_name} B={batch} T={length}"
    with rec.scene(tag + " nll fwd+bwd"):
        crf(emissions, tags, mask).backward()
    with rec.scene(tag + " decode"):
        crf.decode(emissions.detach(), mask, as_tensor=True)
    with rec.scene(tag + " marginals"):
        crf.marginals(emissions.detach(), mask)
    if "backend" in inspect.signature(crf_binding.crf_span_log_probs).parameters:
        spans = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 2, 7]])
        start, end, trans = crf.transition_scores(constrained=True)
        with rec.scene(tag + " span scores"), torch.no_grad():
            crf_binding.crf_span_log_probs(emissions.detach(), mask, tags, spans, start, end, trans, backend="triton")


def scenario_pooling(rec: Recorder, hidden: int, dtype_name: str, batch: int = 256, length: int = 128,
                     layers: int = 13) -> None:
    from nertron.bindings.pooling import LayerPooling, ScalarMix

    dtype = DTYPES[dtype_name]
    lengths = _lengths(batch, length, seed=hidden)
    mask = _mask(lengths, length)
    states = [torch.empty(batch, length, hidden, dtype=dtype).requires_grad_() for _ in range(layers)]
    tag = f"pooling H={hidden} {dtype_name} L={layers} B={batch} T={length}"
    for norm in (False, True):
        mix = ScalarMix(layers, do_layer_norm=norm, backend="triton")
        with rec.scene(f"{tag} ScalarMix do_layer_norm={norm} fwd+bwd"):
            mix(states, mask).sum().backward()
    pooling = LayerPooling(layers - 1, mode="weighted", backend="triton")
    with rec.scene(f"{tag} LayerPooling fwd (frozen layers)"):
        pooling([s.detach() for s in states]).float().sum().backward()


CRF_TAGS = {"quick": (9, 129), "full": (2, 3, 5, 9, 16, 17, 33, 64, 65, 129, 256)}


def scenarios(matrix: str) -> list[tuple[str, Callable[[Recorder], None]]]:
    """(name, call) pairs: the quick matrix keeps one realistic case per kernel and flag."""
    out: list[tuple[str, Callable[[Recorder], None]]] = []
    if matrix == "quick":
        out.append(("encoder minilm bf16", lambda r: scenario_encoder(r, "minilm", "bf16")))
        out.append(("encoder minilm fp32", lambda r: scenario_encoder(r, "minilm", "fp32", batch=32)))
        for k in CRF_TAGS["quick"]:
            out.append((f"crf K={k} bf16", lambda r, k=k: scenario_crf(r, k, "bf16")))
        out.append(("pooling bf16", lambda r: scenario_pooling(r, 384, "bf16")))
        out.append(("encoder minilm bf16 B=8192 T=16",
                    lambda r: scenario_encoder(r, "minilm", "bf16", batch=8192, length=16)))
        return out
    for shape in ENCODERS:
        for dt in DTYPES:
            out.append((f"encoder {shape} {dt}", lambda r, s=shape, d=dt: scenario_encoder(r, s, d)))
        out.append((f"encoder {shape} fp32 tf32", lambda r, s=shape: scenario_encoder(r, s, "fp32", tf32=True)))
    # many short sequences: batch * heads beyond a grid axis of 65535
    out.append(("encoder minilm bf16 B=8192 T=16",
                lambda r: scenario_encoder(r, "minilm", "bf16", batch=8192, length=16)))
    for k in CRF_TAGS["full"]:
        for dt in DTYPES:
            out.append((f"crf K={k} {dt}", lambda r, k=k, d=dt: scenario_crf(r, k, d)))
    out.append(("crf K=9 bf16 B=8192 T=16", lambda r: scenario_crf(r, 9, "bf16", batch=8192, length=16)))
    for hidden in (384, 768):
        for dt in DTYPES:
            out.append((f"pooling H={hidden} {dt}", lambda r, h=hidden, d=dt: scenario_pooling(r, h, d)))
    return out


# --------------------------------------------------------------------------------------
# variants and compilation
# --------------------------------------------------------------------------------------
@dataclass
class Variant:
    kernel: str
    target: str
    spec: Spec
    key: str
    label: str
    config: str
    groups: set = field(default_factory=set)
    scenarios: set = field(default_factory=set)
    result: dict = field(default_factory=dict)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _label(fn, spec: Spec) -> str:
    """Pointer dtypes and constexprs: what tells the variants of one kernel apart."""
    names = fn.arg_names
    pointers = []
    for name in names:
        ty = spec.signature.get(name)
        if isinstance(ty, str) and ty.startswith("*") and ty[1:] not in pointers:
            pointers.append(ty[1:])
    consts = []
    for path, value in spec.constexprs.items():
        name = names[path[0]]
        if name in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"):
            continue  # in the config column
        if spec.signature.get(name) == "constexpr":
            consts.append(f"{name}={int(value) if isinstance(value, bool) else value}")
    return f"{'/'.join(pointers)} {' '.join(consts)}".strip()


def variants_of(rec: Recorder) -> list[Variant]:
    by_key: dict[str, Variant] = {}
    for launch in rec.launches:
        fn = rec.functions[launch.kernel]
        for target, spec in launch.specs.items():
            text = repr((launch.kernel, target, sorted(spec.signature.items()), sorted(spec.constexprs.items()),
                         sorted(spec.attrs.items()), spec.options.hash()))
            key = hashlib.sha256(text.encode()).hexdigest()[:10]
            variant = by_key.get(key)
            if variant is None:
                options = spec.options
                config = launch.config or f"w{options.num_warps} s{options.num_stages}"
                variant = by_key[key] = Variant(launch.kernel, target, spec, key, _label(fn, spec), config)
            if launch.group is not None:
                variant.groups.add(launch.group)
            variant.scenarios.add(launch.scenario)
    return sorted(by_key.values(), key=lambda v: (v.target, v.kernel, v.label, v.config, v.key))


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_VARIANTS: list[Variant] = []  # read by the forked compile workers
_FUNCTIONS: dict = {}


def _compile_one(index: int) -> dict:
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    variant = _VARIANTS[index]
    fn = _FUNCTIONS[variant.kernel]
    spec = variant.spec
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True
    log = io.StringIO()
    started = time.perf_counter()
    result: dict[str, Any] = {"status": "ok"}
    try:
        with contextlib.redirect_stdout(log):
            src = ASTSource(fn, spec.signature, spec.constexprs, spec.attrs)
            kernel = triton.compile(src, target=GPUTarget("cuda", TARGETS[variant.target][0], 32),
                                    options=spec.options.__dict__)
        meta = kernel.metadata
        ptx, ttir = kernel.asm.get("ptx", ""), kernel.asm.get("ttir", "")
        result.update(shared=int(meta.shared), num_warps=int(meta.num_warps), num_stages=int(meta.num_stages))
        if "wgmma.mma_async" in ptx:
            result["lowering"] = "wgmma"
        elif "mma.sync" in ptx:
            result["lowering"] = "mma"
        elif "tt.dot" in ttir:
            result["lowering"] = "fma"
        else:
            result["lowering"] = "-"
    except Exception as err:  # noqa: BLE001 - every compile error is a gate finding
        message = str(err).strip().splitlines()
        detail = next((line for line in message if "error" in line.lower()), message[0] if message else "")
        result = {"status": "error", "error": f"{type(err).__name__}: {detail}"[:400]}
    text = log.getvalue()
    regs = _PTXAS_REGS.findall(text)
    spills = _PTXAS_SPILL.findall(text)
    if regs:
        result["registers"] = max(int(r) for r in regs)
    if spills:
        result["spill_stores"] = max(int(s) for s, _ in spills)
        result["spill_loads"] = max(int(lo) for _, lo in spills)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def compile_all(variants: list[Variant], functions: dict, jobs: int, progress: bool = True) -> None:
    import multiprocessing

    global _VARIANTS, _FUNCTIONS
    _VARIANTS, _FUNCTIONS = variants, functions
    # the slow ones (GEMMs with big tiles) first, for an even spread over the workers
    order = sorted(range(len(variants)), key=lambda i: ("_linear" not in variants[i].kernel, i))
    done = 0
    started = time.perf_counter()
    if jobs <= 1:
        results = ((i, _compile_one(i)) for i in order)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(jobs)
        results = zip(order, pool.imap(_compile_one, order))
    try:
        for i, result in results:
            variants[i].result = result
            done += 1
            if progress and (done % 20 == 0 or done == len(variants)):
                print(f"  compiled {done}/{len(variants)} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    finally:
        if pool is not None:
            pool.close()
            pool.join()


# --------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------
def judge(rec: Recorder, variants: list[Variant], kernels: dict) -> dict:
    """Fill each variant's ``verdict`` and return the gate's findings."""
    failures: list[str] = []
    # autotuned calls: a config over the shared-memory limit is dropped by the autotuner,
    # fine while another config of the same call fits on that target
    fitting_groups: dict[str, set] = {t: set() for t in TARGETS}
    for v in variants:
        r = v.result
        limit = TARGETS[v.target][1]
        v.result["fits"] = r.get("status") == "ok" and r["shared"] <= limit and r["num_warps"] * 32 <= MAX_THREADS
        if v.result["fits"]:
            fitting_groups[v.target] |= v.groups
    for v in variants:
        r = v.result
        name = f"{_short(v.kernel)} [{v.label}] {v.config} on {v.target}"
        if r.get("status") != "ok":
            r["verdict"] = "FAIL: " + r.get("error", "did not compile")
        elif not r["fits"]:
            over = f"needs {r['shared'] / KIB:.0f} KiB shared memory, {v.target} has {TARGETS[v.target][1] // KIB}"
            if v.groups and all(g in fitting_groups[v.target] for g in v.groups):
                r["verdict"] = f"dropped by the autotuner ({over})"
                continue
            r["verdict"] = "FAIL: " + over
        else:
            r["verdict"] = "spills" if r.get("spill_stores") else "ok"
            continue
        failures.append(f"{name}: {r['verdict']}")
    grid_failures = []
    for launch in rec.launches:
        grid = tuple(launch.grid) + (1,) * (3 - len(launch.grid))
        if any(g > lim for g, lim in zip(grid, GRID_LIMITS)) or any(g < 0 for g in grid):
            grid_failures.append(f"{_short(launch.kernel)} in '{launch.scenario}': grid {grid} over CUDA's "
                                 f"limits {GRID_LIMITS}")
    failures += sorted(set(grid_failures))
    launched = {launch.kernel for launch in rec.launches}
    unexercised = sorted(set(kernels) - launched)
    failures += [f"{_short(k)} ({k}) is never launched by any scenario" for k in unexercised]
    return {"failures": failures, "unexercised": unexercised}


# --------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------
def summary(variants: list[Variant]) -> dict[str, dict[str, int]]:
    out = {}
    for target in TARGETS:
        rows = [v for v in variants if v.target == target]
        if not rows:
            continue
        verdicts = [v.result.get("verdict", "") for v in rows]
        out[target] = {
            "variants": len(rows),
            "ok": sum(x == "ok" for x in verdicts),
            "spills": sum(x == "spills" for x in verdicts),
            "dropped": sum(x.startswith("dropped") for x in verdicts),
            "failed": sum(x.startswith("FAIL") for x in verdicts),
            "compile_s": round(sum(v.result.get("seconds", 0.0) for v in rows)),
        }
    return out


def write_markdown(path: Path, args, variants: list[Variant], findings: dict, elapsed: float) -> None:
    lines = [
        "# Ahead-of-time compile gate: nertron's Triton kernels for real GPUs",
        "",
        f"Generated by `python bench/gpu_compile.py --matrix {args.matrix} --targets {','.join(args.targets)}` "
        f"on {datetime.date.today().isoformat()}, on a machine with no GPU (Triton {triton.__version__}, "
        f"torch {torch.__version__}, bundled ptxas); {elapsed:.0f} s wall with {args.jobs} processes.",
        "Every variant is what the real launchers pass for the scenarios below (recorded, not copied), "
        "compiled down to a cubin. Registers and spills from `ptxas -v`; shared memory from Triton's "
        "metadata; lowering: `wgmma` (Hopper tensor cores), `mma` (Ampere tensor cores), `fma` (a `tl.dot` "
        "on CUDA cores), `-` (no `tl.dot`).",
        "",
        "## Summary",
        "",
        "| target | limit | variants | ok | spills | dropped by autotuner | failed | compile s (sum) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target, s in summary(variants).items():
        lines.append(f"| {target} ({TARGETS[target][2]}) | {TARGETS[target][1] // KIB} KiB | {s['variants']} | {s['ok']} "
                     f"| {s['spills']} | {s['dropped']} | {s['failed']} | {s['compile_s']} |")
    lines += ["", "Gate: " + ("**PASS**" if not findings["failures"] else f"**FAIL** ({len(findings['failures'])})"), ""]
    for failure in findings["failures"]:
        lines.append(f"- {failure}")
    lines += ["", "## Variants", "",
              "| kernel | variant | config | target | verdict | smem KiB | warps | stages | regs | spill st/ld B | lowering | s | scenarios |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for v in variants:
        r = v.result
        spill = f"{r.get('spill_stores', '?')}/{r.get('spill_loads', '?')}" if "registers" in r else ""
        smem = f"{r['shared'] / KIB:.1f}" if "shared" in r else ""
        lines.append(
            f"| `{_short(v.kernel)}` | {v.label} | {v.config} | {v.target} | {r.get('verdict', '')} | {smem} "
            f"| {r.get('num_warps', '')} | {r.get('num_stages', '')} | {r.get('registers', '')} | {spill} "
            f"| {r.get('lowering', '')} | {r.get('seconds', '')} | {len(v.scenarios)} |")
    lines += ["", "## Scenarios", ""] + [f"- {name}" for name in args.scenario_names] + [""]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


def to_json(variants: list[Variant], findings: dict, rec: Recorder) -> dict:
    return {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "summary": summary(variants),
        "failures": findings["failures"],
        "unexercised": findings["unexercised"],
        "launches": len(rec.launches),
        "autotuned_calls": rec.tuned,
        "max_grid": {
            _short(k): [max(l.grid[i] if i < len(l.grid) else 1 for l in rec.launches if l.kernel == k) for i in range(3)]
            for k in sorted({l.kernel for l in rec.launches})
        },
        "variants": [
            {"kernel": _short(v.kernel), "label": v.label, "config": v.config, "target": v.target, "key": v.key,
             "scenarios": sorted(v.scenarios), **v.result}
            for v in variants
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", choices=("quick", "full"), default="quick")
    parser.add_argument("--targets", default="sm_90", help="comma-separated: " + ", ".join(TARGETS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--json", type=Path, help="write every variant's result here")
    parser.add_argument("--only", default="", help="only scenarios whose name contains this text")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; known: {list(TARGETS)}")
    try:
        _check_triton()
    except TritonChanged as err:
        print(f"gpu_compile: {err}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    kernels = all_kernels()
    rec = Recorder(args.targets)
    chosen = [(name, call) for name, call in scenarios(args.matrix) if args.only in name]
    args.scenario_names = [name for name, _ in chosen]
    with rec.active():
        for name, call in chosen:
            call(rec)
    variants = variants_of(rec)
    print(f"gpu_compile: {len(rec.launches)} launches from {len(chosen)} scenarios -> {len(variants)} variants "
          f"over {len(args.targets)} target(s) ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    compile_all(variants, rec.functions, args.jobs)
    findings = judge(rec, variants, kernels if not args.only else {})
    elapsed = time.perf_counter() - started
    if args.markdown:
        write_markdown(args.markdown, args, variants, findings, elapsed)
    if args.json:
        args.json.write_text(json.dumps(to_json(variants, findings, rec), indent=1, default=str), encoding="utf-8")
    for target, s in summary(variants).items():
        print(f"{target}: {s['variants']} variants, {s['ok']} ok, {s['spills']} spill, {s['dropped']} dropped by the "
              f"autotuner, {s['failed']} failed ({s['compile_s']} s of compile)")
    for failure in findings["failures"]:
        print(f"FAIL {failure}")
    print(f"gpu_compile: {'PASS' if not findings['failures'] else 'FAIL'} in {elapsed:.0f} s")
    return 1 if findings["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
