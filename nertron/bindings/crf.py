"""Linear-chain CRF: a drop-in replacement for ``torchcrf.CRF`` (pytorch-crf 0.7.2).

Contents:

* the PyTorch reference implementations (``crf_score_torch``, ``crf_log_partition_torch``,
  ``crf_viterbi_torch``, ``crf_marginals_torch``): vectorised over the batch, looping over
  time only. They are the CPU path and the oracle of the kernel tests;
* ``CRFLogPartition``: the autograd Function over the Triton forward / forward-backward
  kernels of :mod:`nertron.kernels.crf`;
* ``CRF``: the module, parameter-, ``repr``-, ``state_dict``- and error-compatible with
  ``torchcrf.CRF``, plus ``decode(..., as_tensor=True)``, ``marginals``, constrained
  decoding and a ``backend`` switch;
* ``allowed_transitions``: builds the allowed-transition constraints for BIO/IOB2, IOB1 and
  BIOES/BILOU label sets;
* ``crf_span_log_probs``: log-probabilities of tagged spans (entity confidences), from
  alpha, beta and log Z of the Triton kernels (``crf_alpha_beta``, on CUDA by default) or
  of the PyTorch reference, then one shared gather of the inner path scores.

Masks follow pytorch-crf: ``(T, B)`` (or ``(B, T)`` with ``batch_first``) bool/uint8, the
first step all on. They are taken to be prefix masks (ones, then zeros), as pytorch-crf's
own ``decode`` does when it takes lengths from ``mask.sum(0)``; the Triton kernels work on
those lengths (each launcher checks ``1 <= length <= T``, which such masks always meet).

All statistics are computed in fp32 (fp64 when emissions and parameters are fp64 on the
reference path), whatever the emission dtype; ``crf_span_log_probs`` with
``backend='auto'`` therefore keeps all-fp64 inputs on the reference path.
"""
from __future__ import annotations

import itertools
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from nertron.bindings import BACKENDS as _BACKENDS

__all__ = [
    "CRF",
    "Constraints",
    "allowed_transitions",
    "crf_score_torch",
    "crf_log_partition_torch",
    "crf_viterbi_torch",
    "crf_viterbi_nbest_torch",
    "crf_marginals_torch",
    "crf_span_log_probs",
    "CRFLogPartition",
]

# Largest spread (max - min) of finite transition scores for which the reference forward
# uses the exp-space matrix product: a term then underflows only if it is below
# e^(-87 + spread) of its column's largest term (fp32), i.e. below rounding error.
_MATMUL_SPREAD = {torch.float32: 50.0, torch.float64: 600.0}


def _kernels():
    # imported lazily: importing the kernels needs triton, and TRITON_INTERPRET must be
    # set (on machines without a GPU) before they are decorated
    from nertron.kernels import crf as kernels
    return kernels


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 when everything is fp64, fp32 otherwise (half-precision inputs included)."""
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


# --------------------------------------------------------------------------------------
# PyTorch reference implementations (batch first: emissions (B, T, K), mask (B, T) bool)
# --------------------------------------------------------------------------------------
def crf_score_torch(emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor,
                    start: torch.Tensor, end: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """Score of the given tag paths (the numerator of the likelihood), without a time loop.

    Args:
        emissions: ``(B, T, K)``; tags: ``(B, T)`` int64; mask: ``(B, T)`` bool prefix mask.
        start, end: ``(K,)``; transitions: ``(K, K)``, ``[i, j]`` = score of i -> j.

    Returns:
        ``(B,)`` path scores in the compute dtype.
    """
    dt = _compute_dtype(emissions, transitions)
    B, T = tags.shape
    # shape: (B, T)
    emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2).to(dt)
    # shape: (B, T - 1)
    trans = transitions[tags[:, :-1], tags[:, 1:]].to(dt)
    # shape: (B,)
    last = tags.gather(1, (mask.sum(1) - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    zero = emit.new_zeros(())
    # shape: (B,)
    score = start[tags[:, 0]].to(dt) + emit[:, 0] + end[last].to(dt)
    score = score + torch.where(mask[:, 1:], emit[:, 1:] + trans, zero).sum(1)
    return score


def _exp_transitions(transitions: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(exp(transitions - col_max), col_max)`` for the matrix-product log-sum-exp, or None
    when the exact broadcast log-sum-exp must be used (non-finite or widely spread scores)."""
    tr = transitions.detach()
    if not bool(torch.isfinite(tr).all()):
        return None
    if float(tr.max() - tr.min()) > _MATMUL_SPREAD.get(tr.dtype, 50.0):
        return None
    # shape: (K,)
    col_max = tr.amax(0)
    # shape: (K, K)
    return torch.exp(transitions - col_max), col_max


def _log_matmul_exp(alpha: torch.Tensor, transitions: torch.Tensor,
                    exp_trans: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``out[b, j] = logsumexp_i(alpha[b, i] + transitions[i, j])``.

    With ``exp_trans`` it is one ``(B, K) @ (K, K)`` product in exp space, shifted by the
    row max of alpha and the column max of the transitions (a BLAS call instead of a
    ``(B, K, K)`` temporary); otherwise the exact broadcast log-sum-exp.
    """
    if exp_trans is None:
        # shape: (B, K)
        return torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1)
    et, col_max = exp_trans
    # shape: (B, 1); clamped so that an all -inf row (unreachable) stays -inf, not NaN
    m = alpha.detach().amax(1, keepdim=True).clamp_(min=-1e30)
    # shape: (B, K)
    return torch.log(torch.exp(alpha - m) @ et) + (m + col_max)


def _alphas(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
            transitions: torch.Tensor, keep: bool) -> Tuple[torch.Tensor, Optional[List[torch.Tensor]]]:
    dt = _compute_dtype(emissions, transitions)
    emissions = emissions.to(dt)
    transitions = transitions.to(dt)
    exp_trans = _exp_transitions(transitions)
    # one unbind instead of a slice per step: autograd's backward of emissions[:, t]
    # would allocate a zero (B, T, K) gradient per step (quadratic in T)
    # T x shape: (B, K)
    steps = emissions.unbind(1)
    # shape: (B, K)
    alpha = start.to(dt) + steps[0]
    history = [alpha] if keep else None
    all_on = int(mask.sum(1).min())  # steps before this are on in every row: no select
    for t in range(1, len(steps)):
        # shape: (B, K)
        nxt = _log_matmul_exp(alpha, transitions, exp_trans) + steps[t]
        alpha = nxt if t < all_on else torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        if keep:
            history.append(alpha)
    return alpha, history


def _trim(emissions: torch.Tensor, mask: torch.Tensor, *rest: torch.Tensor):
    """Drop the time steps past the longest sequence (they are padding everywhere)."""
    t_max = int(mask.sum(1).max())
    return (emissions[:, :t_max], mask[:, :t_max], *(r[:, :t_max] for r in rest))


def crf_log_partition_torch(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                            end: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """Log partition function (forward algorithm), differentiable by autograd.

    Args:
        emissions: ``(B, T, K)``; mask: ``(B, T)`` bool; start, end: ``(K,)``;
        transitions: ``(K, K)``.

    Returns:
        ``(B,)`` log Z in the compute dtype.
    """
    emissions, mask = _trim(emissions, mask)
    alpha, _ = _alphas(emissions, mask, start, transitions, keep=False)
    # shape: (B,)
    return torch.logsumexp(alpha + end.to(alpha.dtype), dim=1)


def crf_marginals_torch(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                        end: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """Per-token tag probabilities by the forward-backward algorithm.

    Returns:
        ``(B, T, K)`` probabilities ``P(y_t = k | x)`` in the compute dtype, 0 at padding.
    """
    B, T, K = emissions.shape
    emissions, mask = _trim(emissions, mask)
    _, alphas = _alphas(emissions, mask, start, transitions, keep=True)
    dt = alphas[0].dtype
    em = emissions.to(dt)
    tr_t = transitions.to(dt).t()
    exp_trans = _exp_transitions(tr_t)
    # beta_t[i] = logsumexp_j(trans[i, j] + em[t+1, j] + beta_{t+1}[j]); padded steps keep
    # the end score, so every sequence starts its backward recursion at its last step
    # shape: (B, K)
    beta = end.to(dt).expand(B, K)
    betas = [beta]
    for t in range(em.size(1) - 1, 0, -1):
        # shape: (B, K)
        prev = _log_matmul_exp(em[:, t] + beta, tr_t, exp_trans)
        beta = torch.where(mask[:, t].unsqueeze(1), prev, beta)
        betas.append(beta)
    betas.reverse()
    # shape: (B, T', K)
    alpha = torch.stack(alphas, 1)
    beta = torch.stack(betas, 1)
    log_z = torch.logsumexp(alphas[-1] + end.to(dt), dim=1)
    probs = torch.exp(alpha + beta - log_z[:, None, None])
    probs = torch.where(mask.unsqueeze(2), probs, torch.zeros_like(probs))
    out = probs.new_zeros((B, T, K))
    out[:, :probs.size(1)] = probs
    return out


def _betas(emissions: torch.Tensor, mask: torch.Tensor, end: torch.Tensor,
           transitions: torch.Tensor) -> torch.Tensor:
    """Backward log-scores ``beta_t[i] = logsumexp_j(trans[i, j] + em[t+1, j] + beta_{t+1}[j])``.

    Args:
        emissions: ``(B, T, K)`` in the compute dtype; mask: ``(B, T)`` bool prefix mask;
        end: ``(K,)``; transitions: ``(K, K)``.

    Returns:
        ``(B, T, K)``; ``beta`` at a sequence's last step is ``end`` (padded steps keep it).
    """
    B, T, K = emissions.shape
    dt = emissions.dtype
    tr_t = transitions.to(dt).t()
    exp_trans = _exp_transitions(tr_t)
    # shape: (B, K)
    beta = end.to(dt).expand(B, K)
    betas = [beta]
    for t in range(T - 1, 0, -1):
        # shape: (B, K)
        prev = _log_matmul_exp(emissions[:, t] + beta, tr_t, exp_trans)
        beta = torch.where(mask[:, t].unsqueeze(1), prev, beta)
        betas.append(beta)
    betas.reverse()
    return torch.stack(betas, 1)


def crf_span_log_probs(emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor,
                       spans: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                       transitions: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Log-probability that a stretch of a sequence carries the given tags, for many stretches.

    For a span ``(b, i, j)`` of sequence ``b`` (positions ``i..j`` inclusive) it is
    ``log P(y_i..y_j = tags[b, i..j] | x)`` =
    ``log_alpha_i(y_i) + sum_{t=i+1..j}(trans[y_{t-1}, y_t] + em_t(y_t)) + log_beta_j(y_j) - log Z``,
    the tags outside the span summed over (forward-backward). With ``i == j`` it is the log
    marginal ``log P(y_i = tags[b, i])``. Pass the same (constrained) ``start``/``end``/
    ``transitions`` as the decoder so that the probabilities are those of the distribution
    the tags were decoded from; a disallowed transition inside a span gives ``-inf``.

    Alpha, beta and log Z come from the Triton kernels (:func:`nertron.kernels.crf.crf_alpha_beta`,
    two launches, fp32) or from the PyTorch reference (a loop over time); the inner path
    score and the gathers are the same code on both.

    Args:
        emissions: ``(B, T, K)``, any float dtype (computed in fp32, fp64 if all fp64 on the
            reference path).
        mask: ``(B, T)`` bool prefix mask, first step on.
        tags: ``(B, T)`` int64 tag ids (values outside the spans are not read; -1 allowed there).
        spans: ``(N, 3)`` int64 rows ``(b, i, j)`` with ``0 <= i <= j < length_b``.
        start, end: ``(K,)``; transitions: ``(K, K)``, ``[i, j]`` = score of i -> j
            (``-inf`` where disallowed).
        backend: ``'auto'`` (the kernels for CUDA tensors unless everything is fp64, the
            reference otherwise), ``'torch'`` or ``'triton'`` (the kernels on any device;
            on CPU tensors they run in Triton's interpreter, which needs
            ``TRITON_INTERPRET=1`` before import).

    Returns:
        ``(N,)`` log-probabilities in the compute dtype (fp32 on the kernel path).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"invalid backend: {backend!r}; expected one of {_BACKENDS}")
    n_spans = spans.shape[0]
    dt = _compute_dtype(emissions, transitions)
    if backend == "auto":
        # fp64 callers ask for fp64 statistics, which only the reference computes
        use_kernels = emissions.is_cuda and dt != torch.float64
    else:
        use_kernels = backend == "triton"
    if use_kernels:
        dt = torch.float32
    if n_spans == 0:
        return emissions.new_zeros((0,), dtype=dt)
    emissions, mask, tags = _trim(emissions, mask, tags)
    em = emissions.to(dt)
    tr = transitions.to(dt)
    if use_kernels:
        # the kernels read the emissions in their own dtype and compute in fp32
        # shape: (B,), (B, T', K), (B, T', K)
        log_z, alpha, beta = _kernels().crf_alpha_beta(emissions, mask.sum(1), start, end, transitions)
    else:
        _, alphas = _alphas(em, mask, start, tr, keep=True)
        # shape: (B, T', K)
        alpha = torch.stack(alphas, 1)
        beta = _betas(em, mask, end, tr)
        # shape: (B,)
        log_z = torch.logsumexp(alphas[-1] + end.to(dt), dim=1)
    # shape: (B, T')
    y = tags.clamp(min=0)
    # score of entering y_t from y_{t-1} at step t (0 at t = 0, never read there)
    # shape: (B, T')
    step = em.gather(2, y.unsqueeze(2)).squeeze(2)
    step = torch.cat([step[:, :1].new_zeros(()).expand(step.shape[0], 1),
                      step[:, 1:] + tr[y[:, :-1], y[:, 1:]]], 1)
    b, i, j = spans.to(em.device).unbind(1)
    # inner sum over t in (i, j], gathered (not a cumsum difference: no cancellation, -inf stays -inf)
    width = int((j - i).max())
    # shape: (N, width)
    offsets = torch.arange(1, width + 1, device=em.device)
    positions = i.unsqueeze(1) + offsets
    inside = positions <= j.unsqueeze(1)
    picked = step[b.unsqueeze(1), positions.clamp(max=step.shape[1] - 1)]
    inner = torch.where(inside, picked, picked.new_zeros(())).sum(1)
    # shape: (N,)
    first = alpha[b, i, y[b, i]]
    last = beta[b, j, y[b, j]]
    return first + inner + last - log_z[b]


def crf_viterbi_torch(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                      end: torch.Tensor, transitions: torch.Tensor,
                      pad_tag: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Viterbi decoding with a batched back-trace (no per-sequence Python loop).

    Args:
        emissions: ``(B, T, K)``; mask: ``(B, T)`` bool prefix mask; start, end: ``(K,)``;
        transitions: ``(K, K)`` (``-inf`` where disallowed).
        pad_tag: tag written at padded steps.

    Returns:
        tags ``(B, T)`` int64 and best path scores ``(B,)``.
    """
    B, T, K = emissions.shape
    dt = _compute_dtype(emissions, transitions)
    lengths = mask.sum(1)
    all_on = int(lengths.min())  # steps before this are on in every row: no select
    emissions, mask = _trim(emissions, mask)
    t_max = emissions.size(1)
    em = emissions.to(dt)
    tr = transitions.to(dt)
    # back-pointers: history[t, b, j] = best previous tag of tag j at step t; int64 (what
    # gather wants) when small, else the smallest type that holds K
    small = t_max * B * K <= 1 << 24
    bp_dtype = torch.int64 if small or K > 256 else torch.uint8
    # shape: (T', B, K)
    history = torch.empty((t_max, B, K), dtype=bp_dtype, device=em.device)
    # padded steps point every tag to itself, so the back-trace needs no per-row logic
    # shape: (B, K)
    identity = torch.arange(K, device=em.device).expand(B, K)
    # transposed so that the max over the previous tag reduces the contiguous last dim;
    # one (B, K, K) buffer reused by every step (allocating it per step costs more than
    # the max itself for large K)
    # shape: (K_next, K_prev)
    tr_t = tr.t().contiguous()
    # shape: (B, K_next, K_prev)
    cand = em.new_empty((B, K, K))
    best = em.new_empty((B, K))
    # shape: (B, K)
    score = start.to(dt) + em[:, 0]
    for t in range(1, t_max):
        torch.add(score.unsqueeze(1), tr_t, out=cand)
        if small:
            torch.max(cand, dim=2, out=(best, history[t]))
        else:
            best, idx = cand.max(dim=2)
        # the emission does not depend on the previous tag: add it after the max
        if t < all_on:
            score = best + em[:, t]  # a new tensor: best is overwritten by the next max
            if not small:
                history[t] = idx
        else:
            on = mask[:, t].unsqueeze(1)
            score = torch.where(on, best + em[:, t], score)
            history[t] = torch.where(on, history[t] if small else idx, identity)
    # shape: (B,)
    best_score, cur = (score + end.to(dt)).max(dim=1)
    # batched back-trace from the last step: one gather per step
    tags = torch.empty((B, T), dtype=torch.int64, device=em.device)
    tags[:, t_max:] = pad_tag
    tags[:, t_max - 1] = cur
    cur = cur.unsqueeze(1)
    for t in range(t_max - 1, 0, -1):
        cur = history[t].gather(1, cur)
        if not small:
            cur = cur.long()
        tags[:, t - 1:t] = cur
    if t_max > all_on:
        tags[:, :t_max].masked_fill_(~mask, pad_tag)
    return tags, best_score


def crf_viterbi_nbest_torch(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                            end: torch.Tensor, transitions: torch.Tensor, nbest: int,
                            pad_tag: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """N-best (top-``nbest``) Viterbi: the ``nbest`` highest-scoring tag paths of each sequence.

    Each (step, tag) cell keeps the ``nbest`` best partial paths ending there instead of one;
    a step takes the top ``nbest`` of the ``K * nbest`` candidates per tag. Vectorised over
    the batch, looping over time only; back-pointers are (previous tag, previous rank) pairs
    flattened into one index, and padded steps point every cell to itself.

    Args:
        emissions: ``(B, T, K)``; mask: ``(B, T)`` bool prefix mask; start, end: ``(K,)``;
        transitions: ``(K, K)`` (``-inf`` where disallowed).
        nbest: how many paths per sequence (>= 1).
        pad_tag: tag written at padded steps, and in every step of a path that does not
            exist (a sequence with fewer than ``nbest`` allowed paths; its score is ``-inf``).

    Returns:
        tags ``(nbest, B, T)`` int64, best first, and their scores ``(nbest, B)``.
    """
    B, T, K = emissions.shape
    n = int(nbest)
    dt = _compute_dtype(emissions, transitions)
    emissions, mask = _trim(emissions, mask)
    t_max = emissions.size(1)
    em = emissions.to(dt)
    tr = transitions.to(dt)
    # score[b, j, r]: r-th best partial path ending in tag j; only rank 0 exists at t = 0
    # shape: (B, K, n)
    score = em.new_full((B, K, n), float("-inf"))
    score[:, :, 0] = start.to(dt) + em[:, 0]
    # back-pointers into the flattened (K_prev * n) candidates of the previous step
    # shape: (T', B, K, n)
    history = torch.empty((t_max, B, K, n), dtype=torch.int64, device=em.device)
    # padded steps: cell (j, r) points to itself
    # shape: (B, K, n)
    identity = (torch.arange(K, device=em.device)[:, None] * n
                + torch.arange(n, device=em.device)[None, :]).expand(B, K, n)
    # shape: (1, K_next, K_prev, 1)
    tr_t = tr.t()[None, :, :, None]
    for t in range(1, t_max):
        # candidates for tag j at step t: every (previous tag, rank) cell plus the transition
        # shape: (B, K_next, K_prev * n)
        cand = (score.unsqueeze(1) + tr_t).reshape(B, K, K * n)
        best, idx = cand.topk(n, dim=2)  # shape: (B, K, n), sorted best first
        on = mask[:, t].view(B, 1, 1)
        score = torch.where(on, best + em[:, t].unsqueeze(2), score)
        history[t] = torch.where(on, idx, identity)
    # shape: (B, K * n)
    final = (score + end.to(dt)[None, :, None]).reshape(B, K * n)
    scores, cur = final.topk(n, dim=1)  # shape: (B, n), flattened (tag, rank) cells
    tags = torch.full((n, B, T), pad_tag, dtype=torch.int64, device=em.device)
    for t in range(t_max - 1, -1, -1):
        tags[:, :, t] = (cur // n).t()
        if t > 0:
            cur = history[t].reshape(B, K * n).gather(1, cur)
    tags[:, :, :t_max].masked_fill_(~mask.unsqueeze(0), pad_tag)
    # paths that do not exist (fewer allowed paths than n) are all pad_tag
    tags.masked_fill_((scores == float("-inf")).t().unsqueeze(2), pad_tag)
    return tags, scores.t().contiguous()


# --------------------------------------------------------------------------------------
# autograd Function over the Triton kernels
# --------------------------------------------------------------------------------------
class CRFLogPartition(torch.autograd.Function):
    """log Z per sequence by the Triton forward kernel; gradients by the fused
    forward-backward kernel (unary and pairwise marginals), not by autograd over time."""

    @staticmethod
    def forward(ctx, emissions: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor,
                end: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
        k = _kernels()
        need = any(ctx.needs_input_grad)
        log_z, alpha = k.crf_forward(emissions, lengths, start, end, transitions, store_alpha=need)
        if need:
            ctx.save_for_backward(emissions, lengths, end, transitions, alpha, log_z)
            ctx.dtypes = (start.dtype, end.dtype, transitions.dtype)
        return log_z

    @staticmethod
    def backward(ctx, grad_log_z: torch.Tensor):
        emissions, lengths, end, transitions, alpha, log_z = ctx.saved_tensors
        g_em, g_start, g_end, g_tr = _kernels().crf_backward(
            emissions, lengths, end, transitions, alpha, log_z, grad_log_z)
        ds, de, dtr = ctx.dtypes
        return g_em, None, g_start.to(ds), g_end.to(de), g_tr.to(dtr)


# --------------------------------------------------------------------------------------
# constraints
# --------------------------------------------------------------------------------------
class Constraints(NamedTuple):
    """Allowed transitions ``(K, K)`` bool (``[i, j]``: i -> j), start ``(K,)`` and end
    ``(K,)`` bool tags."""
    transitions: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor


_SCHEMES = {"BIO": "BIO", "IOB2": "BIO", "IOB1": "IOB1", "BIOES": "BIOES", "IOBES": "BIOES",
            "BILOU": "BIOES"}


def _parse(label: str, scheme: str) -> Tuple[str, Optional[str]]:
    """``'B-PER'`` -> ``('B', 'PER')``; ``'O'`` -> ``('O', None)``; others -> ``('?', None)``."""
    if label == "O":
        return "O", None
    prefix, sep, kind = label.partition("-")
    if sep and prefix:
        if scheme == "BIOES":
            prefix = {"L": "E", "U": "S"}.get(prefix, prefix)
            if prefix in ("B", "I", "E", "S"):
                return prefix, kind
        elif prefix in ("B", "I"):
            return prefix, kind
    return "?", None


def _allowed(prev: Tuple[str, Optional[str]], nxt: Tuple[str, Optional[str]], scheme: str) -> bool:
    (p, pk), (n, nk) = prev, nxt
    if p == "?" or n == "?":  # labels outside the scheme (e.g. '[PAD]') are unconstrained
        return True
    if scheme == "BIO":
        return n in ("O", "B") or (n == "I" and p in ("B", "I") and pk == nk)
    if scheme == "IOB1":
        return n in ("O", "I") or (n == "B" and p in ("B", "I") and pk == nk)
    # BIOES: inside an entity (after B or I) only I/E of the same type may follow
    if p in ("B", "I"):
        return n in ("I", "E") and pk == nk
    return n in ("O", "B", "S")


def allowed_transitions(labels: Sequence[str], scheme: str = "BIO") -> Constraints:
    """Allowed-transition constraints for a tagging scheme, for constrained decoding.

    Args:
        labels: the tag names in tag-index order, e.g. ``['O', 'B-PER', 'I-PER']``.
            Labels that do not fit the scheme (e.g. ``'[PAD]'``) are left unconstrained.
        scheme: ``'BIO'`` (= ``'IOB2'``), ``'IOB1'`` or ``'BIOES'`` (= ``'IOBES'``,
            ``'BILOU'`` with ``L``/``U`` for ``E``/``S``).

    Returns:
        :class:`Constraints` with ``transitions (K, K)``, ``start (K,)`` and ``end (K,)``
        boolean tensors; e.g. in BIO, ``O -> I-PER``, ``B-LOC -> I-PER`` and starting with
        ``I-PER`` are disallowed.
    """
    key = _SCHEMES.get(scheme.upper())
    if key is None:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected one of {sorted(_SCHEMES)}")
    parsed = [_parse(label, key) for label in labels]
    K = len(parsed)
    trans = torch.zeros((K, K), dtype=torch.bool)
    for (i, a), (j, b) in itertools.product(enumerate(parsed), repeat=2):
        trans[i, j] = _allowed(a, b, key)
    outside = ("O", None)  # the start and the end behave like an O tag
    start = torch.tensor([_allowed(outside, p, key) for p in parsed], dtype=torch.bool)
    if key == "BIOES":
        end = torch.tensor([p[0] in ("O", "E", "S", "?") for p in parsed], dtype=torch.bool)
    else:
        end = torch.ones(K, dtype=torch.bool)
    return Constraints(trans, start, end)


# --------------------------------------------------------------------------------------
# the module
# --------------------------------------------------------------------------------------
class CRF(nn.Module):
    """Conditional random field, a drop-in replacement for ``torchcrf.CRF``.

    Same constructor, parameters (``start_transitions (K,)``, ``end_transitions (K,)``,
    ``transitions (K, K)`` with ``[i, j]`` the score of i -> j, uniform(-0.1, 0.1) init),
    ``repr``, ``state_dict``, ``forward`` (log-likelihood), ``decode`` and errors as
    pytorch-crf 0.7.2. Extras, off by default:

    Args:
        num_tags: Number of tags.
        batch_first: Whether the first dimension corresponds to the size of a minibatch.
        backend: ``'auto'`` (Triton kernels on CUDA tensors, the PyTorch reference
            elsewhere), ``'torch'`` or ``'triton'`` (on CPU tensors the kernels run in
            Triton's interpreter, which needs ``TRITON_INTERPRET=1`` before import).
        constraints: optional :class:`Constraints` (or a ``(K, K)`` bool allowed-transition
            matrix) applied by ``decode`` and ``marginals``; ``forward`` (the training
            loss) stays unconstrained, as in AllenNLP. Not part of the ``state_dict``.
    """

    def __init__(self, num_tags: int, batch_first: bool = False, *, backend: str = "auto",
                 constraints: Optional[Union[Constraints, torch.Tensor]] = None) -> None:
        if num_tags <= 0:
            raise ValueError(f'invalid number of tags: {num_tags}')
        if backend not in _BACKENDS:
            raise ValueError(f"invalid backend: {backend!r}; expected one of {_BACKENDS}")
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.backend = backend
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        # non-persistent: state_dict stays interchangeable with torchcrf.CRF
        self.register_buffer("allowed_transitions", None, persistent=False)
        self.register_buffer("allowed_start", None, persistent=False)
        self.register_buffer("allowed_end", None, persistent=False)
        self.reset_parameters()
        if constraints is not None:
            self.set_constraints(constraints)

    def reset_parameters(self) -> None:
        """Initialize the transition parameters.

        The parameters will be initialized randomly from a uniform distribution
        between -0.1 and 0.1.
        """
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(num_tags={self.num_tags})'

    # ---------------------------------------------------------------- constraints
    def set_constraints(self, constraints: Optional[Union[Constraints, torch.Tensor]],
                        start: Optional[torch.Tensor] = None,
                        end: Optional[torch.Tensor] = None) -> None:
        """Set (or clear with None) the allowed transitions used by decode/marginals.

        Args:
            constraints: :class:`Constraints` or a ``(K, K)`` bool matrix (``[i, j]``: i -> j).
            start, end: optional ``(K,)`` bool allowed first/last tags (with a matrix).
        """
        if constraints is None:
            self.allowed_transitions = self.allowed_start = self.allowed_end = None
            return
        if isinstance(constraints, Constraints):
            trans, start, end = constraints
        else:
            trans = constraints
        K = self.num_tags
        dev = self.transitions.device
        trans = torch.as_tensor(trans, dtype=torch.bool, device=dev)
        start = torch.ones(K, dtype=torch.bool, device=dev) if start is None else \
            torch.as_tensor(start, dtype=torch.bool, device=dev)
        end = torch.ones(K, dtype=torch.bool, device=dev) if end is None else \
            torch.as_tensor(end, dtype=torch.bool, device=dev)
        if trans.shape != (K, K) or start.shape != (K,) or end.shape != (K,):
            raise ValueError(f'constraints must be ({K}, {K}) with start/end ({K},), got '
                             f'{tuple(trans.shape)}, {tuple(start.shape)}, {tuple(end.shape)}')
        self.allowed_transitions, self.allowed_start, self.allowed_end = trans, start, end

    def _scores(self, constrained: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start, end, trans = self.start_transitions, self.end_transitions, self.transitions
        if constrained and self.allowed_transitions is not None:
            ninf = float("-inf")
            start = start.masked_fill(~self.allowed_start, ninf)
            end = end.masked_fill(~self.allowed_end, ninf)
            trans = trans.masked_fill(~self.allowed_transitions, ninf)
        return start, end, trans

    # ---------------------------------------------------------------- helpers
    def _use_triton(self, emissions: torch.Tensor) -> bool:
        if self.backend == "auto":
            return emissions.is_cuda
        return self.backend == "triton"

    def _batch_first(self, emissions: torch.Tensor, mask: Optional[torch.Tensor],
                     *rest: torch.Tensor):
        """Views in (B, T, ...) layout (no copies) and a bool mask."""
        if mask is None:
            mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        if not self.batch_first:
            emissions = emissions.transpose(0, 1)
            mask = mask.transpose(0, 1)
            rest = tuple(r.transpose(0, 1) for r in rest)
        return (emissions, mask.bool(), *rest)

    def _validate(
            self,
            emissions: torch.Tensor,
            tags: Optional[torch.LongTensor] = None,
            mask: Optional[torch.ByteTensor] = None) -> None:
        if emissions.dim() != 3:
            raise ValueError(f'emissions must have dimension of 3, got {emissions.dim()}')
        if emissions.size(2) != self.num_tags:
            raise ValueError(
                f'expected last dimension of emissions is {self.num_tags}, '
                f'got {emissions.size(2)}')

        if tags is not None:
            if emissions.shape[:2] != tags.shape:
                raise ValueError(
                    'the first two dimensions of emissions and tags must match, '
                    f'got {tuple(emissions.shape[:2])} and {tuple(tags.shape)}')

        if mask is not None:
            if emissions.shape[:2] != mask.shape:
                raise ValueError(
                    'the first two dimensions of emissions and mask must match, '
                    f'got {tuple(emissions.shape[:2])} and {tuple(mask.shape)}')
            no_empty_seq = not self.batch_first and mask[0].all()
            no_empty_seq_bf = self.batch_first and mask[:, 0].all()
            if not no_empty_seq and not no_empty_seq_bf:
                raise ValueError('mask of the first timestep must all be on')

    def _log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        start, end, trans = self._scores(constrained=False)
        if self._use_triton(emissions):
            lengths = mask.sum(1).to(torch.int32)
            return CRFLogPartition.apply(emissions, lengths, start, end, trans)
        return crf_log_partition_torch(emissions, mask, start, end, trans)

    # ---------------------------------------------------------------- public API
    def forward(
            self,
            emissions: torch.Tensor,
            tags: torch.LongTensor,
            mask: Optional[torch.ByteTensor] = None,
            reduction: str = 'sum',
    ) -> torch.Tensor:
        """Compute the conditional log likelihood of a sequence of tags given emission scores.

        Args:
            emissions: ``(seq_length, batch_size, num_tags)`` if ``batch_first`` is False,
                ``(batch_size, seq_length, num_tags)`` otherwise; fp32, fp16 or bf16.
            tags: ``(seq_length, batch_size)`` (``(batch_size, seq_length)`` if batch first).
            mask: same shape as ``tags``, bool or uint8, first step all on.
            reduction: ``none|sum|mean|token_mean``.

        Returns:
            The log likelihood, ``(batch_size,)`` with ``none``, ``()`` otherwise (fp32).
        """
        self._validate(emissions, tags=tags, mask=mask)
        if reduction not in ('none', 'sum', 'mean', 'token_mean'):
            raise ValueError(f'invalid reduction: {reduction}')
        emissions, mask, tags = self._batch_first(emissions, mask, tags)
        # shape: (B,)
        numerator = crf_score_torch(emissions, tags, mask, self.start_transitions,
                                    self.end_transitions, self.transitions)
        # shape: (B,)
        denominator = self._log_partition(emissions, mask)
        llh = numerator - denominator.to(numerator.dtype)
        if reduction == 'none':
            return llh
        if reduction == 'sum':
            return llh.sum()
        if reduction == 'mean':
            return llh.mean()
        return llh.sum() / mask.float().sum()

    def decode(self, emissions: torch.Tensor, mask: Optional[torch.ByteTensor] = None, *,
               as_tensor: bool = False, pad_tag: int = -1, nbest: Optional[int] = None
               ) -> Union[List[List[int]], List[List[List[int]]], Tuple[torch.Tensor, torch.Tensor]]:
        """Find the most likely tag sequence using the Viterbi algorithm.

        Args:
            emissions: ``(seq_length, batch_size, num_tags)`` or batch first.
            mask: ``(seq_length, batch_size)`` or batch first, first step all on.
            as_tensor: return ``(tags, scores)`` tensors instead of Python lists: ``tags``
                int64 in the layout of ``mask`` (``(T, B)``, or ``(B, T)`` if batch first)
                with ``pad_tag`` at padded steps, ``scores`` ``(B,)`` best path scores.
            pad_tag: the tag written at padded steps when ``as_tensor``.
            nbest: also the next best paths: the ``nbest`` highest-scoring paths per
                sequence, best first (PyTorch reference path on every device). Lists: per
                sequence a list of up to ``nbest`` paths (fewer when fewer paths are
                allowed); tensors: ``tags`` with a leading ``nbest`` dimension and
                ``scores`` ``(nbest, B)``, ``-inf`` (and ``pad_tag`` tags) for missing paths.

        Returns:
            List of list containing the best tag sequence for each batch (or the tensors).
        """
        self._validate(emissions, mask=mask)
        emissions, mask = self._batch_first(emissions, mask)
        start, end, trans = self._scores(constrained=True)
        if nbest is not None:
            if isinstance(nbest, bool) or not isinstance(nbest, int) or nbest < 1:
                raise ValueError(f"nbest must be a positive int, got {nbest!r}")
            with torch.no_grad():
                tags, scores = crf_viterbi_nbest_torch(emissions, mask, start, end, trans, nbest, pad_tag=pad_tag)
            if as_tensor:
                return (tags if self.batch_first else tags.transpose(1, 2)), scores
            lengths = mask.sum(1).tolist()
            alive = (scores > float("-inf")).t().tolist()  # shape: (B, nbest)
            paths = tags.permute(1, 0, 2).tolist()  # shape: (B, nbest, T)
            return [[path[:n] for path, ok in zip(rows, keep) if ok]
                    for rows, keep, n in zip(paths, alive, lengths)]
        with torch.no_grad():
            if self._use_triton(emissions):
                lengths = mask.sum(1).to(torch.int32)
                tags, scores = _kernels().crf_viterbi(emissions, lengths, start, end, trans,
                                                      pad_tag=pad_tag)
            else:
                tags, scores = crf_viterbi_torch(emissions, mask, start, end, trans,
                                                 pad_tag=pad_tag)
        if as_tensor:
            return (tags if self.batch_first else tags.t()), scores
        lengths = mask.sum(1).tolist()
        return [row[:n] for row, n in zip(tags.tolist(), lengths)]

    def marginals(self, emissions: torch.Tensor,
                  mask: Optional[torch.ByteTensor] = None) -> torch.Tensor:
        """Per-token tag probabilities ``P(y_t = k | x)`` (confidence scores).

        Args:
            emissions: ``(seq_length, batch_size, num_tags)`` or batch first.
            mask: ``(seq_length, batch_size)`` or batch first, first step all on.

        Returns:
            fp32 probabilities in the layout of ``emissions``, 0 at padded steps.
        """
        self._validate(emissions, mask=mask)
        emissions, mask = self._batch_first(emissions, mask)
        start, end, trans = self._scores(constrained=True)
        with torch.no_grad():
            if self._use_triton(emissions):
                lengths = mask.sum(1).to(torch.int32)
                probs = _kernels().crf_marginals(emissions, lengths, start, end, trans)
            else:
                probs = crf_marginals_torch(emissions, mask, start, end, trans)
        return probs if self.batch_first else probs.transpose(0, 1)
