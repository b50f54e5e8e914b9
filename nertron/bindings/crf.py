"""Linear-chain CRF: a drop-in replacement for ``torchcrf.CRF`` (pytorch-crf 0.7.2).

Contents:

* ``CRFLogPartition``: log Z by the Triton forward kernel, differentiable through the
  forward-backward kernel (the custom op ``nertron::crf_forward`` and its autograd formula);
* ``crf_span_log_probs``: log-probabilities of tagged spans (entity confidences), from
  alpha, beta and log Z of the Triton kernels (``crf_alpha_beta``, on CUDA by default) or
  of the PyTorch reference, then one shared gather of the inner path scores;
* ``allowed_transitions`` / ``Constraints``: the allowed-transition constraints for
  BIO/IOB2, IOB1 and BIOES/BILOU label sets;
* ``CRF``: the module, parameter-, ``repr``-, ``state_dict``- and error-compatible with
  ``torchcrf.CRF``, plus ``decode(..., as_tensor=True)``, ``marginals``,
  ``span_log_probs``, constrained decoding and a ``backend`` switch.

The PyTorch reference implementations (``crf_score_torch``, ``crf_log_partition_torch``,
``crf_viterbi_torch``, ``crf_viterbi_nbest_torch``, ``crf_marginals_torch``) live in
:mod:`nertron.bindings.crf_reference` and are re-exported here.

Every recursion over time runs as one custom op (:mod:`nertron.bindings.ops`): the Triton
kernels (``nertron::crf_*``) or, on the CPU path, ``nertron::crf_*_ref``, which runs the C
loops of :mod:`nertron.kernels.crf_cpu` (built once with the system C compiler, cached on
disk) or, without a compiler or off CPU, the PyTorch reference. So ``torch.compile`` sees
one node per recursion, whatever the length.

Masks follow pytorch-crf: ``(T, B)`` (or ``(B, T)`` with ``batch_first``) bool/uint8, the
first step all on. The fast paths (the Triton kernels and the vectorised reference) work on
prefix masks (ones, then zeros) and their lengths ``mask.sum`` (each launcher checks
``1 <= length <= T``, which such masks always meet). ``CRF.forward`` and ``CRF.decode``
(list output) give pytorch-crf's results for any other input too: a mask with a gap
(``[1, 0, 1]``), an empty batch, or ``inf``/``nan`` emissions or parameters make them run
pytorch-crf's own step-by-step algorithms (``crf_llh_torchcrf``, ``crf_viterbi_torchcrf``,
one host synchronisation to decide), on every backend. The extras (``decode(as_tensor=True)``,
``nbest``, ``marginals``, ``span_log_probs``) refuse masks with gaps with a ``ValueError``.

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
from nertron.bindings import ops as _ops  # noqa: F401  (registers torch.ops.nertron.*)
from nertron.bindings.crf_reference import (
    compute_dtype,
    crf_log_partition_torch,
    crf_marginals_torch,
    crf_score_torch,
    crf_llh_torchcrf,
    crf_viterbi_nbest_torch,
    crf_viterbi_torch,
    crf_viterbi_torchcrf,
    needs_torchcrf_compat,
)
from nertron.bindings.masks import is_prefix_mask
from nertron.tags import allowed, constraint_scheme, parse_label

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

def _compiling() -> bool:
    """Inside ``torch.compile``'s tracing: the host-side checks are skipped (see ``CRF``)."""
    return torch.compiler.is_compiling()


# --------------------------------------------------------------------------------------
# span scores
# --------------------------------------------------------------------------------------
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
    dt = compute_dtype(emissions, transitions)
    if backend == "auto":
        # fp64 callers ask for fp64 statistics, which only the reference computes
        use_kernels = emissions.is_cuda and dt != torch.float64
    else:
        use_kernels = backend == "triton"
    if use_kernels:
        dt = torch.float32
    if n_spans == 0:
        return emissions.new_zeros((0,), dtype=dt)
    em = emissions.to(dt)
    tr = transitions.to(dt)
    lengths = mask.sum(1)
    if use_kernels:
        # the kernels read the emissions in their own dtype and compute in fp32
        # shape: (B,), (B, T, K), (B, T, K)
        log_z, alpha, beta = torch.ops.nertron.crf_alpha_beta(emissions, lengths, start, end, transitions)
    else:
        # shape: (B,), (B, T, K), (B, T, K)
        log_z, alpha, beta = torch.ops.nertron.crf_alpha_beta_ref(em, lengths, start.to(dt), end.to(dt), tr)
    # shape: (B, T)
    y = tags.clamp(min=0)
    # score of entering y_t from y_{t-1} at step t (0 at t = 0, never read there)
    # shape: (B, T)
    step = em.gather(2, y.unsqueeze(2)).squeeze(2)
    step = torch.cat([step[:, :1].new_zeros(()).expand(step.shape[0], 1),
                      step[:, 1:] + tr[y[:, :-1], y[:, 1:]]], 1)
    b, i, j = spans.to(em.device).unbind(1)
    # inner sum over t in (i, j], gathered (not a cumsum difference: no cancellation, -inf stays -inf);
    # as wide as the longest possible span (a shape, not the spans' values: no host sync)
    width = step.shape[1] - 1
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


# --------------------------------------------------------------------------------------
# log Z over the Triton kernels, differentiable
# --------------------------------------------------------------------------------------
class CRFLogPartition:
    """log Z per sequence by the Triton forward kernel; gradients by the fused
    forward-backward kernel (unary and pairwise marginals), not by autograd over time.

    ``CRFLogPartition.apply(emissions, lengths, start, end, transitions)`` -> ``(B,)`` fp32:
    the custom op ``nertron::crf_forward`` (alpha kept only when a gradient is needed) and
    its registered autograd formula ``nertron::crf_backward`` (see :mod:`nertron.bindings.ops`).
    """

    @staticmethod
    def apply(emissions: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor,
              end: torch.Tensor, transitions: torch.Tensor) -> torch.Tensor:
        need = torch.is_grad_enabled() and any(
            t.requires_grad for t in (emissions, start, end, transitions))
        return torch.ops.nertron.crf_forward(emissions, lengths, start, end, transitions, need)[0]


# --------------------------------------------------------------------------------------
# constraints
# --------------------------------------------------------------------------------------
class Constraints(NamedTuple):
    """Allowed transitions ``(K, K)`` bool (``[i, j]``: i -> j), start ``(K,)`` and end
    ``(K,)`` bool tags."""
    transitions: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor


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
    key = constraint_scheme(scheme)  # the rules live in nertron.tags; here they become tensors
    parsed = [parse_label(label, key) for label in labels]
    K = len(parsed)
    trans = torch.zeros((K, K), dtype=torch.bool)
    for (i, a), (j, b) in itertools.product(enumerate(parsed), repeat=2):
        trans[i, j] = allowed(a, b, key)
    outside = ("O", None)  # the start and the end behave like an O tag
    start = torch.tensor([allowed(outside, p, key) for p in parsed], dtype=torch.bool)
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

    On CPU (``backend='torch'``/``'auto'``) the recursions run as the custom ops
    ``nertron::crf_*_ref`` (C loops, see :mod:`nertron.kernels.crf_cpu`, or the PyTorch
    reference without a C compiler); on the Triton path as ``nertron::crf_*``
    (:mod:`nertron.bindings.ops`). ``forward``, ``decode(..., as_tensor=True)``, ``marginals``
    and ``span_log_probs`` compile under ``torch.compile`` without a graph break, one graph
    for any batch size, length and lengths pattern (``dynamic=True``). Inside a compiled
    region the data-dependent host checks are skipped: the first step of the mask is not
    checked, masks are taken as prefix masks (lengths ``mask.sum``; no pytorch-crf fallback
    for gapped masks or ``inf``/``nan`` scores), and ``decode(nbest=...)``/list outputs break
    the graph (they build Python lists). The op itself still checks each length is in
    ``[1, T]`` when it runs. Eager calls keep every check and pytorch-crf's results.
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

    def transition_scores(self, constrained: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(start (K,), end (K,), transitions (K, K))`` scores; with ``constrained`` (what
        ``decode``, ``marginals`` and ``span_log_probs`` use) ``-inf`` where the constraints
        set by :meth:`set_constraints` forbid a tag or a transition."""
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
            if _compiling():
                return  # a data-dependent check: skipped under torch.compile (see the class docstring)
            no_empty_seq = not self.batch_first and mask[0].all()
            no_empty_seq_bf = self.batch_first and mask[:, 0].all()
            if not no_empty_seq and not no_empty_seq_bf:
                raise ValueError('mask of the first timestep must all be on')

    def _compat(self, emissions: torch.Tensor, mask: torch.Tensor) -> bool:
        """Whether pytorch-crf's own algorithms must run (see ``needs_torchcrf_compat``);
        never under torch.compile (a data-dependent branch)."""
        if _compiling():
            return False
        return needs_torchcrf_compat(emissions, mask, self.start_transitions,
                                     self.end_transitions, self.transitions)

    @staticmethod
    def _require_prefix(mask: torch.Tensor, what: str) -> None:
        if _compiling():
            return
        if mask.numel() and not is_prefix_mask(mask):
            raise ValueError(f'{what} needs prefix masks (ones, then zeros), got a mask with a '
                             'gap; forward and decode (list output) accept such masks as '
                             'pytorch-crf does')

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
        if self._compat(emissions, mask):
            # gapped masks, empty batches, inf/nan: pytorch-crf's own algorithm
            llh = crf_llh_torchcrf(emissions, tags, mask, self.start_transitions,
                                   self.end_transitions, self.transitions)
            return self._reduce(llh, mask, reduction)
        if not self._use_triton(emissions):
            # path score and log Z in one op (one pass on CPU); shape: (B,)
            llh = torch.ops.nertron.crf_nll_ref(emissions, tags, mask.sum(1), self.start_transitions,
                                                self.end_transitions, self.transitions)[0]
            return self._reduce(llh, mask, reduction)
        # shape: (B,)
        numerator = crf_score_torch(emissions, tags, mask, self.start_transitions,
                                    self.end_transitions, self.transitions)
        # shape: (B,); the Triton kernels' log Z (the CPU path returned above, through crf_nll_ref)
        denominator = CRFLogPartition.apply(emissions, mask.sum(1), *self.transition_scores(constrained=False))
        llh = numerator - denominator.to(numerator.dtype)
        return self._reduce(llh, mask, reduction)

    @staticmethod
    def _reduce(llh: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
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
        start, end, trans = self.transition_scores(constrained=True)
        if nbest is not None:
            if isinstance(nbest, bool) or not isinstance(nbest, int) or nbest < 1:
                raise ValueError(f"nbest must be a positive int, got {nbest!r}")
            self._require_prefix(mask, 'decode(nbest=...)')
            if emissions.size(0) == 0:
                if as_tensor:
                    tags = torch.full((nbest, *mask.shape), pad_tag, dtype=torch.int64,
                                      device=emissions.device)
                    return ((tags if self.batch_first else tags.transpose(1, 2)),
                            emissions.new_zeros((nbest, 0), dtype=torch.float32))
                return []
            with torch.no_grad():
                tags, scores = crf_viterbi_nbest_torch(emissions, mask, start, end, trans, nbest, pad_tag=pad_tag)
            if as_tensor:
                return (tags if self.batch_first else tags.transpose(1, 2)), scores
            lengths = mask.sum(1).tolist()
            alive = (scores > float("-inf")).t().tolist()  # shape: (B, nbest)
            paths = tags.permute(1, 0, 2).tolist()  # shape: (B, nbest, T)
            return [[path[:n] for path, ok in zip(rows, keep) if ok]
                    for rows, keep, n in zip(paths, alive, lengths)]
        if self._compat(emissions, mask):
            # gapped masks, empty batches, inf/nan: pytorch-crf's own algorithm
            if as_tensor:
                self._require_prefix(mask, 'decode(as_tensor=True)')
            with torch.no_grad():
                paths, scores = crf_viterbi_torchcrf(emissions, mask, start, end, trans)
            if not as_tensor:
                return paths
            tags = torch.full(mask.shape, pad_tag, dtype=torch.int64, device=emissions.device)
            for b, path in enumerate(paths):
                tags[b, :len(path)] = torch.tensor(path, dtype=torch.int64)
            return (tags if self.batch_first else tags.t()), scores
        with torch.no_grad():
            lengths = mask.sum(1)
            if self._use_triton(emissions):
                tags, scores = torch.ops.nertron.crf_viterbi(emissions, lengths, start, end, trans, pad_tag)
            else:
                tags, scores = torch.ops.nertron.crf_viterbi_ref(emissions, lengths, start, end, trans, pad_tag)
        if as_tensor:
            return (tags if self.batch_first else tags.t()), scores
        return [row[:n] for row, n in zip(tags.tolist(), lengths.tolist())]

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
        self._require_prefix(mask, 'marginals')
        start, end, trans = self.transition_scores(constrained=True)
        if emissions.size(0) == 0:
            probs = emissions.new_zeros(emissions.shape, dtype=torch.float32)
            return probs if self.batch_first else probs.transpose(0, 1)
        with torch.no_grad():
            lengths = mask.sum(1)
            if self._use_triton(emissions):
                probs = torch.ops.nertron.crf_marginals(emissions, lengths, start, end, trans)
            else:
                # shape: (B,), (B, T, K), (B, T, K)
                log_z, alpha, beta = torch.ops.nertron.crf_alpha_beta_ref(emissions, lengths, start, end, trans)
                probs = torch.exp(alpha + beta - log_z[:, None, None])
                probs = torch.where(mask.unsqueeze(2), probs, probs.new_zeros(()))
        return probs if self.batch_first else probs.transpose(0, 1)

    def span_log_probs(self, emissions: torch.Tensor, tags: torch.Tensor, spans: torch.Tensor,
                       mask: Optional[torch.ByteTensor] = None) -> torch.Tensor:
        """Log-probabilities that stretches of the sequences carry the given tags (entity
        confidences), under the distribution ``decode`` decodes from.

        For a span ``(b, i, j)``: ``log P(y_i..y_j = tags[b, i..j] | x)``, the tags outside
        the span summed over (see :func:`crf_span_log_probs`), with the constrained start /
        end / transition scores, in fp32, on this module's ``backend``; no gradient (like
        ``decode`` and ``marginals``).

        Args:
            emissions: ``(seq_length, batch_size, num_tags)`` or batch first.
            tags: ``(seq_length, batch_size)`` or batch first, int64 (e.g. from
                ``decode(..., as_tensor=True)``; values outside the spans are not read,
                ``-1`` is fine there).
            spans: ``(N, 3)`` int64 rows ``(b, i, j)``: batch index ``b`` and the inclusive
                positions ``0 <= i <= j < length_b`` along the sequence.
            mask: ``(seq_length, batch_size)`` or batch first, first step all on.

        Returns:
            ``(N,)`` fp32 log-probabilities (``-inf`` for a span with a disallowed transition).
        """
        self._validate(emissions, tags=tags, mask=mask)
        emissions, mask, tags = self._batch_first(emissions, mask, tags)
        self._require_prefix(mask, 'span_log_probs')
        start, end, trans = self.transition_scores(constrained=True)
        with torch.no_grad():
            return crf_span_log_probs(emissions, mask, tags, spans, start.float(), end.float(),
                                      trans.float(), backend=self.backend)
