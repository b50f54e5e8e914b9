"""Writing files without ever losing the user's data: one place for it.

Every file nertron writes (tagged outputs, model files, trainer state, feature caches) is
written to a temporary file in the destination's directory and renamed over the destination
only once it is complete, so a crash, a Ctrl-C or a bad input line never leaves a truncated
or half-written file behind, and an existing file is replaced only by a complete new one.
Inputs are checked before any output is opened (:func:`check_output`).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary(path: Path) -> Path:
    """An empty temporary file beside ``path``, with the permissions ``path`` has (or a new
    file would get): mkstemp's own 0600 would silently make the user's output private."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return Path(name)


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Create or replace ``path`` all at once: ``write(tmp)`` writes a temporary file in the
    same directory, which is then renamed to ``path`` (no reader ever sees a half-written file;
    on any error, ``path`` is left as it was and the temporary file is removed)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = "\n") -> Iterator[IO]:
    """``with open_atomic(path) as out: ...``: a file object on a temporary file that replaces
    ``path`` when the block ends without an exception (and is removed when it raises)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        if "b" in mode:
            handle = open(tmp, mode)
        else:
            handle = open(tmp, mode, encoding=encoding, newline=newline)
        with handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
