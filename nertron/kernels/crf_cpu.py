"""Linear-chain CRF on CPU: forward (log Z), forward-backward gradients, alpha/beta and
Viterbi, in a small C library that nertron builds once with the system C compiler and caches
on disk.

Why C: on CPU the CRF recursions are bound by per-step overhead, not arithmetic (K = 9 tags
is 81 multiply-adds per step and sequence). The vectorised PyTorch reference
(:mod:`nertron.bindings.crf_reference`) pays ~5 dispatcher calls per time step forward and
~10 more in autograd's backward; pytorch-crf under ``torch.compile`` pays one generated
kernel call per step. One C loop over ``(sequence, step, tag, tag)`` pays none. The
algorithms are those of the reference (log-sum-exp in the compute dtype, fp32 or fp64; first
maximum on Viterbi ties, like ``torch.max``), checked against it in ``tests/test_crf.py``.

Build: ``cc -O3 -shared -fPIC [-fopenmp]`` of the source below, once, cached on disk
(:mod:`nertron.kernels.cbuild`). With no working C compiler, or ``NERTRON_CPU_KERNELS=0``,
:func:`available` is False and the callers run the PyTorch reference instead. Batches run in parallel over
``torch.get_num_threads()`` OpenMP threads.

Layout: emissions ``(B, T, K)`` with any strides in elements, lengths ``(B,)`` int32 each in
``[1, T]`` (checked by the callers), start/end ``(K,)`` and transitions ``(K, K)``
contiguous, outputs contiguous; all float tensors of one dtype (fp32 or fp64).
"""
from __future__ import annotations

import ctypes
from typing import Optional, Tuple

import torch

from nertron.kernels.cbuild import Library

__all__ = ["available", "check_lengths", "crf_forward", "crf_backward", "crf_alpha_beta", "crf_viterbi", "needs_fallback"]

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define DEFINE_CRF(T_, SUF, EXP, LOG, SPREAD)                                                \
/* exp(tr - max) by column (forward) or by row (backward) for the exp-space products, when */ \
/* every score is finite and their spread is at most SPREAD (a term then underflows only */  \
/* below rounding error, as in the PyTorch reference's _exp_transitions); else 0 */           \
static int prep_##SUF(const T_ *tr, int64_t K, int by_col, T_ **etr, T_ **mx) {              \
    int64_t i, j;                                                                            \
    T_ lo = INFINITY, hi = -INFINITY;                                                        \
    *etr = 0; *mx = 0;                                                                       \
    for (i = 0; i < K * K; ++i) {                                                            \
        if (!isfinite(tr[i])) return 0;                                                      \
        if (tr[i] < lo) lo = tr[i];                                                          \
        if (tr[i] > hi) hi = tr[i];                                                          \
    }                                                                                        \
    if (hi - lo > SPREAD) return 0;                                                          \
    *etr = (T_ *)malloc(sizeof(T_) * K * K);                                                 \
    *mx = (T_ *)malloc(sizeof(T_) * K);                                                      \
    for (i = 0; i < K; ++i) (*mx)[i] = -INFINITY;                                            \
    for (i = 0; i < K; ++i) for (j = 0; j < K; ++j) {                                        \
        int64_t k = by_col ? j : i;                                                          \
        if (tr[i * K + j] > (*mx)[k]) (*mx)[k] = tr[i * K + j];                              \
    }                                                                                        \
    for (i = 0; i < K; ++i) for (j = 0; j < K; ++j)                                          \
        (*etr)[i * K + j] = EXP(tr[i * K + j] - (*mx)[by_col ? j : i]);                      \
    return 1;                                                                                \
}                                                                                            \
/* log Z per sequence; alpha (B, T, K) when not NULL (padded steps repeat the last alpha); */\
/* with tags (B, T) int64, strided, also the score of each tag path: returns 1 (and computes */\
/* nothing) when a tag, padding included, is outside [0, K) */                                \
int crf_forward_##SUF(const T_ *em, int64_t sb, int64_t st, int64_t sk, const int32_t *len,  \
                      const int64_t *tags, int64_t tb, int64_t tt, const T_ *start,          \
                      const T_ *end, const T_ *tr, int64_t B, int64_t T, int64_t K, T_ *alpha,\
                      T_ *logz, T_ *score, int nthreads) {                                   \
    int64_t b;                                                                               \
    if (tags) {                                                                              \
        int64_t t;                                                                           \
        for (b = 0; b < B; ++b) for (t = 0; t < T; ++t) {                                    \
            int64_t y = tags[b * tb + t * tt];                                               \
            if (y < 0 || y >= K) return 1;                                                   \
        }                                                                                    \
    }                                                                                        \
    T_ *etr, *cmax;                                                                          \
    prep_##SUF(tr, K, 1, &etr, &cmax);                                                       \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                       \
    for (b = 0; b < B; ++b) {                                                                \
        T_ *buf = (T_ *)malloc(sizeof(T_) * 3 * K);                                          \
        T_ *a = buf, *na = buf + K, *p = buf + 2 * K;                                        \
        const T_ *e = em + b * sb;                                                           \
        int64_t L = len[b], t, i, j;                                                         \
        if (tags) {                                                                          \
            const int64_t *y = tags + b * tb;                                                \
            T_ sc = start[y[0]] + e[y[0] * sk];                                              \
            for (t = 1; t < L; ++t) sc += tr[y[(t - 1) * tt] * K + y[t * tt]] + e[t * st + y[t * tt] * sk]; \
            score[b] = sc + end[y[(L - 1) * tt]];                                            \
        }                                                                                    \
        for (j = 0; j < K; ++j) a[j] = start[j] + e[j * sk];                                 \
        if (alpha) memcpy(alpha + b * T * K, a, sizeof(T_) * K);                             \
        for (t = 1; t < L; ++t) {                                                            \
            if (etr) {                                                                       \
                /* exp space: na[j] = m + cmax[j] + log(sum_i exp(a[i] - m) etr[i, j]) */    \
                T_ m = a[0];                                                                 \
                for (i = 1; i < K; ++i) if (a[i] > m) m = a[i];                              \
                if (m < (T_)-1e30) m = (T_)-1e30; /* an unreachable row stays -inf */        \
                for (j = 0; j < K; ++j) na[j] = 0;                                           \
                for (i = 0; i < K; ++i) {                                                    \
                    T_ pi = EXP(a[i] - m);                                                   \
                    const T_ *row = etr + i * K;                                             \
                    for (j = 0; j < K; ++j) na[j] += pi * row[j];                            \
                }                                                                            \
                for (j = 0; j < K; ++j) na[j] = LOG(na[j]) + m + cmax[j] + e[t * st + j * sk]; \
            } else {                                                                         \
                for (j = 0; j < K; ++j) {                                                    \
                    T_ mm = -INFINITY, s = 0;                                                \
                    for (i = 0; i < K; ++i) { T_ v = a[i] + tr[i * K + j]; if (v > mm) mm = v; } \
                    if (mm == -INFINITY) { na[j] = -INFINITY; continue; }                    \
                    for (i = 0; i < K; ++i) s += EXP(a[i] + tr[i * K + j] - mm);             \
                    na[j] = mm + LOG(s) + e[t * st + j * sk];                                \
                }                                                                            \
            }                                                                                \
            T_ *tmp = a; a = na; na = tmp;                                                   \
            if (alpha) memcpy(alpha + (b * T + t) * K, a, sizeof(T_) * K);                   \
        }                                                                                    \
        if (alpha)                                                                           \
            for (t = L; t < T; ++t) memcpy(alpha + (b * T + t) * K, a, sizeof(T_) * K);      \
        T_ m = -INFINITY, s = 0;                                                             \
        for (j = 0; j < K; ++j) { T_ v = a[j] + end[j]; if (v > m) m = v; }                  \
        if (m == -INFINITY) logz[b] = -INFINITY;                                             \
        else {                                                                               \
            for (j = 0; j < K; ++j) s += EXP(a[j] + end[j] - m);                             \
            logz[b] = m + LOG(s);                                                            \
        }                                                                                    \
        free(buf);                                                                           \
    }                                                                                        \
    free(etr); free(cmax);                                                                   \
    return 0;                                                                                \
}                                                                                            \
/* backward recursion from alpha (B, T, K) and log Z: with g_em, the upstream-scaled unary */\
/* marginals (zero at padding), g_start, g_end; with g_tr the pairwise marginals summed; */  \
/* with beta, beta (B, T, K) (padded steps hold end). NULL outputs are skipped. With tags */ \
/* (checked by the forward), the gradients of sum_b grad[b] (score_b - log Z_b) instead. */  \
void crf_backward_##SUF(const T_ *em, int64_t sb, int64_t st, int64_t sk, const int32_t *len,\
                        const int64_t *tags, int64_t tb, int64_t tt, const T_ *end,          \
                        const T_ *tr, const T_ *alpha, const T_ *logz, const T_ *grad,       \
                        int64_t B, int64_t T, int64_t K, T_ *g_em, T_ *g_start, T_ *g_end,   \
                        T_ *g_tr, T_ *beta, int nthreads) {                                  \
    int nt = nthreads < 1 ? 1 : nthreads, p;                                                 \
    T_ *etr, *rmax;                                                                          \
    prep_##SUF(tr, K, 0, &etr, &rmax);                                                       \
    /* per-thread accumulators of the parameter gradients, summed at the end */              \
    T_ *acc = (T_ *)calloc((size_t)nt * (2 * K + K * K), sizeof(T_));                        \
    int64_t b;                                                                               \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                             \
    for (b = 0; b < B; ++b) {                                                                \
        T_ *ps = acc + (size_t)THREAD_NUM() * (2 * K + K * K), *pe = ps + K, *ptr = ps + 2 * K; \
        T_ *buf = (T_ *)malloc(sizeof(T_) * 4 * K);                                          \
        T_ *bt = buf, *nb = buf + K, *w = buf + 2 * K, *q = buf + 3 * K;                     \
        const T_ *e = em + b * sb;                                                           \
        const T_ *al = alpha ? alpha + b * T * K : 0;                                        \
        int64_t L = len[b], t, i, j;                                                         \
        T_ gy = grad ? grad[b] : 0, lz = logz ? logz[b] : 0;                                 \
        T_ g = tags ? -gy : gy; /* the marginals' sign: d(-log Z) with tags */               \
        if (g_em) memset(g_em + b * T * K, 0, sizeof(T_) * T * K);                           \
        for (j = 0; j < K; ++j) bt[j] = end[j];                                              \
        if (beta) for (t = L - 1; t < T; ++t) memcpy(beta + (b * T + t) * K, bt, sizeof(T_) * K); \
        for (t = L - 1; t >= 0; --t) {                                                       \
            if (g_em) {                                                                      \
                for (j = 0; j < K; ++j) {                                                    \
                    T_ pm = g * EXP(al[t * K + j] + bt[j] - lz);                             \
                    g_em[(b * T + t) * K + j] = pm;                                          \
                    if (t == 0) ps[j] += pm;                                                 \
                    if (t == L - 1) pe[j] += pm;                                             \
                }                                                                            \
            }                                                                                \
            if (t == 0) break;                                                               \
            /* w[j] = em_t[j] + beta_t[j]: what step t adds after the transition */          \
            T_ mw = -INFINITY;                                                               \
            for (j = 0; j < K; ++j) { w[j] = e[t * st + j * sk] + bt[j]; if (w[j] > mw) mw = w[j]; } \
            if (mw < (T_)-1e30) mw = (T_)-1e30;                                              \
            if (etr) for (j = 0; j < K; ++j) q[j] = EXP(w[j] - mw);                          \
            if (g_tr) {                                                                      \
                const T_ *ap = al + (t - 1) * K;                                             \
                for (i = 0; i < K; ++i) {                                                    \
                    T_ base = ap[i] - lz;                                                    \
                    if (base == -INFINITY) continue;                                         \
                    T_ *acc_row = ptr + i * K;                                               \
                    if (etr) {                                                               \
                        /* g exp(a_i + tr_ij + w_j - lz) = g exp(a_i - lz + rmax_i + mw) etr_ij q_j, */ \
                        /* the first factor at most exp(spread of row i) */                  \
                        T_ f = g * EXP(base + rmax[i] + mw);                                 \
                        const T_ *row = etr + i * K;                                         \
                        for (j = 0; j < K; ++j) acc_row[j] += f * row[j] * q[j];             \
                    } else {                                                                 \
                        for (j = 0; j < K; ++j) acc_row[j] += g * EXP(base + tr[i * K + j] + w[j]); \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
            for (i = 0; i < K; ++i) {                                                        \
                if (etr) {                                                                   \
                    const T_ *row = etr + i * K;                                             \
                    T_ s = 0;                                                                \
                    for (j = 0; j < K; ++j) s += row[j] * q[j];                              \
                    nb[i] = LOG(s) + rmax[i] + mw;                                           \
                    continue;                                                                \
                }                                                                            \
                T_ m = -INFINITY, s = 0;                                                     \
                for (j = 0; j < K; ++j) { T_ v = tr[i * K + j] + w[j]; if (v > m) m = v; }   \
                if (m == -INFINITY) { nb[i] = -INFINITY; continue; }                         \
                for (j = 0; j < K; ++j) s += EXP(tr[i * K + j] + w[j] - m);                  \
                nb[i] = m + LOG(s);                                                          \
            }                                                                                \
            T_ *tmp = bt; bt = nb; nb = tmp;                                                 \
            if (beta) memcpy(beta + (b * T + t - 1) * K, bt, sizeof(T_) * K);                \
        }                                                                                    \
        if (tags && g_em) {                                                                  \
            /* the path score's gradient: one-hot at each step's tag and transition */       \
            const int64_t *y = tags + b * tb;                                                \
            for (t = 0; t < L; ++t) g_em[(b * T + t) * K + y[t * tt]] += gy;                 \
            ps[y[0]] += gy;                                                                  \
            pe[y[(L - 1) * tt]] += gy;                                                       \
            if (g_tr) for (t = 1; t < L; ++t) ptr[y[(t - 1) * tt] * K + y[t * tt]] += gy;    \
        }                                                                                    \
        free(buf);                                                                           \
    }                                                                                        \
    for (p = 0; p < nt; ++p) {                                                               \
        T_ *ps = acc + (size_t)p * (2 * K + K * K);                                          \
        int64_t i;                                                                           \
        if (g_start) for (i = 0; i < K; ++i) g_start[i] += ps[i];                            \
        if (g_end) for (i = 0; i < K; ++i) g_end[i] += ps[K + i];                            \
        if (g_tr) for (i = 0; i < K * K; ++i) g_tr[i] += ps[2 * K + i];                      \
    }                                                                                        \
    free(acc); free(etr); free(rmax);                                                        \
}                                                                                            \
/* what CRF.forward/decode must know before the fast path: 1 = a gap in a mask row (a step */\
/* on after a step off), 2 = a non-finite emission or parameter; mask (B, T) bytes, strided */ \
int crf_check_##SUF(const T_ *em, int64_t sb, int64_t st, int64_t sk, const uint8_t *mask,  \
                    int64_t mb, int64_t mt, const T_ *start, const T_ *end, const T_ *tr,    \
                    int64_t B, int64_t T, int64_t K) {                                       \
    int flags = 0;                                                                           \
    int64_t b, t, k;                                                                         \
    for (b = 0; b < B && !(flags & 1); ++b) {                                                \
        int off = 0;                                                                         \
        for (t = 0; t < T; ++t) {                                                            \
            if (!mask[b * mb + t * mt]) off = 1;                                             \
            else if (off) { flags |= 1; break; }                                             \
        }                                                                                    \
    }                                                                                        \
    for (k = 0; k < K; ++k) if (!isfinite(start[k]) || !isfinite(end[k])) flags |= 2;        \
    for (k = 0; k < K * K; ++k) if (!isfinite(tr[k])) flags |= 2;                            \
    for (b = 0; b < B && !(flags & 2); ++b)                                                  \
        for (t = 0; t < T; ++t) {                                                            \
            const T_ *row = em + b * sb + t * st;                                            \
            T_ acc = 0;                                                                      \
            /* x - x is 0 for finite x, nan for inf and nan */                               \
            for (k = 0; k < K; ++k) acc += row[k * sk] - row[k * sk];                        \
            if (acc != 0) { flags |= 2; break; }                                             \
        }                                                                                    \
    return flags;                                                                            \
}                                                                                            \
/* Viterbi: tags (B, T) int64 (pad_tag past each length), best scores (B,); ties go to the */\
/* lowest tag index, as torch.max. bp: (B, T, K) int32 scratch. */                           \
void crf_viterbi_##SUF(const T_ *em, int64_t sb, int64_t st, int64_t sk, const int32_t *len, \
                       const T_ *start, const T_ *end, const T_ *tr, int64_t B, int64_t T,   \
                       int64_t K, int64_t pad, int32_t *bp, int64_t *tags, T_ *best,         \
                       int nthreads) {                                                       \
    int64_t b;                                                                               \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                   \
    for (b = 0; b < B; ++b) {                                                                \
        T_ *buf = (T_ *)malloc(sizeof(T_) * 2 * K);                                          \
        T_ *a = buf, *na = buf + K;                                                          \
        const T_ *e = em + b * sb;                                                           \
        int32_t *bpb = bp + b * T * K;                                                       \
        int64_t *tg = tags + b * T;                                                          \
        int64_t L = len[b], t, i, j;                                                         \
        for (j = 0; j < K; ++j) a[j] = start[j] + e[j * sk];                                 \
        for (t = 1; t < L; ++t) {                                                            \
            for (j = 0; j < K; ++j) {                                                        \
                T_ m = a[0] + tr[j]; int32_t arg = 0;                                        \
                for (i = 1; i < K; ++i) { T_ v = a[i] + tr[i * K + j]; if (v > m) { m = v; arg = (int32_t)i; } } \
                na[j] = m + e[t * st + j * sk];                                              \
                bpb[t * K + j] = arg;                                                        \
            }                                                                                \
            T_ *tmp = a; a = na; na = tmp;                                                   \
        }                                                                                    \
        T_ m = a[0] + end[0]; int64_t cur = 0;                                               \
        for (j = 1; j < K; ++j) { T_ v = a[j] + end[j]; if (v > m) { m = v; cur = j; } }     \
        best[b] = m;                                                                         \
        for (t = L; t < T; ++t) tg[t] = pad;                                                 \
        tg[L - 1] = cur;                                                                     \
        for (t = L - 1; t > 0; --t) { cur = bpb[t * K + cur]; tg[t - 1] = cur; }             \
        free(buf);                                                                           \
    }                                                                                        \
}

#ifdef _OPENMP
#define THREAD_NUM() omp_get_thread_num()
#else
#define THREAD_NUM() 0
#endif
DEFINE_CRF(float, f32, expf, logf, 50.0f)
DEFINE_CRF(double, f64, exp, log, 600.0)
"""

# the pragma placeholder keeps the macro body one logical line; it is a no-op
_LIBRARY = Library("crf_cpu", _SOURCE.replace('_Pragma("omp_get_thread_num_guard")', ""), (["-fopenmp"], []),
                   key=torch.__version__, fallback="the CRF runs its PyTorch reference on CPU")

_I64, _I32P, _VP = ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p


def _lib() -> Optional[ctypes.CDLL]:
    return _LIBRARY.get()


def available() -> bool:
    """Whether the C library could be built and loaded (built on the first call)."""
    return _lib() is not None


def check_lengths(lengths: torch.Tensor, T: int) -> None:
    """The lengths contract of the CRF launchers, Triton's and these: each in ``[1, T]``; a
    ValueError naming the first offender. One host sync; checked before any int32 cast (which
    could wrap a huge value into range), the offending index looked up only on failure."""
    if lengths.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(lengths)).tolist()
    if lo < 1 or hi > T:
        bad = int(((lengths < 1) | (lengths > T)).nonzero()[0, 0])
        raise ValueError(f"lengths must be in [1, T] = [1, {T}] (T = emissions.shape[1]), "
                         f"got lengths[{bad}] = {int(lengths[bad])}")


def _ptr(t: Optional[torch.Tensor]):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _suffix(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float64:
        return "f64"
    raise TypeError(f"the C CRF kernels compute in fp32 or fp64, got {dtype}")


# Below this many (step x tag x tag) updates per call one thread does it: waking a second
# one costs more, and on a shared machine a descheduled thread stalls the call for a
# scheduler tick (milliseconds) at the closing barrier.
_PARALLEL_MIN_WORK = 1 << 22


def _threads(em: torch.Tensor) -> int:
    B, T, K = em.shape
    if B < 2 or B * T * K * K < _PARALLEL_MIN_WORK:
        return 1
    return max(1, min(torch.get_num_threads(), B))


def _em_args(em: torch.Tensor):
    return (_ptr(em), _I64(em.stride(0)), _I64(em.stride(1)), _I64(em.stride(2)))


def _tag_args(tags: Optional[torch.Tensor]):
    if tags is None:
        return (None, _I64(0), _I64(0))
    return (_ptr(tags), _I64(tags.stride(0)), _I64(tags.stride(1)))


def crf_forward(em: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                trans: torch.Tensor, store_alpha: bool, tags: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """log Z ``(B,)``, with ``store_alpha`` alpha ``(B, T, K)`` (padded steps repeat the last
    alpha) and with ``tags`` (``(B, T)`` int64, any strides) the tag paths' scores ``(B,)``, in
    ``em``'s dtype. Inputs as the module docstring says.

    Raises:
        IndexError: a tag (padding included, as pytorch-crf reads every step) outside ``[0, K)``.
    """
    B, T, K = em.shape
    logz = em.new_empty((B,))
    alpha = em.new_empty((B, T, K)) if store_alpha else None
    score = em.new_empty((B,)) if tags is not None else None
    failed = getattr(_lib(), "crf_forward_" + _suffix(em.dtype))(
        *_em_args(em), _ptr(lengths), *_tag_args(tags), _ptr(start), _ptr(end), _ptr(trans),
        _I64(B), _I64(T), _I64(K), _ptr(alpha), _ptr(logz), _ptr(score), ctypes.c_int(_threads(em)))
    if failed:
        bad = tags[(tags < 0) | (tags >= K)][0]
        raise IndexError(f"index {int(bad)} is out of bounds for dimension 0 with size {K}")
    return logz, alpha, score


def crf_backward(em: torch.Tensor, lengths: torch.Tensor, end: torch.Tensor, trans: torch.Tensor,
                 alpha: Optional[torch.Tensor], logz: Optional[torch.Tensor], grad: Optional[torch.Tensor],
                 *, unary: bool = True, pairwise: bool = True, store_beta: bool = False,
                 tags: Optional[torch.Tensor] = None
                 ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor],
                            Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(g_em (B, T, K), g_start (K,), g_end (K,), g_tr (K, K), beta (B, T, K))``: the
    gradients of ``sum_b grad[b] * log_z[b]`` (``unary``: the first three; ``pairwise``:
    ``g_tr``; both need ``alpha``, ``logz`` and ``grad``), or with ``tags`` (checked by
    :func:`crf_forward`) those of ``sum_b grad[b] * (score_b - log_z[b])``, and, with
    ``store_beta``, beta (padded steps hold ``end``); None where not asked."""
    B, T, K = em.shape
    g_em = em.new_empty((B, T, K)) if unary else None
    g_start = em.new_zeros((K,)) if unary else None
    g_end = em.new_zeros((K,)) if unary else None
    g_tr = em.new_zeros((K, K)) if pairwise else None
    beta = em.new_empty((B, T, K)) if store_beta else None
    getattr(_lib(), "crf_backward_" + _suffix(em.dtype))(
        *_em_args(em), _ptr(lengths), *_tag_args(tags), _ptr(end), _ptr(trans), _ptr(alpha), _ptr(logz), _ptr(grad),
        _I64(B), _I64(T), _I64(K), _ptr(g_em), _ptr(g_start), _ptr(g_end), _ptr(g_tr), _ptr(beta),
        ctypes.c_int(_threads(em)))
    return g_em, g_start, g_end, g_tr, beta


def crf_alpha_beta(em: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                   trans: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log Z ``(B,)``, alpha and beta ``(B, T, K)`` (padded steps: the last alpha, the end score)."""
    logz, alpha, _ = crf_forward(em, lengths, start, end, trans, store_alpha=True)
    beta = crf_backward(em, lengths, end, trans, None, None, None, unary=False, pairwise=False,
                        store_beta=True)[4]
    return logz, alpha, beta


def crf_viterbi(em: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                trans: torch.Tensor, pad_tag: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Best paths ``(B, T)`` int64 (``pad_tag`` past each length) and their scores ``(B,)``."""
    B, T, K = em.shape
    tags = torch.empty((B, T), dtype=torch.int64)
    best = em.new_empty((B,))
    bp = torch.empty((B, T, K), dtype=torch.int32)
    getattr(_lib(), "crf_viterbi_" + _suffix(em.dtype))(
        *_em_args(em), _ptr(lengths), _ptr(start), _ptr(end), _ptr(trans),
        _I64(B), _I64(T), _I64(K), _I64(pad_tag), _ptr(bp), _ptr(tags), _ptr(best),
        ctypes.c_int(_threads(em)))
    return tags, best


def needs_fallback(em: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                   trans: torch.Tensor) -> Optional[bool]:
    """Whether some mask row has a gap or some emission / parameter is not finite: one pass in
    C instead of a dozen tensor ops. None when this path does not apply (not CPU, another
    dtype, parameters of another dtype or layout): the caller checks with tensor ops."""
    B, T, K = em.shape
    if (em.device.type != "cpu" or em.dtype not in (torch.float32, torch.float64) or mask.dtype != torch.bool
            or mask.device.type != "cpu" or not available()
            or any(p.dtype != em.dtype or p.device.type != "cpu" or not p.is_contiguous() for p in (start, end, trans))):
        return None
    m = mask.view(torch.uint8)
    flags = getattr(_lib(), "crf_check_" + _suffix(em.dtype))(
        *_em_args(em), _ptr(m), _I64(m.stride(0)), _I64(m.stride(1)), _ptr(start), _ptr(end), _ptr(trans),
        _I64(B), _I64(T), _I64(K))
    return flags != 0
