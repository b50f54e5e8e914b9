"""PyTorch reference algorithms of the linear-chain CRF (batch first).

The CPU path of :class:`nertron.bindings.crf.CRF` and of
:func:`nertron.bindings.crf.crf_span_log_probs`, and the oracle of the kernel tests.
Every function is vectorised over the batch and loops over time only:

* ``crf_score_torch``: score of given tag paths (no time loop);
* ``crf_log_partition_torch``: log Z by the forward algorithm (``_alphas``),
  differentiable by autograd;
* ``crf_marginals_torch``: per-token tag probabilities by forward-backward
  (``crf_alpha_beta_torch``: ``_alphas`` and the one beta recursion, ``_betas``, which
  ``crf_span_log_probs`` shares);
* ``crf_viterbi_torch`` / ``crf_viterbi_nbest_torch``: the best / ``nbest`` best paths,
  with a batched back-trace;
* ``crf_llh_torchcrf`` / ``crf_viterbi_torchcrf``: pytorch-crf's own step-by-step
  algorithms, which ``CRF.forward`` / ``CRF.decode`` fall back to (``needs_torchcrf_compat``)
  for non-prefix masks, empty batches and non-finite scores, so that they return exactly
  what pytorch-crf returns there.

Layout: emissions ``(B, T, K)``, mask ``(B, T)`` bool prefix mask (ones, then zeros, the
first step on), tags ``(B, T)`` int64, start/end ``(K,)``, transitions ``(K, K)`` with
``[i, j]`` the score of i -> j (``-inf`` where disallowed). Everything is computed in fp32,
or in fp64 when emissions and transitions are both fp64 (``compute_dtype``).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from nertron.bindings.masks import mask_gaps

__all__ = [
    "compute_dtype",
    "trim_to_longest",
    "crf_alpha_beta_torch",
    "crf_score_torch",
    "crf_log_partition_torch",
    "crf_marginals_torch",
    "crf_viterbi_torch",
    "crf_viterbi_nbest_torch",
    "needs_torchcrf_compat",
    "crf_llh_torchcrf",
    "crf_viterbi_torchcrf",
]

# Largest spread (max - min) of finite transition scores for which the reference forward
# uses the exp-space matrix product: a term then underflows only if it is below
# e^(-87 + spread) of its column's largest term (fp32), i.e. below rounding error.
_MATMUL_SPREAD = {torch.float32: 50.0, torch.float64: 600.0}


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 when everything is fp64, fp32 otherwise (half-precision inputs included)."""
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


def trim_to_longest(emissions: torch.Tensor, mask: torch.Tensor, *rest: torch.Tensor):
    """Drop the time steps past the longest sequence (they are padding everywhere)."""
    t_max = int(mask.sum(1).max())
    return (emissions[:, :t_max], mask[:, :t_max], *(r[:, :t_max] for r in rest))


# --------------------------------------------------------------------------------------
# path scores
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
    dt = compute_dtype(emissions, transitions)
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



# --------------------------------------------------------------------------------------
# forward and backward recursions (log-sum-exp over the previous / next tag)
# --------------------------------------------------------------------------------------
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
    """Forward log-scores ``alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + trans[i, j]) + em[t, j]``.

    Args:
        emissions: ``(B, T, K)``; mask: ``(B, T)`` bool prefix mask; start: ``(K,)``;
        transitions: ``(K, K)``.
        keep: also return the alpha of every step (else None).

    Returns:
        the last alpha ``(B, K)`` (each sequence's own last step: padded steps keep it) and,
        with ``keep``, the list of the ``T`` alphas ``(B, K)``, in the compute dtype.
    """
    dt = compute_dtype(emissions, transitions)
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


def _betas(emissions: torch.Tensor, mask: torch.Tensor, end: torch.Tensor,
           transitions: torch.Tensor) -> torch.Tensor:
    """Backward log-scores ``beta_t[i] = logsumexp_j(trans[i, j] + em[t+1, j] + beta_{t+1}[j])``.

    The one beta recursion of the reference (marginals and span scores share it through
    :func:`crf_alpha_beta_torch`). Padded steps keep the end score, so every sequence starts its
    backward recursion at its own last step.

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


def crf_alpha_beta_torch(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                         end: torch.Tensor, transitions: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward log-scores: the reference twin of
    :func:`nertron.kernels.crf.crf_alpha_beta`.

    Args:
        emissions: ``(B, T, K)``, trimmed to the longest sequence (:func:`trim_to_longest`);
        mask: ``(B, T)`` bool prefix mask; start, end: ``(K,)``; transitions: ``(K, K)``.

    Returns:
        log_z ``(B,)``, alpha ``(B, T, K)`` and beta ``(B, T, K)`` in the compute dtype;
        ``alpha_t + beta_t - log_z`` is the log marginal of step ``t``. Past a sequence's
        length alpha keeps its last value and beta the end score.
    """
    dt = compute_dtype(emissions, transitions)
    em = emissions.to(dt)
    tr = transitions.to(dt)
    _, alphas = _alphas(em, mask, start, tr, keep=True)
    # shape: (B, T, K)
    alpha = torch.stack(alphas, 1)
    # shape: (B, T, K)
    beta = _betas(em, mask, end, tr)
    # shape: (B,)
    log_z = torch.logsumexp(alphas[-1] + end.to(dt), dim=1)
    return log_z, alpha, beta


def crf_log_partition_torch(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                            end: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """Log partition function (forward algorithm), differentiable by autograd.

    Args:
        emissions: ``(B, T, K)``; mask: ``(B, T)`` bool; start, end: ``(K,)``;
        transitions: ``(K, K)``.

    Returns:
        ``(B,)`` log Z in the compute dtype.
    """
    emissions, mask = trim_to_longest(emissions, mask)
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
    emissions, mask = trim_to_longest(emissions, mask)
    # shape: (B,), (B, T', K), (B, T', K)
    log_z, alpha, beta = crf_alpha_beta_torch(emissions, mask, start, end, transitions)
    # shape: (B, T', K)
    probs = torch.exp(alpha + beta - log_z[:, None, None])
    probs = torch.where(mask.unsqueeze(2), probs, torch.zeros_like(probs))
    # shape: (B, T, K)
    out = probs.new_zeros((B, T, K))
    out[:, :probs.size(1)] = probs
    return out


# --------------------------------------------------------------------------------------
# Viterbi decoding
# --------------------------------------------------------------------------------------
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
    dt = compute_dtype(emissions, transitions)
    lengths = mask.sum(1)
    all_on = int(lengths.min())  # steps before this are on in every row: no select
    emissions, mask = trim_to_longest(emissions, mask)
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
    dt = compute_dtype(emissions, transitions)
    emissions, mask = trim_to_longest(emissions, mask)
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
# pytorch-crf's own algorithms, for the inputs the fast paths do not cover
# --------------------------------------------------------------------------------------
def needs_torchcrf_compat(emissions: torch.Tensor, mask: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether ``CRF.forward`` / ``CRF.decode`` must run pytorch-crf's own algorithms
    (:func:`crf_llh_torchcrf`, :func:`crf_viterbi_torchcrf`) to give pytorch-crf's result.

    True for an empty batch or sequence, a mask that is not a prefix mask (a step on after
    a step off, e.g. ``[1, 0, 1]``: the fast paths work on lengths ``mask.sum``), or
    non-finite emissions or parameters (``inf``/``nan``, whose propagation depends on the
    exact order of pytorch-crf's operations). One host synchronisation; on CPU with fp32/fp64
    scores and (start, end, transitions) as ``params``, one pass of
    :func:`nertron.kernels.crf_cpu.needs_fallback` instead.

    Args:
        emissions: ``(B, T, K)``; mask: ``(B, T)`` bool; params: tensors checked for finiteness.
    """
    if emissions.numel() == 0:
        return True
    if len(params) == 3:
        from nertron.kernels import crf_cpu  # one pass in C on CPU (None: not applicable)

        fast = crf_cpu.needs_fallback(emissions, mask, *(p.detach() for p in params))
        if fast is not None:
            return fast
    # shape: ()
    flag = mask_gaps(mask) | ~torch.isfinite(emissions).all()
    for p in params:
        flag = flag | ~torch.isfinite(p.detach()).all()
    return bool(flag)


def crf_llh_torchcrf(emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor,
                     start: torch.Tensor, end: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """Log-likelihood computed exactly as pytorch-crf 0.7.2 computes it (``_compute_score``
    minus ``_compute_normalizer``), step by step, differentiable by autograd.

    Any mask (first step on): a masked step keeps the previous forward score and adds
    nothing to the path score, but the transition into an unmasked step is taken from the
    tag of the step just before it (masked or not), and the end transition from the tag at
    position ``mask.sum() - 1``, as pytorch-crf does. ``inf``/``nan`` propagate as in
    pytorch-crf (e.g. a masked ``inf`` emission times a 0 mask gives ``nan``).

    Args:
        emissions: ``(B, T, K)``; tags: ``(B, T)`` int64; mask: ``(B, T)`` bool;
        start, end: ``(K,)``; transitions: ``(K, K)``.

    Returns:
        ``(B,)`` log-likelihoods in the compute dtype. ``T == 0`` raises ``IndexError``, as
        in pytorch-crf.
    """
    dt = compute_dtype(emissions, transitions)
    # time first, as pytorch-crf
    # shape: (T, B, K), (T, B), (T, B)
    em = emissions.transpose(0, 1).to(dt)
    tg = tags.transpose(0, 1)
    m = mask.transpose(0, 1)
    start, end, transitions = start.to(dt), end.to(dt), transitions.to(dt)
    seq_length, batch_size = tg.shape
    ar = torch.arange(batch_size, device=em.device)
    mf = m.to(dt)
    # numerator (_compute_score)
    # shape: (B,)
    score = start[tg[0]] + em[0, ar, tg[0]]
    for i in range(1, seq_length):
        score = score + transitions[tg[i - 1], tg[i]] * mf[i]
        score = score + em[i, ar, tg[i]] * mf[i]
    seq_ends = m.long().sum(dim=0) - 1
    score = score + end[tg[seq_ends, ar]]
    # denominator (_compute_normalizer)
    # shape: (B, K)
    norm = start + em[0]
    for i in range(1, seq_length):
        nxt = torch.logsumexp(norm.unsqueeze(2) + transitions + em[i].unsqueeze(1), dim=1)
        norm = torch.where(m[i].unsqueeze(1), nxt, norm)
    norm = norm + end
    return score - torch.logsumexp(norm, dim=1)


def crf_viterbi_torchcrf(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor,
                         end: torch.Tensor, transitions: torch.Tensor
                         ) -> Tuple[List[List[int]], torch.Tensor]:
    """Viterbi decoding exactly as pytorch-crf 0.7.2's ``_viterbi_decode``, for any mask.

    Masked steps keep the previous scores; each sequence's path has ``mask.sum()`` tags,
    traced back through the first ``mask.sum() - 1`` back-pointers from the best final tag.

    Args:
        emissions: ``(B, T, K)``; mask: ``(B, T)`` bool; start, end: ``(K,)``;
        transitions: ``(K, K)`` (``-inf`` where disallowed).

    Returns:
        the paths (lists of ints) and the best final scores ``(B,)``.
    """
    dt = compute_dtype(emissions, transitions)
    em = emissions.transpose(0, 1).to(dt)
    m = mask.transpose(0, 1)
    start, end, transitions = start.to(dt), end.to(dt), transitions.to(dt)
    seq_length, batch_size = m.shape
    # shape: (B, K)
    score = start + em[0]
    history = []
    for i in range(1, seq_length):
        nxt, indices = (score.unsqueeze(2) + transitions + em[i].unsqueeze(1)).max(dim=1)
        score = torch.where(m[i].unsqueeze(1), nxt, score)
        history.append(indices)
    score = score + end
    seq_ends = (m.long().sum(dim=0) - 1).tolist()
    if batch_size == 0:
        return [], score.new_zeros((0,))
    best_scores, best_last = score.max(dim=1)
    hist = torch.stack(history).tolist() if history else []
    paths = []
    for idx in range(batch_size):
        best = [int(best_last[idx])]
        for h in reversed(hist[:seq_ends[idx]]):
            best.append(h[idx][best[-1]])
        best.reverse()
        paths.append(best)
    return paths, best_scores
