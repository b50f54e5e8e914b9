"""Mask predicates shared by the bindings (the fused encoder, the CRF)."""
from __future__ import annotations

import torch


def mask_gaps(mask: torch.Tensor) -> torch.Tensor:
    """``()`` bool tensor, on the mask's device: some row of the ``(B, T)`` bool ``mask`` has a
    step on after a step off (e.g. ``[1, 0, 1]``), i.e. is not ones then zeros. No host sync."""
    return (mask[:, 1:] & ~mask[:, :-1]).any()


def is_prefix_mask(mask: torch.Tensor) -> bool:
    """True when every row of the ``(B, T)`` bool ``mask`` is ones followed by zeros (right padding)."""
    return not bool(mask_gaps(mask))
