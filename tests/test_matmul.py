"""The GEMM-with-epilogue kernel against torch (interpreter on CPU, full size on GPU)."""
import pytest
import torch
import torch.nn.functional as F

from nertron.kernels.matmul import linear
from support import FAR, TorchAllocatingInto, far_view

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ACT = {None: lambda x: x, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


def reference(x, w, bias=None, activation=None, residual=None):
    y = x.double() @ w.double().T  # shape: (M, N), fp64 oracle
    if bias is not None:
        y = y + bias.double()
    y = ACT[activation](y)
    return y + residual.double() if residual is not None else y


def _inputs(m, n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)  # noqa: E731
    return make(m, k), make(n, k) / k**0.5, make(n), make(m, n)


@pytest.mark.parametrize("m, n, k", [(1, 3, 5), (7, 17, 64), (33, 96, 70), (40, 192, 64)])
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("with_bias, with_residual", [(True, True), (False, False)])
def test_fp32_matches_reference(m, n, k, activation, with_bias, with_residual):
    x, w, b, r = _inputs(m, n, k, torch.float32, seed=m + n + k)
    out = linear(x, w, b if with_bias else None, activation, r if with_residual else None)
    expected = reference(x, w, b if with_bias else None, activation, r if with_residual else None)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 1e-3), pytest.param(torch.bfloat16, 1e-2, marks=pytest.mark.gpu)])
def test_half_precision_error_within_torch(dtype, atol):
    """Our error against the fp64 oracle is at most twice torch's own error in that dtype, plus atol."""
    x, w, b, r = _inputs(33, 96, 64, dtype)
    expected = reference(x, w, b, "gelu", r)
    ours = (linear(x, w, b, "gelu", r).double() - expected).abs().max().item()
    theirs = ((F.gelu(x @ w.T + b) + r).double() - expected).abs().max().item()
    assert ours <= 2 * theirs + atol, (ours, theirs)


def test_non_contiguous_inputs():
    x, w, b, r = _inputs(16, 48, 32, torch.float32)
    xt = x.T.contiguous().T  # column-major view of the same values
    torch.testing.assert_close(linear(xt, w, b), linear(x, w, b), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(linear(x, w.T.contiguous().T, b, residual=r.T.contiguous().T), linear(x, w, b, residual=r))


def test_empty_rows():
    x, w, b, _ = _inputs(0, 8, 16, torch.float32)
    assert linear(x, w, b).shape == (0, 8)


@pytest.mark.parametrize(
    "call, error, text",
    [
        (lambda x, w: linear(x[0], w), ValueError, "expects x (M, K) and weight (N, K)"),
        (lambda x, w: linear(x, w[:, :5]), ValueError, "x has 16 features but weight expects 5"),
        (lambda x, w: linear(x, w.half()), TypeError, "must share a float dtype"),
        (lambda x, w: linear(x.long(), w.long()), TypeError, "must share a float dtype"),
        (lambda x, w: linear(x, w, activation="swish"), ValueError, "activation must be one of"),
        (lambda x, w: linear(x, w, bias=torch.zeros(3, device=DEVICE)), ValueError, "bias must be a contiguous (8,)"),
        (lambda x, w: linear(x, w, residual=torch.zeros(4, 4, device=DEVICE)), ValueError, "residual must be (4, 8)"),
    ],
)
def test_bad_input(call, error, text):
    x, w, _, _ = _inputs(4, 8, 16, torch.float32)
    with pytest.raises(error) as info:
        call(x, w)
    assert text in str(info.value)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m, n, k", [(4096, 2304, 768), (4096, 3072, 768), (4096, 768, 3072), (1000, 1024, 4096)])
def test_full_size_bert_shapes(m, n, k, dtype):
    x, w, b, r = _inputs(m, n, k, dtype)
    expected = reference(x, w, b, "gelu", r)
    ours = (linear(x, w, b, "gelu", r).double() - expected).abs().max().item()
    theirs = ((F.gelu(x @ w.T + b) + r).double() - expected).abs().max().item()
    assert ours <= 2 * theirs + 1e-2


# Element offsets past 2^31 without gigabytes of memory: see tests/support.py.
@pytest.mark.parametrize("far", ["x", "x_k", "weight", "residual", "out"])
def test_offsets_past_int32(far, monkeypatch):
    """Each operand in turn with element offsets past 2^31, against torch on the same values.

    ``x_k`` is a column-major x whose 33 columns are 2^26 elements apart: column 32's offset
    (and one BLOCK_K step of 32 columns) is 2^31."""
    from nertron.kernels import matmul

    m, n, k = (4, 3, 40) if far == "weight" else (3, 20, 33 if far == "x_k" else 40)
    x, w, b, r = _inputs(m, n, k, torch.float16, seed=1)
    expected = reference(x, w, b, "gelu", r)
    if far == "x":
        x = far_view(x, (FAR, 1))
    elif far == "x_k":
        x = far_view(x, (1, 2**26))
    elif far == "weight":
        w = far_view(w, (FAR, 1))
    elif far == "residual":
        r = far_view(r, (FAR, 1))
    else:
        monkeypatch.setattr(matmul, "torch", TorchAllocatingInto(far_view(torch.zeros_like(r), (FAR, 1))))
    out = linear(x, w, b, "gelu", r)
    if far == "out":
        assert out.stride(0) == FAR  # the launcher wrote into the far view
    torch.testing.assert_close(out.double(), expected, atol=2e-3, rtol=2e-3)


# --------------------------------------------------------------------------------------
# fp32 dot precision follows torch's TF32 setting
# --------------------------------------------------------------------------------------
@pytest.fixture
def restore_tf32():
    """Puts torch's fp32 matmul setting back as it was (through the API that reads it back
    without complaint whichever API the test used)."""
    matmul_flags = torch.backends.cuda.matmul
    previous = matmul_flags.fp32_precision
    yield
    matmul_flags.fp32_precision = previous


def _set_tf32(how):
    if how == "set_float32_matmul_precision":
        torch.set_float32_matmul_precision("high")
    elif how == "allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.backends.cuda.matmul.fp32_precision = "tf32"


class _KernelSpy:
    """Replaces a ``@triton.jit`` kernel: records the launch's keyword arguments."""

    def __init__(self):
        self.kwargs = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kwargs.append(kwargs)


@pytest.mark.parametrize("how", ["set_float32_matmul_precision", "allow_tf32", "fp32_precision"])
def test_fp32_dot_precision_follows_torch(how, restore_tf32, monkeypatch):
    from nertron.kernels import matmul

    spy = _KernelSpy()
    monkeypatch.setattr(matmul, "_linear_small_m", spy)
    monkeypatch.setattr(matmul, "_linear_large_m", spy)
    x, w, _, _ = _inputs(4, 8, 16, torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default: exact fp32
    assert matmul.dot_precision(torch.float32) == "ieee"
    linear(x, w)
    _set_tf32(how)
    assert matmul.dot_precision(torch.float32) == "tf32"
    linear(x, w)
    torch.set_float32_matmul_precision("highest")
    assert matmul.dot_precision(torch.float32) == "ieee"
    linear(x, w)
    assert [launch["DOT_PRECISION"] for launch in spy.kwargs] == ["ieee", "tf32", "ieee"]
    for dtype in (torch.float16, torch.bfloat16):  # tensor cores whatever the setting
        assert matmul.dot_precision(dtype) == "tf32"


@pytest.mark.gpu
def test_fp32_with_tf32_error_within_torch(restore_tf32):
    """With TF32 allowed, our fp32 GEMM's error is of the order of torch's own (TF32) error."""
    torch.set_float32_matmul_precision("high")
    x, w, b, r = _inputs(512, 768, 768, torch.float32)
    expected = reference(x, w, b, "gelu", r)
    ours = (linear(x, w, b, "gelu", r).double() - expected).abs().max().item()
    theirs = ((F.gelu(x @ w.T + b) + r).double() - expected).abs().max().item()
    assert theirs > 1e-5  # torch did use TF32
    assert ours <= 2 * theirs + 1e-3, (ours, theirs)
