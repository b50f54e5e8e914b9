"""Section ``attention``: GPU: nertron's varlen flash attention over packed tokens; CPU:
nertron's reference attention (SDPA, additive key mask); both vs transformers' ``sdpa`` and
eager attention functions on the padded batch, and ``sdpa`` under ``torch.compile``.

``workload`` and ``calls`` are shared with ``bench/bench_attention.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .harness import (Bench, bind, compiled_measure, dtype_name, make_config, make_row, max_diff, measure,
                      padding_mask, sweep_points, synced)

TITLE = "Attention"


class AttnModule(torch.nn.Module):
    """What transformers' attention functions read from the calling module."""

    is_causal = False

    def __init__(self):
        super().__init__()
        self.eval()


@dataclass
class Workload:
    q: torch.Tensor  # (B, heads, T, head_dim), as transformers' attention functions take them
    k: torch.Tensor
    v: torch.Tensor
    keep: torch.Tensor  # (B, T) real positions
    bias: torch.Tensor  # (B, 1, 1, T) additive key mask
    lengths: list[int]
    heads: int
    head_dim: int


def shape(bench: Bench) -> tuple[int, int]:
    """(heads, head_dim): bert-base on GPU, smaller on CPU."""
    return (12, 64) if bench.cuda else (12, 32)


def workload(bench: Bench, lengths: list[int]) -> Workload:
    device, dtype = bench.device, bench.dtype
    heads, head_dim = shape(bench)
    B, T = len(lengths), max(lengths)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, heads, T, head_dim, generator=g).to(device, dtype) for _ in range(3))
    keep = padding_mask(lengths, device)
    bias = torch.zeros(B, 1, 1, T, dtype=dtype, device=device).masked_fill(~keep[:, None, None, :],
                                                                             torch.finfo(dtype).min)
    return Workload(q, k, v, keep, bias, lengths, heads, head_dim)


def calls(bench: Bench, w: Workload) -> dict[str, Callable[[], Any]]:
    """The untimed calls: "nertron" (the Triton varlen kernel on packed (tokens, 3H) QKV where
    kernels run, else the reference SDPA), "transformers-sdpa", "transformers-eager"."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.bert.modeling_bert import eager_attention_forward

    q, k, v, bias, holder = w.q, w.k, w.v, w.bias, AttnModule()
    scaling = w.head_dim ** -0.5
    if bench.kernels:
        from nertron.kernels.attention import attention

        B, T = len(w.lengths), max(w.lengths)
        hidden = w.heads * w.head_dim
        # Packed (tokens, 3H) QKV from the same values: what the fused encoder feeds the kernel.
        qkv = torch.cat([t.permute(0, 2, 1, 3).reshape(B, T, hidden) for t in (q, k, v)], -1)[w.keep].contiguous()
        lens = torch.tensor(w.lengths, dtype=torch.int32, device=bench.device)
        starts = torch.zeros(B, dtype=torch.int32, device=bench.device)
        starts[1:] = lens.cumsum(0)[:-1]
        ours = bind(attention, qkv, w.heads, starts, lens, lens, T)
    else:
        ours = bind(torch.nn.functional.scaled_dot_product_attention, q, k, v, bias)
    return {"nertron": ours,
            "transformers-sdpa": lambda: sdpa_attention_forward(holder, q, k, v, bias, dropout=0.0, scaling=scaling)[0],
            "transformers-eager": lambda: eager_attention_forward(holder, q, k, v, bias, scaling=scaling)[0]}


def packed(bench: Bench, w: Workload, out: torch.Tensor, ours: bool) -> torch.Tensor:
    """An output on the real positions as (tokens, H): the kernel's already is."""
    if ours and bench.kernels:
        return out
    B, T = len(w.lengths), max(w.lengths)
    hidden = w.heads * w.head_dim
    if ours:  # SDPA's (B, heads, T, d)
        out = out.transpose(1, 2)
    return out.reshape(B, T, hidden)[w.keep]


def section(bench: Bench) -> list[dict]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        B, T = len(lengths), max(lengths)
        w = workload(bench, lengths)
        run = calls(bench, w)
        tokens = sum(lengths)
        config = make_config(sweep, point, lengths, heads=w.heads, head_dim=w.head_dim, dtype=dtype_name(bench.dtype),
                             path="triton varlen (packed tokens)" if bench.kernels
                             else "reference (torch SDPA, additive mask)")
        label = f"attention B={B} T={T}"
        impls = {name: measure(bench, synced(bench, fn), tokens=tokens, label=f"{label} {name}")
                 for name, fn in run.items()}
        if bench.compile_here(sweep, point):
            impls["transformers-sdpa+compile"] = compiled_measure(
                bench, lambda: synced(bench, bind(torch.compile(sdpa_attention_forward, dynamic=False), AttnModule(),
                                                  w.q, w.k, w.v, w.bias)),
                tokens=tokens, label=label + " transformers-sdpa+compile")
        with torch.inference_mode():  # agreement on real positions, (tokens, H)
            diff = max_diff(packed(bench, w, run["nertron"](), True),
                            packed(bench, w, run["transformers-sdpa"](), False))
        rows.append(make_row("attention", "self-attention (key padding)", sweep, config, impls, "transformers-sdpa",
                             tokens, max_abs_diff=diff))
    return rows
