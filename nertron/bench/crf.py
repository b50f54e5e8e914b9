"""Section ``crf``: linear-chain CRF Viterbi decode and NLL forward + backward, nertron's
``CRF`` vs ``torchcrf.CRF`` (pytorch-crf), eager and under ``torch.compile`` (both; nertron's
with ``dynamic=True``, one graph for every shape, compile time in the JSON as ``compile_s``).

The workload (``workload``) and the timed calls (``decoder``, ``nll``) are shared with the
pytest-benchmark suite ``bench/bench_crf.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .harness import (Bench, compiled_measure, dtype_name, make_config, make_row, measure, padding_mask,
                      sweep_points)

TITLE = "CRF (K = 9 tags, CoNLL-2003 IOB2)"
CRF_TAGS = 9  # CoNLL-2003 IOB2: O + B/I x PER/ORG/LOC/MISC
TORCHCRF_CUDA_DECODE_MAX_BT = 16384  # pytorch-crf's CUDA decode does one .item() per tag


@dataclass
class Workload:
    """nertron's CRF and pytorch-crf's with the same parameters, batch-first emissions, gold
    tags and the padding mask of ``lengths``."""

    ours: torch.nn.Module
    ref: torch.nn.Module
    emissions: torch.Tensor
    tags: torch.Tensor
    mask: torch.Tensor


def workload(bench: Bench, lengths: list[int], K: int = CRF_TAGS, dtype: torch.dtype | None = None,
             backend: str = "auto") -> Workload:
    import torchcrf

    from nertron import CRF

    device = bench.device
    B, T = len(lengths), max(lengths)
    torch.manual_seed(0)
    ref = torchcrf.CRF(K, batch_first=True).to(device)
    ours = CRF(K, batch_first=True, backend=backend).to(device)
    ours.load_state_dict(ref.state_dict())
    emissions = torch.randn(B, T, K, device=device, dtype=dtype or bench.dtype)
    tags = torch.randint(0, K, (B, T), device=device)
    return Workload(ours, ref, emissions, tags, padding_mask(lengths, device))


def decoder(bench: Bench, module: Any, w: Workload, **kwargs: Any) -> Callable[[], Any]:
    """Viterbi decode without autograd (lists, as pytorch-crf returns them, unless ``as_tensor``)."""
    def fn():
        with torch.no_grad():
            out = module.decode(w.emissions, w.mask, **kwargs)
        bench.sync()
        return out
    return fn


def nll(bench: Bench, module: Any, w: Workload) -> Callable[[], Any]:
    """NLL (mean) forward + backward w.r.t. the emissions (a leaf of their own) and the parameters."""
    emissions = w.emissions.detach().clone().requires_grad_()

    def fn():
        module.zero_grad(set_to_none=True)
        emissions.grad = None
        loss = -module(emissions, w.tags, w.mask, reduction="mean")
        loss.backward()
        bench.sync()
        return loss
    return fn


class Compiled:
    """A module whose ``method`` runs through ``torch.compile``; other attributes pass through."""

    def __init__(self, module: torch.nn.Module, method: str, dynamic: bool = False):
        self._module = module
        self._fn = torch.compile(getattr(module, method), dynamic=dynamic)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def zero_grad(self, set_to_none: bool = True):
        self._module.zero_grad(set_to_none=set_to_none)


def cpu_path() -> str:
    """What runs nertron's CRF on CPU: the C loops (``nertron.kernels.crf_cpu``) when a C
    compiler built them, else the PyTorch reference."""
    from nertron.kernels import crf_cpu

    return "C loops (nertron.kernels.crf_cpu)" if crf_cpu.available() else "reference (torch)"


def section(bench: Bench) -> list[dict]:
    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        B, T = len(lengths), max(lengths)
        w = workload(bench, lengths)
        words = sum(lengths)
        config = make_config(sweep, point, lengths, K=CRF_TAGS, dtype=dtype_name(bench.dtype),
                             path="triton" if bench.cuda else cpu_path())
        label = f"crf B={B} T={T}"
        count = dict(tokens=words, sentences=B)
        # decode
        impls = {"nertron": measure(bench, decoder(bench, w.ours, w), label=label + " decode nertron", **count)}
        if bench.cuda and B * T > TORCHCRF_CUDA_DECODE_MAX_BT:
            impls["torchcrf"] = {"error": f"skipped: pytorch-crf's CUDA decode does one .item() per tag "
                                          f"(B*T > {TORCHCRF_CUDA_DECODE_MAX_BT} takes seconds to minutes)"}
        else:
            impls["torchcrf"] = measure(bench, decoder(bench, w.ref, w), label=label + " decode torchcrf", **count)
            if bench.compile_here(sweep, point):
                impls["torchcrf+compile"] = compiled_measure(
                    bench, lambda: decoder(bench, Compiled(w.ref, "decode"), w),
                    label=label + " decode torchcrf+compile", **count)
        if bench.compile_here(sweep, point):
            # nertron under torch.compile (dynamic shapes, no graph break: as_tensor output)
            impls["nertron compiled (as_tensor)"] = compiled_measure(
                bench, lambda: decoder(bench, Compiled(w.ours, "decode", dynamic=True), w, as_tensor=True),
                label=label + " decode nertron compiled", **count)
        rows.append(make_row("crf", "decode", sweep, config, impls, "torchcrf", words, B))
        # NLL forward + backward
        impls = {"nertron": measure(bench, nll(bench, w.ours, w), label=label + " nll nertron", **count),
                 "torchcrf": measure(bench, nll(bench, w.ref, w), label=label + " nll torchcrf", **count)}
        if bench.compile_here(sweep, point):
            impls["torchcrf+compile"] = compiled_measure(
                bench, lambda: nll(bench, Compiled(w.ref, "forward"), w),
                label=label + " nll torchcrf+compile", **count)
            impls["nertron compiled"] = compiled_measure(
                bench, lambda: nll(bench, Compiled(w.ours, "forward", dynamic=True), w),
                label=label + " nll nertron compiled", **count)
        rows.append(make_row("crf", "nll fwd+bwd", sweep, config, impls, "torchcrf", words, B))
    return rows
