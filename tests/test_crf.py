"""nertron.CRF against pytorch-crf (torchcrf.CRF 0.7.2), brute-force enumeration and autograd.

These tests exercise the PyTorch reference path (what CPU users get); the Triton kernels
are checked against it in test_crf_kernels.py.
"""
import inspect
import itertools
import pytest
import torch
import torchcrf

from nertron.bindings.crf import (
    CRF,
    allowed_transitions,
    crf_log_partition_torch,
    crf_marginals_torch,
    crf_score_torch,
    crf_span_log_probs,
    crf_viterbi_nbest_torch,
    crf_viterbi_torch,
)

# pytorch-crf's own deprecation warning for uint8 masks
pytestmark = pytest.mark.filterwarnings("ignore:where received a uint8 condition tensor")


def ragged_lengths(B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """Random lengths in [1, T] that include a full row and a length-1 row when B allows."""
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    if B > 1:
        lengths[-1] = 1  # only the first step on
    return lengths


def make_inputs(B, T, K, batch_first, dtype=torch.float64, seed=0, uint8_mask=False):
    gen = torch.Generator().manual_seed(seed)
    emissions = torch.randn(B, T, K, generator=gen, dtype=torch.float64).to(dtype)
    tags = torch.randint(0, K, (B, T), generator=gen)
    lengths = ragged_lengths(B, T, gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    if uint8_mask:
        mask = mask.to(torch.uint8)
    if not batch_first:
        emissions, tags, mask = emissions.transpose(0, 1).contiguous(), tags.t().contiguous(), mask.t().contiguous()
    return emissions, tags, mask


def twin_modules(K, batch_first, dtype=torch.float64, seed=1):
    torch.manual_seed(seed)
    ref = torchcrf.CRF(K, batch_first=batch_first).to(dtype)
    ours = CRF(K, batch_first=batch_first, backend="torch").to(dtype)
    with torch.no_grad():  # make the scores less flat than the +-0.1 initialisation
        for p in ref.parameters():
            p.normal_()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


# ------------------------------------------------------------------ drop-in API
def test_parameters_repr_and_init_match_torchcrf():
    ref, ours = torchcrf.CRF(7), CRF(7)
    assert repr(ours) == repr(ref) == "CRF(num_tags=7)"
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    assert list(ours.state_dict()) == list(ref.state_dict())
    for p in ours.parameters():
        assert p.abs().max() <= 0.1 and p.std() > 0
    assert ours.batch_first is False and CRF(3, batch_first=True).batch_first is True
    assert ours.num_tags == 7


def test_signatures_match_torchcrf():
    for name in ("__init__", "forward", "decode"):
        theirs = inspect.signature(getattr(torchcrf.CRF, name)).parameters
        mine = inspect.signature(getattr(CRF, name)).parameters
        common = list(mine)[:len(theirs)]
        assert common == list(theirs), name
        for p in common:
            assert mine[p].default == theirs[p].default, (name, p)
        # our extras are keyword-only, so positional calls cannot reach them
        assert all(mine[p].kind is inspect.Parameter.KEYWORD_ONLY for p in list(mine)[len(theirs):])


def test_state_dict_interchangeable_both_ways():
    ref, ours = torchcrf.CRF(5), CRF(5)
    ours.load_state_dict(ref.state_dict())
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    ours2 = CRF(5, constraints=allowed_transitions(["O", "B-X", "I-X", "B-Y", "I-Y"]))
    ref2 = torchcrf.CRF(5)
    ref2.load_state_dict(ours2.state_dict())  # strict: constraint buffers are not persistent
    for a, b in zip(ref2.parameters(), ours2.parameters()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ against torchcrf
SHAPES = [(1, 1, 3), (4, 7, 3), (5, 33, 9), (3, 127, 17), (6, 7, 17), (2, 33, 9)]


@pytest.mark.parametrize("B,T,K", SHAPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_log_likelihood_and_gradients_match_torchcrf(B, T, K, batch_first):
    emissions, tags, mask = make_inputs(B, T, K, batch_first, uint8_mask=(T % 2 == 1))
    ref, ours = twin_modules(K, batch_first)
    for reduction in ("none", "sum", "mean", "token_mean"):
        a = ref(emissions, tags, mask, reduction=reduction)
        b = ours(emissions, tags, mask, reduction=reduction)
        assert b.shape == a.shape
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    # gradients of every parameter and of the emissions
    e_ref = emissions.clone().requires_grad_()
    e_ours = emissions.clone().requires_grad_()
    ref(e_ref, tags, mask, reduction="mean").backward()
    ours(e_ours, tags, mask, reduction="mean").backward()
    torch.testing.assert_close(e_ours.grad, e_ref.grad, rtol=1e-9, atol=1e-10)
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        # with T == 1 torchcrf never touches the transitions and leaves their grad None
        expected = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(q.grad, expected, rtol=1e-9, atol=1e-10, msg=name)


def test_default_mask_and_fp32_match_torchcrf():
    emissions, tags, _ = make_inputs(3, 11, 5, False, dtype=torch.float32)
    ref, ours = twin_modules(5, False, dtype=torch.float32)
    torch.testing.assert_close(ours(emissions, tags), ref(emissions, tags), rtol=1e-5, atol=1e-4)
    assert ours.decode(emissions) == ref.decode(emissions)


def test_wide_transition_spread_uses_exact_path():
    # transition scores 200 apart would underflow the exp-space product: the reference
    # must switch to the exact log-sum-exp and still agree with torchcrf
    emissions, tags, mask = make_inputs(3, 9, 4, True, dtype=torch.float32)
    ref, ours = twin_modules(4, True, dtype=torch.float32)
    with torch.no_grad():
        ref.transitions[0, 1] = -200.0
        ref.transitions[2, 3] = 100.0
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(emissions, tags, mask, "none"), ref(emissions, tags, mask, "none"),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("B,T,K", SHAPES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_decode_matches_torchcrf(B, T, K, batch_first):
    emissions, _, mask = make_inputs(B, T, K, batch_first, seed=3)
    ref, ours = twin_modules(K, batch_first)
    expected = ref.decode(emissions, mask)
    assert ours.decode(emissions, mask) == expected
    tags, scores = ours.decode(emissions, mask, as_tensor=True)
    assert tags.shape == mask.shape and tags.dtype == torch.int64
    tags_bt = tags if batch_first else tags.t()
    mask_bt = (mask if batch_first else mask.t()).bool()
    for row, m, path in zip(tags_bt, mask_bt, expected):
        assert row[m].tolist() == path and bool((row[~m] == -1).all())
    # the returned score is the score of the returned path
    em_bt = emissions if batch_first else emissions.transpose(0, 1)
    path_scores = crf_score_torch(em_bt, tags_bt.clamp(min=0), mask_bt, ours.start_transitions,
                                  ours.end_transitions, ours.transitions)
    torch.testing.assert_close(scores, path_scores.detach())


# ------------------------------------------------------------------ brute force
def all_paths(emissions, length, start, end, transitions):
    """Scores of all K**length paths of one sequence: (paths, scores)."""
    K = emissions.size(-1)
    paths = list(itertools.product(range(K), repeat=length))
    scores = []
    for p in paths:
        s = start[p[0]] + emissions[0, p[0]] + end[p[-1]]
        for t in range(1, length):
            s = s + transitions[p[t - 1], p[t]] + emissions[t, p[t]]
        scores.append(s)
    return paths, torch.stack(scores)


@pytest.mark.parametrize("K,T", [(2, 1), (2, 4), (3, 3), (3, 4)])
def test_reference_against_brute_force(K, T):
    gen = torch.Generator().manual_seed(K * 10 + T)
    B = 4
    emissions = torch.randn(B, T, K, generator=gen, dtype=torch.float64)
    start, end = torch.randn(K, generator=gen, dtype=torch.float64), torch.randn(K, generator=gen, dtype=torch.float64)
    trans = torch.randn(K, K, generator=gen, dtype=torch.float64)
    lengths = ragged_lengths(B, T, gen)
    mask = torch.arange(T)[None] < lengths[:, None]
    log_z = crf_log_partition_torch(emissions, mask, start, end, trans)
    tags, best = crf_viterbi_torch(emissions, mask, start, end, trans)
    probs = crf_marginals_torch(emissions, mask, start, end, trans)
    for b in range(B):
        n = int(lengths[b])
        paths, scores = all_paths(emissions[b], n, start, end, trans)
        torch.testing.assert_close(log_z[b], torch.logsumexp(scores, 0))
        i = int(scores.argmax())
        assert tags[b, :n].tolist() == list(paths[i])
        torch.testing.assert_close(best[b], scores[i])
        # marginals: total probability of the paths through each (t, k)
        p = torch.softmax(scores, 0)
        onehot = torch.nn.functional.one_hot(torch.tensor(paths), K).double()  # (P, n, K)
        torch.testing.assert_close(probs[b, :n], torch.einsum("p,pnk->nk", p, onehot))
        assert bool((probs[b, n:] == 0).all())
        # gold path score
        gold = torch.tensor(paths[len(paths) // 2])
        full = torch.zeros(T, dtype=torch.long)
        full[:n] = gold
        s = crf_score_torch(emissions[b:b + 1], full[None], mask[b:b + 1], start, end, trans)
        torch.testing.assert_close(s[0], scores[len(paths) // 2])


@pytest.mark.parametrize("K,T,nbest", [(2, 1, 3), (2, 4, 5), (3, 3, 4), (3, 4, 30), (4, 3, 7)])
@pytest.mark.parametrize("constrained", [False, True])
def test_nbest_against_brute_force(K, T, nbest, constrained):
    """The n best paths are the n highest-scoring of all K**n paths, best first; sequences with
    fewer (allowed) paths than n get -inf scores and pad tags for the missing ones."""
    gen = torch.Generator().manual_seed(K * 100 + T * 10 + nbest)
    B = 4
    emissions = torch.randn(B, T, K, generator=gen, dtype=torch.float64)
    start, end = torch.randn(K, generator=gen, dtype=torch.float64), torch.randn(K, generator=gen, dtype=torch.float64)
    trans = torch.randn(K, K, generator=gen, dtype=torch.float64)
    if constrained:
        trans[0, 1] = float("-inf")  # 0 -> 1 never
        start[1] = float("-inf")  # never start in 1
    lengths = ragged_lengths(B, T, gen)
    mask = torch.arange(T)[None] < lengths[:, None]
    tags, scores = crf_viterbi_nbest_torch(emissions, mask, start, end, trans, nbest, pad_tag=-7)
    assert tags.shape == (nbest, B, T) and scores.shape == (nbest, B)
    best_tags, best = crf_viterbi_torch(emissions, mask, start, end, trans, pad_tag=-7)
    assert torch.equal(tags[0], best_tags)
    torch.testing.assert_close(scores[0], best)
    for b in range(B):
        n = int(lengths[b])
        paths, all_scores = all_paths(emissions[b], n, start, end, trans)
        allowed = [(s.item(), path) for s, path in zip(all_scores, paths) if s > float("-inf")]
        expected = sorted(allowed, key=lambda x: -x[0])[:nbest]
        found = scores[:, b]
        for r, (score, path) in enumerate(expected):
            torch.testing.assert_close(found[r].item(), score)
            assert tags[r, b, :n].tolist() == list(path)
            assert bool((tags[r, b, n:] == -7).all())
        for r in range(len(expected), nbest):  # fewer paths than asked for
            assert found[r] == float("-inf") and bool((tags[r, b] == -7).all())


def test_module_nbest_layouts_and_errors():
    torch.manual_seed(0)
    crf = CRF(5)
    emissions = torch.randn(6, 3, 5)  # (T, B, K)
    mask = torch.ones(6, 3, dtype=torch.bool)
    mask[4:, 1] = False
    lists = crf.decode(emissions, mask, nbest=3)
    assert [len(paths) for paths in lists] == [3, 3, 3]
    assert [lists[b][0] for b in range(3)] == crf.decode(emissions, mask)  # the best path first
    assert [len(p) for p in lists[1]] == [4, 4, 4] and len({tuple(p) for p in lists[0]}) == 3
    tags, scores = crf.decode(emissions, mask, nbest=3, as_tensor=True)
    assert tags.shape == (3, 6, 3) and scores.shape == (3, 3)  # (nbest, T, B) for a (T, B) layout
    assert bool((scores[:-1] >= scores[1:]).all())
    first = CRF(5, batch_first=True)
    first.load_state_dict(crf.state_dict())
    tags_bf, scores_bf = first.decode(emissions.transpose(0, 1), mask.t(), nbest=3, as_tensor=True)
    assert torch.equal(tags_bf, tags.transpose(1, 2)) and torch.equal(scores_bf, scores)
    # two tags, one step: only two paths exist, a third is left out of the lists
    small = CRF(2)
    assert [len(p) for p in small.decode(torch.randn(1, 2, 2), nbest=3)] == [2, 2]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="nbest must be a positive int"):
            crf.decode(emissions, mask, nbest=bad)


@pytest.mark.parametrize("K,T", [(3, 1), (5, 9), (17, 6)])
def test_marginals_equal_autograd_of_log_partition(K, T):
    gen = torch.Generator().manual_seed(7)
    B = 3
    emissions = torch.randn(B, T, K, generator=gen, dtype=torch.float64, requires_grad=True)
    start, end = torch.randn(K, generator=gen, dtype=torch.float64), torch.randn(K, generator=gen, dtype=torch.float64)
    trans = torch.randn(K, K, generator=gen, dtype=torch.float64)
    mask = torch.arange(T)[None] < ragged_lengths(B, T, gen)[:, None]
    crf_log_partition_torch(emissions, mask, start, end, trans).sum().backward()
    probs = crf_marginals_torch(emissions.detach(), mask, start, end, trans)
    torch.testing.assert_close(probs, emissions.grad)
    torch.testing.assert_close(probs.sum(-1), mask.double())


def test_module_marginals_layout():
    emissions, _, mask = make_inputs(3, 6, 4, batch_first=False, seed=5)
    _, ours = twin_modules(4, False)
    probs = ours.marginals(emissions, mask)
    assert probs.shape == emissions.shape
    torch.testing.assert_close(probs.sum(-1), mask.double())


# ------------------------------------------------------------------ half precision
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_inputs(dtype, atol):
    B, T, K = 4, 20, 9
    emissions, tags, mask = make_inputs(B, T, K, batch_first=True, dtype=torch.float32, seed=11)
    ref, ours = twin_modules(K, True, dtype=torch.float32)
    truth = twin_modules(K, True, dtype=torch.float64)[0](emissions.double(), tags, mask, "none")
    theirs = ref.to(dtype)(emissions.to(dtype), tags, mask, "none")
    mine = ours(emissions.to(dtype), tags, mask, "none")
    assert mine.dtype == torch.float32  # statistics in fp32 whatever the input dtype
    their_err = (theirs.double() - truth).abs()
    my_err = (mine.double() - truth).abs()
    assert bool((my_err <= 2 * their_err + atol).all()), (my_err, their_err)
    # decoding half inputs equals decoding their fp32 upcast
    assert ours.decode(emissions.to(dtype), mask) == ours.decode(emissions.to(dtype).float(), mask)


# ------------------------------------------------------------------ bad input
def _same_error(make, call):
    with pytest.raises(Exception) as theirs:
        call(make(torchcrf.CRF))
    with pytest.raises(type(theirs.value)) as mine:
        call(make(CRF))
    assert str(mine.value) == str(theirs.value)
    return mine.value


@pytest.mark.parametrize("num_tags", [0, -3])
def test_bad_num_tags(num_tags):
    err = _same_error(lambda cls: cls(num_tags), lambda m: m)
    assert isinstance(err, ValueError)


BAD_CALLS = {
    "emissions_2d": lambda m: m(torch.randn(3, 5), torch.zeros(3, 5, dtype=torch.long)),
    "emissions_4d_decode": lambda m: m.decode(torch.randn(3, 2, 5, 1)),
    "last_dim": lambda m: m(torch.randn(3, 2, 4), torch.zeros(3, 2, dtype=torch.long)),
    "last_dim_decode": lambda m: m.decode(torch.randn(3, 2, 6)),
    "tags_shape": lambda m: m(torch.randn(3, 2, 5), torch.zeros(2, 3, dtype=torch.long)),
    "mask_shape": lambda m: m(torch.randn(3, 2, 5), torch.zeros(3, 2, dtype=torch.long),
                              torch.ones(3, 3, dtype=torch.uint8)),
    "mask_shape_decode": lambda m: m.decode(torch.randn(3, 2, 5), torch.ones(2, 3, dtype=torch.bool)),
    "mask_first_step": lambda m: m(torch.randn(3, 2, 5), torch.zeros(3, 2, dtype=torch.long),
                                   torch.tensor([[1, 0], [1, 0], [0, 0]], dtype=torch.uint8)),
    "mask_first_step_decode": lambda m: m.decode(torch.randn(3, 2, 5), torch.tensor([[0, 1], [0, 1], [0, 0]]).bool()),
    "reduction": lambda m: m(torch.randn(3, 2, 5), torch.zeros(3, 2, dtype=torch.long), reduction="avg"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_same_error_as_torchcrf(case):
    err = _same_error(lambda cls: cls(5), BAD_CALLS[case])
    assert isinstance(err, ValueError)


def test_bad_input_batch_first_mask():
    emissions = torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.uint8)
    _same_error(lambda cls: cls(5, batch_first=True), lambda m: m.decode(emissions, mask))


def test_bad_extras():
    with pytest.raises(ValueError, match="backend"):
        CRF(3, backend="cuda")
    with pytest.raises(ValueError, match="constraints"):
        CRF(3, constraints=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="scheme"):
        allowed_transitions(["O"], scheme="XYZ")


# ------------------------------------------------------------------ constraints
def _valid(path, labels, scheme):
    c = allowed_transitions(labels, scheme)
    return bool(c.start[path[0]]) and bool(c.end[path[-1]]) and \
        all(bool(c.transitions[a, b]) for a, b in zip(path, path[1:]))


def test_allowed_transitions_bio():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    c = allowed_transitions(labels, "BIO")
    idx = {l: i for i, l in enumerate(labels)}
    assert not c.transitions[idx["O"], idx["I-PER"]]
    assert not c.transitions[idx["B-LOC"], idx["I-PER"]]
    assert c.transitions[idx["B-PER"], idx["I-PER"]] and c.transitions[idx["I-PER"], idx["I-PER"]]
    assert c.transitions[idx["I-PER"], idx["B-LOC"]] and c.transitions[idx["I-LOC"], idx["O"]]
    assert c.start.tolist() == [True, True, False, True, False]
    assert c.end.all()
    assert allowed_transitions(labels, "IOB2").transitions.equal(c.transitions)


def test_allowed_transitions_iob1_and_bioes():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    c = allowed_transitions(labels, "IOB1")
    idx = {l: i for i, l in enumerate(labels)}
    assert c.transitions[idx["O"], idx["I-PER"]]          # IOB1: I starts a chunk
    assert not c.transitions[idx["O"], idx["B-PER"]]      # B only right after the same type
    assert c.transitions[idx["I-PER"], idx["B-PER"]]
    assert not c.transitions[idx["I-LOC"], idx["B-PER"]]
    assert c.start.tolist() == [True, False, True, False, True]
    labels = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "S-LOC"]
    c = allowed_transitions(labels, "BIOES")
    idx = {l: i for i, l in enumerate(labels)}
    assert c.transitions[idx["B-PER"], idx["E-PER"]] and not c.transitions[idx["B-PER"], idx["O"]]
    assert c.transitions[idx["E-PER"], idx["S-LOC"]] and not c.transitions[idx["O"], idx["E-PER"]]
    assert c.start.tolist() == [True, True, False, False, True, True]
    assert c.end.tolist() == [True, False, False, True, True, True]
    bilou = allowed_transitions(["O", "B-PER", "I-PER", "L-PER", "U-PER", "U-LOC"], "BILOU")
    assert bilou.transitions.equal(c.transitions) and bilou.end.equal(c.end)


@pytest.mark.parametrize("scheme,labels", [
    ("BIO", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
    ("IOB1", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
    ("BIOES", ["O", "B-PER", "I-PER", "E-PER", "S-PER"]),
])
def test_constrained_decoding_is_valid_and_optimal(scheme, labels):
    K, T, B = len(labels), 4, 6
    gen = torch.Generator().manual_seed(2)
    emissions = 3 * torch.randn(B, T, K, generator=gen, dtype=torch.float64)
    crf = CRF(K, batch_first=True, constraints=allowed_transitions(labels, scheme)).double()
    paths = crf.decode(emissions)
    crf.set_constraints(None)
    free = crf.decode(emissions)
    assert any(not _valid(p, labels, scheme) for p in free)  # the test data needs constraints
    for b, path in enumerate(paths):
        assert _valid(path, labels, scheme)
        # the best among the valid paths, by enumeration
        cand, scores = all_paths(emissions[b], T, crf.start_transitions, crf.end_transitions, crf.transitions)
        best = max((s.item(), p) for p, s in zip(cand, scores) if _valid(list(p), labels, scheme))
        assert list(best[1]) == path


def test_constrained_marginals_give_zero_probability_to_invalid_tags():
    labels = ["O", "B-PER", "I-PER"]
    crf = CRF(3, batch_first=True, constraints=allowed_transitions(labels))
    probs = crf.marginals(torch.randn(2, 5, 3))
    assert bool((probs[:, 0, 2] == 0).all())  # no sequence starts with I-PER
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 5))


# ------------------------------------------------------------------ span scores (module method)
def module_span_case(batch_first, dtype=torch.float64, seed=3):
    """A constrained BIO module, inputs in its layout, decoded tags with one invalid span
    written in, and spans (b, i, j) over every sequence (batch-first views beside)."""
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    K = len(labels)
    emissions, _, mask = make_inputs(4, 6, K, batch_first, dtype=dtype, seed=seed)
    crf = CRF(K, batch_first=batch_first, backend="torch", constraints=allowed_transitions(labels)).to(dtype)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    tags, _ = crf.decode(emissions, mask, as_tensor=True)  # (T, B) or (B, T), -1 at padding
    views = (lambda x: x) if batch_first else (lambda x: x.transpose(0, 1))
    em_bf, mask_bf, tags_bf = views(emissions), views(mask).bool(), views(tags)
    tags_bf[0, :2] = torch.tensor([0, 2])  # O -> I-PER (row 0 is full length): disallowed
    lengths = mask_bf.sum(1).tolist()
    rows = [(0, 0, 1), (0, 1, 1), (0, 2, 5)]
    for b, n in enumerate(lengths):
        rows += [(b, 0, n - 1), (b, n - 1, n - 1), (b, 0, 0)]
    spans = torch.tensor(rows)
    return crf, emissions, tags, mask, spans, (em_bf, mask_bf, tags_bf)


@pytest.mark.parametrize("batch_first", [False, True])
def test_module_span_log_probs_matches_function(batch_first):
    crf, emissions, tags, mask, spans, (em_bf, mask_bf, tags_bf) = module_span_case(batch_first)
    got = crf.span_log_probs(emissions, tags, spans, mask)
    start, end, trans = crf.transition_scores(constrained=True)
    want = crf_span_log_probs(em_bf, mask_bf, tags_bf, spans, start.float(), end.float(), trans.float())
    # fp32 parameters: fp32 statistics even for an fp64 module and fp64 emissions
    assert got.dtype == want.dtype == torch.float32 and got.shape == (spans.shape[0],)
    assert torch.equal(got, want)
    # the constraints apply: spans through the O -> I-PER step are impossible, the rest is not
    through = (spans[:, 0] == 0) & (spans[:, 1] == 0) & (spans[:, 2] >= 1)
    assert through.sum() == 2 and torch.equal(got == float("-inf"), through)
    assert bool((got[~through] <= 1e-5).all())
    # a default mask is all on
    full = crf.span_log_probs(emissions, tags.clamp(min=0), spans)
    ones = torch.ones_like(mask_bf)
    want_full = crf_span_log_probs(em_bf, ones, tags_bf.clamp(min=0), spans, start.float(), end.float(),
                                   trans.float())
    assert torch.equal(full, want_full)


def test_module_span_log_probs_empty_spans_and_errors():
    crf, emissions, tags, mask, spans, _ = module_span_case(batch_first=False)
    empty = crf.span_log_probs(emissions, tags, spans[:0], mask)
    assert empty.shape == (0,) and empty.dtype == torch.float32
    with pytest.raises(ValueError, match="first two dimensions of emissions and tags"):
        crf.span_log_probs(emissions, tags.t(), spans, mask)
    with pytest.raises(ValueError, match="mask of the first timestep"):
        crf.span_log_probs(emissions, tags, spans, torch.zeros_like(mask))


# --- pytorch-crf's results for gapped masks, empty batches and inf/nan emissions ----------------


def _pair(K, batch_first, backend, seed=0):
    torch.manual_seed(seed)
    ours = CRF(K, batch_first=batch_first, backend=backend)
    ref = torchcrf.CRF(K, batch_first=batch_first)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_gapped_masks_match_torchcrf(backend, batch_first):
    gen = torch.Generator().manual_seed(5)
    B, T, K = 5, 6, 4
    ours, ref = _pair(K, batch_first, backend)
    em = torch.randn(B, T, K, generator=gen)
    tags = torch.randint(K, (B, T), generator=gen)
    mask = torch.rand(B, T, generator=gen) < 0.6
    mask[:, 0] = True
    mask[0] = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)  # surely gapped
    if not batch_first:
        em, tags, mask = em.transpose(0, 1), tags.t(), mask.t()
    for reduction in ("none", "sum", "mean", "token_mean"):
        torch.testing.assert_close(ours(em, tags, mask, reduction=reduction),
                                   ref(em, tags, mask, reduction=reduction), atol=1e-5, rtol=1e-5)
    assert ours.decode(em, mask) == ref.decode(em, mask)
    # gradients flow through the pytorch-crf fallback too
    ours(em, tags, mask).backward()
    assert ours.transitions.grad is not None and torch.isfinite(ours.transitions.grad).all()
    # the extras refuse masks with gaps instead of answering differently
    for call in (lambda: ours.decode(em, mask, as_tensor=True), lambda: ours.decode(em, mask, nbest=2),
                 lambda: ours.marginals(em, mask)):
        with pytest.raises(ValueError, match="prefix masks"):
            call()


def test_gapped_mask_example_from_the_report():
    ours, ref = _pair(3, True, "torch", seed=1)
    em = torch.randn(1, 3, 3)
    tags = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    assert ours(em, tags, mask).item() == pytest.approx(ref(em, tags, mask).item(), abs=1e-5)
    assert ours.decode(em, mask) == ref.decode(em, mask)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch_matches_torchcrf(backend, batch_first):
    ours, ref = _pair(3, batch_first, backend)
    shape = (0, 4) if batch_first else (4, 0)
    em = torch.randn(*shape, 3)
    tags = torch.zeros(shape, dtype=torch.long)
    for mask in (None, torch.ones(shape, dtype=torch.bool)):
        for reduction in ("none", "sum", "mean", "token_mean"):
            got, want = ours(em, tags, mask, reduction=reduction), ref(em, tags, mask, reduction=reduction)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, equal_nan=True)
        assert ours.decode(em, mask) == ref.decode(em, mask) == []
    assert ours(em, tags).item() == 0.0
    # an empty sequence: pytorch-crf's IndexError
    em0 = torch.randn(0, 2, 3) if not batch_first else torch.randn(2, 0, 3)
    tags0 = torch.zeros(em0.shape[:2], dtype=torch.long)
    for model in (ours, ref):
        with pytest.raises(IndexError):
            model(em0, tags0)
        with pytest.raises(IndexError):
            model.decode(em0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_emissions_match_torchcrf(backend, value):
    ours, ref = _pair(3, False, backend, seed=2)
    em = torch.randn(4, 2, 3)
    tags = torch.tensor([[0, 1], [1, 1], [2, 0], [0, 2]])
    em[1, 0, 1] = value  # on the tag path of sequence 0
    em[2, 1, 2] = value  # off the tag path of sequence 1
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0]], dtype=torch.bool)
    for m in (None, mask):
        for reduction in ("none", "sum", "mean", "token_mean"):
            torch.testing.assert_close(ours(em, tags, m, reduction=reduction),
                                       ref(em, tags, m, reduction=reduction), equal_nan=True)
        assert ours.decode(em, m) == ref.decode(em, m)
