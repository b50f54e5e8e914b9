"""Launch settings shared by the kernel modules.

One place reads whether kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, the CPU
machines' mode: tests and CI). Triton itself reads the variable when ``@triton.jit``
decorates, so it must be set before any kernel module is imported; launchers read it per
call, through :func:`interpreting`, to pin small tiles and single autotune configs (the
interpreter pays per program and per op, and fails with several autotune configs).
"""
from __future__ import annotations

import os


def interpreting() -> bool:
    """True when the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"
