"""Section ``layernorm``: nertron's LayerNorm kernel vs ``F.layer_norm`` and the same under
``torch.compile``; GPU only (on CPU the row says so, unless ``--interpret-kernels``).

``workload`` and ``torch_layernorm`` are shared with ``bench/bench_layernorm.py``.
"""
from __future__ import annotations

import torch

from .harness import (Bench, bind, compiled_measure, dtype_name, make_config, make_row, max_diff, measure,
                      status_row, sweep_points, synced)

TITLE = "LayerNorm"
OP = "LayerNorm (rows, H)"
EPS = 1e-12  # BERT's


def hidden_size(bench: Bench) -> int:
    return 768 if bench.cuda else 64


def workload(bench: Bench, M: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, weight, bias): ``M`` packed rows of the hidden size."""
    hidden = hidden_size(bench)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, hidden, generator=g).to(bench.device, bench.dtype)
    w = torch.randn(hidden, generator=g).to(bench.device, bench.dtype)
    b = torch.randn(hidden, generator=g).to(bench.device, bench.dtype)
    return x, w, b


def torch_layernorm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, EPS)


def section(bench: Bench) -> list[dict]:
    if not bench.kernels:
        return [status_row("layernorm", OP, "gpu only", "nertron's LayerNorm is a Triton kernel; on CPU nertron runs "
                           "F.layer_norm, the baseline itself")]
    from nertron.kernels.layernorm import layernorm

    hidden = hidden_size(bench)
    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        M = sum(lengths)
        x, w, b = workload(bench, M)
        label = f"layernorm M={M}"
        config = make_config(sweep, point, lengths, M=M, hidden=hidden, dtype=dtype_name(bench.dtype), path="triton")
        impls = {"nertron": measure(bench, synced(bench, bind(layernorm, x, w, b, EPS)), tokens=M,
                                    label=label + " nertron"),
                 "torch": measure(bench, synced(bench, bind(torch_layernorm, x, w, b)), tokens=M,
                                  label=label + " torch")}
        if bench.compile_here(sweep, point):
            impls["torch+compile"] = compiled_measure(
                bench, lambda: synced(bench, bind(torch.compile(torch_layernorm, dynamic=False), x, w, b)), tokens=M,
                label=label + " torch+compile")
        with torch.inference_mode():
            diff = max_diff(layernorm(x, w, b, EPS), torch_layernorm(x, w, b))
        rows.append(make_row("layernorm", OP, sweep, config, impls, "torch", M, max_abs_diff=diff))
    return rows
