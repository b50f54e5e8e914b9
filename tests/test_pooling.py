"""Weighted-layer pooling: the Triton kernels (under TRITON_INTERPRET=1 without a GPU) against the
PyTorch reference and autograd, ``ScalarMix`` against AllenNLP's own code, ``LayerPooling``."""
from typing import List

import pytest
import torch
from torch.nn import Parameter, ParameterList

from nertron import LayerPooling, ScalarMix
from nertron.bindings.pooling import ConfigurationError, PoolingFunction, pooling_torch, tiny_value_of_dtype
from nertron.kernels import pooling as kernels


# --------------------------------------------------------------------------------------
# Oracle: AllenNLP's ScalarMix, reduced to what is needed.
# Origin: allennlp/modules/scalar_mix.py, allennlp/common/checks.py and
# allennlp/nn/util.py (tiny_value_of_dtype) of https://github.com/allenai/allennlp,
# Copyright the AllenNLP authors, licensed under the Apache License, Version 2.0.
# --------------------------------------------------------------------------------------
class _AllenNLPConfigurationError(Exception):
    def __reduce__(self):
        return type(self), (self.message,)

    def __init__(self, message):
        super().__init__()
        self.message = message

    def __str__(self):
        return self.message


def _allennlp_tiny_value_of_dtype(dtype: torch.dtype):
    if not dtype.is_floating_point:
        raise TypeError("Only supports floating point dtypes.")
    if dtype == torch.float or dtype == torch.double:
        return 1e-13
    elif dtype == torch.half:
        return 1e-4
    else:
        raise TypeError("Does not support dtype " + str(dtype))


class AllenNLPScalarMix(torch.nn.Module):
    def __init__(
        self,
        mixture_size: int,
        do_layer_norm: bool = False,
        initial_scalar_parameters: List[float] = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm

        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * mixture_size
        elif len(initial_scalar_parameters) != mixture_size:
            raise _AllenNLPConfigurationError(
                "Length of initial_scalar_parameters {} differs "
                "from mixture_size {}".format(initial_scalar_parameters, mixture_size)
            )

        self.scalar_parameters = ParameterList(
            [
                Parameter(
                    torch.FloatTensor([initial_scalar_parameters[i]]), requires_grad=trainable
                )
                for i in range(mixture_size)
            ]
        )
        self.gamma = Parameter(torch.FloatTensor([1.0]), requires_grad=trainable)

    def forward(self, tensors: List[torch.Tensor], mask: torch.BoolTensor = None) -> torch.Tensor:
        if len(tensors) != self.mixture_size:
            raise _AllenNLPConfigurationError(
                "{} tensors were passed, but the module was initialized to "
                "mix {} tensors.".format(len(tensors), self.mixture_size)
            )

        def _do_layer_norm(tensor, broadcast_mask, num_elements_not_masked):
            tensor_masked = tensor * broadcast_mask
            mean = torch.sum(tensor_masked) / num_elements_not_masked
            variance = (
                torch.sum(((tensor_masked - mean) * broadcast_mask) ** 2) / num_elements_not_masked
            )
            return (tensor - mean) / torch.sqrt(variance + _allennlp_tiny_value_of_dtype(variance.dtype))

        normed_weights = torch.nn.functional.softmax(
            torch.cat([parameter for parameter in self.scalar_parameters]), dim=0
        )
        normed_weights = torch.split(normed_weights, split_size_or_sections=1)

        if not self.do_layer_norm:
            pieces = []
            for weight, tensor in zip(normed_weights, tensors):
                pieces.append(weight * tensor)
            return self.gamma * sum(pieces)

        else:
            broadcast_mask = mask.unsqueeze(-1)
            input_dim = tensors[0].size(-1)
            num_elements_not_masked = torch.sum(mask) * input_dim

            pieces = []
            for weight, tensor in zip(normed_weights, tensors):
                pieces.append(
                    weight * _do_layer_norm(tensor, broadcast_mask, num_elements_not_masked)
                )
            return self.gamma * sum(pieces)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
# (L, N, H): every odd size of L in (1, 6, 13), N in (1, 7, 33), H in (3, 17, 64) appears
SHAPES = [(1, 1, 3), (6, 7, 17), (13, 33, 64), (6, 33, 3), (13, 1, 17), (1, 7, 64)]
# fp32: tight. fp16/bf16: our error vs an fp32 reference may be at most twice PyTorch's own
# error in that dtype, plus this slack (times the largest reference magnitude).
LOWP_ATOL = {torch.float16: 1e-4, torch.bfloat16: 1e-3}
TIGHT = dict(rtol=1e-5, atol=1e-5)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _layers(L: int, N: int, H: int, seed: int = 0) -> torch.Tensor:
    # layers of different scales and offsets, like a BERT's hidden states
    g = _gen(seed)
    scale = torch.rand(L, 1, 1, generator=g) * 3 + 0.5
    offset = torch.randn(L, 1, 1, generator=g)
    return torch.randn(L, N, H, generator=g) * scale + offset


def _mask(N: int, seed: int = 0) -> torch.Tensor:
    mask = torch.rand(N, generator=_gen(seed + 100)) > 0.4
    mask[0] = True  # at least one real token
    return mask


def _scalars(L: int, mode: str, seed: int = 0):
    g = _gen(seed + 200)
    w = torch.randn(L, generator=g)
    s = torch.softmax(w, 0) if mode == "softmax" else w
    return s, torch.tensor([0.7 + torch.rand(1, generator=g).item()])


def _reference(h, s, gamma, mask, normalize, grad_out):
    """Output and autograd gradients (h, s, gamma) of the reference in h's dtype, h as (L, N, H)."""
    h = h.clone().requires_grad_()
    s = s.clone().requires_grad_()
    gamma = gamma.clone().requires_grad_()
    out = pooling_torch(list(h.unbind(0)), s, gamma, mask, normalize)
    grads = torch.autograd.grad(out, (h, s, gamma), grad_out.to(out.dtype))
    return (out.detach(), *grads)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# --------------------------------------------------------------------------------------
# kernels against the reference and autograd
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile", [4096, 64], ids=["one-tile", "many-tiles"])
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "layer-norm"])
@pytest.mark.parametrize("mode", ["softmax", "weighted"])
@pytest.mark.parametrize("L,N,H", SHAPES)
def test_kernels_match_reference_fp32(L, N, H, mode, normalize, tile, monkeypatch):
    monkeypatch.setattr(kernels, "_TILE", tile)
    h = _layers(L, N, H)
    s, gamma = _scalars(L, mode)
    mask = _mask(N) if normalize else None
    grad_out = torch.randn(N, H, generator=_gen(7))
    ref_out, ref_gh, ref_gs, ref_gg = _reference(h, s, gamma, mask, normalize, grad_out)

    eps = tiny_value_of_dtype(h.dtype)
    stats = kernels.pooling_stats(h, mask, eps) if normalize else None
    out = kernels.pooling_forward(h, s, gamma, stats)
    gh, gs, gg = kernels.pooling_backward(grad_out, h, s, gamma, stats, mask)

    assert out.dtype == torch.float32 and out.shape == (N, H)
    torch.testing.assert_close(out, ref_out, **TIGHT)
    torch.testing.assert_close(gh, ref_gh, **TIGHT)
    # s and gamma gradients are sums over N*H products: relative to their magnitude
    scale = max(1.0, ref_gs.abs().max().item())
    torch.testing.assert_close(gs, ref_gs, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(gg, ref_gg, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "layer-norm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("L,N,H", [(6, 33, 17), (13, 7, 64)])
def test_kernels_low_precision(L, N, H, dtype, normalize):
    h = _layers(L, N, H, seed=3).to(dtype)
    s, gamma = _scalars(L, "softmax", seed=3)
    mask = _mask(N, seed=3) if normalize else None
    grad_out = torch.randn(N, H, generator=_gen(8)).to(dtype)
    # the fp32 truth on the same (rounded) inputs
    truth = _reference(h.float(), s, gamma, mask, normalize, grad_out.float())
    # PyTorch's own result with everything in the low-precision dtype
    theirs = _reference(h, s.to(dtype), gamma.to(dtype), mask, normalize, grad_out)

    eps = tiny_value_of_dtype(dtype)
    stats = kernels.pooling_stats(h, mask, eps) if normalize else None
    out = kernels.pooling_forward(h, s, gamma, stats)
    gh, gs, gg = kernels.pooling_backward(grad_out, h, s, gamma, stats, mask)
    assert out.dtype == dtype and gh.dtype == dtype
    assert gs.dtype == torch.float32 and gg.dtype == torch.float32
    for name, ours, ref, torch_lowp in zip(("out", "grad_h", "grad_s", "grad_gamma"), (out, gh, gs, gg), truth, theirs):
        scale = max(1.0, ref.abs().max().item())
        bound = 2 * _max_err(torch_lowp, ref) + LOWP_ATOL[dtype] * scale
        assert _max_err(ours, ref) <= bound, (name, _max_err(ours, ref), bound)


def test_layer_stats_merge_is_accurate(monkeypatch):
    # a large offset and a small spread: a sum-of-squares formula would cancel to garbage
    monkeypatch.setattr(kernels, "_TILE", 64)
    h = (1000.0 + 0.01 * torch.randn(2, 33, 17, generator=_gen(5))).float()
    mask = _mask(33, seed=5)
    stats = kernels.pooling_stats(h, mask, 0.0)
    real = h.double()[:, mask]
    torch.testing.assert_close(stats.mean.double(), real.mean((1, 2)), rtol=1e-7, atol=0)
    torch.testing.assert_close(stats.rstd.double(), real.var((1, 2), unbiased=False).rsqrt(), rtol=1e-3, atol=0)
    assert stats.count.item() == mask.sum().item() * 17


def test_backward_skips_what_is_not_needed():
    h = _layers(6, 7, 17)
    s, gamma = _scalars(6, "softmax")
    grad_out = torch.randn(7, 17, generator=_gen(1))
    _, ref_gh, ref_gs, ref_gg = _reference(h, s, gamma, None, False, grad_out)
    gh, gs, gg = kernels.pooling_backward(grad_out, h, s, gamma, need_input_grad=False)
    assert gh is None
    torch.testing.assert_close(gs, ref_gs, **TIGHT)
    torch.testing.assert_close(gg, ref_gg, **TIGHT)
    gh, gs, gg = kernels.pooling_backward(grad_out, h, s, gamma, need_scalar_grad=False)
    assert gs is None and gg is None
    torch.testing.assert_close(gh, ref_gh, **TIGHT)


def test_stack_layers_avoids_copies():
    buffer = _layers(5, 12, 17).reshape(5, 3, 4, 17)
    view = kernels.stack_layers(buffer.unbind(0))
    assert view.data_ptr() == buffer.data_ptr() and view.shape == (5, 12, 17)
    torch.testing.assert_close(view, buffer.reshape(5, 12, 17), rtol=0, atol=0)
    # every other layer of the buffer: still equally spaced, still a view
    every_other = kernels.stack_layers(buffer.unbind(0)[::2])
    assert every_other.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(every_other, buffer[::2].reshape(3, 12, 17), rtol=0, atol=0)
    # unequally spaced / separate tensors: a correct copy
    picked = [buffer[0], buffer[1], buffer[4]]
    copy = kernels.stack_layers(picked)
    assert copy.data_ptr() != buffer.data_ptr()
    torch.testing.assert_close(copy, torch.stack(picked).reshape(3, 12, 17), rtol=0, atol=0)


def test_kernel_launchers_reject_bad_inputs():
    h = _layers(3, 5, 4)
    s, gamma = _scalars(3, "softmax")
    with pytest.raises(ValueError, match=r"\(L, N, H\)"):
        kernels.pooling_forward(h[0], s, gamma)
    with pytest.raises(ValueError, match="fp32, fp16 or bf16"):
        kernels.pooling_forward(h.double(), s, gamma)
    with pytest.raises(ValueError, match="unit feature stride"):
        kernels.pooling_forward(h.transpose(1, 2), s, gamma)
    with pytest.raises(ValueError, match=r"fp32 \(3,\)"):
        kernels.pooling_forward(h, s[:2], gamma)
    with pytest.raises(ValueError, match=r"fp32 \(3,\)"):
        kernels.pooling_forward(h, s.half(), gamma)
    with pytest.raises(ValueError, match="gamma"):
        kernels.pooling_forward(h, s, torch.ones(2))
    with pytest.raises(ValueError, match="grad_out"):
        kernels.pooling_backward(torch.ones(5, 3), h, s, gamma)
    with pytest.raises(ValueError, match="one entry per token"):
        kernels.pooling_stats(h, torch.ones(4, dtype=torch.bool), 1e-13)
    with pytest.raises(ValueError, match="share shape"):
        kernels.stack_layers([h[0], h[1, :4]])


# --------------------------------------------------------------------------------------
# ScalarMix against AllenNLP's code
# --------------------------------------------------------------------------------------
def _twins(L: int, do_layer_norm: bool, backend: str, seed: int = 0):
    init = torch.randn(L, generator=_gen(seed + 300)).tolist()
    oracle = AllenNLPScalarMix(L, do_layer_norm=do_layer_norm, initial_scalar_parameters=init)
    ours = ScalarMix(L, do_layer_norm=do_layer_norm, initial_scalar_parameters=init, backend=backend)
    with torch.no_grad():
        oracle.gamma.fill_(1.3)
        ours.gamma.fill_(1.3)
    return oracle, ours


def _run(module, tensors, mask, grad_out):
    tensors = [t.clone().requires_grad_() for t in tensors]
    out = module(tensors, mask)
    out.backward(grad_out.to(out.dtype))
    params = [p.grad for p in module.scalar_parameters] + [module.gamma.grad]
    return out.detach(), torch.cat(params), [t.grad for t in tensors]


@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["plain", "layer-norm"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("L,N,H", SHAPES)
def test_scalar_mix_matches_allennlp(L, N, H, backend, do_layer_norm):
    oracle, ours = _twins(L, do_layer_norm, backend)
    # (B, T, H) tensors and a (B, T) mask with N = B * T tokens
    B = 1 if N in (1, 7) else 3
    T = N // B
    tensors = list(_layers(L, B * T, H, seed=1).reshape(L, B, T, H).unbind(0))
    mask = _mask(B * T, seed=1).reshape(B, T)
    grad_out = torch.randn(B, T, H, generator=_gen(2))
    ref_out, ref_gp, ref_gt = _run(oracle, tensors, mask, grad_out)
    out, gp, gt = _run(ours, tensors, mask, grad_out)
    assert out.shape == (B, T, H) and out.dtype == ref_out.dtype
    if backend == "torch":
        # the reference is AllenNLP's code: identical numbers
        torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
        torch.testing.assert_close(gp, ref_gp, rtol=0, atol=0)
    else:
        torch.testing.assert_close(out, ref_out, **TIGHT)
        torch.testing.assert_close(gp, ref_gp, rtol=1e-5, atol=1e-5 * max(1.0, ref_gp.abs().max().item()))
    for g, ref in zip(gt, ref_gt):
        torch.testing.assert_close(g, ref, **TIGHT)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_scalar_mix_mask_is_ignored_without_layer_norm(backend):
    oracle, ours = _twins(6, False, backend)
    tensors = list(_layers(6, 14, 17, seed=4).reshape(6, 2, 7, 17).unbind(0))
    mask = _mask(14, seed=4).reshape(2, 7)
    expected = oracle(tensors)
    torch.testing.assert_close(ours(tensors, mask), expected, **TIGHT)
    torch.testing.assert_close(ours(tensors), expected, **TIGHT)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_scalar_mix_layer_norm_statistics_ignore_padding(backend):
    _, ours = _twins(6, True, backend)
    stacked = _layers(6, 14, 17, seed=6).reshape(6, 2, 7, 17)
    mask = _mask(14, seed=6).reshape(2, 7)
    out = ours(list(stacked.unbind(0)), mask)
    # rewriting the padding changes the padding's outputs only
    changed = torch.where(mask[None, :, :, None], stacked, stacked * 50 + 9)
    out2 = ours(list(changed.unbind(0)), mask)
    torch.testing.assert_close(out2[mask], out[mask], **TIGHT)
    assert not torch.allclose(out2[~mask], out[~mask])
    # mask=None (an extension: AllenNLP fails) counts every token
    everything = torch.ones(2, 7, dtype=torch.bool)
    torch.testing.assert_close(ours(list(stacked.unbind(0))), ours(list(stacked.unbind(0)), everything), **TIGHT)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_scalar_mix_fp16_promotes_like_allennlp(backend):
    oracle, ours = _twins(6, False, backend)
    tensors = list(_layers(6, 14, 17, seed=9).half().reshape(6, 2, 7, 17).unbind(0))
    expected = oracle(tensors)
    out = ours(tensors)
    assert expected.dtype == torch.float32 and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, **TIGHT)


def test_scalar_mix_state_dict_and_parameters():
    oracle = AllenNLPScalarMix(4, initial_scalar_parameters=[0.1, -0.2, 0.3, 0.4])
    ours = ScalarMix(4)
    # nn.Module lists a module's own parameters before its children's: gamma first
    assert list(ours.state_dict()) == list(oracle.state_dict()) == [
        "gamma", "scalar_parameters.0", "scalar_parameters.1", "scalar_parameters.2", "scalar_parameters.3"]
    for name, p in ours.named_parameters():
        assert p.shape == oracle.get_parameter(name).shape == (1,) and p.dtype == torch.float32
    ours.load_state_dict(oracle.state_dict())  # strict
    assert [p.item() for p in ours.scalar_parameters] == pytest.approx([0.1, -0.2, 0.3, 0.4])
    fresh = AllenNLPScalarMix(4)
    fresh.load_state_dict(ScalarMix(4, initial_scalar_parameters=[1.0, 2.0, 3.0, 4.0]).state_dict())
    assert [p.item() for p in fresh.scalar_parameters] == [1.0, 2.0, 3.0, 4.0]
    frozen = ScalarMix(3, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in ScalarMix(3).parameters())
    assert [p.item() for p in ScalarMix(3).scalar_parameters] == [0.0, 0.0, 0.0]
    assert ScalarMix(3).gamma.item() == 1.0


def test_configuration_error_str_and_pickle_match_allennlp():
    import pickle
    message = "2 tensors were passed, but the module was initialized to mix 3 tensors."
    err = ConfigurationError(message)
    assert str(err) == message == str(_AllenNLPConfigurationError(message))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ConfigurationError
    assert back.message == message and str(back) == message
    theirs = pickle.loads(pickle.dumps(_AllenNLPConfigurationError(message)))
    assert theirs.message == back.message


def test_scalar_mix_errors_match_allennlp():
    with pytest.raises(ConfigurationError) as ours:
        ScalarMix(3, initial_scalar_parameters=[0.0, 1.0])
    with pytest.raises(_AllenNLPConfigurationError) as theirs:
        AllenNLPScalarMix(3, initial_scalar_parameters=[0.0, 1.0])
    assert ours.value.message == theirs.value.message
    assert str(ours.value) == str(theirs.value) == "Length of initial_scalar_parameters [0.0, 1.0] differs from mixture_size 3"

    tensors = [torch.zeros(2, 3, 4)] * 2
    for backend in ("torch", "triton"):
        with pytest.raises(ConfigurationError) as ours:
            ScalarMix(3, backend=backend)(tensors)
        with pytest.raises(_AllenNLPConfigurationError) as theirs:
            AllenNLPScalarMix(3)(tensors)
        assert ours.value.message == theirs.value.message == "2 tensors were passed, but the module was initialized to mix 3 tensors."
        with pytest.raises(ValueError, match="same shape"):
            ScalarMix(2, backend=backend)([torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)])
    with pytest.raises(ValueError, match="invalid backend"):
        ScalarMix(2, backend="cuda")
    with pytest.raises(ValueError, match="backend='triton'"):
        ScalarMix(2, backend="triton")([torch.zeros(2, 3, dtype=torch.float64)] * 2)
    with pytest.raises(ValueError, match="mask must have shape"):
        ScalarMix(2, do_layer_norm=True, backend="triton")([torch.zeros(2, 3, 4)] * 2, torch.ones(3, 2, dtype=torch.bool))


# --------------------------------------------------------------------------------------
# LayerPooling
# --------------------------------------------------------------------------------------
def _hidden_states(num_layers: int, B: int, T: int, H: int, seed: int = 0, dtype=torch.float32):
    """num_layers + 1 tensors (B, T, H), views of one buffer as a stored encoder would keep them."""
    return tuple(_layers(num_layers + 1, B * T, H, seed).reshape(num_layers + 1, B, T, H).to(dtype).unbind(0))


@pytest.mark.parametrize("include_embeddings", [False, True], ids=["layers", "with-embeddings"])
@pytest.mark.parametrize("mode", ["softmax", "weighted"])
def test_layer_pooling_init_and_selection(mode, include_embeddings):
    pool = LayerPooling(4, mode=mode, include_embeddings=include_embeddings, backend="torch")
    L = 5 if include_embeddings else 4
    assert list(pool.state_dict()) == ["weights", "gamma"]
    assert pool.weights.shape == (L,) and pool.gamma.tolist() == [1.0]
    expected_init = [0.0] * L if mode == "softmax" else [1.0 / L] * L
    assert pool.weights.tolist() == pytest.approx(expected_init)
    torch.testing.assert_close(pool.mixing_scalars(), torch.full((L,), 1.0 / L))  # uniform either way
    states = list(_hidden_states(4, 2, 3, 8))
    with torch.no_grad():
        pool.weights.copy_(torch.arange(L, dtype=torch.float32) - 1.5)
        pool.gamma.fill_(0.8)
    picked = states if include_embeddings else states[1:]
    w = pool.weights.detach()
    s = torch.softmax(w, 0) if mode == "softmax" else w
    expected = 0.8 * sum(s_l * h for s_l, h in zip(s, picked))
    torch.testing.assert_close(pool(tuple(states)), expected, **TIGHT)
    if not include_embeddings:
        states[0] = torch.full_like(states[0], float("nan"))  # the embeddings output is not read
        assert torch.isfinite(pool(tuple(states))).all()
    torch.testing.assert_close(pool.mix_coefficients(), 0.8 * s)


@pytest.mark.parametrize("frozen_encoder", [False, True], ids=["train-all", "frozen-encoder"])
@pytest.mark.parametrize("mode", ["softmax", "weighted"])
@pytest.mark.parametrize("num_layers,B,T,H", [(12, 2, 5, 17), (1, 1, 1, 3), (6, 3, 11, 64)])
def test_layer_pooling_triton_matches_torch(num_layers, B, T, H, mode, frozen_encoder):
    results = []
    for backend in ("torch", "triton"):
        pool = LayerPooling(num_layers, mode=mode, backend=backend)
        with torch.no_grad():
            pool.weights.copy_(torch.randn(num_layers, generator=_gen(11)))
            pool.gamma.fill_(1.1)
        states = [h.clone().requires_grad_(not frozen_encoder) for h in _hidden_states(num_layers, B, T, H, seed=12)]
        out = pool(tuple(states))
        out.backward(torch.randn(B, T, H, generator=_gen(13)))
        results.append((out.detach(), pool.weights.grad, pool.gamma.grad, [h.grad for h in states]))
    (ref, ref_gw, ref_gg, ref_gh), (out, gw, gg, gh) = results
    torch.testing.assert_close(out, ref, **TIGHT)
    scale = max(1.0, ref_gw.abs().max().item(), ref_gg.abs().item())
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(gg, ref_gg, rtol=1e-5, atol=1e-5 * scale)
    if frozen_encoder:
        assert all(g is None for g in gh)
    else:
        assert gh[0] is None  # the embeddings output is not mixed
        for g, r in zip(gh[1:], ref_gh[1:]):
            torch.testing.assert_close(g, r, **TIGHT)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_layer_pooling_low_precision_keeps_dtype(dtype):
    states32 = _hidden_states(6, 2, 7, 17, seed=14)
    states = tuple(h.to(dtype) for h in states32)
    pool = LayerPooling(6, mode="weighted", backend="triton")
    with torch.no_grad():
        pool.weights.copy_(torch.randn(6, generator=_gen(15)))
    out = pool(states)
    assert out.dtype == dtype
    truth = LayerPooling(6, mode="weighted", backend="torch")
    truth.load_state_dict(pool.state_dict())
    ref = truth(tuple(h.float() for h in states))
    torch_lowp = pool.gamma.to(dtype) * sum(w.to(dtype) * h for w, h in zip(pool.weights, states[1:]))
    bound = 2 * _max_err(torch_lowp, ref) + LOWP_ATOL[dtype] * ref.abs().max().item()
    assert _max_err(out, ref) <= bound


def test_layer_mix_function_gradients_reach_every_layer_view():
    # layers as views of one buffer (no stacking copy); gradients must land per layer
    buffer = _layers(4, 6, 5, seed=16).reshape(4, 2, 3, 5).requires_grad_()
    s = torch.softmax(torch.randn(4, generator=_gen(17)), 0).requires_grad_()
    gamma = torch.tensor([0.9], requires_grad=True)
    out = PoolingFunction.apply(s, gamma, None, False, 0.0, torch.float32, *buffer.unbind(0))
    grad_out = torch.randn(2, 3, 5, generator=_gen(18))
    grads = torch.autograd.grad(out, (buffer, s, gamma), grad_out)
    ref = _reference(buffer.detach().reshape(4, 6, 5), s.detach(), gamma.detach(), None, False, grad_out.reshape(6, 5))
    torch.testing.assert_close(out.detach().reshape(6, 5), ref[0], **TIGHT)
    torch.testing.assert_close(grads[0].reshape(4, 6, 5), ref[1], **TIGHT)
    torch.testing.assert_close(grads[1], ref[2], **TIGHT)
    torch.testing.assert_close(grads[2], ref[3], **TIGHT)


@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["plain", "layer-norm"])
def test_scalar_mix_broadcast_and_strided_grad_outputs(do_layer_norm):
    # out.sum().backward() hands the kernel an expanded (stride 0) gradient
    oracle, ours = _twins(6, do_layer_norm, "triton")
    tensors = list(_layers(6, 14, 17, seed=23).reshape(6, 2, 7, 17).unbind(0))
    mask = _mask(14, seed=23).reshape(2, 7)
    grads = []
    for module in (oracle, ours):
        leaves = [t.clone().requires_grad_() for t in tensors]
        (module(leaves, mask) * 0.5).sum().backward()
        grads.append(torch.cat([p.grad for p in module.scalar_parameters] + [module.gamma.grad] + [x.grad.flatten() for x in leaves]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-4)


def test_layer_pooling_errors():
    with pytest.raises(ValueError, match="invalid mode"):
        LayerPooling(4, mode="mean")
    with pytest.raises(ValueError, match="invalid backend"):
        LayerPooling(4, backend="gpu")
    with pytest.raises(ValueError, match="at least 1"):
        LayerPooling(0)
    pool = LayerPooling(4, backend="torch")
    with pytest.raises(ValueError, match="expected 5 hidden states"):
        pool(_hidden_states(3, 1, 2, 4))
    states = list(_hidden_states(4, 1, 2, 4))
    states[2] = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match="same shape"):
        pool(tuple(states))


# --------------------------------------------------------------------------------------
# GPU: full size, real kernels
# --------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["plain", "layer-norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_bert_base_sized_scalar_mix_on_cuda(dtype, do_layer_norm):
    L, B, T, H = 13, 16, 128, 768
    stacked = _layers(L, B * T, H, seed=19).reshape(L, B, T, H).cuda()
    tensors = list(stacked.to(dtype).unbind(0))
    mask = _mask(B * T, seed=19).reshape(B, T).cuda()
    grad_out = torch.randn(B, T, H, generator=_gen(20)).cuda()
    init = torch.randn(L, generator=_gen(21)).tolist()
    fast = ScalarMix(L, do_layer_norm, init, backend="triton").cuda()
    truth = ScalarMix(L, do_layer_norm, init, backend="torch").cuda()
    lowp = ScalarMix(L, do_layer_norm, init, backend="torch").cuda().to(dtype)
    out, gp, gt = _run(fast, tensors, mask, grad_out)
    ref, ref_gp, ref_gt = _run(truth, [t.float() for t in tensors], mask, grad_out)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gp, ref_gp, rtol=1e-4, atol=1e-4 * ref_gp.abs().max().item())
        torch.testing.assert_close(gt[3], ref_gt[3], rtol=1e-5, atol=1e-5)
        return
    theirs, their_gp, their_gt = _run(lowp, tensors, mask, grad_out)
    for ours, r, t in ((out, ref, theirs), (gp, ref_gp, their_gp), (gt[3], ref_gt[3], their_gt[3])):
        bound = 2 * _max_err(t, r) + LOWP_ATOL[dtype] * r.abs().max().item()
        assert _max_err(ours, r) <= bound


@pytest.mark.gpu
def test_bert_base_sized_layer_pooling_on_cuda():
    states = tuple(h.cuda() for h in _hidden_states(12, 16, 128, 768, seed=22, dtype=torch.bfloat16))
    fast = LayerPooling(12, backend="auto").cuda()
    truth = LayerPooling(12, backend="torch").cuda()
    out = fast(states)
    ref = truth(tuple(h.float() for h in states))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
