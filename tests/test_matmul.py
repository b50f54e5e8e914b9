"""The GEMM-with-epilogue kernel against torch (interpreter on CPU, full size on GPU)."""
import pytest
import torch
import torch.nn.functional as F

from nertron.kernels.matmul import linear

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
