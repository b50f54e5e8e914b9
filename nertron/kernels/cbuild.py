"""Build small C libraries once with the system C compiler, cache them on disk, load them.

nertron's CPU-side C code (the CRF recursions, ``crf_cpu``; the host pipeline's text loops,
``text_cpu``) is compiled on first use with ``cc -O3 -shared -fPIC`` (well under a second)
into ``$NERTRON_CACHE`` or ``~/.cache/nertron``, under a name hashed from the source, the
compiler and the flags; the file is written to a temporary name and renamed into place, so
concurrent first calls are safe. No compiler, a failed build, or ``NERTRON_CPU_KERNELS=0``:
``load`` returns None (once, with a warning naming what runs instead), and the callers run
their reference path. Functions of a ``ctypes.CDLL`` release the GIL while they run.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["cache_dir", "Library"]


def cache_dir() -> Path:
    """Where built libraries are kept: ``$NERTRON_CACHE`` or ``~/.cache/nertron``."""
    return Path(os.environ.get("NERTRON_CACHE") or Path.home() / ".cache" / "nertron")


def _compile(name: str, source: str, flag_sets: Sequence[Sequence[str]], key: str) -> Optional[ctypes.CDLL]:
    """Compile (once per source, compiler and flags; cached) and load; the first flag set that
    builds and loads wins; None if none does."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    for flags in flag_sets:
        digest = hashlib.sha256((source + cc + " ".join(flags) + key).encode()).hexdigest()[:16]
        target = cache_dir() / f"{name}_{digest}.so"
        if not target.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory() as tmp:
                    src = Path(tmp) / f"{name}.c"
                    src.write_text(source)
                    out = Path(tmp) / f"{name}.so"
                    subprocess.run([cc, "-O3", "-shared", "-fPIC", *flags, str(src), "-o", str(out), "-lm"],
                                   check=True, capture_output=True, timeout=120)
                    # atomic: a concurrent builder either sees the whole file or none
                    fd, part = tempfile.mkstemp(dir=target.parent, suffix=".part")
                    os.close(fd)
                    shutil.copyfile(out, part)
                    os.replace(part, target)
            except (OSError, subprocess.SubprocessError):
                continue
        try:
            return ctypes.CDLL(str(target))
        except OSError:
            continue
    return None


class Library:
    """A C library built on first use (thread-safe), or None for good when it cannot be.

    Args:
        name: the file name's stem in the cache.
        source: the C source.
        flag_sets: compiler flags to try in order (e.g. ``[["-fopenmp"], []]``).
        key: anything else the build depends on (mixed into the cached name).
        fallback: what runs instead, for the warning (``"the CRF runs its PyTorch reference"``).
    """

    def __init__(self, name: str, source: str, flag_sets: Sequence[Sequence[str]] = ((),), key: str = "",
                 fallback: str = "the reference path runs instead"):
        self.name, self.source, self.flag_sets, self.key, self.fallback = name, source, flag_sets, key, fallback
        self._lock = threading.Lock()
        self._lib: Optional[ctypes.CDLL] = None
        self._tried = False

    def get(self) -> Optional[ctypes.CDLL]:
        """The loaded library (built on the first call), or None."""
        if not self._tried:
            with self._lock:
                if not self._tried:
                    if os.environ.get("NERTRON_CPU_KERNELS", "1") != "0":
                        self._lib = _compile(self.name, self.source, self.flag_sets, self.key)
                        if self._lib is None:
                            warnings.warn(f"nertron: no working C compiler; {self.fallback} (slower). "
                                          "Set CC or install gcc/clang for the C kernels.", stacklevel=4)
                    self._tried = True
        return self._lib
