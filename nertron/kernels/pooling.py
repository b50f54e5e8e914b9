"""Weighted-layer pooling (ELMo / AllenNLP scalar mix) over stored layers, forward and backward.

``out = gamma * sum_l s_l * y_l`` over L stored layers ``h_l`` of N tokens x H features, where
``y_l = h_l`` (plain mix), or, with ``NORMALIZE`` (AllenNLP's ``do_layer_norm=True``),
``y_l = (h_l - mu_l) / sqrt(var_l + eps)`` with ``mu_l`` / ``var_l`` the mean and variance
of layer l over *all* its non-masked elements (one scalar pair per layer, not per token).
``s`` (softmax(w) in ELMo/AllenNLP mode, raw ``w`` in ner-bert's "weighted" mode) and
``gamma`` are computed by the caller; the kernels only see fp32 device tensors, so there is
no host synchronisation and one kernel serves both modes.

This is the training path (weights and gamma learnable, BERT frozen, the L layers already
stored). At inference the same sum is accumulated in the encoder's LayerNorm epilogue
(:mod:`nertron.kernels.layernorm`) and the layers are never stored.

Kernels (each program owns a ``BLOCK_N x BLOCK_H`` tile of tokens x features and loops over
the L layers, so every layer element is read once per pass):

- ``_pooling_stats_kernel`` (``do_layer_norm`` only): per tile and layer, the masked element
  count, sum and sum of squared deviations from the *tile's own* mean; the launcher merges
  the tiles with Chan's parallel-variance formula in fp32. One read of the layers instead of
  AllenNLP's two, without the cancellation of a sum-of-squares formula.
- ``_pooling_fwd_kernel``: ``out = sum_l coef_l * (h_l - mu_l)``, ``coef_l = gamma * s_l *
  rstd_l`` (``rstd = 1``, ``mu = 0`` for the plain mix); fp32 accumulator, one store.
- ``_pooling_bwd_kernel``: with ``g = grad_out``, ``P_l = sum(g * h_l)``, ``G = sum(g)``
  (sums over all N*H elements, masked or not, as the mix covers them all):

  * plain: ``grad_h_l = gamma s_l g``; ``grad_s_l = gamma P_l``; ``grad_gamma = sum_l s_l P_l``
    (``d out / d gamma = mix``, and ``sum(g * mix) = sum_l s_l P_l``, so the mix need not be
    stored). One pass: each program writes its ``grad_h`` tile and fp32 partial ``P``.
  * normalised: ``Q_l = sum(g * y_l) = rstd_l (P_l - mu_l G)``; ``grad_s_l = gamma Q_l``,
    ``grad_gamma = sum_l s_l Q_l``, and the LayerNorm backward through the masked statistics
    (``C`` = number of non-masked elements, ``m`` the token mask)::

        grad_h_l = a_l g + m * (b_l + c_l (h_l - mu_l)),
        a_l = gamma s_l rstd_l,  b_l = -a_l G / C,  c_l = -a_l rstd_l^2 (P_l - mu_l G) / C

    (the mean's gradient through the variance vanishes because mu is the masked mean). Two
    passes: the first reduces ``P`` and ``G``, the second writes ``grad_h``.

  Partial sums are written per program and reduced by the launcher with ``torch.sum`` (fp32,
  deterministic, no atomics). Gradients w.r.t. ``s`` are returned as is: mapping them to the
  raw weights through softmax's Jacobian is left to PyTorch autograd in the module (an L-sized
  op), which keeps one kernel for both modes.

All arithmetic is in fp32 whatever the storage dtype (fp32, fp16, bf16): values are loaded,
converted with ``.to(tl.float32)`` and cast back on store (which also keeps Triton's
interpreter right, where bf16 arithmetic is not).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["PoolingStats", "stack_layers", "pooling_stats", "pooling_forward", "pooling_backward"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Elements per program tile: enough work per program on a GPU; on the interpreter (which
# pays per program and per op) tiny test shapes fit in one or two programs.
_TILE = 4096
_MAX_BLOCK_H = 256


@triton.jit
def _tile(N, H, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    inside = (rows[:, None] < N) & (cols[None, :] < H)
    return rows, cols, inside


@triton.jit
def _pooling_stats_kernel(
    h_ptr,
    mask_ptr,
    sum_ptr,
    m2_ptr,
    count_ptr,
    L,
    N,
    H,
    h_layer_stride,
    h_row_stride,
    HAS_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, cols, keep = _tile(N, H, BLOCK_N, BLOCK_H)
    if HAS_MASK:
        token_keep = tl.load(mask_ptr + rows, mask=rows < N, other=0) != 0
        keep = keep & token_keep[:, None]
    pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    num_tiles = tl.num_programs(0) * tl.num_programs(1)
    count = tl.sum(tl.sum(keep.to(tl.float32), axis=1), axis=0)
    tl.store(count_ptr + pid, count)
    # the tile's own mean centres the squared deviations (merged across tiles by Chan's rule)
    inv_count = 1.0 / tl.maximum(count, 1.0)
    ptrs = h_ptr + rows[:, None].to(tl.int64) * h_row_stride + cols[None, :]
    for layer in range(L):
        x = tl.load(ptrs, mask=keep, other=0.0).to(tl.float32)
        total = tl.sum(tl.sum(x, axis=1), axis=0)
        centered = tl.where(keep, x - total * inv_count, 0.0)
        m2 = tl.sum(tl.sum(centered * centered, axis=1), axis=0)
        tl.store(sum_ptr + layer * num_tiles + pid, total)
        tl.store(m2_ptr + layer * num_tiles + pid, m2)
        ptrs += h_layer_stride  # pointer arithmetic is 64-bit: no overflow for big stacks


@triton.jit
def _pooling_fwd_kernel(
    h_ptr,
    coef_ptr,
    mean_ptr,
    out_ptr,
    L,
    N,
    H,
    h_layer_stride,
    h_row_stride,
    out_row_stride,
    NORMALIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, cols, inside = _tile(N, H, BLOCK_N, BLOCK_H)
    ptrs = h_ptr + rows[:, None].to(tl.int64) * h_row_stride + cols[None, :]
    # fp32 accumulator whatever the storage dtype: 13 layers of bf16 sums would lose bits
    acc = tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32)
    for layer in range(L):
        x = tl.load(ptrs, mask=inside, other=0.0).to(tl.float32)
        if NORMALIZE:
            x = x - tl.load(mean_ptr + layer)
        acc += tl.load(coef_ptr + layer) * x
        ptrs += h_layer_stride
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * out_row_stride + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _pooling_bwd_kernel(
    grad_out_ptr,
    h_ptr,
    mask_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    mean_ptr,
    grad_h_ptr,
    dot_ptr,
    grad_sum_ptr,
    L,
    N,
    H,
    grad_out_row_stride,
    h_layer_stride,
    h_row_stride,
    grad_h_layer_stride,
    grad_h_row_stride,
    HAS_MASK: tl.constexpr,
    NORMALIZE: tl.constexpr,
    LOAD_H: tl.constexpr,
    REDUCE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows, cols, inside = _tile(N, H, BLOCK_N, BLOCK_H)
    keep = inside
    if HAS_MASK:
        token_keep = tl.load(mask_ptr + rows, mask=rows < N, other=0) != 0
        keep = inside & token_keep[:, None]
    pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    num_tiles = tl.num_programs(0) * tl.num_programs(1)
    rows64 = rows[:, None].to(tl.int64)
    g = tl.load(grad_out_ptr + rows64 * grad_out_row_stride + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    if REDUCE:
        tl.store(grad_sum_ptr + pid, tl.sum(tl.sum(g, axis=1), axis=0))
    h_ptrs = h_ptr + rows64 * h_row_stride + cols[None, :]
    grad_h_ptrs = grad_h_ptr + rows64 * grad_h_row_stride + cols[None, :]
    for layer in range(L):
        if LOAD_H:
            x = tl.load(h_ptrs, mask=inside, other=0.0).to(tl.float32)
            if REDUCE:
                tl.store(dot_ptr + layer * num_tiles + pid, tl.sum(tl.sum(g * x, axis=1), axis=0))
        if WRITE_GRAD:
            grad = tl.load(a_ptr + layer) * g
            if NORMALIZE:
                through_stats = tl.load(b_ptr + layer) + tl.load(c_ptr + layer) * (x - tl.load(mean_ptr + layer))
                grad += tl.where(keep, through_stats, 0.0)
            tl.store(grad_h_ptrs, grad.to(grad_h_ptr.dtype.element_ty), mask=inside)
        h_ptrs += h_layer_stride
        grad_h_ptrs += grad_h_layer_stride


# --------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------
class PoolingStats(NamedTuple):
    """Masked per-layer statistics of the ``do_layer_norm`` variant (fp32, shape (L,)),
    plus the number of non-masked elements ``count`` (fp32, shape ())."""

    mean: torch.Tensor
    rstd: torch.Tensor
    count: torch.Tensor


def stack_layers(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """L tensors of identical shape (..., H) as one (L, N, H) tensor, N = prod(...).

    No copy when the layers are equally spaced views of one storage with unit feature stride
    and a uniform token stride (e.g. ``big.unbind(0)`` of an (L, B, T, H) buffer): the
    result is then a strided view. Otherwise ``torch.stack`` (one copy).

    Args:
        layers: L >= 1 tensors, same shape, dtype and device.

    Returns:
        (L, N, H) tensor with ``stride(2) == 1``.
    """
    if len(layers) == 0:
        raise ValueError("stack_layers needs at least one tensor")
    first = layers[0]
    shape = first.shape
    if first.dim() < 1:
        raise ValueError("layers must have a feature dimension")
    for t in layers:
        if t.shape != shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError(
                f"all layers must share shape, dtype and device; got {tuple(t.shape)} {t.dtype} {t.device} "
                f"vs {tuple(shape)} {first.dtype} {first.device}")
    flat = [t.reshape(-1, shape[-1]) for t in layers]  # a view whenever the strides allow it
    if len(flat) == 1:
        return flat[0].unsqueeze(0) if flat[0].stride(-1) == 1 else flat[0].contiguous().unsqueeze(0)
    f0 = flat[0]
    same_storage = all(
        f.stride() == f0.stride() and f.untyped_storage().data_ptr() == f0.untyped_storage().data_ptr()
        for f in flat)
    if same_storage and f0.stride(-1) == 1:
        step = flat[1].storage_offset() - f0.storage_offset()
        if step > 0 and all(f.storage_offset() == f0.storage_offset() + i * step for i, f in enumerate(flat)):
            return f0.as_strided((len(flat), f0.shape[0], f0.shape[1]), (step, f0.stride(0), 1), f0.storage_offset())
    return torch.stack(flat, 0).reshape(len(flat), -1, shape[-1])


def _check_layers(h: torch.Tensor) -> None:
    if h.dim() != 3:
        raise ValueError(f"layers must be a (L, N, H) tensor, got shape {tuple(h.shape)}")
    if h.dtype not in _DTYPES:
        raise ValueError(f"layers must be fp32, fp16 or bf16, got {h.dtype}")
    if h.stride(2) != 1 and h.shape[2] > 1:
        raise ValueError("layers must have a unit feature stride (use stack_layers)")


def _check_scalars(h: torch.Tensor, s: torch.Tensor, gamma: torch.Tensor) -> None:
    L = h.shape[0]
    if s.shape != (L,) or s.dtype != torch.float32:
        raise ValueError(f"s must be an fp32 ({L},) tensor, got {s.dtype} {tuple(s.shape)}")
    if gamma.numel() != 1 or gamma.dtype != torch.float32:
        raise ValueError(f"gamma must be an fp32 one-element tensor, got {gamma.dtype} {tuple(gamma.shape)}")
    for name, t in (("s", s), ("gamma", gamma)):
        if t.device != h.device:
            raise ValueError(f"{name} is on {t.device} but the layers are on {h.device}")


def _check_mask(mask: Optional[torch.Tensor], h: torch.Tensor) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    N = h.shape[1]
    if mask.numel() != N or mask.device != h.device:
        raise ValueError(f"mask must hold one entry per token ({N}) on {h.device}, got {tuple(mask.shape)} on {mask.device}")
    # nonzero = keep; uint8 storage is what the kernels load
    return (mask.reshape(N) != 0).to(torch.uint8)


def _blocks(N: int, H: int) -> Tuple[int, int, Tuple[int, int]]:
    block_h = min(triton.next_power_of_2(max(H, 1)), _MAX_BLOCK_H)
    block_n = max(1, min(triton.next_power_of_2(max(N, 1)), _TILE // block_h))
    return block_n, block_h, (triton.cdiv(N, block_n), triton.cdiv(H, block_h))


def _warps(block_n: int, block_h: int) -> int:
    return 8 if block_n * block_h >= 4096 else 4


def pooling_stats(h: torch.Tensor, mask: Optional[torch.Tensor], eps: float) -> PoolingStats:
    """Masked mean and ``1 / sqrt(var + eps)`` of each layer over all its non-masked elements.

    Args:
        h: (L, N, H) layers (see :func:`stack_layers`).
        mask: (N,) token mask (nonzero = counted) or None (all tokens).
        eps: added to the variance (AllenNLP: ``tiny_value_of_dtype(dtype)``).

    Returns:
        :class:`PoolingStats` with fp32 (L,) ``mean`` and ``rstd`` and the element count.
        No non-masked element gives NaN statistics, as AllenNLP's 0/0 does.
    """
    _check_layers(h)
    mask_u8 = _check_mask(mask, h)
    L, N, H = h.shape
    block_n, block_h, grid = _blocks(N, H)
    tiles = grid[0] * grid[1]
    sums = torch.zeros((L, tiles), dtype=torch.float32, device=h.device)
    m2s = torch.zeros((L, tiles), dtype=torch.float32, device=h.device)
    counts = torch.zeros((tiles,), dtype=torch.float32, device=h.device)
    if tiles > 0 and L > 0:
        _pooling_stats_kernel[grid](
            h, mask_u8 if mask_u8 is not None else h, sums, m2s, counts,
            L, N, H, h.stride(0), h.stride(1),
            HAS_MASK=mask_u8 is not None, BLOCK_N=block_n, BLOCK_H=block_h,
            num_warps=_warps(block_n, block_h),
        )
    # Chan et al.: merge (count, mean, M2) of the tiles (L x tiles fp32 values, tiny)
    count = counts.sum()
    mean = sums.sum(1) / count
    tile_mean = sums / counts.clamp(min=1.0)
    m2 = m2s.sum(1) + (counts * (tile_mean - mean[:, None]) ** 2).sum(1)
    var = m2 / count
    return PoolingStats(mean=mean, rstd=torch.rsqrt(var + eps), count=count)


def pooling_forward(
    h: torch.Tensor,
    s: torch.Tensor,
    gamma: torch.Tensor,
    stats: Optional[PoolingStats] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``gamma * sum_l s_l * y_l`` with ``y_l = h_l`` or, given ``stats``, ``(h_l - mean_l) * rstd_l``.

    Args:
        h: (L, N, H) fp32/fp16/bf16 layers with unit feature stride.
        s: (L,) fp32 mixing scalars (softmax(w) or raw w).
        gamma: one-element fp32 scale.
        stats: from :func:`pooling_stats` for the ``do_layer_norm`` variant, else None.
        out_dtype: output dtype (default: ``h.dtype``); accumulation is fp32 regardless.

    Returns:
        (N, H) tensor of ``out_dtype``.
    """
    _check_layers(h)
    _check_scalars(h, s, gamma)
    L, N, H = h.shape
    out = torch.empty((N, H), dtype=out_dtype or h.dtype, device=h.device)
    if out.dtype not in _DTYPES:
        raise ValueError(f"out_dtype must be fp32, fp16 or bf16, got {out.dtype}")
    if N == 0 or H == 0:
        return out
    if L == 0:
        return out.zero_()
    # shape: (L,) fp32 on device, no host synchronisation
    coef = gamma.reshape(1) * s
    if stats is not None:
        coef = coef * stats.rstd
    block_n, block_h, grid = _blocks(N, H)
    _pooling_fwd_kernel[grid](
        h, coef.contiguous(), stats.mean.contiguous() if stats is not None else coef, out,
        L, N, H, h.stride(0), h.stride(1), out.stride(0),
        NORMALIZE=stats is not None, BLOCK_N=block_n, BLOCK_H=block_h,
        num_warps=_warps(block_n, block_h),
    )
    return out


def pooling_backward(
    grad_out: torch.Tensor,
    h: torch.Tensor,
    s: torch.Tensor,
    gamma: torch.Tensor,
    stats: Optional[PoolingStats] = None,
    mask: Optional[torch.Tensor] = None,
    need_input_grad: bool = True,
    need_scalar_grad: bool = True,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of :func:`pooling_forward` w.r.t. the layers, ``s`` and ``gamma``.

    Args:
        grad_out: (N, H) gradient of the output (any float dtype, unit feature stride).
        h, s, gamma, stats: as given to the forward (``stats`` with the mask it was computed
            with, passed again as ``mask``).
        need_input_grad / need_scalar_grad: skip the layer gradients (a frozen encoder) or
            the reductions for ``s`` and ``gamma``.

    Returns:
        ``(grad_h (L, N, H) in h.dtype, grad_s (L,) fp32, grad_gamma (1,) fp32)``, None
        where not needed.
    """
    _check_layers(h)
    _check_scalars(h, s, gamma)
    L, N, H = h.shape
    if grad_out.shape != (N, H):
        raise ValueError(f"grad_out must be ({N}, {H}), got {tuple(grad_out.shape)}")
    if grad_out.stride(1) != 1:
        grad_out = grad_out.contiguous()
    mask_u8 = _check_mask(mask, h) if stats is not None else None
    normalize = stats is not None
    block_n, block_h, grid = _blocks(N, H)
    tiles = grid[0] * grid[1]
    dev = h.device
    gamma1 = gamma.reshape(1)
    grad_h = torch.empty((L, N, H), dtype=h.dtype, device=dev) if need_input_grad else None
    empty = N == 0 or H == 0 or L == 0
    dots = torch.zeros((L, tiles), dtype=torch.float32, device=dev)
    grad_sums = torch.zeros((tiles,), dtype=torch.float32, device=dev)
    need_reduce = need_scalar_grad or (normalize and need_input_grad)
    common = dict(HAS_MASK=mask_u8 is not None, BLOCK_N=block_n, BLOCK_H=block_h, num_warps=_warps(block_n, block_h))
    mask_arg = mask_u8 if mask_u8 is not None else h

    def launch(a, b, c, mean, out, reduce, write, normalized):
        _pooling_bwd_kernel[grid](
            grad_out, h, mask_arg, a, b, c, mean, out if out is not None else h, dots, grad_sums,
            L, N, H, grad_out.stride(0), h.stride(0), h.stride(1),
            out.stride(0) if out is not None else 0, out.stride(1) if out is not None else 0,
            NORMALIZE=normalized, LOAD_H=reduce or normalized, REDUCE=reduce, WRITE_GRAD=write, **common,
        )

    # shape: (L,) fp32
    a = gamma1 * s
    if normalize:
        a = a * stats.rstd
    if not empty and not normalize and (need_reduce or need_input_grad):
        # plain mix: one pass writes grad_h and reduces P
        launch(a, a, a, a, grad_h, need_reduce, need_input_grad, False)
    elif not empty and need_reduce:
        launch(a, a, a, a, None, True, False, False)
    # shape: (L,), ()
    P = dots.sum(1)
    G = grad_sums.sum()
    if normalize:
        # Q_l = sum(g * y_l)
        centered_dot = P - stats.mean * G
        Q = stats.rstd * centered_dot
        if need_input_grad and not empty:
            b = -a * G / stats.count
            c = -a * stats.rstd * stats.rstd * centered_dot / stats.count
            launch(a.contiguous(), b.contiguous(), c.contiguous(), stats.mean.contiguous(), grad_h, False, True, True)
    else:
        Q = P
    grad_s = grad_gamma = None
    if need_scalar_grad:
        grad_s = gamma1 * Q
        grad_gamma = (s * Q).sum().reshape(1)
    if grad_h is not None and empty:
        grad_h.zero_()
    return grad_h, grad_s, grad_gamma
