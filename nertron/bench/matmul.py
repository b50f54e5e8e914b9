"""Section ``gemm`` (the GEMM, ``nertron.kernels.matmul``): GEMM with bias / GELU / residual
epilogue vs ``F.linear`` (+ ``F.gelu``, ``+``) and the same under ``torch.compile``; GPU only
(on CPU the rows say so, unless ``--interpret-kernels``).

``OPS``, ``workload`` and ``torch_op`` are shared with ``bench/bench_matmul.py``.
"""
from __future__ import annotations

import torch

from .harness import (Bench, bind, compiled_measure, dtype_name, make_config, make_row, max_diff, measure,
                      status_row, sweep_points, synced)

TITLE = "GEMM + epilogue"
# (op, key, activation, residual): the encoder's three epilogues
OPS = (("qkv: x @ W^T + b", "qkv", None, False), ("ffn-in: gelu(x @ W^T + b)", "ffn_in", "gelu", False),
       ("ffn-out: x @ W^T + b + residual", "ffn_out", None, True))


def dims(bench: Bench) -> dict[str, tuple[int, int]]:
    """(N, K) of each GEMM: bert-base on GPU, small in the interpreter."""
    h, inner = (768, 3072) if bench.cuda else (64, 128)
    return {"qkv": (3 * h, h), "ffn_in": (inner, h), "ffn_out": (h, inner)}


def workload(bench: Bench, M: int, key: str, residual: bool) -> tuple:
    """(x, w, b, r) of one GEMM over ``M`` packed tokens (r None without a residual)."""
    N, K = dims(bench)[key]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g).to(bench.device, bench.dtype)
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(bench.device, bench.dtype)
    b = torch.randn(N, generator=g).to(bench.device, bench.dtype)
    r = torch.randn(M, N, generator=g).to(bench.device, bench.dtype) if residual else None
    return x, w, b, r


def torch_op(x, w, b, r, act=None):
    """The baseline: F.linear, then F.gelu and the residual add as separate ops."""
    y = torch.nn.functional.linear(x, w, b)
    if act == "gelu":
        y = torch.nn.functional.gelu(y)
    return y + r if r is not None else y


def section(bench: Bench) -> list[dict]:
    if not bench.kernels:
        return [status_row("gemm", name, "gpu only", "nertron's GEMM + epilogue is a Triton kernel; on CPU nertron "
                           "runs torch's F.linear, the baseline itself") for name, *_ in OPS]
    from nertron.kernels.matmul import linear

    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        M = sum(lengths)  # packed real tokens, as the fused encoder runs them
        for name, key, act, residual in OPS:
            N, K = dims(bench)[key]
            x, w, b, r = workload(bench, M, key, residual)
            flops = 2.0 * M * N * K
            label = f"gemm {key} M={M}"
            config = make_config(sweep, point, lengths, M=M, N=N, K=K, dtype=dtype_name(bench.dtype), path="triton")
            impls = {"nertron": measure(bench, synced(bench, bind(linear, x, w, b, act, r)), tokens=M,
                                        label=label + " nertron"),
                     "torch": measure(bench, synced(bench, bind(torch_op, x, w, b, r, act)), tokens=M,
                                      label=label + " torch")}
            if bench.compile_here(sweep, point):
                impls["torch+compile"] = compiled_measure(
                    bench, lambda: synced(bench, bind(torch.compile(torch_op, dynamic=False), x, w, b, r, act)),
                    tokens=M, label=label + " torch+compile")
            for result in impls.values():
                if result.get("ms"):
                    result["tflops"] = flops / (result["ms"] * 1e-3) / 1e12
            with torch.inference_mode():
                diff = max_diff(linear(x, w, b, act, r), torch_op(x, w, b, r, act))
            rows.append(make_row("gemm", name, sweep, config, impls, "torch", M, max_abs_diff=diff))
    return rows
