"""Linear-chain CRF kernels: Viterbi decoding, forward algorithm and forward-backward.

What is fused, and why
----------------------
``pytorch-crf`` runs every time step as a handful of separate PyTorch ops on a
``(B, K, K)`` tensor, and back-traces the Viterbi path with one ``.item()`` per tag. Here
one Triton program owns one sequence (the backward kernel owns a strided set of them)
and walks its time steps inside the kernel, so each step is a few hundred instructions
instead of several kernel launches plus host syncs:

* ``_crf_viterbi_kernel``: max-plus recursion over ``start + emissions + transitions``,
  back-pointers written to a ``(B, T, K)`` buffer of the smallest integer type that holds
  ``K`` (uint8 up to 256 tags), then the back-trace in the same program: the padded
  ``(B, T)`` tag tensor and the best path score come out of one launch, with no host
  round trip per step or per sequence.
* ``_crf_forward_kernel``: the forward algorithm (log-sum-exp recursion) giving log Z per
  sequence. With ``STORE_ALPHA`` the fp32 alphas ``(B, T, K)`` are kept for the backward
  pass; without it the recursion ping-pongs between two rows of a ``(B, 2, K)`` scratch.
* ``_crf_backward_kernel``: the beta recursion, fused with (``UNARY``) the unary marginals
  ``exp(alpha + beta - log Z)`` (= d log Z / d emissions, written straight into the
  emission gradient, scaled by the upstream gradient) and, with ``PAIRWISE``, the pairwise
  marginals summed over time into a per-program ``(K, K)`` partial that the launcher sums
  over programs (deterministic, no atomics). The same kernel with ``PAIRWISE=False`` and a
  unit upstream gradient returns the per-token tag probabilities (``crf_marginals``). With
  ``STORE_BETA`` every fp32 beta row is written to a ``(B, T, K)`` output (the tiled path
  runs its recursion on those rows instead of the per-program ping-pong scratch, through
  the one ``_beta_row`` helper); ``crf_alpha_beta`` runs it with neither ``UNARY`` nor
  ``PAIRWISE``, so alpha and log Z are not even read, and returns log Z, alpha and beta
  for span scores (``nertron.bindings.crf.crf_span_log_probs``).

Tiling: with ``K <= 64`` (``SINGLE_TILE``) the state vector (alpha, Viterbi score or beta)
stays in registers across time steps, the ``K x K`` transition tile is loaded once per
program, and the backward kernel keeps its transition/start/end gradient accumulators in
registers across all of its sequences: a step is a register-level max / log-sum-exp
over a ``TILE x TILE`` tile plus the emission load, with no memory round trip on the
recursion's critical path. With larger ``K`` the state lives in a small per-program
scratch row (L1/L2 resident) that each step reads back in ``TILE``-wide (64) source tiles
against ``TILE x TILE`` tiles of the transition matrix, reducing with an online max /
log-sum-exp across source tiles, so one code path covers any ``K`` (256 and beyond); a
``tl.debug_barrier`` separates the writes of step ``t`` from the reads of step ``t + 1``.

Numerics: emissions may be fp32, fp16, bf16 (or fp64); every load is converted to fp32
and all recursions, log-sum-exps and marginals are computed in fp32; only the emission
gradient is cast back to the emission dtype on store. Out-of-range tags are loaded as
``-inf`` so they never win a max nor add mass to a log-sum-exp; a log-sum-exp whose inputs
are all ``-inf`` (a tag that no allowed transition reaches) uses 0 as its shift so that it
yields ``-inf`` instead of NaN. Disallowed transitions (constrained decoding) are passed
in as ``-inf`` transition/start/end scores by the caller.

The three kernels share these pieces as ``@triton.jit`` helpers (inlined by the compiler,
so the generated code is that of the copies they replace): ``_load_scores`` (a ``-inf``
padded fp32 row), ``_load_emissions`` (a 0-padded fp32 emission row), ``_load_transitions``
(the masked ``TILE x TILE`` transition tile, ``-inf`` padded, fp32), ``_safe_shift`` (the
shift of 0 above), ``_lse_tile`` (log-sum-exp of a tile along an axis), ``_lse_init`` /
``_lse_update`` / ``_lse_finish`` (the online log-sum-exp across tiles), ``_first_step``
(start + first emission), ``_sequence`` (a sequence's int64 index, length, emission row)
and, in the backward kernel, ``_unary_marginal`` and ``_accumulate``.

Masks: the kernels take per-sequence lengths, i.e. they assume prefix masks (ones then
zeros), exactly as ``pytorch-crf``'s ``decode`` does (it uses ``mask.sum(0)``). Steps at
or beyond a sequence's length are neither read nor written (outputs there are whatever
the launcher initialised: -1 tags, zero gradients/marginals, uninitialised alpha/beta).
Every launcher checks ``1 <= lengths[b] <= T`` before any launch (a 0 would make the
kernels write before the row, ``T + 1`` past it) and raises a ``ValueError`` naming the
first offending batch index; the check costs one host sync (min and max of the lengths).

Compilation: a name keeps one type through every branch and loop iteration (a pointer
stays a pointer, a register row a row of the same shape and dtype): the GPU compiler
rejects a loop-carried variable whose type changes, which Triton's interpreter does not
notice, so tests in the interpreter cannot catch it. Hence e.g. ``beta_rows`` (pointer)
beside ``beta`` (register row) in the backward kernel.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from nertron.kernels.crf_cpu import check_lengths


# --------------------------------------------------------------------------------------
# shared pieces of the kernels (inlined by the compiler)
# --------------------------------------------------------------------------------------
@triton.jit
def _tags(t0, offs, K):
    """Tag indices ``t0 .. t0 + TILE - 1`` of a tile and their in-range mask."""
    k = t0 + offs
    return k, k < K


@triton.jit
def _load_scores(ptr, offs, mask):
    """fp32 scores ``ptr[offs]`` (start/end scores, alpha/beta/Viterbi rows); padded tags
    load as ``-inf``, so they never win a max nor add mass to a log-sum-exp."""
    return tl.load(ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)


@triton.jit
def _load_emissions(emis_row, t, emis_t_stride, emis_k_stride, offs, mask):
    """fp32 emission scores of step ``t`` for the tags ``offs`` (padded tags load as 0)."""
    return tl.load(emis_row + t * emis_t_stride + offs * emis_k_stride, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_transitions(trans_ptr, i, j, im, jm, K):
    """fp32 ``(TILE_i, TILE_j)`` tile ``transitions[i, j]`` (i -> j) of the row-major
    ``(K, K)`` matrix; padded source or target tags load as ``-inf``."""
    return tl.load(trans_ptr + i[:, None] * K + j[None, :],
                   mask=im[:, None] & jm[None, :], other=float("-inf")).to(tl.float32)


@triton.jit
def _safe_shift(m):
    """Shift of a log-sum-exp whose max is ``m``: 0 where ``m`` is -inf (all inputs -inf,
    a tag no allowed transition reaches), so that the result is -inf instead of NaN."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _lse_tile(x, AXIS: tl.constexpr):
    """Log-sum-exp of the 2-D tile ``x`` along ``AXIS``, with its shift and ``exp(x - shift)``
    (the backward kernel reuses both for the pairwise marginals)."""
    shift = _safe_shift(tl.max(x, axis=AXIS))
    ex = tl.exp(x - tl.expand_dims(shift, AXIS))
    return shift + tl.log(tl.sum(ex, axis=AXIS)), shift, ex


@triton.jit
def _lse_init(TILE: tl.constexpr):
    """An empty online log-sum-exp ``(m, s)`` per lane: max -inf, sum 0."""
    return tl.full((TILE,), float("-inf"), tl.float32), tl.zeros((TILE,), tl.float32)


@triton.jit
def _lse_update(m, s, x, AXIS: tl.constexpr):
    """Online log-sum-exp: fold the 2-D tile ``x`` along ``AXIS`` into the running max ``m``
    and sum ``s`` (of ``exp(. - shift(m))``); returns the new ``(m, s)``."""
    m_new = tl.maximum(m, tl.max(x, axis=AXIS))
    shift = _safe_shift(m_new)
    s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - tl.expand_dims(shift, AXIS)), axis=AXIS)
    return m_new, s


@triton.jit
def _lse_finish(m, s):
    """The log-sum-exp of an online ``(m, s)`` pair."""
    return _safe_shift(m) + tl.log(s)


@triton.jit
def _sequence(b, len_ptr, emis_ptr, emis_b_stride):
    """Sequence ``b``: its index as int64, its length (int64: ``t * emis_t_stride`` may
    pass 2^31) and the pointer to its emission rows."""
    b64 = tl.cast(b, tl.int64)
    length = tl.load(len_ptr + b64).to(tl.int64)
    return b64, length, emis_ptr + b64 * emis_b_stride


@triton.jit
def _sequence_grad_inputs(b64, logz_ptr, glogz_ptr, alpha_ptr, alpha_b_stride, gemis_ptr, gemis_b_stride):
    """Backward kernel, sequence ``b64``: log Z, the upstream gradient, and pointers to its
    alpha rows and its emission-gradient rows."""
    logz = tl.load(logz_ptr + b64)
    g = tl.load(glogz_ptr + b64)
    return logz, g, alpha_ptr + b64 * alpha_b_stride, gemis_ptr + b64 * gemis_b_stride


@triton.jit
def _first_step(start_ptr, emis_row, emis_t_stride, emis_k_stride, offs, mask):
    """Scores of step 0 (start score + first emission) of the tags ``offs``, fp32."""
    e = _load_emissions(emis_row, 0, emis_t_stride, emis_k_stride, offs, mask)
    return _load_scores(start_ptr, offs, mask) + e


@triton.jit
def _store_first_step(row, emis_row, emis_t_stride, emis_k_stride, start_ptr, K, offs,
                      TILE: tl.constexpr):
    """Tiled path: ``row[k] =`` the scores of step 0 of every tag ``k``."""
    for j0 in range(0, K, TILE):
        j, jm = _tags(j0, offs, K)
        tl.store(row + j, _first_step(start_ptr, emis_row, emis_t_stride, emis_k_stride, j, jm), mask=jm)


@triton.jit
def _accumulate(ptrs, x, mask):
    """``ptrs[...] += x`` (a program's own partial sums: no other program writes them)."""
    tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + x, mask=mask)


@triton.jit
def _unary_marginal(g_row, t, gemis_t_stride, offs, mask, alpha, beta, logz, g):
    """Upstream-scaled unary marginal ``g * exp(alpha_t + beta_t - log Z)`` of step ``t``
    (= d/d emissions), stored into the emission-gradient row and returned (fp32)."""
    p = tl.exp(alpha + beta - logz) * g
    tl.store(g_row + t * gemis_t_stride + offs, p.to(g_row.dtype.element_ty), mask=mask)
    return p


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------
@triton.jit
def _crf_viterbi_kernel(
    emis_ptr, len_ptr, start_ptr, end_ptr, trans_ptr,
    score_buf_ptr, bp_ptr, tags_ptr, best_ptr,
    K,
    emis_b_stride, emis_t_stride, emis_k_stride,
    bp_b_stride, bp_t_stride,
    tags_b_stride,
    SINGLE_TILE: tl.constexpr,
    TILE: tl.constexpr,
):
    b, length, emis_row = _sequence(tl.program_id(0), len_ptr, emis_ptr, emis_b_stride)
    offs = tl.arange(0, TILE)
    buf = score_buf_ptr + b * 2 * K  # two rows (ping-pong) of fp32 Viterbi scores
    bp_row = bp_ptr + b * bp_b_stride

    if SINGLE_TILE:
        # K <= TILE: the scores stay in registers, the transition tile is loaded once
        j, jm = _tags(0, offs, K)
        tr = _load_transitions(trans_ptr, j, j, jm, jm, K)
        score = _first_step(start_ptr, emis_row, emis_t_stride, emis_k_stride, j, jm)
        for t in range(1, length):
            # emission loads do not depend on the recursion and can be issued early
            e = _load_emissions(emis_row, t, emis_t_stride, emis_k_stride, j, jm)
            x = score[:, None] + tr
            arg = tl.argmax(x, axis=0)
            score = tl.max(x, axis=0) + e
            tl.store(bp_row + t * bp_t_stride + j, arg.to(bp_ptr.dtype.element_ty), mask=jm)
        best_v = score + _load_scores(end_ptr, j, jm)
        best_i = j
        tl.debug_barrier()  # back-pointers written by all lanes, read back below
    else:
        _store_first_step(buf, emis_row, emis_t_stride, emis_k_stride, start_ptr, K, offs, TILE)
        tl.debug_barrier()

        for t in range(1, length):
            prev = buf + ((t - 1) % 2) * K
            cur = buf + (t % 2) * K
            for j0 in range(0, K, TILE):
                j, jm = _tags(j0, offs, K)
                best = tl.full((TILE,), float("-inf"), tl.float32)
                arg = tl.zeros((TILE,), tl.int32)
                for i0 in range(0, K, TILE):
                    i, im = _tags(i0, offs, K)
                    x = _load_scores(prev, i, im)[:, None] + _load_transitions(trans_ptr, i, j, im, jm, K)
                    v = tl.max(x, axis=0)
                    ix = tl.argmax(x, axis=0) + i0
                    upd = v > best  # strict: the first (lowest) source tag wins ties, like torch.max
                    best = tl.where(upd, v, best)
                    arg = tl.where(upd, ix, arg)
                # the emission does not depend on the source tag: add it after the max
                e = _load_emissions(emis_row, t, emis_t_stride, emis_k_stride, j, jm)
                tl.store(cur + j, best + e, mask=jm)
                tl.store(bp_row + t * bp_t_stride + j, arg.to(bp_ptr.dtype.element_ty), mask=jm)
            tl.debug_barrier()

        # end scores, best last tag (kept per lane across tiles, reduced once)
        last = buf + ((length - 1) % 2) * K
        best_v = tl.full((TILE,), float("-inf"), tl.float32)
        best_i = tl.zeros((TILE,), tl.int32)
        for j0 in range(0, K, TILE):
            j, jm = _tags(j0, offs, K)
            v = _load_scores(last, j, jm) + _load_scores(end_ptr, j, jm)
            upd = v > best_v
            best_v = tl.where(upd, v, best_v)
            best_i = tl.where(upd, j, best_i)
    lane = tl.argmax(best_v, axis=0)
    tl.store(best_ptr + b, tl.max(best_v, axis=0))
    tag = tl.sum(tl.where(offs == lane, best_i, 0), axis=0)

    # back-trace on the device, one dependent load per step
    tags_row = tags_ptr + b * tags_b_stride
    tl.store(tags_row + length - 1, tag.to(tags_ptr.dtype.element_ty))
    for tt in range(1, length):
        t = length - tt
        tag = tl.load(bp_row + t * bp_t_stride + tag).to(tl.int32)
        tl.store(tags_row + t - 1, tag.to(tags_ptr.dtype.element_ty))


@triton.jit
def _crf_forward_kernel(
    emis_ptr, len_ptr, start_ptr, end_ptr, trans_ptr,
    alpha_ptr, logz_ptr,
    K,
    emis_b_stride, emis_t_stride, emis_k_stride,
    alpha_b_stride, alpha_t_stride,
    STORE_ALPHA: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    TILE: tl.constexpr,
):
    b, length, emis_row = _sequence(tl.program_id(0), len_ptr, emis_ptr, emis_b_stride)
    offs = tl.arange(0, TILE)
    a_row = alpha_ptr + b * alpha_b_stride

    if SINGLE_TILE:
        # K <= TILE: alpha stays in registers, the transition tile is loaded once
        j, jm = _tags(0, offs, K)
        tr = _load_transitions(trans_ptr, j, j, jm, jm, K)
        alpha = _first_step(start_ptr, emis_row, emis_t_stride, emis_k_stride, j, jm)
        if STORE_ALPHA:
            tl.store(a_row + j, alpha, mask=jm)
        for t in range(1, length):
            e = _load_emissions(emis_row, t, emis_t_stride, emis_k_stride, j, jm)
            lse, _shift, _ex = _lse_tile(alpha[:, None] + tr, 0)
            alpha = lse + e
            if STORE_ALPHA:
                tl.store(a_row + t * alpha_t_stride + j, alpha, mask=jm)
        m = alpha + _load_scores(end_ptr, j, jm)
        s = tl.full((TILE,), 1.0, tl.float32)
    else:
        _store_first_step(a_row, emis_row, emis_t_stride, emis_k_stride, start_ptr, K, offs, TILE)
        tl.debug_barrier()

        for t in range(1, length):
            if STORE_ALPHA:  # keep every alpha for the backward pass
                prev = a_row + (t - 1) * alpha_t_stride
                cur = a_row + t * alpha_t_stride
            else:  # ping-pong between two scratch rows
                prev = a_row + ((t - 1) % 2) * alpha_t_stride
                cur = a_row + (t % 2) * alpha_t_stride
            for j0 in range(0, K, TILE):
                j, jm = _tags(j0, offs, K)
                m, s = _lse_init(TILE)
                for i0 in range(0, K, TILE):  # online log-sum-exp over source tiles
                    i, im = _tags(i0, offs, K)
                    x = _load_scores(prev, i, im)[:, None] + _load_transitions(trans_ptr, i, j, im, jm, K)
                    m, s = _lse_update(m, s, x, 0)
                e = _load_emissions(emis_row, t, emis_t_stride, emis_k_stride, j, jm)
                tl.store(cur + j, _lse_finish(m, s) + e, mask=jm)
            tl.debug_barrier()

        if STORE_ALPHA:
            last = a_row + (length - 1) * alpha_t_stride
        else:
            last = a_row + ((length - 1) % 2) * alpha_t_stride
        m, s = _lse_init(TILE)
        for j0 in range(0, K, TILE):  # per lane, reduced across lanes below
            j, jm = _tags(j0, offs, K)
            x = _load_scores(last, j, jm) + _load_scores(end_ptr, j, jm)
            m, s = _lse_update(m, s, x[None, :], 0)
    mx_shift = _safe_shift(tl.max(m, axis=0))
    total = tl.sum(s * tl.exp(m - mx_shift), axis=0)
    tl.store(logz_ptr + b, mx_shift + tl.log(total))


@triton.jit
def _beta_row(beta_rows, t, beta_t_stride, STORE_BETA: tl.constexpr):
    """Pointer to the fp32 row that holds beta_t (tiled path): the sequence's own row ``t``
    of the ``(B, T, K)`` output with ``STORE_BETA``, else row ``t % 2`` of the program's
    two ping-pong scratch rows. One helper, so both variants run the same recursion."""
    if STORE_BETA:
        row = t
    else:
        row = t % 2
    return beta_rows + row * beta_t_stride


@triton.jit
def _crf_backward_kernel(
    emis_ptr, len_ptr, end_ptr, trans_ptr,
    alpha_ptr, logz_ptr, glogz_ptr,
    beta_ptr, gemis_ptr, gstart_ptr, gend_ptr, gtrans_ptr,
    B, K,
    emis_b_stride, emis_t_stride, emis_k_stride,
    alpha_b_stride, alpha_t_stride,
    beta_b_stride, beta_t_stride,
    gemis_b_stride, gemis_t_stride,
    UNARY: tl.constexpr,
    PAIRWISE: tl.constexpr,
    STORE_BETA: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    TILE: tl.constexpr,
):
    # UNARY: unary marginals into gemis and the start/end gradients they feed; PAIRWISE:
    # pairwise marginals into gtrans; STORE_BETA: beta_ptr is a (B, T, K) output that gets
    # every beta row (else a (programs, 2, K) scratch, read by the tiled path only). With
    # neither UNARY nor PAIRWISE, alpha / log Z / the upstream gradient are never read.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs = tl.arange(0, TILE)
    pid64 = pid.to(tl.int64)
    gstart = gstart_ptr + pid64 * K         # this program's partial sums
    gend = gend_ptr + pid64 * K
    gtrans = gtrans_ptr + pid64 * K * K

    if SINGLE_TILE:
        # K <= TILE: beta and the (K, K) / (K,) gradient accumulators stay in registers
        # for all the sequences of this program; written once at the end
        i, im = _tags(0, offs, K)
        tr = _load_transitions(trans_ptr, i, i, im, im, K)
        en = _load_scores(end_ptr, i, im)
        acc_trans = tl.zeros((TILE, TILE), tl.float32)
        acc_start = tl.zeros((TILE,), tl.float32)
        acc_end = tl.zeros((TILE,), tl.float32)
        for b in range(pid, B, nprog):
            b64, length, emis_row = _sequence(b, len_ptr, emis_ptr, emis_b_stride)
            beta_rows = beta_ptr + b64 * beta_b_stride  # dereferenced only with STORE_BETA
            last = length - 1
            if UNARY or PAIRWISE:  # (g_row is only written with UNARY)
                logz, g, a_row, g_row = _sequence_grad_inputs(b64, logz_ptr, glogz_ptr, alpha_ptr, alpha_b_stride,
                                                              gemis_ptr, gemis_b_stride)
            if UNARY:
                a = _load_scores(a_row + last * alpha_t_stride, i, im)
                p = _unary_marginal(g_row, last, gemis_t_stride, i, im, a, en, logz, g)
                acc_end += p  # p: the marginal of step 0 too when L == 1 (no step below)
            if STORE_BETA:
                tl.store(beta_rows + last * beta_t_stride + i, en, mask=im)
            beta = en  # a register row from here on (beta_rows is the pointer)
            for tt in range(1, length):
                t = length - tt  # L-1 down to 1: beta_t is known, compute beta_{t-1}
                # the loads do not depend on the recursion and can be issued early
                e = _load_emissions(emis_row, t, emis_t_stride, emis_k_stride, i, im)
                if UNARY or PAIRWISE:
                    a_prev = _load_scores(a_row + (t - 1) * alpha_t_stride, i, im)
                w = tr + (e + beta)[None, :]  # [i, j]: i -> j, emit j, then the rest
                beta, shift, ew = _lse_tile(w, 1)
                if STORE_BETA:
                    tl.store(beta_rows + (t - 1) * beta_t_stride + i, beta, mask=im)
                if PAIRWISE:
                    # P(y_{t-1}=i, y_t=j) = exp(a_prev_i + w_ij - logZ), reusing exp(w - shift):
                    # a_prev + shift - logZ <= 0 (a sub-sum of Z), so the factor cannot overflow
                    acc_trans += ew * (tl.exp(a_prev + shift - logz) * g)[:, None]
                if UNARY:
                    p = _unary_marginal(g_row, t - 1, gemis_t_stride, i, im, a_prev, beta, logz, g)
            if UNARY:
                acc_start += p  # the marginal of step 0 (of step L-1 = 0 when L == 1)
        if UNARY:
            tl.store(gstart + i, acc_start, mask=im)
            tl.store(gend + i, acc_end, mask=im)
        if PAIRWISE:
            tl.store(gtrans + i[:, None] * K + i[None, :], acc_trans, mask=im[:, None] & im[None, :])
    else:
        for b in range(pid, B, nprog):
            b64, length, emis_row = _sequence(b, len_ptr, emis_ptr, emis_b_stride)
            if STORE_BETA:  # the recursion runs on the output rows of this sequence
                beta_rows = beta_ptr + b64 * beta_b_stride
            else:  # on the two ping-pong scratch rows of this program
                beta_rows = beta_ptr + pid64 * beta_b_stride
            last = length - 1
            if UNARY or PAIRWISE:  # (g_row is only written with UNARY)
                logz, g, a_row, g_row = _sequence_grad_inputs(b64, logz_ptr, glogz_ptr, alpha_ptr, alpha_b_stride,
                                                              gemis_ptr, gemis_b_stride)
            tl.debug_barrier()  # the previous sequence is done with the scratch rows

            # t = L - 1: beta = end score; unary marginal feeds d/d end (and d/d start if L == 1)
            b_last = _beta_row(beta_rows, last, beta_t_stride, STORE_BETA)
            for j0 in range(0, K, TILE):
                j, jm = _tags(j0, offs, K)
                en = _load_scores(end_ptr, j, jm)
                tl.store(b_last + j, en, mask=jm)
                if UNARY:
                    a = _load_scores(a_row + last * alpha_t_stride, j, jm)
                    p = _unary_marginal(g_row, last, gemis_t_stride, j, jm, a, en, logz, g)
                    _accumulate(gend + j, p, jm)
                    if length == 1:
                        _accumulate(gstart + j, p, jm)
            tl.debug_barrier()

            for tt in range(1, length):
                t = length - tt  # L-1 down to 1: beta_t is known, compute beta_{t-1}
                b_cur = _beta_row(beta_rows, t, beta_t_stride, STORE_BETA)
                b_prev = _beta_row(beta_rows, t - 1, beta_t_stride, STORE_BETA)
                for i0 in range(0, K, TILE):
                    i, im = _tags(i0, offs, K)
                    if UNARY or PAIRWISE:
                        a_prev = _load_scores(a_row + (t - 1) * alpha_t_stride, i, im)
                    m, s = _lse_init(TILE)
                    for j0 in range(0, K, TILE):  # online log-sum-exp over target tiles
                        j, jm = _tags(j0, offs, K)
                        bt = _load_scores(b_cur, j, jm)
                        e = _load_emissions(emis_row, t, emis_t_stride, emis_k_stride, j, jm)
                        # (TILE_i, TILE_j): i -> j, emit j, then the rest
                        w = _load_transitions(trans_ptr, i, j, im, jm, K) + (e + bt)[None, :]
                        m, s = _lse_update(m, s, w, 1)
                        if PAIRWISE:
                            # pairwise marginal P(y_{t-1}=i, y_t=j), accumulated over t and b
                            xi = tl.exp(a_prev[:, None] + w - logz) * g
                            _accumulate(gtrans + i[:, None] * K + j[None, :], xi, im[:, None] & jm[None, :])
                    b_new = _lse_finish(m, s)
                    tl.store(b_prev + i, b_new, mask=im)
                    if UNARY:
                        p = _unary_marginal(g_row, t - 1, gemis_t_stride, i, im, a_prev, b_new, logz, g)
                        if t == 1:
                            _accumulate(gstart + i, p, im)
                tl.debug_barrier()


# --------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# K up to this runs the register-resident single-tile path (tests lower it to cover the
# tiled path with small K)
SINGLE_TILE_MAX_K = 64


def _tile(num_tags: int, backward: bool = False) -> Tuple[int, bool, int]:
    """Tile width over tags (16..64; larger K loops over tiles), single-tile flag, warps.

    Warps grow with the ``TILE x TILE`` tiles a thread must hold in registers. The backward
    kernel holds three or four of them at once (transitions, ``exp(w - m)``, the pairwise
    accumulator) against one or two in the forward and Viterbi kernels, so it gets twice the
    warps: with the forward's warps it used 255 registers and spilled (ptxas, compile gate).
    """
    tile = min(max(triton.next_power_of_2(num_tags), 16), 64)
    warps = {16: 1, 32: 2, 64: 4}[tile] * (2 if backward else 1)
    return tile, num_tags <= min(tile, SINGLE_TILE_MAX_K), warps


def backpointer_dtype(num_tags: int) -> torch.dtype:
    """Smallest integer dtype that holds a tag index in ``[0, num_tags)``."""
    if num_tags <= 256:
        return torch.uint8
    if num_tags <= 32768:
        return torch.int16
    return torch.int32


def _check(emissions: torch.Tensor, lengths: torch.Tensor, *params: torch.Tensor
           ) -> Tuple[int, int, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the inputs shared by every launcher.

    Args:
        emissions: ``(B, T, K)`` float; lengths: ``(B,)`` integer, each in ``[1, T]``;
        params: start ``(K,)``, end ``(K,)``, transitions ``(K, K)``, on the same device.

    Returns:
        ``B, T, K``, lengths as contiguous int32 and contiguous start, end, transitions.

    Raises:
        ValueError: on a bad shape, a device mismatch or a length outside ``[1, T]`` (the
            kernels would write before a row for 0 and past it beyond T), naming the first
            offending batch index. Costs one host sync (the lengths' min and max).
        TypeError: on non-float emissions or non-integer lengths.
    """
    if emissions.dim() != 3:
        raise ValueError(f"emissions must be (B, T, K), got shape {tuple(emissions.shape)}")
    if emissions.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"emissions must be a floating tensor, got {emissions.dtype}")
    B, T, K = emissions.shape
    if B == 0 or T == 0 or K == 0:
        raise ValueError(f"empty emissions of shape {tuple(emissions.shape)}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    dev = emissions.device
    start, end, trans = params
    if start.shape != (K,) or end.shape != (K,) or trans.shape != (K, K):
        raise ValueError(f"start/end must be ({K},) and transitions ({K}, {K}), got "
                         f"{tuple(start.shape)}, {tuple(end.shape)}, {tuple(trans.shape)}")
    for x in (lengths, start, end, trans):
        if x.device != dev:
            raise ValueError(f"all tensors must be on {dev}, got one on {x.device}")
    check_lengths(lengths, T)  # before the int32 cast
    lengths = lengths.to(torch.int32).contiguous()
    return B, T, K, lengths, start.contiguous(), end.contiguous(), trans.contiguous()


def crf_viterbi(emissions: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor,
                end: torch.Tensor, transitions: torch.Tensor,
                pad_tag: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batched Viterbi decoding.

    Args:
        emissions: ``(B, T, K)`` fp32/fp16/bf16 scores, any strides.
        lengths: ``(B,)`` integer lengths, each in ``[1, T]`` (prefix masks; checked).
        start, end: ``(K,)`` start/end scores; transitions: ``(K, K)``, ``[i, j]`` = i -> j.
            Use ``-inf`` for disallowed transitions/start/end tags.
        pad_tag: value written at padded steps of the tag tensor.

    Returns:
        tags ``(B, T)`` int64 best paths (``pad_tag`` beyond each length) and
        scores ``(B,)`` fp32 best path scores.
    """
    B, T, K, lengths, start, end, trans = _check(emissions, lengths, start, end, transitions)
    dev = emissions.device
    tile, single, warps = _tile(K)
    scratch = torch.empty((B, 2, K), device=dev, dtype=torch.float32)
    bp = torch.empty((B, T, K), device=dev, dtype=backpointer_dtype(K))
    tags = torch.full((B, T), pad_tag, device=dev, dtype=torch.int64)
    best = torch.empty((B,), device=dev, dtype=torch.float32)
    _crf_viterbi_kernel[(B,)](
        emissions, lengths, start, end, trans,
        scratch, bp, tags, best,
        K,
        emissions.stride(0), emissions.stride(1), emissions.stride(2),
        bp.stride(0), bp.stride(1),
        tags.stride(0),
        SINGLE_TILE=single, TILE=tile, num_warps=warps,
    )
    return tags, best


def _forward(emissions: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor,
             end: torch.Tensor, trans: torch.Tensor,
             store_alpha: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The forward kernel on inputs that went through :func:`_check`."""
    B, T, K = emissions.shape
    dev = emissions.device
    tile, single, warps = _tile(K)
    alpha = torch.empty((B, T if store_alpha else 2, K), device=dev, dtype=torch.float32)
    logz = torch.empty((B,), device=dev, dtype=torch.float32)
    _crf_forward_kernel[(B,)](
        emissions, lengths, start, end, trans,
        alpha, logz,
        K,
        emissions.stride(0), emissions.stride(1), emissions.stride(2),
        alpha.stride(0), alpha.stride(1),
        STORE_ALPHA=store_alpha, SINGLE_TILE=single, TILE=tile, num_warps=warps,
    )
    return logz, (alpha if store_alpha else None)


def crf_forward(emissions: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor,
                end: torch.Tensor, transitions: torch.Tensor,
                store_alpha: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Forward algorithm: log partition function per sequence.

    Args:
        emissions: ``(B, T, K)``; lengths: ``(B,)`` each in ``[1, T]``; start, end: ``(K,)``;
        transitions ``(K, K)``.
        store_alpha: keep the fp32 forward variables for :func:`crf_backward`.

    Returns:
        log_z ``(B,)`` fp32 and, with ``store_alpha``, alpha ``(B, T, K)`` fp32 (else None;
        steps past each length are left uninitialised).
    """
    B, T, K, lengths, start, end, trans = _check(emissions, lengths, start, end, transitions)
    return _forward(emissions, lengths, start, end, trans, store_alpha)


def _num_programs(B: int, device: torch.device) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(B, 8 * sms))
    return max(1, min(B, 4))  # the interpreter runs programs one after another


class _Backward(NamedTuple):
    """What one backward launch produced; None for what its variant does not compute."""
    grad_emissions: Optional[torch.Tensor]  # (B, T, K), with unary
    grad_start: Optional[torch.Tensor]      # (K,) fp32, with unary
    grad_end: Optional[torch.Tensor]        # (K,) fp32, with unary
    grad_transitions: Optional[torch.Tensor]  # (K, K) fp32, with pairwise
    beta: Optional[torch.Tensor]            # (B, T, K) fp32, with store_beta


def _backward(emissions: torch.Tensor, lengths: torch.Tensor, end: torch.Tensor,
              trans: torch.Tensor, alpha: Optional[torch.Tensor], log_z: Optional[torch.Tensor],
              grad_log_z: Optional[torch.Tensor], *, unary: bool, pairwise: bool,
              store_beta: bool, grad_dtype: Optional[torch.dtype] = None) -> _Backward:
    """The backward kernel on inputs that went through :func:`_check`.

    ``alpha`` ``(B, T, K)``, ``log_z`` and ``grad_log_z`` ``(B,)`` are only read with
    ``unary`` or ``pairwise`` (pass None otherwise); buffers a variant never touches are
    replaced by a one-element placeholder.
    """
    B, T, K = emissions.shape
    dev = emissions.device
    tile, single, warps = _tile(K, backward=True)
    P = _num_programs(B, dev)
    f32 = dict(device=dev, dtype=torch.float32)
    unused = torch.empty((1, 1, 1), **f32)
    if store_beta:
        beta = torch.empty((B, T, K), **f32)  # rows past each length are left unwritten
    elif single:
        beta = unused  # the recursion stays in registers
    else:
        beta = torch.empty((P, 2, K), **f32)  # per-program ping-pong rows
    if unary or pairwise:
        log_z, grad_log_z = log_z.float().contiguous(), grad_log_z.float().contiguous()
    else:
        alpha, log_z, grad_log_z = unused, unused, unused
    gemis = torch.zeros((B, T, K), device=dev, dtype=grad_dtype or emissions.dtype) if unary else unused
    gstart = torch.zeros((P, K), **f32) if unary else unused
    gend = torch.zeros((P, K), **f32) if unary else unused
    gtrans = torch.zeros((P, K, K), **f32) if pairwise else unused
    _crf_backward_kernel[(P,)](
        emissions, lengths, end, trans,
        alpha, log_z, grad_log_z,
        beta, gemis, gstart, gend, gtrans,
        B, K,
        emissions.stride(0), emissions.stride(1), emissions.stride(2),
        alpha.stride(0), alpha.stride(1),
        beta.stride(0), beta.stride(1),
        gemis.stride(0), gemis.stride(1),
        UNARY=unary, PAIRWISE=pairwise, STORE_BETA=store_beta, SINGLE_TILE=single, TILE=tile,
        num_warps=warps,
    )
    return _Backward(gemis if unary else None,
                     gstart.sum(0) if unary else None,
                     gend.sum(0) if unary else None,
                     gtrans.sum(0) if pairwise else None,
                     beta if store_beta else None)


def crf_backward(emissions: torch.Tensor, lengths: torch.Tensor, end: torch.Tensor,
                 transitions: torch.Tensor, alpha: torch.Tensor, log_z: torch.Tensor,
                 grad_log_z: torch.Tensor, pairwise: bool = True,
                 grad_dtype: Optional[torch.dtype] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Forward-backward: gradients of ``sum_b grad_log_z[b] * log_z[b]``.

    Args:
        emissions: ``(B, T, K)``; lengths: ``(B,)`` each in ``[1, T]``; end ``(K,)``;
        transitions ``(K, K)``.
        alpha: ``(B, T, K)`` fp32 from :func:`crf_forward` with ``store_alpha=True``.
        log_z: ``(B,)`` fp32; grad_log_z: ``(B,)`` upstream gradient.
        pairwise: also accumulate the transition gradient (pairwise marginals).
        grad_dtype: dtype of the emission gradient (default: the emissions' dtype).

    Returns:
        grad_emissions ``(B, T, K)`` (= upstream-scaled unary marginals, zero at padding),
        grad_start ``(K,)``, grad_end ``(K,)`` and grad_transitions ``(K, K)`` (None
        without ``pairwise``), all but the first in fp32.
    """
    B, T, K, lengths, end, _, trans = _check(emissions, lengths, end, end, transitions)
    if alpha.shape != (B, T, K) or alpha.dtype != torch.float32 or alpha.stride(2) != 1:
        raise ValueError("alpha must be the fp32 (B, T, K) tensor from crf_forward(store_alpha=True)")
    out = _backward(emissions, lengths, end, trans, alpha, log_z, grad_log_z,
                    unary=True, pairwise=pairwise, store_beta=False, grad_dtype=grad_dtype)
    return out.grad_emissions, out.grad_start, out.grad_end, out.grad_transitions


def crf_marginals(emissions: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor,
                  end: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
    """Per-token tag probabilities ``P(y_t = k | x)``, ``(B, T, K)`` fp32, zero at padding.

    Args:
        emissions: ``(B, T, K)``; lengths: ``(B,)`` each in ``[1, T]``; start, end: ``(K,)``;
        transitions ``(K, K)``.
    """
    B, T, K, lengths, start, end, trans = _check(emissions, lengths, start, end, transitions)
    logz, alpha = _forward(emissions, lengths, start, end, trans, store_alpha=True)
    out = _backward(emissions, lengths, end, trans, alpha, logz, torch.ones_like(logz),
                    unary=True, pairwise=False, store_beta=False, grad_dtype=torch.float32)
    return out.grad_emissions


def crf_alpha_beta(emissions: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor,
                   end: torch.Tensor, transitions: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward log-scores: two launches, no marginals.

    ``alpha_t[k]`` is the log-sum of the scores of all prefixes ``y_0..y_t`` ending in
    ``k`` (start and emissions up to ``t`` included), ``beta_t[k]`` that of all suffixes
    from ``y_t = k`` to the end (transitions and emissions after ``t``, end score), so
    ``alpha_t + beta_t - log_z`` is the log marginal of step ``t``.

    Args:
        emissions: ``(B, T, K)`` fp32/fp16/bf16, any strides; lengths: ``(B,)`` each in
            ``[1, T]``; start, end: ``(K,)``; transitions ``(K, K)`` (``-inf`` where disallowed).

    Returns:
        log_z ``(B,)``, alpha ``(B, T, K)`` and beta ``(B, T, K)``, all fp32; steps at or
        past a sequence's length are left uninitialised in alpha and beta.
    """
    B, T, K, lengths, start, end, trans = _check(emissions, lengths, start, end, transitions)
    log_z, alpha = _forward(emissions, lengths, start, end, trans, store_alpha=True)
    beta = _backward(emissions, lengths, end, trans, None, None, None,
                     unary=False, pairwise=False, store_beta=True).beta
    return log_z, alpha, beta
