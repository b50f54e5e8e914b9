"""LayerNorm kernels of the BERT encoder, with the weighted-layer pooling accumulator fused in.

One kernel, ``_layernorm_kernel``, one row (token) per program, statistics in fp32, in two
variants (``EMBEDDINGS``):

- ``embeddings_layernorm``: gathers the word, position and token-type embedding rows of a
  token, sums them and normalises, in one pass; the (tokens, hidden) sum is never written to
  memory.
- ``layernorm``: normalises a row that the preceding GEMM epilogue already summed with its
  residual.

Both can add ``coef[index] * y`` into an fp32 accumulator (``HAS_MIX``): this is ELMo-style
weighted-layer pooling, ``gamma * sum_l s_l h_l``, computed as each layer's output leaves its
final LayerNorm, so the stack of all layers is never stored. The coefficient is read from a
device tensor (no host synchronisation per layer); the embeddings kernel initialises the
accumulator, each layer adds to it.

Row offsets (row x row stride) are formed in int64: (tokens x hidden) passes 2^31 elements
at ~2.8M tokens of width 768 (700k at 3072), where int32 would wrap. Only the scalar row base
is 64-bit; the per-feature offsets within a row stay int32 (below BLOCK_H).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _normalize_row(x, w_ptr, b_ptr, offs, H, eps):
    """LayerNorm of one fp32 row held in registers (masked lanes of ``x`` are 0)."""
    mask = offs < H
    mean = tl.sum(x, axis=0) / H
    centered = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / H
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return centered * rstd * w + b


@triton.jit
def _mix_row(y, mix_ptr, mix_coef_ptr, mix_index, row, offs, mask, mix_row_stride, MIX_INIT: tl.constexpr):
    """``mix[row] (+)= coef * y``; ``row`` is int64 (the row offset can pass 2^31)."""
    coef = tl.load(mix_coef_ptr + mix_index).to(tl.float32)
    mix_ptrs = mix_ptr + row * mix_row_stride + offs
    if MIX_INIT:
        tl.store(mix_ptrs, coef * y, mask=mask)
    else:
        tl.store(mix_ptrs, tl.load(mix_ptrs, mask=mask, other=0.0) + coef * y, mask=mask)


@triton.jit
def _embedding_row(input_ids_ptr, position_ids_ptr, token_type_ids_ptr, word_ptr, position_ptr, token_type_ptr,
                   row, offs, mask, word_row_stride, position_row_stride, token_type_row_stride):
    """word[id] + token_type[type] + position[pos] of one token, in fp32, in Hugging Face's order."""
    token = tl.load(input_ids_ptr + row).to(tl.int64)
    position = tl.load(position_ids_ptr + row).to(tl.int64)
    token_type = tl.load(token_type_ids_ptr + row).to(tl.int64)
    x = tl.load(word_ptr + token * word_row_stride + offs, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(token_type_ptr + token_type * token_type_row_stride + offs, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(position_ptr + position * position_row_stride + offs, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def _layernorm_kernel(
    x_ptr,  # (N, H) rows to normalise; with EMBEDDINGS the word embedding table (V, H)
    input_ids_ptr,  # (N,) ids; these five only with EMBEDDINGS
    position_ids_ptr,
    token_type_ids_ptr,
    position_ptr,
    token_type_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    mix_ptr,
    mix_coef_ptr,
    mix_index,
    H,
    eps,
    x_row_stride,
    position_row_stride,
    token_type_row_stride,
    out_row_stride,
    mix_row_stride,
    EMBEDDINGS: tl.constexpr,
    HAS_MIX: tl.constexpr,
    MIX_INIT: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * row stride can pass 2^31
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H
    if EMBEDDINGS:
        x = _embedding_row(input_ids_ptr, position_ids_ptr, token_type_ids_ptr, x_ptr, position_ptr, token_type_ptr,
                           row, offs, mask, x_row_stride, position_row_stride, token_type_row_stride)
    else:
        x = tl.load(x_ptr + row * x_row_stride + offs, mask=mask, other=0.0).to(tl.float32)
    y = _normalize_row(x, w_ptr, b_ptr, offs, H, eps)
    tl.store(out_ptr + row * out_row_stride + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
    if HAS_MIX:
        _mix_row(y, mix_ptr, mix_coef_ptr, mix_index, row, offs, mask, mix_row_stride, MIX_INIT=MIX_INIT)


def _warps(block: int) -> int:
    return min(max(block // 256, 1), 8)


def _check_mix(mix: torch.Tensor | None, mix_coef: torch.Tensor | None, rows: int, hidden: int) -> None:
    if (mix is None) != (mix_coef is None):
        raise ValueError("mix and mix_coef go together")
    if mix is not None:
        if mix.dtype != torch.float32 or mix.shape != (rows, hidden) or (hidden > 1 and mix.stride(1) != 1):
            raise ValueError(
                f"mix must be a row-contiguous fp32 ({rows}, {hidden}) accumulator, got {mix.dtype} {tuple(mix.shape)} "
                f"with strides {mix.stride()}")
        if mix_coef.dim() != 1 or not mix_coef.is_contiguous():
            raise ValueError("mix_coef must be a contiguous 1-D tensor of per-layer coefficients")


def _launch(x, weight, bias, eps, out, mix, mix_coef, mix_index, mix_init, embeddings=None) -> torch.Tensor:
    """One program per row of ``out``; ``embeddings`` = (ids, positions, types, position table,
    type table) for the embeddings variant, ``x`` then being the word table."""
    rows, hidden = out.shape
    if rows == 0:
        return out
    ids, pos, types, position, token_type = embeddings if embeddings is not None else (out,) * 5
    block = triton.next_power_of_2(hidden)
    _layernorm_kernel[(rows,)](
        x, ids, pos, types, position, token_type,
        weight, bias, out,
        mix if mix is not None else out,
        mix_coef if mix_coef is not None else out,
        mix_index, hidden, eps,
        x.stride(0),
        position.stride(0) if embeddings is not None else 0,
        token_type.stride(0) if embeddings is not None else 0,
        out.stride(0),
        mix.stride(0) if mix is not None else 0,
        EMBEDDINGS=embeddings is not None,
        HAS_MIX=mix is not None,
        MIX_INIT=mix_init,
        BLOCK_H=block,
        num_warps=_warps(block),
    )
    return out


def embeddings_layernorm(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    word: torch.Tensor,
    position: torch.Tensor,
    token_type: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    mix: torch.Tensor | None = None,
    mix_coef: torch.Tensor | None = None,
) -> torch.Tensor:
    """LayerNorm(word[ids] + token_type[types] + position[positions]) for N tokens.

    Args:
        input_ids, position_ids, token_type_ids: (N,) integer tensors.
        word, position, token_type: embedding tables (V, H), (P, H), (Tt, H).
        weight, bias: LayerNorm affine parameters (H,).
        mix, mix_coef: optional fp32 (N, H) accumulator (unit feature stride), initialised
            here to ``mix_coef[0] * output``.

    Returns:
        (N, H) in the tables' dtype.
    """
    (rows,) = input_ids.shape
    hidden = word.shape[1]
    if position_ids.shape != (rows,) or token_type_ids.shape != (rows,):
        raise ValueError("input_ids, position_ids and token_type_ids must all be (N,)")
    for name, table in (("word", word), ("position", position), ("token_type", token_type)):
        if table.dim() != 2 or table.shape[1] != hidden or table.stride(1) != 1:
            raise ValueError(f"{name} embedding table must be (rows, {hidden}) with contiguous rows")
    _check_mix(mix, mix_coef, rows, hidden)
    out = torch.empty((rows, hidden), dtype=word.dtype, device=word.device)
    embeddings = (input_ids.contiguous(), position_ids.contiguous(), token_type_ids.contiguous(), position, token_type)
    return _launch(word, weight, bias, eps, out, mix, mix_coef, 0, True, embeddings)


def layernorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    mix: torch.Tensor | None = None,
    mix_coef: torch.Tensor | None = None,
    mix_index: int = 0,
    mix_init: bool = False,
) -> torch.Tensor:
    """Row-wise LayerNorm of ``x`` (N, H), optionally adding ``mix_coef[mix_index] * y`` into ``mix``.

    Returns:
        (N, H) in ``x``'s dtype.
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be (N, H) with contiguous rows, got shape {tuple(x.shape)}")
    rows, hidden = x.shape
    if weight.shape != (hidden,) or bias.shape != (hidden,):
        raise ValueError(f"weight and bias must be ({hidden},)")
    _check_mix(mix, mix_coef, rows, hidden)
    out = torch.empty((rows, hidden), dtype=x.dtype, device=x.device)
    return _launch(x, weight, bias, eps, out, mix, mix_coef, mix_index, mix_init)
