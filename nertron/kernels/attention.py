"""Flash-style self-attention over variable-length sequences, reading the fused QKV matrix.

BERT's attention for NER batches: sequences of very different lengths, bidirectional, with
key padding. This kernel never forms the (T, T) score matrix in memory: each program owns a
block of queries of one sequence and one head, streams that sequence's keys and values in
blocks and keeps an online softmax (running max and sum, in fp32, base-2 exponentials).

Sequences are described by three (B,) int32 vectors rather than a padded mask:
``seq_start`` (row of the sequence's first token), ``q_len`` (query rows to compute) and
``k_len`` (real keys). Packed layout (the default, no work on padding): the real tokens of
the batch are rows of one (total_tokens, 3H) matrix, ``seq_start`` = cu_seqlens[:-1] and
``q_len = k_len`` = lengths. Padded layout (kept for comparison): ``seq_start = b * T``,
``q_len = T``, ``k_len`` = lengths, so padding queries also attend to the real keys, as in
the reference. A query whose sequence has no real key gets zeros.

Q, K and V are read straight out of the QKV GEMM's output, (rows, 3H) with head ``h`` at
columns ``h*D``, ``H + h*D`` and ``2H + h*D``: no split, transpose or copy. Row offsets are
formed in int64 (``start`` is loaded as int64), so (rows x 3H) may pass 2^31 elements.

The grid is (sequence x head, query block): sequences x heads on axis 0, whose limit is
2^31 - 1 (axes 1 and 2 stop at 65535 on CUDA, which 8192 sequences x 12 heads would pass).

fp16/bf16 run on the tensor cores. fp32 inputs follow PyTorch's fp32 matmul setting, as the
GEMM does (:func:`nertron.kernels.matmul.dot_precision`): IEEE fp32 by default (matches
PyTorch to rounding, but the slow CUDA-core FMA path on a GPU), TF32 tensor cores after
``torch.set_float32_matmul_precision("high")``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from nertron.kernels.matmul import dot_precision
from nertron.kernels.runtime import interpreting

_MAX_GRID_X = 2**31 - 1  # CUDA grid limits: axis 0, and axes 1 and 2
_MAX_GRID_YZ = 65535


@triton.jit
def _attention_kernel(
    qkv_ptr,
    out_ptr,
    seq_start_ptr,
    q_len_ptr,
    k_len_ptr,
    qkv_row_stride,
    out_row_stride,
    hidden,
    num_heads,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # sequence x head on axis 0: B * heads may pass 65535
    pid_m = tl.program_id(1)
    seq = pid_bh // num_heads
    head = pid_bh % num_heads
    start = tl.load(seq_start_ptr + seq).to(tl.int64)
    q_len = tl.load(q_len_ptr + seq)
    k_len = tl.load(k_len_ptr + seq)
    if pid_m * BLOCK_M >= q_len:
        return  # the grid covers the longest sequence; shorter ones finish here

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q_col = head * HEAD_DIM
    k_col = hidden + head * HEAD_DIM
    v_col = 2 * hidden + head * HEAD_DIM

    q = tl.load(
        qkv_ptr + (start + offs_m)[:, None] * qkv_row_stride + q_col + offs_d[None, :],
        mask=(offs_m[:, None] < q_len) & d_mask[None, :],
        other=0.0,
    )
    # Online softmax state in fp32; scores are kept in base 2 (qk_scale folds in log2(e)).
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, k_len, BLOCK_N):
        cols = n0 + offs_n
        col_mask = cols < k_len
        k = tl.load(
            qkv_ptr + (start + cols)[None, :] * qkv_row_stride + k_col + offs_d[:, None],
            mask=col_mask[None, :] & d_mask[:, None],
            other=0.0,
        )  # (BLOCK_D, BLOCK_N): K^T
        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        scores = tl.where(col_mask[None, :], scores, float("-inf"))  # padding keys get no weight
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.math.exp2(scores - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            qkv_ptr + (start + cols)[:, None] * qkv_row_stride + v_col + offs_d[None, :],
            mask=col_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    # A sequence without real keys leaves l_i = 0: write zeros rather than NaN.
    acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + (start + offs_m)[:, None] * out_row_stride + head * HEAD_DIM + offs_d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < q_len) & d_mask[None, :],
    )


def attention(
    qkv: torch.Tensor,
    num_heads: int,
    seq_start: torch.Tensor,
    q_len: torch.Tensor,
    k_len: torch.Tensor,
    max_q_len: int,
) -> torch.Tensor:
    """Bidirectional softmax attention per sequence and head.

    Args:
        qkv: (rows, 3H) output of the fused QKV projection, rows contiguous.
        num_heads: heads; H must be a multiple of it.
        seq_start, q_len, k_len: (B,) int32 (see the module docstring).
        max_q_len: max(q_len), from the host (it sizes the grid).

    Returns:
        (rows, H) attention output in ``qkv``'s dtype; rows outside every sequence's query
        range are left uninitialised.
    """
    if qkv.dim() != 2 or qkv.stride(1) != 1 or qkv.shape[1] % 3:
        raise ValueError(f"qkv must be (rows, 3H) with contiguous rows, got {tuple(qkv.shape)}")
    rows, hidden = qkv.shape[0], qkv.shape[1] // 3
    if hidden % num_heads:
        raise ValueError(f"hidden size {hidden} is not a multiple of num_heads={num_heads}")
    head_dim = hidden // num_heads
    batch = seq_start.shape[0]
    for name, vec in (("seq_start", seq_start), ("q_len", q_len), ("k_len", k_len)):
        if vec.shape != (batch,) or vec.dtype != torch.int32 or vec.device != qkv.device:
            raise ValueError(f"{name} must be an int32 ({batch},) tensor on {qkv.device}")
    out = torch.empty((rows, hidden), dtype=qkv.dtype, device=qkv.device)
    if batch == 0 or max_q_len == 0:
        return out
    block_d = max(triton.next_power_of_2(head_dim), 16)
    precision = dot_precision(qkv.dtype)
    if interpreting():
        block_m, block_n, warps, stages = 16, 16, 4, 1
    elif qkv.dtype == torch.float32 and precision == "ieee":
        # CUDA-core FMA dots keep Q, K, V and P tiles in registers: small tiles, or they spill
        # (128 x 64 spilled 17-28 KB per thread in the compile gate)
        block_m, block_n, warps, stages = 32, 32, 4, 2
    elif qkv.dtype == torch.float32:
        # TF32: fp32 tiles take twice the registers of bf16 ones (128 x 64 spilled on sm_80)
        block_m, block_n, warps, stages = 64, 64, 4, 2
    elif block_d <= 64:
        block_m, block_n, warps, stages = 128, 64, 4, 3
    else:
        block_m, block_n, warps, stages = 64, 64, 4, 2
    grid = (batch * num_heads, triton.cdiv(max_q_len, block_m))
    if grid[0] > _MAX_GRID_X:
        raise ValueError(
            f"{batch} sequences x {num_heads} heads = {grid[0]} programs exceed the grid limit "
            f"{_MAX_GRID_X}: split the batch")
    if grid[1] > _MAX_GRID_YZ:
        raise ValueError(
            f"max_q_len={max_q_len} needs {grid[1]} query blocks of {block_m}, over the grid "
            f"limit {_MAX_GRID_YZ}")
    _attention_kernel[grid](
        qkv,
        out,
        seq_start,
        q_len,
        k_len,
        qkv.stride(0),
        out.stride(0),
        hidden,
        num_heads,
        (1.0 / math.sqrt(head_dim)) * 1.4426950408889634,  # softmax scale times log2(e)
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_PRECISION=precision,
        num_warps=warps,
        num_stages=stages,
    )
    return out
