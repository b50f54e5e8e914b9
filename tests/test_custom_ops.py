"""torch.library.opcheck for every nertron custom op (nertron/bindings/ops.py,
nertron/bindings/lstm.py) on CPU: schema, fake (meta) implementation against the real one,
autograd registration and AOT dispatch with dynamic shapes. The Triton ops run in Triton's
interpreter (TRITON_INTERPRET=1, tests/conftest.py), on small awkward shapes (K not a power
of two, length-1 and full-length rows)."""
import pytest
import torch
from torch.library import opcheck

from nertron.bindings import lstm as _lstm  # noqa: F401  (registers nertron::bilstm_layer*)
from nertron.bindings.ops import OPS

# every registered op has a case below (the test_every_op_is_checked guard)
CASES = {}


def case(name, requires_grad=False):
    def register(make):
        CASES.setdefault(name, []).append((make, requires_grad))
        return make
    return register


def _crf_inputs(dtype=torch.float32, B=3, T=5, K=7, grad=False):
    g = torch.Generator().manual_seed(0)
    em = torch.randn(B, T, K, generator=g, dtype=dtype)
    lengths = torch.tensor([T, 1, 3][:B], dtype=torch.int64)
    start, end = torch.randn(K, generator=g, dtype=dtype), torch.randn(K, generator=g, dtype=dtype)
    trans = torch.randn(K, K, generator=g, dtype=dtype)
    if grad:
        for t in (em, start, end, trans):
            t.requires_grad_()
    return em, lengths, start, end, trans


for _name in ("crf_forward",):
    case(_name, True)(lambda: (*_crf_inputs(grad=True), True))
    case(_name)(lambda: (*_crf_inputs(), False))


@case("crf_backward")
def _():
    em, lengths, start, end, trans = _crf_inputs()
    log_z, alpha = torch.ops.nertron.crf_forward(em, lengths, start, end, trans, True)
    return em, lengths, end, trans, alpha, log_z, torch.randn(3)


case("crf_viterbi")(lambda: (*_crf_inputs(), -1))
case("crf_marginals")(lambda: _crf_inputs())
case("crf_alpha_beta")(lambda: _crf_inputs())
case("crf_forward_ref", True)(lambda: _crf_inputs(grad=True))
case("crf_forward_ref", True)(lambda: _crf_inputs(torch.float64, grad=True))
case("crf_forward_ref")(lambda: _crf_inputs(torch.float16))


@case("crf_backward_ref")
def _():
    em, lengths, start, end, trans = _crf_inputs()
    log_z, alpha = torch.ops.nertron.crf_forward_ref(em, lengths, start, end, trans)
    return em, lengths, start, end, trans, alpha, log_z, torch.randn(3)


def _nll_inputs(dtype=torch.float32, grad=False):
    em, lengths, start, end, trans = _crf_inputs(dtype, grad=grad)
    tags = torch.randint(0, em.shape[2], em.shape[:2], generator=torch.Generator().manual_seed(4))
    return em, tags, lengths, start, end, trans


case("crf_nll_ref", True)(lambda: _nll_inputs(grad=True))
case("crf_nll_ref", True)(lambda: _nll_inputs(torch.float64, grad=True))


@case("crf_nll_backward_ref")
def _():
    em, tags, lengths, start, end, trans = _nll_inputs()
    _, log_z, alpha = torch.ops.nertron.crf_nll_ref(em, tags, lengths, start, end, trans)
    return em, tags, lengths, start, end, trans, alpha, log_z, torch.randn(3)


case("crf_viterbi_ref")(lambda: (*_crf_inputs(), -1))
case("crf_viterbi_ref")(lambda: (*_crf_inputs(torch.float64), 0))
case("crf_alpha_beta_ref")(lambda: _crf_inputs())


def _layers(L=3, shape=(2, 5, 6), grad=False):
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(*shape, generator=g) for _ in range(L)]
    if grad:
        for t in layers:
            t.requires_grad_()
    return layers


def _scalars(L=3, grad=False):
    s = torch.softmax(torch.randn(L), 0)
    gamma = torch.tensor([1.3])
    if grad:
        s.requires_grad_()
        gamma.requires_grad_()
    return s, gamma


case("pooling", True)(lambda: (_layers(grad=True), *_scalars(grad=True), None, False, 0.0, torch.float32))
case("pooling", True)(lambda: (_layers(grad=True), *_scalars(grad=True), torch.tensor([1, 1, 1, 0, 0] * 2),
                               True, 1e-13, torch.float32))
case("pooling")(lambda: (_layers(), *_scalars(), None, False, 0.0, torch.bfloat16))


@case("pooling_backward")
def _():
    layers = _layers()
    s, gamma = _scalars()
    mask = torch.tensor([1, 1, 1, 0, 0] * 2)
    out, mean, rstd, count = torch.ops.nertron.pooling(layers, s, gamma, mask, True, 1e-13, torch.float32)
    return torch.randn_like(out), layers, s, gamma, mean, rstd, count, mask, True, True, True


def _encoder_inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(6, 16, generator=g), torch.randn(24, 16, generator=g), torch.randn(24, generator=g)


case("linear")(lambda: (*_encoder_inputs(), None, None))
case("linear")(lambda: (*_encoder_inputs(), "gelu", torch.randn(6, 24)))


@case("layernorm")
def _():
    x = torch.randn(5, 12)
    return x, torch.rand(12) + 0.5, torch.randn(12), 1e-12, torch.zeros(5, 12), torch.tensor([0.5, 0.25]), 1, False


case("layernorm")(lambda: (torch.randn(5, 12), torch.rand(12) + 0.5, torch.randn(12), 1e-12, None, None, 0, False))


@case("embeddings_layernorm")
def _():
    ids = torch.tensor([1, 4, 2, 0, 3])
    pos = torch.tensor([0, 1, 2, 0, 1])
    types = torch.tensor([0, 0, 1, 0, 1])
    return (ids, pos, types, torch.randn(6, 12), torch.randn(4, 12), torch.randn(2, 12), torch.rand(12) + 0.5,
            torch.randn(12), 1e-12, torch.empty(5, 12), torch.tensor([0.5, 0.25]))


@case("attention")
def _():
    # two sequences of 3 and 2 rows, 2 heads of 8
    qkv = torch.randn(5, 48)
    return (qkv, 2, torch.tensor([0, 3], dtype=torch.int32), torch.tensor([3, 2], dtype=torch.int32),
            torch.tensor([3, 2], dtype=torch.int32), 3)


def _lstm_weights(D=5, H=4, grad=False):
    lstm = torch.nn.LSTM(D, H, 1, batch_first=True, bidirectional=True)
    weights = [w.detach().clone().requires_grad_(grad) for w in lstm._flat_weights]
    return weights


case("bilstm_layer", True)(lambda: (torch.randn(3, 4, 5, requires_grad=True), torch.tensor([4, 1, 2]),
                                    _lstm_weights(grad=True)))


@case("bilstm_layer_backward")
def _():
    return torch.randn(3, 4, 8), torch.randn(3, 4, 5), torch.tensor([4, 1, 2]), _lstm_weights()


ALL_OPS = OPS + ["bilstm_layer", "bilstm_layer_backward"]


def test_every_op_is_checked():
    assert sorted(CASES) == sorted(ALL_OPS)
    for name in ALL_OPS:
        assert hasattr(torch.ops.nertron, name), name


@pytest.mark.parametrize("name, index", [(name, i) for name in sorted(CASES) for i in range(len(CASES[name]))])
def test_opcheck(name, index):
    make, requires_grad = CASES[name][index]
    args = make()
    op = getattr(torch.ops.nertron, name).default
    results = opcheck(op, args, raise_exception=False)
    failed = {test: result for test, result in results.items() if result != "SUCCESS"}
    assert not failed, failed
    if requires_grad:
        # the autograd formula is registered and used: a gradient reaches a leaf
        out = op(*args)
        first = out[0] if isinstance(out, (tuple, list)) else out
        first.float().sum().backward()
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        leaves += [t for a in args if isinstance(a, list) for t in a if t.requires_grad]
        assert any(t.grad is not None for t in leaves)


def test_bilstm_layer_matches_packed_lstm():
    """The op computes exactly what nn.LSTM over a packed sequence does, gradients included."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, 1, batch_first=True, bidirectional=True)
    x = torch.randn(3, 6, 5, requires_grad=True)
    lengths = torch.tensor([6, 1, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    want = torch.nn.utils.rnn.pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=6)[0]
    got = torch.ops.nertron.bilstm_layer(x, lengths, list(lstm._flat_weights))
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [x, *lstm._flat_weights], g)
    got_grads = torch.autograd.grad(got, [x, *lstm._flat_weights], g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("c_kernels", [True, False])
def test_crf_nll_op_matches_reference(c_kernels, monkeypatch):
    """nertron::crf_nll_ref (C, or the PyTorch fallback without a compiler) gives the
    reference's path score minus log Z and its gradients (fp64, transposed inputs); a tag
    outside [0, K), padding included, raises IndexError as pytorch-crf does."""
    from nertron.bindings import ops
    from nertron.bindings.crf_reference import crf_log_partition_torch, crf_score_torch

    if not c_kernels:
        monkeypatch.setattr(ops, "_use_c", lambda emissions: False)
    em, tags, lengths, start, end, trans = _nll_inputs(torch.float64)
    em = em.transpose(0, 1).contiguous().transpose(0, 1)  # strided as batch_first=False gives it
    mask = torch.arange(em.shape[1]) < lengths[:, None]
    inputs = [t.clone().requires_grad_() for t in (em, start, end, trans)]
    got = torch.ops.nertron.crf_nll_ref(inputs[0], tags, lengths, *inputs[1:])[0]
    ref = [t.clone().requires_grad_() for t in (em, start, end, trans)]
    want = crf_score_torch(ref[0], tags, mask, *ref[1:]) - crf_log_partition_torch(ref[0], mask, *ref[1:])
    torch.testing.assert_close(got, want)
    g = torch.randn(3, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, ref, g)):
        torch.testing.assert_close(a, b)
    bad = tags.clone()
    bad[1, -1] = -100  # a padded step of the length-1 row
    with pytest.raises(IndexError):
        torch.ops.nertron.crf_nll_ref(em, bad, lengths, start, end, trans)


def test_crf_cpu_op_matches_reference_gradients():
    """nertron::crf_forward_ref's registered backward (C loops or autograd through the
    reference) equals autograd through the PyTorch reference, in fp64, with -inf transitions."""
    from nertron.bindings.crf_reference import crf_log_partition_torch

    em, lengths, start, end, trans = _crf_inputs(torch.float64, B=3, T=6, K=5)
    trans[0, 2] = float("-inf")  # a constraint: the exact log-sum-exp path
    mask = torch.arange(6) < lengths[:, None]
    for spread in (False, True):
        tr = trans if spread else trans.clamp(min=-3)  # finite: the exp-space path
        inputs = [t.clone().requires_grad_() for t in (em, start, end, tr)]
        got = torch.ops.nertron.crf_forward_ref(inputs[0], lengths, *inputs[1:])[0]
        ref_inputs = [t.clone().requires_grad_() for t in (em, start, end, tr)]
        want = crf_log_partition_torch(ref_inputs[0], mask, *ref_inputs[1:])
        torch.testing.assert_close(got, want)
        g = torch.randn(3, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, ref_inputs, g)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_fallback_check_agrees_with_tensor_ops(dtype):
    """The one-pass C check that picks pytorch-crf's algorithms (gapped masks, inf/nan) says
    what the tensor-op check says, on strided (time-first) inputs too."""
    from nertron.bindings.masks import mask_gaps
    from nertron.kernels import crf_cpu

    if not crf_cpu.available():
        pytest.skip("no C compiler")
    g = torch.Generator().manual_seed(3)
    for trial in range(40):
        B, T, K = 1 + trial % 4, 1 + trial % 7, 2 + trial % 5
        em = torch.randn(T, B, K, generator=g, dtype=dtype).transpose(0, 1)  # strided, as batch_first=False
        mask = torch.rand(T, B, generator=g).t() < 0.8
        mask[:, 0] = True
        params = [torch.randn(K, generator=g, dtype=dtype), torch.randn(K, generator=g, dtype=dtype),
                  torch.randn(K, K, generator=g, dtype=dtype)]
        if trial % 5 == 1:
            em[0, -1, -1] = float("inf")
        if trial % 5 == 2:
            params[trial % 3].view(-1)[0] = float("nan")
        want = bool(mask_gaps(mask) | ~torch.isfinite(em).all() | ~torch.stack([torch.isfinite(p).all() for p in params]).all())
        assert crf_cpu.needs_fallback(em, mask, *params) == want, trial
