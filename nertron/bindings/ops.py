"""nertron's kernels as PyTorch custom operators (``torch.ops.nertron.*``).

Every launcher of :mod:`nertron.kernels` is registered through ``torch.library.custom_op``
with a fake (meta) implementation that gives the output shapes and dtypes from the input
shapes alone, and, where the op is differentiable, an autograd formula
(``torch.library.register_autograd``) over its backward op. ``torch.compile`` then keeps each
kernel as one node of the graph: it neither breaks the graph at the launcher's host-side
checks nor traces into it, and dynamic shapes flow through (the fake implementations never
read tensor values). The checks still run, inside the op, when it executes.

Two families:

* the Triton launchers (``crf_forward``/``crf_backward``/``crf_viterbi``/``crf_marginals``/
  ``crf_alpha_beta``, ``pooling``/``pooling_backward``, ``linear``, ``layernorm``,
  ``embeddings_layernorm``, ``attention``): CUDA, or Triton's interpreter on CPU tensors;
* the CRF's CPU path (``crf_forward_ref``/``crf_backward_ref``, ``crf_nll_ref``/
  ``crf_nll_backward_ref`` (path score and log Z in one pass), ``crf_viterbi_ref``,
  ``crf_alpha_beta_ref``): the C loops of :mod:`nertron.kernels.crf_cpu` on CPU tensors in
  fp32/fp64 when a C compiler is available, the PyTorch reference of
  :mod:`nertron.bindings.crf_reference` otherwise (and on other devices). Being one op, the
  recursion over time is neither unrolled nor specialised on the sequence length under
  ``torch.compile``.

CRF ops take prefix-mask lengths ``(B,)`` (any integer dtype; each in ``[1, T]``, checked
when the op runs) instead of masks. ``tests/test_custom_ops.py`` runs
``torch.library.opcheck`` on every op.
"""
from __future__ import annotations

import concurrent.futures
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.library import custom_op, register_autograd

from nertron.bindings.crf_reference import (
    _alphas,
    compute_dtype,
    crf_alpha_beta_torch,
    crf_log_partition_torch,
    crf_score_torch,
    crf_viterbi_torch,
)
from nertron.kernels.crf_cpu import check_lengths  # the CRF launchers' lengths contract (no triton import)

__all__ = ["OPS", "vjp_by_recomputation"]


def _crf_kernels():
    from nertron.kernels import crf  # lazy: triton, and TRITON_INTERPRET set before import
    return crf


def _cpu():
    from nertron.kernels import crf_cpu
    return crf_cpu


_GRAD_WORKER: Optional[concurrent.futures.ThreadPoolExecutor] = None


def vjp_by_recomputation(fn: Callable[..., Tensor], inputs: Sequence[Tensor], grad: Tensor) -> List[Tensor]:
    """``d <grad, fn(*inputs)> / d inputs`` by running ``fn`` again under autograd: the backward
    of ops that have no backward formula of their own.

    An op's implementation runs below the autograd dispatch key (autograd records nothing
    there, whatever the grad mode) and ``torch.func.vjp`` cannot trace every kernel (the
    packed LSTM reads storage), so the recomputation runs on a worker thread, whose
    dispatcher state is the default one.
    """
    global _GRAD_WORKER

    def run() -> List[Tensor]:
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, grad, allow_unused=True)
        return [g.contiguous() if g is not None else torch.zeros_like(t) for g, t in zip(grads, leaves)]

    if _GRAD_WORKER is None:
        _GRAD_WORKER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nertron-vjp")
    return _GRAD_WORKER.submit(run).result()


def _prefix_mask(lengths: Tensor, T: int) -> Tensor:
    """``(B, T)`` bool prefix mask of ``lengths``."""
    return torch.arange(T, device=lengths.device) < lengths.to(torch.int64).unsqueeze(1)


def _zero_padding(x: Tensor, lengths: Tensor) -> Tensor:
    """Zero the steps of ``x`` ``(B, T, K)`` past each length, which the kernels leave
    uninitialised: an op's outputs must not depend on what the allocator had there."""
    return x.masked_fill_(~_prefix_mask(lengths, x.shape[1]).unsqueeze(2), 0.0)


def _use_c(emissions: Tensor) -> bool:
    return emissions.device.type == "cpu" and _cpu().available()


def _c_inputs(emissions, lengths, *params, dt):
    """Inputs as the C kernels read them: the compute dtype, int32 lengths, contiguous params."""
    return (emissions.to(dt), lengths.to(torch.int32).contiguous(),
            *(p.to(dt).contiguous() for p in params))


# ======================================================================================
# CRF, Triton kernels
# ======================================================================================
@custom_op("nertron::crf_forward", mutates_args=())
def crf_forward(emissions: Tensor, lengths: Tensor, start: Tensor, end: Tensor, transitions: Tensor,
                store_alpha: bool) -> Tuple[Tensor, Tensor]:
    """log Z ``(B,)`` fp32 and alpha ``(B, T, K)`` fp32, zero past each length (``(0,)``
    without ``store_alpha``)."""
    log_z, alpha = _crf_kernels().crf_forward(emissions, lengths, start, end, transitions, store_alpha=store_alpha)
    if alpha is None:
        return log_z, emissions.new_empty((0,), dtype=torch.float32)
    return log_z, _zero_padding(alpha, lengths)


@crf_forward.register_fake
def _(emissions, lengths, start, end, transitions, store_alpha):
    B, T, K = emissions.shape
    f32 = dict(dtype=torch.float32, device=emissions.device)
    return emissions.new_empty((B,), **f32), emissions.new_empty((B, T, K) if store_alpha else (0,), **f32)


@custom_op("nertron::crf_backward", mutates_args=())
def crf_backward(emissions: Tensor, lengths: Tensor, end: Tensor, transitions: Tensor, alpha: Tensor,
                 log_z: Tensor, grad_log_z: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``sum_b grad_log_z[b] * log_z[b]``: emissions ``(B, T, K)`` (their dtype),
    start, end ``(K,)`` and transitions ``(K, K)`` fp32."""
    g_em, g_start, g_end, g_tr = _crf_kernels().crf_backward(emissions, lengths, end, transitions, alpha,
                                                             log_z, grad_log_z)
    return g_em, g_start, g_end, g_tr


@crf_backward.register_fake
def _(emissions, lengths, end, transitions, alpha, log_z, grad_log_z):
    K = emissions.shape[2]
    f32 = dict(dtype=torch.float32, device=emissions.device)
    return (torch.empty_like(emissions, memory_format=torch.contiguous_format),
            emissions.new_empty((K,), **f32), emissions.new_empty((K,), **f32), emissions.new_empty((K, K), **f32))


def _forward_setup(ctx, inputs, output):
    emissions, lengths, start, end, transitions = inputs[:5]
    log_z, alpha = output
    ctx.save_for_backward(emissions, lengths, start, end, transitions, alpha, log_z)


def _crf_forward_backward(ctx, grad_log_z, _grad_alpha):
    # alpha is an implementation detail of the backward: its gradient is not propagated
    emissions, lengths, start, end, transitions, alpha, log_z = ctx.saved_tensors
    if alpha.dim() != 3:
        raise RuntimeError("nertron::crf_forward: call it with store_alpha=True to differentiate it")
    g_em, g_start, g_end, g_tr = torch.ops.nertron.crf_backward(emissions, lengths, end, transitions, alpha,
                                                                log_z, grad_log_z)
    return (g_em.to(emissions.dtype), None, g_start.to(start.dtype), g_end.to(end.dtype),
            g_tr.to(transitions.dtype), None)


register_autograd("nertron::crf_forward", _crf_forward_backward, setup_context=_forward_setup)


@custom_op("nertron::crf_viterbi", mutates_args=())
def crf_viterbi(emissions: Tensor, lengths: Tensor, start: Tensor, end: Tensor, transitions: Tensor,
                pad_tag: int) -> Tuple[Tensor, Tensor]:
    """Best paths ``(B, T)`` int64 (``pad_tag`` past each length) and scores ``(B,)`` fp32."""
    return _crf_kernels().crf_viterbi(emissions, lengths, start, end, transitions, pad_tag=pad_tag)


@crf_viterbi.register_fake
def _(emissions, lengths, start, end, transitions, pad_tag):
    B, T, _ = emissions.shape
    return (emissions.new_empty((B, T), dtype=torch.int64), emissions.new_empty((B,), dtype=torch.float32))


@custom_op("nertron::crf_marginals", mutates_args=())
def crf_marginals(emissions: Tensor, lengths: Tensor, start: Tensor, end: Tensor, transitions: Tensor) -> Tensor:
    """``P(y_t = k | x)`` ``(B, T, K)`` fp32, zero at padding."""
    return _crf_kernels().crf_marginals(emissions, lengths, start, end, transitions)


@crf_marginals.register_fake
def _(emissions, lengths, start, end, transitions):
    return emissions.new_empty(emissions.shape, dtype=torch.float32)


@custom_op("nertron::crf_alpha_beta", mutates_args=())
def crf_alpha_beta(emissions: Tensor, lengths: Tensor, start: Tensor, end: Tensor,
                   transitions: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """log Z ``(B,)``, alpha and beta ``(B, T, K)``, fp32, zero past each length."""
    log_z, alpha, beta = _crf_kernels().crf_alpha_beta(emissions, lengths, start, end, transitions)
    return log_z, _zero_padding(alpha, lengths), _zero_padding(beta, lengths)


@crf_alpha_beta.register_fake
def _(emissions, lengths, start, end, transitions):
    B, T, K = emissions.shape
    f32 = dict(dtype=torch.float32, device=emissions.device)
    return emissions.new_empty((B,), **f32), emissions.new_empty((B, T, K), **f32), emissions.new_empty((B, T, K), **f32)


# ======================================================================================
# CRF, CPU path (C loops, or the PyTorch reference)
# ======================================================================================
def _ref_dtype(emissions: Tensor, transitions: Tensor) -> torch.dtype:
    return compute_dtype(emissions, transitions)


@custom_op("nertron::crf_forward_ref", mutates_args=())
def crf_forward_ref(emissions: Tensor, lengths: Tensor, start: Tensor, end: Tensor,
                    transitions: Tensor) -> Tuple[Tensor, Tensor]:
    """log Z ``(B,)`` and alpha ``(B, T, K)`` (padded steps repeat the last alpha) in the
    compute dtype (fp64 when emissions and transitions are fp64, else fp32)."""
    B, T, K = emissions.shape
    check_lengths(lengths, T)
    dt = _ref_dtype(emissions, transitions)
    if _use_c(emissions):
        em, ln, s, e, tr = _c_inputs(emissions, lengths, start, end, transitions, dt=dt)
        return _cpu().crf_forward(em, ln, s, e, tr, store_alpha=True)[:2]
    mask = _prefix_mask(lengths, T)
    alpha, history = _alphas(emissions.to(dt), mask, start.to(dt), transitions.to(dt), keep=True)
    log_z = torch.logsumexp(alpha + end.to(dt), dim=1)
    return log_z, torch.stack(history, 1)


@crf_forward_ref.register_fake
def _(emissions, lengths, start, end, transitions):
    B, T, K = emissions.shape
    dt = _ref_dtype(emissions, transitions)
    return emissions.new_empty((B,), dtype=dt), emissions.new_empty((B, T, K), dtype=dt)


@custom_op("nertron::crf_backward_ref", mutates_args=())
def crf_backward_ref(emissions: Tensor, lengths: Tensor, start: Tensor, end: Tensor, transitions: Tensor,
                     alpha: Tensor, log_z: Tensor, grad_log_z: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``sum_b grad_log_z[b] * log_z[b]`` w.r.t. emissions ``(B, T, K)`` (zero at
    padding), start, end ``(K,)`` and transitions ``(K, K)``, in the compute dtype: unary and
    pairwise marginals by the backward recursion (C), or the reference's vector-Jacobian product."""
    B, T, K = emissions.shape
    dt = _ref_dtype(emissions, transitions)
    if _use_c(emissions):
        em, ln, e, tr = _c_inputs(emissions, lengths, end, transitions, dt=dt)
        g_em, g_start, g_end, g_tr, _ = _cpu().crf_backward(
            em, ln, e, tr, alpha.to(dt).contiguous(), log_z.to(dt).contiguous(), grad_log_z.to(dt).contiguous())
        return g_em, g_start, g_end, g_tr
    mask = _prefix_mask(lengths, T)
    return tuple(vjp_by_recomputation(lambda *x: crf_log_partition_torch(x[0], mask, *x[1:]),
                                      [x.to(dt) for x in (emissions, start, end, transitions)], grad_log_z.to(dt)))


@crf_backward_ref.register_fake
def _(emissions, lengths, start, end, transitions, alpha, log_z, grad_log_z):
    B, T, K = emissions.shape
    dt = _ref_dtype(emissions, transitions)
    return (emissions.new_empty((B, T, K), dtype=dt), emissions.new_empty((K,), dtype=dt),
            emissions.new_empty((K,), dtype=dt), emissions.new_empty((K, K), dtype=dt))


def _crf_forward_ref_backward(ctx, grad_log_z, _grad_alpha):
    emissions, lengths, start, end, transitions, alpha, log_z = ctx.saved_tensors
    g_em, g_start, g_end, g_tr = torch.ops.nertron.crf_backward_ref(emissions, lengths, start, end, transitions,
                                                                    alpha, log_z, grad_log_z)
    return (g_em.to(emissions.dtype), None, g_start.to(start.dtype), g_end.to(end.dtype),
            g_tr.to(transitions.dtype))


register_autograd("nertron::crf_forward_ref", _crf_forward_ref_backward, setup_context=_forward_setup)


@custom_op("nertron::crf_nll_ref", mutates_args=())
def crf_nll_ref(emissions: Tensor, tags: Tensor, lengths: Tensor, start: Tensor, end: Tensor,
                transitions: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The log-likelihood of the tag paths ``tags`` ``(B, T)`` (read up to each length; every
    value, padding included, must lie in ``[0, K)`` as pytorch-crf indexes every step):
    ``(llh (B,), log Z (B,), alpha (B, T, K))`` in the compute dtype, the last two for the
    backward. One pass for the path score and the forward recursion (C), or the reference's
    ``crf_score_torch - crf_log_partition_torch``."""
    B, T, K = emissions.shape
    check_lengths(lengths, T)
    dt = _ref_dtype(emissions, transitions)
    if _use_c(emissions):
        em, ln, s, e, tr = _c_inputs(emissions, lengths, start, end, transitions, dt=dt)
        log_z, alpha, score = _cpu().crf_forward(em, ln, s, e, tr, store_alpha=True, tags=tags.to(torch.int64))
        return score - log_z, log_z, alpha
    bad = (tags < 0) | (tags >= K)
    if bool(bad.any()):  # the C pass's check, with pytorch-crf's error type
        raise IndexError(f"index {int(tags[bad][0])} is out of bounds for dimension 0 with size {K}")
    mask = _prefix_mask(lengths, T)
    log_z, alpha = crf_forward_ref(emissions, lengths, start, end, transitions)
    score = crf_score_torch(emissions, tags, mask, start, end, transitions)
    return score - log_z, log_z, alpha


@crf_nll_ref.register_fake
def _(emissions, tags, lengths, start, end, transitions):
    B, T, K = emissions.shape
    dt = _ref_dtype(emissions, transitions)
    return (emissions.new_empty((B,), dtype=dt), emissions.new_empty((B,), dtype=dt),
            emissions.new_empty((B, T, K), dtype=dt))


@custom_op("nertron::crf_nll_backward_ref", mutates_args=())
def crf_nll_backward_ref(emissions: Tensor, tags: Tensor, lengths: Tensor, start: Tensor, end: Tensor,
                         transitions: Tensor, alpha: Tensor, log_z: Tensor,
                         grad_llh: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``sum_b grad_llh[b] * llh[b]`` w.r.t. emissions ``(B, T, K)`` (zero at
    padding), start, end ``(K,)`` and transitions ``(K, K)``, in the compute dtype: the
    path's one-hot counts minus the marginals (C), or the reference's vector-Jacobian product."""
    B, T, K = emissions.shape
    dt = _ref_dtype(emissions, transitions)
    if _use_c(emissions):
        em, ln, e, tr = _c_inputs(emissions, lengths, end, transitions, dt=dt)
        g_em, g_start, g_end, g_tr, _ = _cpu().crf_backward(
            em, ln, e, tr, alpha.to(dt).contiguous(), log_z.to(dt).contiguous(), grad_llh.to(dt).contiguous(),
            tags=tags.to(torch.int64))
        return g_em, g_start, g_end, g_tr
    mask = _prefix_mask(lengths, T)

    def llh(em, s, e, tr):
        return crf_score_torch(em, tags, mask, s, e, tr) - crf_log_partition_torch(em, mask, s, e, tr)

    return tuple(vjp_by_recomputation(llh, [x.to(dt) for x in (emissions, start, end, transitions)],
                                      grad_llh.to(dt)))


@crf_nll_backward_ref.register_fake
def _(emissions, tags, lengths, start, end, transitions, alpha, log_z, grad_llh):
    B, T, K = emissions.shape
    dt = _ref_dtype(emissions, transitions)
    return (emissions.new_empty((B, T, K), dtype=dt), emissions.new_empty((K,), dtype=dt),
            emissions.new_empty((K,), dtype=dt), emissions.new_empty((K, K), dtype=dt))


def _nll_setup(ctx, inputs, output):
    emissions, tags, lengths, start, end, transitions = inputs
    _, log_z, alpha = output
    ctx.save_for_backward(emissions, tags, lengths, start, end, transitions, alpha, log_z)


def _crf_nll_ref_backward(ctx, grad_llh, _grad_log_z, _grad_alpha):
    # log Z and alpha are what the backward reads: their gradients are not propagated
    emissions, tags, lengths, start, end, transitions, alpha, log_z = ctx.saved_tensors
    g_em, g_start, g_end, g_tr = torch.ops.nertron.crf_nll_backward_ref(
        emissions, tags, lengths, start, end, transitions, alpha, log_z, grad_llh)
    return (g_em.to(emissions.dtype), None, None, g_start.to(start.dtype), g_end.to(end.dtype),
            g_tr.to(transitions.dtype))


register_autograd("nertron::crf_nll_ref", _crf_nll_ref_backward, setup_context=_nll_setup)


@custom_op("nertron::crf_viterbi_ref", mutates_args=())
def crf_viterbi_ref(emissions: Tensor, lengths: Tensor, start: Tensor, end: Tensor, transitions: Tensor,
                    pad_tag: int) -> Tuple[Tensor, Tensor]:
    """Best paths ``(B, T)`` int64 (``pad_tag`` past each length) and scores ``(B,)`` in the
    compute dtype; ties go to the lowest tag, as ``torch.max``."""
    B, T, K = emissions.shape
    check_lengths(lengths, T)
    dt = _ref_dtype(emissions, transitions)
    if _use_c(emissions):
        em, ln, s, e, tr = _c_inputs(emissions, lengths, start, end, transitions, dt=dt)
        return _cpu().crf_viterbi(em, ln, s, e, tr, pad_tag)
    return crf_viterbi_torch(emissions, _prefix_mask(lengths, T), start, end, transitions, pad_tag=pad_tag)


@crf_viterbi_ref.register_fake
def _(emissions, lengths, start, end, transitions, pad_tag):
    B, T, _ = emissions.shape
    return (emissions.new_empty((B, T), dtype=torch.int64),
            emissions.new_empty((B,), dtype=_ref_dtype(emissions, transitions)))


@custom_op("nertron::crf_alpha_beta_ref", mutates_args=())
def crf_alpha_beta_ref(emissions: Tensor, lengths: Tensor, start: Tensor, end: Tensor,
                       transitions: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """log Z ``(B,)``, alpha and beta ``(B, T, K)`` in the compute dtype; past a length alpha
    repeats its last value and beta holds the end score."""
    B, T, K = emissions.shape
    check_lengths(lengths, T)
    dt = _ref_dtype(emissions, transitions)
    if _use_c(emissions):
        em, ln, s, e, tr = _c_inputs(emissions, lengths, start, end, transitions, dt=dt)
        return _cpu().crf_alpha_beta(em, ln, s, e, tr)
    return crf_alpha_beta_torch(emissions, _prefix_mask(lengths, T), start, end, transitions)


@crf_alpha_beta_ref.register_fake
def _(emissions, lengths, start, end, transitions):
    B, T, K = emissions.shape
    dt = _ref_dtype(emissions, transitions)
    return (emissions.new_empty((B,), dtype=dt), emissions.new_empty((B, T, K), dtype=dt),
            emissions.new_empty((B, T, K), dtype=dt))


# ======================================================================================
# weighted-layer pooling
# ======================================================================================
def _pooling_kernels():
    from nertron.kernels import pooling
    return pooling


@custom_op("nertron::pooling", mutates_args=())
def pooling(layers: List[Tensor], s: Tensor, gamma: Tensor, mask: Optional[Tensor], do_layer_norm: bool,
            eps: float, out_dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``gamma * sum_l s_l * y_l`` over L layers of one shape ``(..., H)`` (``y_l = layers[l]``,
    or normalised by the masked statistics with ``do_layer_norm``; ``mask`` ``(N,)`` or None):
    the mix ``(N, H)`` in ``out_dtype`` (N = the tokens) and the statistics the backward reads
    (mean, rstd ``(L,)``, count ``()``, fp32; empty without ``do_layer_norm``). The layers are
    read in place when they are equally spaced views of one buffer (``stack_layers``)."""
    k = _pooling_kernels()
    # shape: (L, N, H)
    h = k.stack_layers(layers)
    stats = k.pooling_stats(h, mask, eps) if do_layer_norm else None
    out = k.pooling_forward(h, s, gamma, stats, out_dtype)
    if stats is None:
        empty = h.new_empty((0,), dtype=torch.float32)
        return out, empty, empty.clone(), empty.clone()
    return out, stats.mean, stats.rstd, stats.count


def _tokens(layers) -> int:
    n = 1
    for size in layers[0].shape[:-1]:
        n = n * size
    return n


@pooling.register_fake
def _(layers, s, gamma, mask, do_layer_norm, eps, out_dtype):
    L, N, H = len(layers), _tokens(layers), layers[0].shape[-1]
    f32 = dict(dtype=torch.float32, device=layers[0].device)
    stats = ((L,), (L,), ()) if do_layer_norm else ((0,), (0,), (0,))
    return (layers[0].new_empty((N, H), dtype=out_dtype), *(layers[0].new_empty(shape, **f32) for shape in stats))


@custom_op("nertron::pooling_backward", mutates_args=())
def pooling_backward(grad_out: Tensor, layers: List[Tensor], s: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor,
                     count: Tensor, mask: Optional[Tensor], do_layer_norm: bool, need_input_grad: bool,
                     need_scalar_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. the layers (one ``(L, N, H)`` tensor in their dtype), ``s`` ``(L,)``
    and ``gamma`` ``(1,)`` (fp32); the ones not needed come back empty."""
    k = _pooling_kernels()
    h = k.stack_layers(layers)
    stats = k.PoolingStats(mean=mean, rstd=rstd, count=count) if do_layer_norm else None
    grad_h, grad_s, grad_gamma = k.pooling_backward(grad_out, h, s, gamma, stats, mask if do_layer_norm else None,
                                                    need_input_grad=need_input_grad,
                                                    need_scalar_grad=need_scalar_grad)
    empty = h.new_empty((0,), dtype=torch.float32)
    return (grad_h if grad_h is not None else h.new_empty((0,)),
            grad_s if grad_s is not None else empty, grad_gamma if grad_gamma is not None else empty.clone())


@pooling_backward.register_fake
def _(grad_out, layers, s, gamma, mean, rstd, count, mask, do_layer_norm, need_input_grad, need_scalar_grad):
    L, N, H = len(layers), _tokens(layers), layers[0].shape[-1]
    first = layers[0]
    f32 = dict(dtype=torch.float32, device=first.device)
    return (first.new_empty((L, N, H) if need_input_grad else (0,)),
            first.new_empty((L,) if need_scalar_grad else (0,), **f32),
            first.new_empty((1,) if need_scalar_grad else (0,), **f32))


def _pooling_setup(ctx, inputs, output):
    layers, s, gamma, mask, do_layer_norm, eps, out_dtype = inputs
    _, mean, rstd, count = output
    ctx.save_for_backward(s, gamma, mean, rstd, count, mask if mask is not None else s.new_empty((0,)), *layers)
    ctx.do_layer_norm = do_layer_norm
    ctx.has_mask = mask is not None


def _pooling_backward(ctx, grad_out, *_grad_stats):
    s, gamma, mean, rstd, count, mask, *layers = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    if isinstance(need_input, (list, tuple)):
        need_input = any(need_input)
    need_scalar = bool(ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
    grad_h, grad_s, grad_gamma = torch.ops.nertron.pooling_backward(
        grad_out, layers, s, gamma, mean, rstd, count, mask if ctx.has_mask else None, ctx.do_layer_norm,
        bool(need_input), need_scalar)
    shape = layers[0].shape
    grad_layers = [g.reshape(shape) for g in grad_h.unbind(0)] if need_input else [None] * len(layers)
    return (grad_layers, grad_s if need_scalar else None,
            grad_gamma.reshape(gamma.shape) if need_scalar else None, None, None, None, None)


register_autograd("nertron::pooling", _pooling_backward, setup_context=_pooling_setup)


# ======================================================================================
# fused encoder (inference only: no autograd formula)
# ======================================================================================
def _encoder_kernels():
    from nertron.kernels import attention, layernorm, matmul
    return attention, layernorm, matmul


@custom_op("nertron::linear", mutates_args=())
def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: Optional[str],
           residual: Optional[Tensor]) -> Tensor:
    """``act(x @ weight.T + bias) + residual`` ``(M, N)`` in ``x``'s dtype."""
    return _encoder_kernels()[2].linear(x, weight, bias, activation, residual)


@linear.register_fake
def _(x, weight, bias, activation, residual):
    return x.new_empty((x.shape[0], weight.shape[0]))


@custom_op("nertron::layernorm", mutates_args=("mix",))
def layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, mix: Optional[Tensor],
              mix_coef: Optional[Tensor], mix_index: int, mix_init: bool) -> Tensor:
    """Row-wise LayerNorm ``(N, H)``; adds ``mix_coef[mix_index] * y`` into ``mix`` in place."""
    return _encoder_kernels()[1].layernorm(x, weight, bias, eps, mix, mix_coef, mix_index, mix_init)


@layernorm.register_fake
def _(x, weight, bias, eps, mix, mix_coef, mix_index, mix_init):
    return x.new_empty((x.shape[0], x.shape[1]))


@custom_op("nertron::embeddings_layernorm", mutates_args=("mix",))
def embeddings_layernorm(input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor, word: Tensor,
                         position: Tensor, token_type: Tensor, weight: Tensor, bias: Tensor, eps: float,
                         mix: Optional[Tensor], mix_coef: Optional[Tensor]) -> Tensor:
    """LayerNorm of the summed embeddings ``(N, H)``; initialises ``mix`` in place."""
    return _encoder_kernels()[1].embeddings_layernorm(input_ids, position_ids, token_type_ids, word, position,
                                                      token_type, weight, bias, eps, mix, mix_coef)


@embeddings_layernorm.register_fake
def _(input_ids, position_ids, token_type_ids, word, position, token_type, weight, bias, eps, mix, mix_coef):
    return word.new_empty((input_ids.shape[0], word.shape[1]))


@custom_op("nertron::attention", mutates_args=())
def attention(qkv: Tensor, num_heads: int, seq_start: Tensor, q_len: Tensor, k_len: Tensor,
              max_q_len: int) -> Tensor:
    """Per-sequence bidirectional attention over a packed ``(rows, 3H)`` QKV: ``(rows, H)``."""
    return _encoder_kernels()[0].attention(qkv, num_heads, seq_start, q_len, k_len, max_q_len)


@attention.register_fake
def _(qkv, num_heads, seq_start, q_len, k_len, max_q_len):
    return qkv.new_empty((qkv.shape[0], qkv.shape[1] // 3))


# every op, for the opcheck tests and the docs
OPS: List[str] = [
    "crf_forward", "crf_backward", "crf_viterbi", "crf_marginals", "crf_alpha_beta",
    "crf_forward_ref", "crf_backward_ref", "crf_nll_ref", "crf_nll_backward_ref", "crf_viterbi_ref",
    "crf_alpha_beta_ref",
    "pooling", "pooling_backward", "linear", "layernorm", "embeddings_layernorm", "attention",
]
