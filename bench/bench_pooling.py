"""pytest-benchmark: weighted-layer pooling, nertron ``LayerPooling`` vs the AllenNLP-style
``ScalarMix`` written inline, forward and forward + backward (weights learn, layers frozen),
over the ``pooling`` section's batch sweep (CoNLL-2003 length mix) and length sweep; the
inputs, modules and timed calls are ``nertron.bench.pooling``'s. Plus nertron's ``ScalarMix``
(AllenNLP's API, with and without its layer norm; on CUDA both backends). On CPU nertron runs
its PyTorch reference path, fp32; on CUDA its Triton kernels, bf16.

    python -m pytest bench/bench_pooling.py --benchmark-only -p no:cacheprovider
"""
import pytest
import torch

from nertron import ScalarMix
from nertron.bench import pooling
from nertron.bench.harness import Bench, label_benchmark, pedantic, sweep_cases

BENCH = Bench.here()
CASES = sweep_cases(BENCH, "kernel")
_, LAYERS, HIDDEN = pooling.shape(BENCH)


@pytest.mark.parametrize("lengths", **CASES)
@pytest.mark.parametrize("impl", ["nertron", "allennlp-scalarmix"])
@pytest.mark.parametrize("op", ["forward", "fwd+bwd"])
def test_pooling(benchmark, op, impl, lengths):
    states = pooling.hidden_states(BENCH, lengths, LAYERS, HIDDEN)
    ours, ref = pooling.modules(BENCH, LAYERS)
    run = pooling.runs(ours, ref, states)[impl]
    label_benchmark(benchmark, BENCH, f"pooling {op} B={len(lengths)} T={max(lengths)}", op=op, impl=impl,
                    B=len(lengths), T=max(lengths), layers=LAYERS, hidden=HIDDEN)
    module = ours if impl == "nertron" else ref
    pedantic(benchmark, pooling.forward(BENCH, run) if op == "forward" else pooling.train(BENCH, module, run))


@pytest.mark.parametrize("backend", ["torch", "triton"] if BENCH.cuda else ["torch"])
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["plain", "layer-norm"])
def test_scalar_mix(benchmark, backend, do_layer_norm):
    lengths = CASES["argvalues"][-1]  # the longest of the length sweep
    states = pooling.hidden_states(BENCH, lengths, LAYERS, HIDDEN)
    mask = torch.ones(len(lengths), max(lengths), dtype=torch.bool, device=BENCH.device)
    module = ScalarMix(len(states), do_layer_norm, backend=backend).to(BENCH.device)
    label_benchmark(benchmark, BENCH, f"ScalarMix B={len(lengths)} T={max(lengths)}", op="ScalarMix fwd+bwd",
                    impl=f"nertron {backend}", do_layer_norm=do_layer_norm)
    pedantic(benchmark, pooling.train(BENCH, module, lambda: module(states, mask)))
