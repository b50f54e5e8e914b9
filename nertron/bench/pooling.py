"""Section ``pooling``: weighted-layer pooling (``LayerPooling``) forward and forward + backward
vs an AllenNLP-style ``ScalarMix`` written inline (softmax weights, list of layers, sum), eager
and under ``torch.compile``.

``AllenNLPScalarMix``, the inputs (``hidden_states``) and the timed calls (``forward``,
``train``) are shared with ``bench/bench_pooling.py`` and ``bench/gpu_quick.py``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .harness import (Bench, bind, compiled_measure, dtype_name, make_config, make_row, measure, sweep_points,
                      synced)

TITLE = "Weighted-layer pooling"


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


def shape(bench: Bench) -> tuple[str, int, int]:
    """(name, layers, hidden): bert-base on GPU, MiniLM on CPU."""
    return ("bert-base", 12, 768) if bench.cuda else ("minilm", 6, 384)


def hidden_states(bench: Bench, lengths: list[int], layers: int, hidden: int) -> list[torch.Tensor]:
    """``layers + 1`` stored hidden states (embeddings first), ``(B, T, hidden)`` each."""
    B, T = len(lengths), max(lengths)
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, T, hidden, generator=g).to(bench.device, bench.dtype) for _ in range(layers + 1)]


def modules(bench: Bench, layers: int, backend: str = "auto") -> tuple[torch.nn.Module, AllenNLPScalarMix]:
    from nertron import LayerPooling

    return (LayerPooling(layers, mode="softmax", backend=backend).to(bench.device),
            AllenNLPScalarMix(layers).to(bench.device))


def runs(ours: torch.nn.Module, ref: torch.nn.Module, states: list[torch.Tensor]) -> dict[str, Callable[[], Any]]:
    """The untimed calls: LayerPooling skips states[0] (the embeddings), the baseline gets the rest."""
    return {"nertron": bind(ours, states), "allennlp-scalarmix": bind(ref, states[1:])}


def forward(bench: Bench, run: Callable[[], Any]) -> Callable[[], Any]:
    return synced(bench, run, torch.no_grad)


def train(bench: Bench, module: torch.nn.Module, run: Callable[[], Any]) -> Callable[[], Any]:
    """Forward + backward into the mixing weights (the layers are frozen inputs)."""
    def fn():
        module.zero_grad(set_to_none=True)
        out = run()
        out.backward(torch.ones_like(out))
        bench.sync()
        return out
    return fn


def section(bench: Bench) -> list[dict]:
    name, layers, hidden = shape(bench)
    rows = []
    for sweep, point, lengths in sweep_points(bench, "kernel"):
        B, T = len(lengths), max(lengths)
        states = hidden_states(bench, lengths, layers, hidden)
        ours, ref = modules(bench, layers)
        run = runs(ours, ref, states)
        tokens = sum(lengths)
        config = make_config(sweep, point, lengths, layers=layers, hidden=hidden, shape=name,
                             dtype=dtype_name(bench.dtype), path="triton" if bench.cuda else "reference (torch)")
        label = f"pooling B={B} T={T}"
        compile_here = bench.compile_here(sweep, point)
        impls = {"nertron": measure(bench, forward(bench, run["nertron"]), tokens=tokens, label=label + " fwd nertron"),
                 "allennlp-scalarmix": measure(bench, forward(bench, run["allennlp-scalarmix"]), tokens=tokens,
                                               label=label + " fwd allennlp")}
        if compile_here:
            impls["allennlp-scalarmix+compile"] = compiled_measure(
                bench, lambda: forward(bench, bind(torch.compile(ref, dynamic=False), states[1:])), tokens=tokens,
                label=label + " fwd allennlp+compile")
        rows.append(make_row("pooling", "mix forward", sweep, config, impls, "allennlp-scalarmix", tokens))
        impls = {"nertron": measure(bench, train(bench, ours, run["nertron"]), tokens=tokens,
                                    label=label + " fwd+bwd nertron"),
                 "allennlp-scalarmix": measure(bench, train(bench, ref, run["allennlp-scalarmix"]), tokens=tokens,
                                               label=label + " fwd+bwd allennlp")}
        if compile_here:
            impls["allennlp-scalarmix+compile"] = compiled_measure(
                bench, lambda: train(bench, ref, bind(torch.compile(ref, dynamic=False), states[1:])), tokens=tokens,
                label=label + " fwd+bwd allennlp+compile")
        rows.append(make_row("pooling", "mix fwd+bwd (weights learn, layers frozen)", sweep, config, impls,
                             "allennlp-scalarmix", tokens))
    return rows
