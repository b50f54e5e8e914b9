"""Weighted-layer pooling timings (pytest-benchmark; not run in CI).

    python -m pytest bench/bench_pooling.py --benchmark-only -p no:cacheprovider -o testpaths=bench

CPU: the reference (``ScalarMix`` / ``LayerPooling`` with ``backend='torch'``, AllenNLP's
Python loop over layers) against a vectorised one-stack alternative (``tensordot`` over a
stacked copy), forward and backward. CUDA (skipped without one): the Triton kernels against the reference, bert-base
shaped (13 hidden states, 16 x 128 tokens, 768 features).
"""
import pytest
import torch

from nertron import LayerPooling, ScalarMix

CPU_SHAPE = (13, 4, 64, 256)  # (L, B, T, H): small enough for a laptop
GPU_SHAPE = (13, 16, 128, 768)


def _inputs(shape, device="cpu", dtype=torch.float32):
    L, B, T, H = shape
    g = torch.Generator().manual_seed(0)
    layers = torch.randn(L, B, T, H, generator=g).to(device=device, dtype=dtype)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)
    mask[:, T * 3 // 4:] = False
    return [t.clone().requires_grad_() for t in layers.unbind(0)], mask


def _fwd_bwd(module, tensors, mask=None):
    def step():
        out = module(tensors, mask) if isinstance(module, ScalarMix) else module((tensors[0], *tensors))
        out.backward(torch.ones_like(out))
        if out.is_cuda:
            torch.cuda.synchronize()
    return step


@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["plain", "layer-norm"])
def test_cpu_allennlp_loop(benchmark, do_layer_norm):
    tensors, mask = _inputs(CPU_SHAPE)
    benchmark.pedantic(_fwd_bwd(ScalarMix(len(tensors), do_layer_norm, backend="torch"), tensors, mask), rounds=5, warmup_rounds=1)


def test_cpu_stacked_tensordot(benchmark):
    tensors, _ = _inputs(CPU_SHAPE)
    w = torch.zeros(len(tensors), requires_grad=True)
    gamma = torch.ones(1, requires_grad=True)

    def step():
        out = gamma * torch.tensordot(torch.softmax(w, 0), torch.stack(tensors), 1)
        out.backward(torch.ones_like(out))
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


def test_cpu_layer_pooling_reference(benchmark):
    tensors, _ = _inputs(CPU_SHAPE)
    benchmark.pedantic(_fwd_bwd(LayerPooling(len(tensors), backend="torch"), tensors), rounds=5, warmup_rounds=1)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["plain", "layer-norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_scalar_mix(benchmark, backend, do_layer_norm, dtype):
    tensors, mask = _inputs(GPU_SHAPE, "cuda", dtype)
    module = ScalarMix(len(tensors), do_layer_norm, backend=backend).cuda()
    benchmark.pedantic(_fwd_bwd(module, tensors, mask), rounds=5, warmup_rounds=1)


@needs_cuda
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_layer_pooling_frozen_encoder(benchmark, backend):
    # the training case: BERT frozen, only the weights and gamma learn
    tensors, _ = _inputs(GPU_SHAPE, "cuda", torch.bfloat16)
    tensors = [t.detach() for t in tensors]
    module = LayerPooling(len(tensors), backend=backend).cuda()
    benchmark.pedantic(_fwd_bwd(module, tensors), rounds=5, warmup_rounds=1)
