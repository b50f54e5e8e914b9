"""pytest-benchmark: the GEMM with its bias / GELU / residual epilogues (``nertron.kernels.matmul``)
vs ``F.linear`` (+ ``F.gelu``, ``+``), over packed token counts of the ``gemm`` section's sweeps;
the operands and the baseline are ``nertron.bench.matmul``'s. CUDA only (on CPU nertron runs
``F.linear`` itself).

    python -m pytest bench/bench_matmul.py --benchmark-only -p no:cacheprovider
"""
import pytest

from nertron.bench import matmul
from nertron.bench.harness import Bench, bind, label_benchmark, pedantic, sweep_cases, synced

BENCH = Bench.here()
pytestmark = pytest.mark.skipif(not BENCH.cuda, reason="the GEMM kernel is timed on CUDA only")


@pytest.mark.parametrize("lengths", **sweep_cases(BENCH, "kernel"))
@pytest.mark.parametrize("op", matmul.OPS, ids=[key for _, key, _, _ in matmul.OPS])
@pytest.mark.parametrize("impl", ["nertron", "torch"])
def test_gemm(benchmark, impl, op, lengths):
    from nertron.kernels.matmul import linear

    name, key, act, residual = op
    M = sum(lengths)
    N, K = matmul.dims(BENCH)[key]
    x, w, b, r = matmul.workload(BENCH, M, key, residual)
    label_benchmark(benchmark, BENCH, f"gemm {key} M={M}", op=name, impl=impl, M=M, N=N, K=K)
    run = bind(linear, x, w, b, act, r) if impl == "nertron" else bind(matmul.torch_op, x, w, b, r, act)
    pedantic(benchmark, synced(BENCH, run))
