"""GEMM with fused epilogues: ``y = act(x @ W^T + b) (+ residual)``.

Every dense layer of BERT is a GEMM followed by elementwise work: the bias, the FFN's GELU,
the residual add before each LayerNorm. Done separately, each of those re-reads and re-writes
the (tokens, features) activation through HBM; here they run in the GEMM's epilogue while the
output tile is still in registers, so the activation is written once.

``W`` is an ``nn.Linear`` weight, (N, K), read in place (its transpose is just strides).
fp16/bf16 inputs accumulate in fp32 on the tensor cores; fp32 inputs use IEEE fp32 dot
products (no TF32) so the fp32 path matches PyTorch to rounding. On Hopper the configs are
autotuned per (N, K) and size class of M; in Triton's interpreter a single small config is pinned.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

ACTIVATIONS = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _configs():
    if _interpreting():
        # The interpreter fails with two or more autotune configs; one small tile keeps it quick.
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=8),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=4, num_warps=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=5, num_warps=4),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=5, num_warps=2),
    ]


@triton.jit
def _gelu_erf(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_tanh(x):
    # tanh(u) = 2 sigmoid(2u) - 1, written with exp for portability across Triton versions.
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x * (1.0 - 1.0 / (1.0 + tl.exp(2.0 * u)))


# Tuned per (N, K) and power-of-two bucket of M: token counts vary with every batch, and
# re-tuning for each exact M would cost more than it gains.
@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K"])
@triton.jit
def _linear_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    residual_ptr,
    out_ptr,
    M,
    N,
    K,
    x_m_stride,
    x_k_stride,
    w_n_stride,
    w_k_stride,
    residual_m_stride,
    residual_n_stride,
    out_m_stride,
    out_n_stride,
    M_BUCKET,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped launch order: GROUP_M row-tiles share each column-tile of W while it is in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_pid_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_pid_n)) % group_size
    pid_n = (pid % (GROUP_M * num_pid_n)) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m[:, None] * x_m_stride + offs_k[None, :] * x_k_stride
    w_ptrs = w_ptr + offs_n[None, :] * w_n_stride + offs_k[:, None] * w_k_stride  # (BLOCK_K, BLOCK_N) view of W^T

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # fp32 accumulation whatever the input dtype
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        w = tl.load(w_ptrs, mask=(offs_n[None, :] < N) & (offs_k[:, None] < k_left), other=0.0)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * x_k_stride
        w_ptrs += BLOCK_K * w_k_stride

    # Epilogue, in fp32 on the tile still in registers.
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc += bias[None, :]
    if ACTIVATION == 1:
        acc = _gelu_erf(acc)
    elif ACTIVATION == 2:
        acc = _gelu_tanh(acc)
    elif ACTIVATION == 3:
        acc = tl.maximum(acc, 0.0)
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if HAS_RESIDUAL:
        residual = tl.load(
            residual_ptr + offs_m[:, None] * residual_m_stride + offs_n[None, :] * residual_n_stride,
            mask=out_mask,
            other=0.0,
        )
        acc += residual.to(tl.float32)
    out_ptrs = out_ptr + offs_m[:, None] * out_m_stride + offs_n[None, :] * out_n_stride
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(x @ weight.T + bias) + residual`` in one kernel.

    Args:
        x: (M, K) activations, fp32/fp16/bf16.
        weight: (N, K) ``nn.Linear`` weight, same dtype as ``x``.
        bias: optional (N,).
        activation: None, ``'gelu'`` (exact erf), ``'gelu_tanh'`` or ``'relu'``.
        residual: optional (M, N), added after the activation.

    Returns:
        (M, N) tensor in ``x``'s dtype.
    """
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"linear expects x (M, K) and weight (N, K), got {tuple(x.shape)} and {tuple(weight.shape)}")
    (M, K), (N, K_w) = x.shape, weight.shape
    if K != K_w:
        raise ValueError(f"x has {K} features but weight expects {K_w}")
    if x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x and weight must share a float dtype (fp32/fp16/bf16), got {x.dtype} and {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but weight on {weight.device}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if bias is not None and (bias.shape != (N,) or not bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous ({N},) tensor, got {tuple(bias.shape)}")
    if residual is not None and residual.shape != (M, N):
        raise ValueError(f"residual must be ({M}, {N}), got {tuple(residual.shape)}")
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    dummy = out  # never read: the HAS_* flags compile the loads out
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _linear_kernel[grid](
        x,
        weight,
        bias if bias is not None else dummy,
        residual if residual is not None else dummy,
        out,
        M,
        N,
        K,
        x.stride(0),
        x.stride(1),
        weight.stride(0),
        weight.stride(1),
        residual.stride(0) if residual is not None else 0,
        residual.stride(1) if residual is not None else 0,
        out.stride(0),
        out.stride(1),
        min(triton.next_power_of_2(M), 1 << 16),
        HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATIONS[activation],
        HAS_RESIDUAL=residual is not None,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
    )
    return out
