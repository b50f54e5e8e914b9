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
    crf_viterbi_torch,
)
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
