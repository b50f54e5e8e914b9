"""Variable-length flash attention against torch's scaled_dot_product_attention per sequence."""
import pytest
import torch
import torch.nn.functional as F

from nertron.kernels.attention import attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(rows, heads, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3 * heads * head_dim, generator=g).to(DEVICE, dtype)


def reference(qkv, heads, start, q_len, k_len):
    """SDPA on one sequence: queries rows start..start+q_len, keys/values start..start+k_len."""
    hidden = qkv.shape[1] // 3
    d = hidden // heads
    q = qkv[start : start + q_len, :hidden].view(q_len, heads, d).transpose(0, 1).double()
    k = qkv[start : start + k_len, hidden : 2 * hidden].view(k_len, heads, d).transpose(0, 1).double()
    v = qkv[start : start + k_len, 2 * hidden :].view(k_len, heads, d).transpose(0, 1).double()
    return F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(q_len, hidden)


def _vec(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("heads, head_dim", [(4, 16), (2, 32), (1, 20)])
@pytest.mark.parametrize("lengths", [[1], [7, 33, 1], [40, 3, 17, 16]])
def test_packed(heads, head_dim, lengths):
    qkv = _qkv(sum(lengths), heads, head_dim, torch.float32, seed=len(lengths))
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    out = attention(qkv, heads, _vec(starts), _vec(lengths), _vec(lengths), max(lengths))
    for start, length in zip(starts, lengths):
        expected = reference(qkv, heads, start, length, length)
        torch.testing.assert_close(out[start : start + length].double(), expected, atol=1e-5, rtol=1e-5)


def test_padded_layout_and_empty_sequence():
    heads, d, T = 2, 16, 19
    lengths = [19, 5, 0]
    qkv = _qkv(3 * T, heads, d, torch.float32, seed=3)
    starts = [0, T, 2 * T]
    out = attention(qkv, heads, _vec(starts), _vec([T] * 3), _vec(lengths), T)
    for start, length in zip(starts[:2], lengths[:2]):
        # Padding queries attend to the real keys too, as in the reference BERT.
        torch.testing.assert_close(out[start : start + T].double(), reference(qkv, heads, start, T, length), atol=1e-5, rtol=1e-5)
    assert torch.equal(out[2 * T :], torch.zeros_like(out[2 * T :]))  # no real key: zeros, not NaN


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-3), pytest.param(torch.bfloat16, 2e-2, marks=pytest.mark.gpu)])
def test_half_precision(dtype, atol):
    heads, d, lengths = 2, 32, [33, 8]
    qkv = _qkv(sum(lengths), heads, d, dtype, seed=5)
    out = attention(qkv, heads, _vec([0, 33]), _vec(lengths), _vec(lengths), 33)
    for start, length in zip([0, 33], lengths):
        expected = reference(qkv, heads, start, length, length)
        hidden = heads * d
        q, k, v = (qkv[start : start + length, i * hidden : (i + 1) * hidden].view(length, heads, d).transpose(0, 1) for i in range(3))
        theirs = (F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(length, hidden).double() - expected).abs().max()
        ours = (out[start : start + length].double() - expected).abs().max()
        assert ours <= 2 * theirs + atol


def test_bad_input():
    qkv = _qkv(4, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="not a multiple of num_heads=3"):
        attention(qkv, 3, _vec([0]), _vec([4]), _vec([4]), 4)
    with pytest.raises(ValueError, match="must be \\(rows, 3H\\)"):
        attention(qkv[:, :95], 2, _vec([0]), _vec([4]), _vec([4]), 4)
    with pytest.raises(ValueError, match="q_len must be an int32"):
        attention(qkv, 2, _vec([0]), torch.tensor([4], device=DEVICE), _vec([4]), 4)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_full_size(head_dim, dtype):
    heads = 768 // head_dim
    lengths = [512, 1, 128, 77, 300]
    qkv = _qkv(sum(lengths), heads, head_dim, dtype, seed=11)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    out = attention(qkv, heads, _vec(starts), _vec(lengths), _vec(lengths), 512)
    for start, length in zip(starts, lengths):
        torch.testing.assert_close(out[start : start + length].double(), reference(qkv, heads, start, length, length), atol=2e-2, rtol=2e-2)
