"""LayerNorm and embeddings+LayerNorm kernels, with the layer-mix accumulator."""
import pytest
import torch
import torch.nn.functional as F

from nertron.kernels.layernorm import embeddings_layernorm, layernorm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


@pytest.mark.parametrize("rows", [1, 7, 33])
@pytest.mark.parametrize("hidden", [3, 17, 64, 100])
def test_layernorm_fp32(rows, hidden):
    x, w, b = _randn(rows, hidden, seed=1) * 3 + 1, _randn(hidden, seed=2), _randn(hidden, seed=3)
    torch.testing.assert_close(layernorm(x, w, b, 1e-12), F.layer_norm(x, (hidden,), w, b, 1e-12), atol=2e-6, rtol=2e-6)


def test_layer_mix_accumulator():
    x, w, b = _randn(9, 64, seed=4), _randn(64, seed=5), _randn(64, seed=6)
    coef = torch.tensor([0.25, -1.5, 2.0], device=DEVICE)
    mix = torch.full((9, 64), float("nan"), device=DEVICE)  # MIX_INIT must overwrite, not add
    y1 = layernorm(x, w, b, 1e-5, mix, coef, mix_index=1, mix_init=True)
    torch.testing.assert_close(mix, -1.5 * y1)
    y2 = layernorm(x * 2 - 1, w, b, 1e-5, mix, coef, mix_index=2)
    torch.testing.assert_close(mix, -1.5 * y1 + 2.0 * y2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-3), pytest.param(torch.bfloat16, 2e-2, marks=pytest.mark.gpu)])
def test_layernorm_half_precision(dtype, atol):
    x, w, b = _randn(33, 64, seed=7, dtype=dtype) * 4, _randn(64, seed=8, dtype=dtype), _randn(64, seed=9, dtype=dtype)
    expected = F.layer_norm(x.double(), (64,), w.double(), b.double(), 1e-12)
    ours = (layernorm(x, w, b, 1e-12).double() - expected).abs().max().item()
    theirs = (F.layer_norm(x, (64,), w, b, 1e-12).double() - expected).abs().max().item()
    assert ours <= 2 * theirs + atol


@pytest.mark.parametrize("hidden", [17, 64])
def test_embeddings_layernorm(hidden):
    vocab, positions, types, rows = 50, 40, 2, 23
    word, pos, typ = _randn(vocab, hidden, seed=1), _randn(positions, hidden, seed=2), _randn(types, hidden, seed=3)
    w, b = _randn(hidden, seed=4), _randn(hidden, seed=5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows,), generator=g).to(DEVICE)
    position_ids = torch.randint(0, positions, (rows,), generator=g).to(DEVICE)
    type_ids = torch.randint(0, types, (rows,), generator=g).to(DEVICE)
    mix = torch.empty(rows, hidden, device=DEVICE)
    coef = torch.tensor([0.5, 1.0], device=DEVICE)
    out = embeddings_layernorm(ids, position_ids, type_ids, word, pos, typ, w, b, 1e-12, mix, coef)
    expected = F.layer_norm(word[ids] + typ[type_ids] + pos[position_ids], (hidden,), w, b, 1e-12)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(mix, 0.5 * out)


def test_bad_input():
    x, w = _randn(4, 8), _randn(8)
    with pytest.raises(ValueError, match="weight and bias must be"):
        layernorm(x, w[:4], w, 1e-5)
    with pytest.raises(ValueError, match="contiguous fp32"):
        layernorm(x, w, w, 1e-5, torch.zeros(4, 8, dtype=torch.float16, device=DEVICE), torch.ones(1, device=DEVICE))
    with pytest.raises(ValueError, match="go together"):
        layernorm(x, w, w, 1e-5, torch.zeros(4, 8, device=DEVICE))
    ids = torch.zeros(3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="must all be"):
        embeddings_layernorm(ids, ids[:2], ids, x, x, x, w, w, 1e-5)
