"""GEMM with fused epilogues: ``y = act(x @ W^T + b) (+ residual)``.

Every dense layer of BERT is a GEMM followed by elementwise work: the bias, the FFN's GELU,
the residual add before each LayerNorm. Done separately, each of those re-reads and re-writes
the (tokens, features) activation through HBM; here they run in the GEMM's epilogue while the
output tile is still in registers, so the activation is written once.

``W`` is an ``nn.Linear`` weight, (N, K), read in place (its transpose is just strides).
fp16/bf16 inputs accumulate in fp32 on the tensor cores. fp32 inputs follow PyTorch's own
fp32 matmul setting (:func:`dot_precision`, shared with the attention kernel): by default
(``torch.backends.cuda.matmul.allow_tf32`` False) the dot products are IEEE fp32, so the
results match PyTorch to rounding, but on a GPU that is the CUDA-core FMA path, without tensor
cores: several times slower than TF32 (on H100/H200, 67 vs 495 dense TFLOP/s peak). With
``torch.set_float32_matmul_precision("high")`` (or ``allow_tf32 = True``) they use TF32
tensor cores, as ``torch.matmul`` then does.

Tiles are autotuned once per (N, K) and dtype among two or three candidates of the call's
kind of dot product (fp16/bf16 tensor cores, TF32, IEEE fp32) and size class of M (up to
``SMALL_M`` rows, or more); in Triton's interpreter a single small config is pinned.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from nertron.kernels.runtime import interpreting

ACTIVATIONS = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot`` for ``dtype`` inputs, following PyTorch's fp32 setting.

    fp32: ``"tf32"`` when PyTorch allows TF32 for fp32 matmuls
    (``torch.set_float32_matmul_precision("high"/"medium")``,
    ``torch.backends.cuda.matmul.allow_tf32 = True``, or ``fp32_precision = "tf32"``), else
    ``"ieee"`` (PyTorch's default: exact fp32 products, the slow FMA path on a GPU). fp16/bf16
    run on the tensor cores whatever this says; ``"tf32"`` is returned for them.
    """
    if dtype != torch.float32:
        return "tf32"
    matmul = torch.backends.cuda.matmul
    try:
        # torch >= 2.9: set by either API, and readable after either (reading the legacy
        # allow_tf32 raises once the new API has been used)
        tf32 = matmul.fp32_precision == "tf32"
    except AttributeError:
        tf32 = bool(matmul.allow_tf32)
    return "tf32" if tf32 else "ieee"


def _config(m: int, n: int, k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=warps, num_stages=stages)


# Candidate tiles per kind of dot product and size class of M (rows = tokens of the batch).
# Kept few on purpose: every config is compiled on first use (seconds each, per epilogue
# variant and dtype), and each was checked by the ahead-of-time compile gate
# (bench/gpu_compile.py, bench/results/gpu_compile.md) to compile without register spills and
# to fit the shared memory of sm_80 and sm_90. Dropped after the gate: 128x256 tiles (spill
# with the GELU and residual epilogues) and 128x128x32 with 4 warps (spills with GELU).
_TILES = {
    # fp16/bf16 on tensor cores (wgmma on Hopper needs 4 or 8 warps and 64-row warpgroups)
    ("tensor", "large"): [_config(128, 128, 64, 8, 4), _config(128, 64, 64, 4, 4), _config(64, 128, 64, 4, 4)],
    ("tensor", "small"): [_config(64, 64, 64, 4, 4), _config(32, 64, 64, 4, 4)],
    # fp32 with TF32 tensor cores: operands take twice the shared memory, so a shorter K step
    ("tf32", "large"): [_config(128, 128, 32, 8, 3), _config(128, 64, 32, 4, 3), _config(64, 128, 32, 4, 3)],
    ("tf32", "small"): [_config(64, 64, 32, 4, 3), _config(32, 64, 32, 4, 3)],
    # fp32 IEEE (CUDA-core FMA): the accumulator and both operand tiles live in registers
    ("ieee", "large"): [_config(64, 64, 16, 8, 2), _config(32, 64, 16, 4, 2)],
    ("ieee", "small"): [_config(32, 64, 16, 4, 2), _config(32, 32, 16, 4, 2)],
}
# Row counts up to this take the small tiles: a single sentence or a few, where big tiles
# would leave most of the GPU idle.
SMALL_M = 256


def _dot_kind(dtype: torch.dtype, precision: str) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "tensor"
    return "tf32" if precision == "tf32" else "ieee"


def _configs(size: str) -> list:
    if interpreting():
        # The interpreter fails with two or more autotune configs; one small tile keeps it quick.
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4)]
    seen = []
    for (_, klass), tiles in _TILES.items():
        seen += [c for c in tiles if klass == size and c not in seen]
    return seen


def _prune(size: str):
    def prune(configs, named_args, **kwargs):
        if len(configs) == 1:
            return configs
        tiles = _TILES[(_dot_kind(named_args["x_ptr"].dtype, kwargs["DOT_PRECISION"]), size)]
        return [c for c in configs if c in tiles]
    return prune


@triton.jit
def _gelu_erf(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_tanh(x):
    # tanh(u) = 2 sigmoid(2u) - 1, written with exp for portability across Triton versions.
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x * (1.0 - 1.0 / (1.0 + tl.exp(2.0 * u)))


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
    # Element offsets are index * stride products, which int32 wraps past 2^31: x, residual
    # and out past ~700k tokens at width 3072, W past N * K = 2^31, a column-major x's k * M
    # past K * M = 2^31 (and its step BLOCK_K * M past M = 2^31 / BLOCK_K). So the offsets are
    # formed from int64 copies of the indices, once per program, outside the K loop. The masks
    # and the bias offsets keep the cheap int32 indices: an index (no stride) is below M, N or
    # K, all < 2^31.
    rm = offs_m.to(tl.int64)
    rn = offs_n.to(tl.int64)
    rk = offs_k.to(tl.int64)
    x_ptrs = x_ptr + rm[:, None] * x_m_stride + rk[None, :] * x_k_stride
    w_ptrs = w_ptr + rn[None, :] * w_n_stride + rk[:, None] * w_k_stride  # (BLOCK_K, BLOCK_N) view of W^T
    # The per-step advance in int64 too (tl.cast also takes a stride specialised to constexpr 1).
    x_k_step = tl.cast(x_k_stride, tl.int64) * BLOCK_K
    w_k_step = tl.cast(w_k_stride, tl.int64) * BLOCK_K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # fp32 accumulation whatever the input dtype
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        w = tl.load(w_ptrs, mask=(offs_n[None, :] < N) & (offs_k[:, None] < k_left), other=0.0)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
        x_ptrs += x_k_step
        w_ptrs += w_k_step

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
            residual_ptr + rm[:, None] * residual_m_stride + rn[None, :] * residual_n_stride,
            mask=out_mask,
            other=0.0,
        )
        acc += residual.to(tl.float32)
    out_ptrs = out_ptr + rm[:, None] * out_m_stride + rn[None, :] * out_n_stride
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)



# One autotuner per size class of M, both over the same kernel (whose compiled variants they
# share). Each tunes once per (N, K) and dtypes -- the autotuner adds the tensors' dtypes to
# the key -- among the few tiles of its class and kind of dot product (``_prune``): the
# token count M changes with every batch, and re-tuning for it would cost more than it gains.
_linear_large_m = triton.autotune(configs=_configs("large"), key=["N", "K"],
                                  prune_configs_by={"early_config_prune": _prune("large")})(_linear_kernel)
_linear_small_m = triton.autotune(configs=_configs("small"), key=["N", "K"],
                                  prune_configs_by={"early_config_prune": _prune("small")})(_linear_kernel)


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
    kernel = _linear_small_m if M <= SMALL_M else _linear_large_m
    kernel[grid](
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
        HAS_BIAS=bias is not None,
        ACTIVATION=ACTIVATIONS[activation],
        HAS_RESIDUAL=residual is not None,
        DOT_PRECISION=dot_precision(x.dtype),
    )
    return out
