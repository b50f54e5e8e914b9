"""Helpers several test modules share (imported as ``from support import ...``).

- Element offsets past 2^31 without gigabytes of memory: an operand is a view of a few rows
  spaced ``FAR`` elements apart in a big ``torch.empty`` buffer, so row 2 starts 2^31 + 128
  elements past row 0. Only those rows are ever written or read: the untouched pages of the
  buffer (8 GiB of address space in fp16, 16 in fp32) are never committed. The view starts
  ``BASE`` = 2^31 elements into the buffer, so an offset that wrapped (true offset - 2^32)
  still lands inside it: code that wraps gives a wrong answer, not a segfault.
- ``deadline``: a hang in a fuzz example fails the test instead of stalling the suite.
"""
import contextlib
import signal

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAR = 2**30 + 64
BASE = 2**31


def far_view(values: torch.Tensor, strides: tuple) -> torch.Tensor:
    """``values`` copied into a strided view, starting at ``BASE``, of a fresh big buffer whose
    untouched pages are never committed (skips when the address space cannot be reserved)."""
    span = sum((size - 1) * stride for size, stride in zip(values.shape, strides))
    try:
        buffer = torch.empty(BASE + span + 1, dtype=values.dtype, device=DEVICE)
    except RuntimeError as error:  # no room for the address space (not the memory) on this machine
        pytest.skip(f"cannot reserve {(BASE + span) * values.dtype.itemsize / 2**30:.0f} GiB of address space: {error}")
    view = buffer.as_strided(values.shape, strides, BASE)
    view.copy_(values)
    return view


def far_rows(values: torch.Tensor) -> torch.Tensor:
    """``values`` (rows, H) copied into a view whose rows are ``FAR`` elements apart."""
    return far_view(values, (FAR, 1))


class TorchAllocatingInto:
    """Stands in for the ``torch`` module inside a launcher so that the launcher's output,
    ``torch.empty`` of ``target``'s shape and dtype, is ``target`` (a far view); everything
    else is torch's own."""

    def __init__(self, target):
        self.target = target

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, size, *, dtype=None, device=None):
        if tuple(size) == tuple(self.target.shape) and dtype == self.target.dtype:
            return self.target
        return torch.empty(size, dtype=dtype, device=device)


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    """Raise ``TimeoutError`` in the block after ``seconds`` (SIGALRM, main thread only)."""
    def expire(signum, frame):
        raise TimeoutError(f"{what} ran over {seconds} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
