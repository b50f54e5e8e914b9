"""pytest-benchmark: nertron's LayerNorm kernel vs ``F.layer_norm`` over packed token counts of
the ``layernorm`` section's sweeps; the operands and the baseline are
``nertron.bench.layernorm``'s. CUDA only (on CPU nertron runs ``F.layer_norm`` itself).

    python -m pytest bench/bench_layernorm.py --benchmark-only -p no:cacheprovider
"""
import pytest

from nertron.bench import layernorm
from nertron.bench.harness import Bench, bind, label_benchmark, pedantic, sweep_cases, synced

BENCH = Bench.here()
pytestmark = pytest.mark.skipif(not BENCH.cuda, reason="the LayerNorm kernel is timed on CUDA only")


@pytest.mark.parametrize("lengths", **sweep_cases(BENCH, "kernel"))
@pytest.mark.parametrize("impl", ["nertron", "torch"])
def test_layernorm(benchmark, impl, lengths):
    from nertron.kernels.layernorm import layernorm as kernel

    M = sum(lengths)
    x, w, b = layernorm.workload(BENCH, M)
    label_benchmark(benchmark, BENCH, f"layernorm M={M}", impl=impl, M=M, hidden=x.shape[-1])
    run = bind(kernel, x, w, b, layernorm.EPS) if impl == "nertron" else bind(layernorm.torch_layernorm, x, w, b)
    pedantic(benchmark, synced(BENCH, run))
