"""Fuzz: nertron.CRF against torchcrf.CRF on random emissions (with +-inf and nan), tags and
masks (prefix, gapped, first step off): the same values (within tolerances) and paths, or
the same exception type."""
from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torchcrf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nertron import CRF  # noqa: E402

_SPECIAL = st.sampled_from([float("inf"), float("-inf"), float("nan")])


@st.composite
def crf_inputs(draw):
    B = draw(st.integers(0, 3))
    T = draw(st.integers(1, 4))
    K = draw(st.integers(1, 3))
    values = st.floats(-3, 3, allow_nan=False, width=32)
    em = torch.tensor(draw(st.lists(values, min_size=B * T * K, max_size=B * T * K)),
                      dtype=torch.float32).reshape(B, T, K)
    if B and draw(st.integers(0, 3)) == 0:  # sometimes a few non-finite emissions
        for _ in range(draw(st.integers(1, 2))):
            b, t, k = draw(st.integers(0, B - 1)), draw(st.integers(0, T - 1)), draw(st.integers(0, K - 1))
            em[b, t, k] = draw(_SPECIAL)
    tags = torch.tensor(draw(st.lists(st.integers(0, K - 1), min_size=B * T, max_size=B * T)),
                        dtype=torch.long).reshape(B, T)
    kind = draw(st.sampled_from(["none", "prefix", "gapped", "first_off"]))
    mask = None
    if kind != "none":
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T)),
                            dtype=torch.bool).reshape(B, T)
        if kind == "prefix":
            lengths = [draw(st.integers(1, T)) for _ in range(B)]
            mask = torch.arange(T)[None, :] < torch.tensor(lengths, dtype=torch.long).reshape(B, 1)
        elif kind == "gapped" and B:
            mask[:, 0] = True
        elif kind == "first_off" and B:
            mask[draw(st.integers(0, B - 1)), 0] = False
        if draw(st.booleans()):
            mask = mask.to(torch.uint8)
    batch_first = draw(st.booleans())
    reduction = draw(st.sampled_from(["none", "sum", "mean", "token_mean"]))
    seed = draw(st.integers(0, 2 ** 16))
    return em, tags, mask, batch_first, reduction, seed, K


def _run(fn):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(), None
    except Exception as err:  # noqa: BLE001 - compared below
        return None, err


def _paths_comparable(ref, em, mask):
    """Paths are compared where every score is finite and the best path is unique."""
    if not torch.isfinite(em).all():
        return False
    # ties: a second Viterbi best equal to the best (checked by brute force on tiny shapes)
    B, T, K = em.shape
    m = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()
    for b in range(B):
        n = int(m[b].sum())
        if not bool(m[b, 0]):
            return False
        if bool((m[b, 1:] & ~m[b, :-1]).any()):
            return False  # gapped: pytorch-crf's scores do not define a single path score
        scores = []
        for path in itertools.product(range(K), repeat=n):
            s = ref.start_transitions[path[0]] + em[b, 0, path[0]]
            for t in range(1, n):
                s = s + ref.transitions[path[t - 1], path[t]] + em[b, t, path[t]]
            scores.append(float((s + ref.end_transitions[path[-1]]).detach()))
        scores.sort(reverse=True)
        if len(scores) > 1 and scores[0] - scores[1] < 1e-4:
            return False
    return True


def _check(backend, data):
    em, tags, mask, batch_first, reduction, seed, K = data
    torch.manual_seed(seed)
    ours = CRF(K, batch_first=batch_first, backend=backend)
    ref = torchcrf.CRF(K, batch_first=batch_first)
    ref.load_state_dict(ours.state_dict())
    em_l, tags_l, mask_l = em, tags, mask
    if not batch_first:
        em_l, tags_l = em.transpose(0, 1), tags.t()
        mask_l = None if mask is None else mask.t()

    got, err = _run(lambda: ours(em_l, tags_l, mask_l, reduction=reduction))
    want, ref_err = _run(lambda: ref(em_l, tags_l, mask_l, reduction=reduction))
    assert type(err) is type(ref_err), (err, ref_err)
    if ref_err is None:
        assert got.shape == want.shape
        torch.testing.assert_close(got.detach(), want.detach(), atol=1e-4, rtol=1e-4, equal_nan=True)

    got, err = _run(lambda: ours.decode(em_l, mask_l))
    want, ref_err = _run(lambda: ref.decode(em_l, mask_l))
    assert type(err) is type(ref_err), (err, ref_err)
    if ref_err is None:
        assert [len(p) for p in got] == [len(p) for p in want]
        if _paths_comparable(ref, em, mask):
            assert got == want


_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=60, **_SETTINGS)
@given(crf_inputs())
def test_fuzz_torch_backend_matches_torchcrf(data):
    _check("torch", data)


@settings(max_examples=6, **_SETTINGS)
@given(crf_inputs())
def test_fuzz_triton_backend_matches_torchcrf(data):
    _check("triton", data)
