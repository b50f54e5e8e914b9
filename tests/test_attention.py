"""Variable-length flash attention against torch's scaled_dot_product_attention per sequence."""
import pytest
import torch
import torch.nn.functional as F

from nertron.kernels.attention import attention
from support import FAR, TorchAllocatingInto, far_rows

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


def _batched_reference(qkv, heads, starts, lengths):
    """SDPA over all sequences at once, padded to the longest with a key-padding mask.

    Returns (B, T, H) fp64 and the (B, T) mask of real query rows."""
    hidden = qkv.shape[1] // 3
    d = hidden // heads
    starts, lengths = torch.as_tensor(starts, device=qkv.device), torch.as_tensor(lengths, device=qkv.device)
    T = int(lengths.max())
    valid = torch.arange(T, device=qkv.device)[None, :] < lengths[:, None]  # shape: (B, T)
    rows = torch.where(valid, starts[:, None] + torch.arange(T, device=qkv.device)[None, :], 0)
    q, k, v = (qkv[rows, i * hidden : (i + 1) * hidden].double().view(len(starts), T, heads, d).transpose(1, 2) for i in range(3))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
    return out.transpose(1, 2).reshape(len(starts), T, hidden), valid, rows


def test_many_short_sequences():
    """A batch of many 1-3 token sequences: sequences x heads on grid axis 0."""
    heads, d = 2, 16
    lengths = torch.randint(1, 4, (64,), generator=torch.Generator().manual_seed(2)).tolist()
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    qkv = _qkv(sum(lengths), heads, d, torch.float32, seed=8)
    out = attention(qkv, heads, _vec(starts), _vec(lengths), _vec(lengths), max(lengths))
    expected, valid, rows = _batched_reference(qkv, heads, starts, lengths)
    torch.testing.assert_close(out[rows[valid]].double(), expected[valid], atol=1e-5, rtol=1e-5)


def test_grid_limits():
    """The launcher refuses a grid CUDA cannot launch, before launching anything."""
    qkv = _qkv(2, 4, 1, torch.float32)  # hidden 4, heads of dim 1
    with pytest.raises(ValueError, match="query blocks .* over the grid limit 65535"):
        attention(qkv, 4, _vec([0]), _vec([2]), _vec([2]), 2**31 - 1)
    heads, batch = 2**16, 2**15 + 1  # 2^31 + 2^16 programs on axis 0
    qkv = _qkv(1, heads, 1, torch.float32)
    ones = torch.ones(batch, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="sequences x 65536 heads = 2147549184 programs exceed the grid limit"):
        attention(qkv, heads, ones * 0, ones, ones, 1)


@pytest.mark.parametrize("far", ["qkv", "out"])
def test_row_offsets_past_int32(far, monkeypatch):
    """Rows FAR = 2^30 + 64 elements apart: row 2's offset passes 2^31. A view of a big
    torch.empty buffer (address space, not memory: only the 3 rows are touched), starting
    BASE = 2^31 elements in so that a wrapped offset would still land inside it."""
    from nertron.kernels import attention as module

    heads, d, rows = 2, 16, 3
    values = _qkv(rows, heads, d, torch.float16, seed=9)
    expected = reference(values, heads, 0, rows, rows)
    qkv = values
    if far == "qkv":
        qkv = far_rows(values)
    else:
        monkeypatch.setattr(module, "torch", TorchAllocatingInto(far_rows(torch.zeros(rows, heads * d, dtype=torch.float16))))
    out = attention(qkv, heads, _vec([0]), _vec([rows]), _vec([rows]), rows)
    if far == "out":
        assert out.stride(0) == FAR
    torch.testing.assert_close(out.double(), expected, atol=2e-3, rtol=2e-3)


@pytest.fixture
def restore_tf32():
    previous = torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision = previous


def test_fp32_dot_precision_follows_torch(restore_tf32, monkeypatch):
    """fp32: IEEE dot products by default, TF32 once torch allows TF32 for fp32 matmuls."""
    from nertron.kernels import attention as module

    launches = []
    spy = type("Spy", (), {"__getitem__": lambda self, grid: lambda *a, **kw: launches.append(kw)})()
    monkeypatch.setattr(module, "_attention_kernel", spy)
    qkv = _qkv(4, 2, 16, torch.float32)
    call = lambda: attention(qkv, 2, _vec([0]), _vec([4]), _vec([4]), 4)  # noqa: E731
    torch.backends.cuda.matmul.allow_tf32 = False
    call()
    torch.set_float32_matmul_precision("high")
    call()
    torch.set_float32_matmul_precision("highest")
    call()
    assert [kw["DOT_PRECISION"] for kw in launches] == ["ieee", "tf32", "ieee"]


@pytest.mark.gpu
def test_more_sequences_x_heads_than_grid_axis_1_allows():
    """8192 sequences x 12 heads = 98304 programs: over the 65535 of CUDA's grid axes 1 and 2."""
    heads, d = 12, 64
    lengths = torch.randint(1, 9, (8192,), generator=torch.Generator().manual_seed(3))
    starts = torch.cumsum(lengths, 0) - lengths
    qkv = _qkv(int(lengths.sum()), heads, d, torch.float16, seed=12)
    out = attention(qkv, heads, starts.int().to(DEVICE), lengths.int().to(DEVICE), lengths.int().to(DEVICE), 8)
    expected, valid, rows = _batched_reference(qkv, heads, starts.to(DEVICE), lengths.to(DEVICE))
    torch.testing.assert_close(out[rows[valid]].double(), expected[valid], atol=1e-2, rtol=1e-2)
