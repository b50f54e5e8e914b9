"""pytest-benchmark: attention with key padding, nertron (CUDA: the Triton varlen kernel over
packed tokens; CPU: the reference SDPA with an additive mask) vs transformers' ``sdpa`` and
eager attention functions on the padded batch, over the ``attention`` section's sweeps; the
inputs and calls are ``nertron.bench.attention``'s.

    python -m pytest bench/bench_attention.py --benchmark-only -p no:cacheprovider
"""
import pytest

pytest.importorskip("transformers")

from nertron.bench import attention
from nertron.bench.harness import Bench, label_benchmark, pedantic, sweep_cases, synced

BENCH = Bench.here()


@pytest.mark.parametrize("lengths", **sweep_cases(BENCH, "kernel"))
@pytest.mark.parametrize("impl", ["nertron", "transformers-sdpa", "transformers-eager"])
def test_attention(benchmark, impl, lengths):
    w = attention.workload(BENCH, lengths)
    label_benchmark(benchmark, BENCH, f"attention B={len(lengths)} T={max(lengths)}", impl=impl,
                    B=len(lengths), T=max(lengths), heads=w.heads, head_dim=w.head_dim)
    pedantic(benchmark, synced(BENCH, attention.calls(BENCH, w)[impl]))
