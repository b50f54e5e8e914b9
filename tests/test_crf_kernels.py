"""The Triton CRF kernels against the PyTorch reference, brute force and torchcrf.

Without CUDA these run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before the kernels are imported), so shapes are tiny except for a few targeted awkward
cases; the full-size checks are marked ``gpu``.
"""
import itertools

import pytest
import torch
import torchcrf

from nertron.bindings.crf import (
    CRF,
    CRFLogPartition,
    allowed_transitions,
    crf_log_partition_torch,
    crf_marginals_torch,
    crf_span_log_probs,
    crf_viterbi_torch,
)
from nertron.bindings.crf_reference import _alphas, _betas
from nertron.kernels import crf as kernels

pytestmark = [
    pytest.mark.filterwarnings("ignore:where received a uint8 condition tensor"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log"),  # masked lanes, interpreter
]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (tolerance on log Z / scores, tolerance on gradients) beside each input dtype: the
# kernels compute in fp32 on the (rounded) inputs, so they match the fp32 reference run
# on the same rounded values up to fp32 rounding
DTYPES = [(torch.float32, 1e-4, 1e-5), (torch.float16, 1e-4, 2e-3), (torch.bfloat16, 1e-4, 1e-2)]


def problem(B, T, K, dtype=torch.float32, seed=0, lengths=None, transpose=False):
    gen = torch.Generator().manual_seed(seed)
    emissions = torch.randn(B, T, K, generator=gen)
    start, end = torch.randn(K, generator=gen), torch.randn(K, generator=gen)
    trans = torch.randn(K, K, generator=gen)
    if lengths is None:
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = T
        if B > 1:
            lengths[-1] = 1  # a row fully padded except its first step
    lengths = torch.as_tensor(lengths)
    mask = torch.arange(T)[None] < lengths[:, None]
    emissions = emissions.to(dtype)
    if transpose:  # (T, B, K) storage seen as a (B, T, K) view, as the module passes it
        emissions = emissions.transpose(0, 1).contiguous().transpose(0, 1)
    to = lambda x: x.to(DEVICE)  # noqa: E731
    return to(emissions), to(lengths), to(mask), to(start), to(end), to(trans)


SHAPES = [(1, 1, 2), (3, 5, 2), (4, 9, 5), (2, 16, 17), (3, 7, 33), (2, 4, 64)]


@pytest.mark.parametrize("B,T,K", SHAPES)
@pytest.mark.parametrize("dtype,tol,gtol", DTYPES, ids=["fp32", "fp16", "bf16"])
def test_kernels_match_reference(B, T, K, dtype, tol, gtol):
    em, lengths, mask, start, end, trans = problem(B, T, K, dtype, seed=B * T + K, transpose=(K % 2 == 1))
    em32 = em.float()
    # Viterbi: same paths as the reference on the same (upcast) inputs, same scores
    tags, best = kernels.crf_viterbi(em, lengths, start, end, trans)
    ref_tags, ref_best = crf_viterbi_torch(em32, mask, start, end, trans)
    assert torch.equal(tags, ref_tags)
    torch.testing.assert_close(best, ref_best, rtol=tol, atol=tol)
    # forward: log Z with and without kept alphas
    log_z, alpha = kernels.crf_forward(em, lengths, start, end, trans, store_alpha=True)
    log_z2, none = kernels.crf_forward(em, lengths, start, end, trans)
    ref_z = crf_log_partition_torch(em32, mask, start, end, trans)
    torch.testing.assert_close(log_z, ref_z, rtol=tol, atol=tol)
    torch.testing.assert_close(log_z2, log_z, rtol=0, atol=0)
    assert none is None
    # backward: gradients of sum_b g_b log Z_b against autograd of the reference
    g = torch.randn(B, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    params = [em32.clone().requires_grad_(), start.clone().requires_grad_(),
              end.clone().requires_grad_(), trans.clone().requires_grad_()]
    (crf_log_partition_torch(params[0], mask, *params[1:]) * g).sum().backward()
    g_em, g_start, g_end, g_trans = kernels.crf_backward(em, lengths, end, trans, alpha, log_z, g)
    assert g_em.dtype == dtype
    for mine, p in zip((g_em.float(), g_start, g_end, g_trans), params):
        expected = torch.zeros_like(p) if p.grad is None else p.grad  # T == 1: no transitions used
        torch.testing.assert_close(mine, expected, rtol=gtol, atol=gtol)
    # marginals
    probs = kernels.crf_marginals(em, lengths, start, end, trans)
    torch.testing.assert_close(probs, crf_marginals_torch(em32, mask, start, end, trans), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("B,T,K", [(3, 5, 2), (2, 6, 17), (2, 3, 33)])
@pytest.mark.parametrize("dtype,tol,gtol", DTYPES[:2], ids=["fp32", "fp16"])
def test_tiled_path_with_small_k(monkeypatch, B, T, K, dtype, tol, gtol):
    # K <= 64 normally keeps the state in registers (single tile): force the scratch-tiled
    # path that large K takes, on the same checks
    monkeypatch.setattr(kernels, "SINGLE_TILE_MAX_K", 0)
    assert not kernels._tile(K)[1]
    test_kernels_match_reference(B, T, K, dtype, tol, gtol)


@pytest.mark.parametrize("K,T", [(2, 4), (3, 3)])
def test_kernels_against_brute_force(K, T):
    B = 3
    em, lengths, mask, start, end, trans = problem(B, T, K, seed=K + T)
    tags, best = kernels.crf_viterbi(em, lengths, start, end, trans)
    log_z, _ = kernels.crf_forward(em, lengths, start, end, trans)
    for b in range(B):
        n = int(lengths[b])
        paths = list(itertools.product(range(K), repeat=n))
        scores = torch.stack([
            start[p[0]] + em[b, 0, p[0]] + end[p[-1]]
            + sum((trans[p[t - 1], p[t]] + em[b, t, p[t]] for t in range(1, n)), torch.zeros((), device=DEVICE))
            for p in paths])
        assert tags[b, :n].tolist() == list(paths[int(scores.argmax())])
        assert bool((tags[b, n:] == -1).all())
        torch.testing.assert_close(best[b], scores.max())
        torch.testing.assert_close(log_z[b], torch.logsumexp(scores, 0))


def test_long_sequence_t512():
    em, lengths, mask, start, end, trans = problem(1, 512, 3, seed=5, lengths=[512])
    tags, best = kernels.crf_viterbi(em, lengths, start, end, trans)
    ref_tags, ref_best = crf_viterbi_torch(em, mask, start, end, trans)
    assert torch.equal(tags, ref_tags)
    torch.testing.assert_close(best, ref_best, rtol=1e-5, atol=1e-3)
    probs = kernels.crf_marginals(em, lengths, start, end, trans)
    torch.testing.assert_close(probs, crf_marginals_torch(em, mask, start, end, trans), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("K", [129, 256])
def test_tiled_large_k(K):
    # K > 64 loops over 64-wide source and destination tiles; 129 leaves a 1-wide last tile
    B, T = 2, 3
    em, lengths, mask, start, end, trans = problem(B, T, K, seed=K, lengths=[3, 1])
    tags, best = kernels.crf_viterbi(em, lengths, start, end, trans)
    ref_tags, ref_best = crf_viterbi_torch(em, mask, start, end, trans)
    assert torch.equal(tags, ref_tags)
    torch.testing.assert_close(best, ref_best)
    params = [em.clone().requires_grad_(), start.clone().requires_grad_(),
              end.clone().requires_grad_(), trans.clone().requires_grad_()]
    ref_z = crf_log_partition_torch(params[0], mask, *params[1:])
    ref_z.sum().backward()
    mine = [p.detach().clone().requires_grad_() for p in params]
    z = CRFLogPartition.apply(mine[0], lengths.to(torch.int32), *mine[1:])
    torch.testing.assert_close(z, ref_z.detach(), rtol=1e-5, atol=1e-4)
    z.sum().backward()
    for a, b in zip(mine, params):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_backpointer_dtype_is_smallest():
    assert kernels.backpointer_dtype(2) == torch.uint8
    assert kernels.backpointer_dtype(256) == torch.uint8
    assert kernels.backpointer_dtype(257) == torch.int16
    assert kernels.backpointer_dtype(40000) == torch.int32


def test_constrained_viterbi_kernel():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    c = allowed_transitions(labels)
    em, lengths, mask, start, end, trans = problem(4, 6, 5, seed=9)
    em = em.clone()
    em[..., 2] += 3.0  # push towards I-PER everywhere, which BIO forbids after O / at the start
    ninf = float("-inf")
    s, e, t = (start.masked_fill(~c.start.to(DEVICE), ninf), end.masked_fill(~c.end.to(DEVICE), ninf),
               trans.masked_fill(~c.transitions.to(DEVICE), ninf))
    tags, best = kernels.crf_viterbi(em, lengths, s, e, t)
    ref_tags, ref_best = crf_viterbi_torch(em, mask, s, e, t)
    assert torch.equal(tags, ref_tags)
    torch.testing.assert_close(best, ref_best)
    for row, n in zip(tags.tolist(), lengths.tolist()):
        path = row[:n]
        assert c.start[path[0]] and all(c.transitions[a, b] for a, b in zip(path, path[1:]))
    # -inf transitions must not turn the marginals into NaN
    probs = kernels.crf_marginals(em, lengths, s, e, t)
    torch.testing.assert_close(probs, crf_marginals_torch(em, mask, s, e, t), rtol=1e-4, atol=1e-5)
    assert bool((probs[:, 0, 2] == 0).all())


def test_launcher_input_checks():
    em, lengths, mask, start, end, trans = problem(2, 3, 4)
    with pytest.raises(ValueError, match="lengths"):
        kernels.crf_viterbi(em, lengths[:1], start, end, trans)
    with pytest.raises(ValueError, match="transitions"):
        kernels.crf_forward(em, lengths, start, end, trans[:3])
    with pytest.raises(ValueError, match=r"\(B, T, K\)"):
        kernels.crf_forward(em[0], lengths, start, end, trans)
    with pytest.raises(TypeError, match="floating"):
        kernels.crf_viterbi(em.long(), lengths, start, end, trans)
    with pytest.raises(ValueError, match="alpha"):
        kernels.crf_backward(em, lengths, end, trans, em.double(), lengths.float(), lengths.float())


def _launch_each(em, lengths, start, end, trans):
    """Call every launcher on the same inputs (crf_backward with a well-formed alpha)."""
    B, T, K = em.shape
    alpha = torch.zeros(B, T, K, device=em.device)
    z = torch.zeros(B, device=em.device)
    return {
        "crf_viterbi": lambda: kernels.crf_viterbi(em, lengths, start, end, trans),
        "crf_forward": lambda: kernels.crf_forward(em, lengths, start, end, trans, store_alpha=True),
        "crf_backward": lambda: kernels.crf_backward(em, lengths, end, trans, alpha, z, z),
        "crf_marginals": lambda: kernels.crf_marginals(em, lengths, start, end, trans),
        "crf_alpha_beta": lambda: kernels.crf_alpha_beta(em, lengths, start, end, trans),
    }


class _NoLaunch:
    """Stands in for a kernel: indexing it (a launch) fails the test."""

    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched before the length check")


@pytest.mark.parametrize("launcher", ["crf_viterbi", "crf_forward", "crf_backward", "crf_marginals",
                                      "crf_alpha_beta"])
@pytest.mark.parametrize("bad", [0, 5, -3, 2 ** 32 + 2], ids=["zero", "T+1", "negative", "wraps_in_int32"])
def test_launchers_reject_lengths_outside_1_to_t(monkeypatch, launcher, bad):
    # a length of 0 would make the kernels write before the row, T + 1 past it; 2**32 + 2
    # would become 2 if the check ran after the int32 cast
    for name in ("_crf_viterbi_kernel", "_crf_forward_kernel", "_crf_backward_kernel"):
        monkeypatch.setattr(kernels, name, _NoLaunch())
    em, _, _, start, end, trans = problem(3, 4, 3)
    lengths = torch.tensor([4, bad, 1], device=DEVICE)
    call = _launch_each(em, lengths, start, end, trans)[launcher]
    with pytest.raises(ValueError, match=rf"lengths must be in \[1, T\] = \[1, 4\].*lengths\[1\] = {bad}$"):
        call()
    # the first offending index is named
    with pytest.raises(ValueError, match=r"lengths\[0\] = 0$"):
        _launch_each(em, torch.tensor([0, 9, 1], device=DEVICE), start, end, trans)[launcher]()
    with pytest.raises(TypeError, match="integer"):
        _launch_each(em, lengths.float(), start, end, trans)[launcher]()


def test_module_triton_backend_edge_lengths():
    # the module derives lengths from masks whose first step is on: 1 <= length <= T always
    torch.manual_seed(3)
    crf = CRF(4, batch_first=True, backend="triton").to(DEVICE)
    ref = CRF(4, batch_first=True, backend="torch").to(DEVICE)
    ref.load_state_dict(crf.state_dict())
    for T, mask in ((1, None), (3, None), (3, torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool))):
        em = torch.randn(2, T, 4, device=DEVICE)
        tags = torch.randint(0, 4, (2, T), device=DEVICE)
        m = mask.to(DEVICE) if mask is not None else None
        torch.testing.assert_close(crf(em, tags, m, "none"), ref(em, tags, m, "none"), rtol=1e-5, atol=1e-5)
        assert crf.decode(em, m) == ref.decode(em, m)
        torch.testing.assert_close(crf.marginals(em, m), ref.marginals(em, m), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ alpha / beta, span scores
# K = 70 takes the tiled path (K > 64); the tiled path with small K is forced below
AB_SHAPES = [(1, 1, 2), (3, 5, 2), (4, 7, 5), (3, 6, 9), (2, 5, 17), (2, 4, 70)]


def check_alpha_beta(B, T, K, dtype, seed):
    em, lengths, mask, start, end, trans = problem(B, T, K, dtype, seed=seed, transpose=(K % 2 == 1))
    log_z, alpha, beta = kernels.crf_alpha_beta(em, lengths, start, end, trans)
    assert log_z.shape == (B,) and alpha.shape == beta.shape == (B, T, K)
    assert log_z.dtype == alpha.dtype == beta.dtype == torch.float32
    em32 = em.float()
    ref_alpha = torch.stack(_alphas(em32, mask, start, trans, keep=True)[1], 1)
    ref_beta = _betas(em32, mask, end, trans)
    torch.testing.assert_close(log_z, crf_log_partition_torch(em32, mask, start, end, trans), rtol=1e-5, atol=1e-4)
    for b, n in enumerate(lengths.tolist()):  # valid steps only: the rest is left unwritten
        torch.testing.assert_close(alpha[b, :n], ref_alpha[b, :n], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(beta[b, :n], ref_beta[b, :n], rtol=1e-5, atol=1e-4)
        assert bool((beta[b, n - 1] == end).all())  # the last step's beta is the end score


@pytest.mark.parametrize("B,T,K", AB_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_alpha_beta_match_reference(B, T, K, dtype):
    check_alpha_beta(B, T, K, dtype, seed=B + T + K)


@pytest.mark.parametrize("B,T,K", [(3, 5, 2), (3, 6, 9), (2, 5, 17)])
def test_alpha_beta_tiled_path_with_small_k(monkeypatch, B, T, K):
    monkeypatch.setattr(kernels, "SINGLE_TILE_MAX_K", 0)
    assert not kernels._tile(K)[1]
    check_alpha_beta(B, T, K, torch.float32, seed=B + T + K)


def random_spans(lengths, gen, per_row=6):
    """(N, 3) spans (b, i, j): per sequence the first and last position alone, the whole
    sequence, and random i <= j (i == j included)."""
    rows = []
    for b, n in enumerate(lengths):
        rows += [(b, 0, 0), (b, n - 1, n - 1), (b, 0, n - 1)]
        for _ in range(per_row):
            i, j = sorted(torch.randint(0, n, (2,), generator=gen).tolist())
            rows.append((b, i, j))
    return torch.tensor(rows, device=DEVICE)


def check_spans(B, T, K, dtype, seed, constrained=False):
    em, lengths, mask, start, end, trans = problem(B, T, K, dtype, seed=seed, transpose=(K % 2 == 1))
    gen = torch.Generator().manual_seed(seed)
    tags = torch.randint(0, K, (B, T), generator=gen).to(DEVICE).masked_fill(~mask, -1)
    if constrained:
        ninf = float("-inf")
        trans = trans.clone()
        trans[0, 1] = trans[1, 1] = ninf  # nothing enters 1 from 0 or 1
        start = start.clone()
        start[1] = ninf
        # make the tags walk into the disallowed transitions
        tags = tags.masked_fill(mask & (torch.arange(T, device=DEVICE) % 2 == 1), 1)
        tags[:, 0] = 0
    spans = random_spans(lengths.tolist(), gen)
    got = crf_span_log_probs(em, mask, tags, spans, start, end, trans, backend="triton")
    want = crf_span_log_probs(em, mask, tags, spans, start, end, trans, backend="torch")
    assert got.dtype == want.dtype == torch.float32 and got.shape == (spans.shape[0],)
    assert not bool(got.isnan().any())
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    # both paths read the same (rounded) emissions and compute in fp32: bf16 inputs need
    # no looser tolerance than fp32 ones
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-4)
    return got, want


@pytest.mark.parametrize("B,T,K", AB_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_span_log_probs_kernels_match_reference(B, T, K, dtype):
    got, _ = check_spans(B, T, K, dtype, seed=10 * B + T + K)
    assert bool(torch.isfinite(got).all())  # unconstrained: every span has probability > 0
    assert bool((got <= 1e-5).all())


@pytest.mark.parametrize("B,T,K", [(3, 5, 2), (4, 7, 5), (2, 5, 17)])
def test_span_log_probs_tiled_path_with_small_k(monkeypatch, B, T, K):
    monkeypatch.setattr(kernels, "SINGLE_TILE_MAX_K", 0)
    assert not kernels._tile(K)[1]
    check_spans(B, T, K, torch.float32, seed=B * T + K)


@pytest.mark.parametrize("tiled", [False, True], ids=["single_tile", "tiled"])
@pytest.mark.parametrize("K", [2, 5])
def test_span_log_probs_constrained(monkeypatch, tiled, K):
    # a span through a disallowed (-inf) transition or start gets -inf on both paths, the others agree
    if tiled:
        monkeypatch.setattr(kernels, "SINGLE_TILE_MAX_K", 0)
    got, want = check_spans(4, 6, K, torch.float32, seed=K, constrained=True)
    assert bool((got == float("-inf")).any()) and bool(torch.isfinite(got).any())


def test_span_log_probs_kernel_path_with_bio_constraints():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    c = allowed_transitions(labels)
    em, lengths, mask, start, end, trans = problem(3, 5, 5, seed=21, lengths=[5, 4, 1])
    ninf = float("-inf")
    s, e, t = (start.masked_fill(~c.start.to(DEVICE), ninf), end.masked_fill(~c.end.to(DEVICE), ninf),
               trans.masked_fill(~c.transitions.to(DEVICE), ninf))
    tags = torch.tensor([[1, 2, 2, 0, 3], [0, 2, 0, 4, -1], [2, -1, -1, -1, -1]], device=DEVICE)
    spans = torch.tensor([[0, 0, 2], [0, 1, 4], [1, 0, 1], [1, 2, 3], [1, 1, 1], [2, 0, 0]], device=DEVICE)
    got = crf_span_log_probs(em, mask, tags, spans, s, e, t, backend="triton")
    want = crf_span_log_probs(em, mask, tags, spans, s, e, t, backend="torch")
    # O -> I-PER, O -> I-LOC disallowed; I-PER cannot start a sequence (marginal 0)
    expect_inf = torch.tensor([False, False, True, True, False, True], device=DEVICE)
    assert torch.equal(got == ninf, expect_inf) and torch.equal(want == ninf, expect_inf)
    torch.testing.assert_close(got[~expect_inf], want[~expect_inf], rtol=1e-5, atol=1e-4)


def test_span_log_probs_backend_choice():
    em, lengths, mask, start, end, trans = problem(2, 4, 3, seed=2)
    tags = torch.randint(0, 3, (2, 4), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    spans = torch.tensor([[0, 0, 3], [1, 0, 0]], device=DEVICE)
    auto = crf_span_log_probs(em, mask, tags, spans, start, end, trans)
    other = "torch" if DEVICE == "cuda" else "triton"
    mine = "triton" if DEVICE == "cuda" else "torch"
    # auto is the kernels on CUDA, the reference elsewhere: bit-equal to that backend
    assert torch.equal(auto, crf_span_log_probs(em, mask, tags, spans, start, end, trans, backend=mine))
    torch.testing.assert_close(auto, crf_span_log_probs(em, mask, tags, spans, start, end, trans, backend=other),
                               rtol=1e-5, atol=1e-4)
    # fp64 inputs: the kernel path still computes (and returns) fp32
    args64 = (em.double(), mask, tags, spans, start.double(), end.double(), trans.double())
    got64 = crf_span_log_probs(*args64, backend="triton")
    assert got64.dtype == torch.float32
    want64 = crf_span_log_probs(*args64, backend="torch")
    assert want64.dtype == torch.float64
    # auto keeps fp64 callers on the reference, whatever the device
    assert torch.equal(crf_span_log_probs(*args64), want64)
    torch.testing.assert_close(got64.double(), want64, rtol=1e-5, atol=1e-4)
    assert crf_span_log_probs(em, mask, tags, spans[:0], start, end, trans, backend="triton").shape == (0,)
    with pytest.raises(ValueError, match="backend"):
        crf_span_log_probs(em, mask, tags, spans, start, end, trans, backend="cuda")


# ------------------------------------------------------------------ module, triton backend
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_module_triton_backend_matches_torchcrf(batch_first, dtype):
    B, T, K = 3, 6, 5
    torch.manual_seed(0)
    ref = torchcrf.CRF(K, batch_first=batch_first)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    ours = CRF(K, batch_first=batch_first, backend="triton")
    ours.load_state_dict(ref.state_dict())
    ref, ours = ref.to(DEVICE), ours.to(DEVICE)
    em, lengths, mask, *_ = problem(B, T, K, dtype, seed=4)
    tags = torch.randint(0, K, (B, T), device=DEVICE)
    if not batch_first:
        em, tags, mask = em.transpose(0, 1), tags.t(), mask.t()
    tol = 1e-4 if dtype == torch.float32 else 1e-3
    for reduction in ("none", "sum", "mean", "token_mean"):
        torch.testing.assert_close(ours(em, tags, mask, reduction), ref(em.float(), tags, mask, reduction),
                                   rtol=tol, atol=tol)
    e1, e2 = em.float().clone().requires_grad_(), em.clone().requires_grad_()
    ref(e1, tags, mask).backward()
    ours(e2, tags, mask).backward()
    assert e2.grad.dtype == dtype
    torch.testing.assert_close(e2.grad.float(), e1.grad, rtol=tol, atol=tol)
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=tol, atol=tol, msg=name)
    assert ours.decode(em, mask) == ref.decode(em.float(), mask)
    probs = ours.marginals(em, mask)
    torch.testing.assert_close(probs.sum(-1), mask.float(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ full size, GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("B,T,K", [(256, 128, 9), (4096, 128, 9), (64, 512, 129), (8, 64, 256), (2048, 32, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_full_size_on_gpu(B, T, K, dtype):
    em, lengths, mask, start, end, trans = problem(B, T, K, dtype, seed=K)
    em32 = em.float()
    tags, best = kernels.crf_viterbi(em, lengths, start, end, trans)
    ref_tags, ref_best = crf_viterbi_torch(em32, mask, start, end, trans)
    torch.testing.assert_close(best, ref_best, rtol=1e-5, atol=1e-3)
    # near-ties may legitimately flip a few tags; the paths must score the same
    assert (tags != ref_tags).float().mean() < 1e-3
    params = [em32.clone().requires_grad_(), start.clone().requires_grad_(),
              end.clone().requires_grad_(), trans.clone().requires_grad_()]
    ref_z = crf_log_partition_torch(params[0], mask, *params[1:])
    ref_z.sum().backward()
    z, alpha = kernels.crf_forward(em, lengths, start, end, trans, store_alpha=True)
    torch.testing.assert_close(z, ref_z.detach(), rtol=1e-5, atol=1e-3)
    grads = kernels.crf_backward(em, lengths, end, trans, alpha, z, torch.ones_like(z))
    gtol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for mine, p in zip(grads, params):
        torch.testing.assert_close(mine.float(), p.grad, rtol=gtol, atol=gtol * max(1.0, B * T / 1e4))


@pytest.mark.parametrize("seed", range(8))
def test_random_shapes(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    B, T, K = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 5), (1, 17), (2, 21)))
    dtype = [torch.float32, torch.float16, torch.bfloat16][seed % 3]
    em, lengths, mask, start, end, trans = problem(B, T, K, dtype, seed=seed, transpose=bool(seed % 2))
    em32 = em.float()
    tags, _ = kernels.crf_viterbi(em, lengths, start, end, trans)
    assert torch.equal(tags, crf_viterbi_torch(em32, mask, start, end, trans)[0])
    params = [em32.clone().requires_grad_(), start.clone().requires_grad_(),
              end.clone().requires_grad_(), trans.clone().requires_grad_()]
    ref_z = crf_log_partition_torch(params[0], mask, *params[1:])
    ref_z.sum().backward()
    mine = [em.clone().requires_grad_()] + [p.detach().clone().requires_grad_() for p in params[1:]]
    z = CRFLogPartition.apply(mine[0], lengths, *mine[1:])
    torch.testing.assert_close(z, ref_z.detach(), rtol=1e-4, atol=1e-4)
    z.sum().backward()
    gtol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for a, b in zip(mine, params):
        expected = torch.zeros_like(b) if b.grad is None else b.grad
        torch.testing.assert_close(a.grad.float(), expected, rtol=gtol, atol=gtol)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("K", [5, 70])
def test_module_span_log_probs_kernels(batch_first, K):
    # CRF.span_log_probs on the kernels == crf_span_log_probs with the constrained fp32
    # scores, in either layout; close to the reference module
    labels = ["O"] + [f"{p}-T{k}" for k in range((K - 1) // 2) for p in "BI"]
    labels += ["[PAD]"] * (K - len(labels))
    B, T = 3, 5
    em, lengths, mask, _, _, _ = problem(B, T, K, torch.bfloat16, seed=K, lengths=[5, 3, 1])
    crf = CRF(K, batch_first=batch_first, backend="triton", constraints=allowed_transitions(labels)).to(DEVICE)
    ref = CRF(K, batch_first=batch_first, backend="torch", constraints=allowed_transitions(labels)).to(DEVICE)
    ref.load_state_dict(crf.state_dict())
    tags = torch.tensor([[0, 1, 2, 2, 0], [2, 0, 1, -1, -1], [1, -1, -1, -1, -1]], device=DEVICE)
    spans = torch.tensor([[0, 1, 3], [0, 0, 4], [1, 0, 0], [1, 2, 2], [1, 0, 2], [2, 0, 0]], device=DEVICE)
    layout = (lambda x: x) if batch_first else (lambda x: x.transpose(0, 1))
    got = crf.span_log_probs(layout(em), layout(tags), spans, layout(mask))
    start, end, trans = crf.transition_scores(constrained=True)
    want = crf_span_log_probs(em, mask, tags, spans, start.float(), end.float(), trans.float(), backend="triton")
    assert got.dtype == torch.float32 and torch.equal(got, want)
    # I-T0 cannot start a sequence, O -> I-T0 is disallowed
    expect_inf = torch.tensor([False, False, True, False, True, False], device=DEVICE)
    assert torch.equal(got == float("-inf"), expect_inf)
    theirs = ref.span_log_probs(layout(em), layout(tags), spans, layout(mask))
    torch.testing.assert_close(got[~expect_inf], theirs[~expect_inf], rtol=1e-5, atol=1e-4)
    assert crf.span_log_probs(layout(em), layout(tags), spans[:0], layout(mask)).shape == (0,)
