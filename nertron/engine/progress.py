"""One progress bar for every long tagging job: ``nertron.pipeline`` over an iterable,
``Tagger.tag_file``, ``nertron tag --input`` and distributed tagging (rank 0).

A ``tqdm`` bar on **stderr** (never stdout, so piped output stays clean) counting texts, with
texts/s (tqdm's rate) and sub-tokens/s in its postfix, and a total when it is known (files:
their line count; sized inputs: ``len``). ``enabled=False`` makes every method a no-op, so the
callers need no branches.

    with Progress(total=len(lines), enabled=progress, desc="tagging") as bar:
        for batch in batches:
            ...
            bar.update(texts=len(batch), tokens=n_subtokens)
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm

__all__ = ["Progress", "shown"]


class Progress:
    """A texts + tokens progress bar on stderr.

    Args:
        total: the number of texts, when known (None: a counter without percentage).
        enabled: False: no bar at all (every method does nothing); None: a bar only when the
            stream is a terminal (tqdm's ``disable=None``: no control characters in logs).
        desc: the bar's label.
        file: where the bar goes (default ``sys.stderr``); stdout is refused.
        **tqdm_kwargs: passed on to ``tqdm`` (``mininterval``, ``leave``, ``position``...).
    """

    def __init__(self, total: int | None = None, enabled: bool | None = True, desc: str = "tagging",
                 file: IO[str] | None = None, **tqdm_kwargs: Any):
        if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
            raise ValueError(f"total must be a non-negative int or None, got {total!r}")
        stream = sys.stderr if file is None else file
        if stream is sys.stdout or stream is sys.__stdout__:
            raise ValueError("the progress bar never writes to stdout (tagged output may be piped there); use stderr")
        self.enabled = shown(enabled, stream)
        self.texts = 0
        self.tokens = 0
        self._start = time.perf_counter()
        self._bar: tqdm | None = None
        if self.enabled:
            self._bar = tqdm(total=total, desc=desc, unit="text", file=stream, dynamic_ncols=True, **tqdm_kwargs)

    def update(self, texts: int = 0, tokens: int = 0) -> None:
        """Count ``texts`` more texts done and ``tokens`` more sub-tokens encoded."""
        self.texts += texts
        self.tokens += tokens
        if self._bar is None:
            return
        elapsed = time.perf_counter() - self._start
        if elapsed > 0:
            # refresh=False: tqdm redraws on its own schedule (mininterval) in update() below.
            self._bar.set_postfix_str(f"{_rate(self.tokens / elapsed)} tokens/s", refresh=False)
        self._bar.update(texts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def shown(enabled: bool | None, file: IO[str] | None = None) -> bool:
    """Whether a bar is shown: ``enabled``, or for None whether ``file`` (default stderr) is a terminal."""
    if enabled is None:
        stream = sys.stderr if file is None else file
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(enabled)


def _rate(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"
