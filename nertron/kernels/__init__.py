"""Triton GPU kernels and their launchers.

One module per fused op (``crf.py``, ``bert.py``, ``pooling.py``, ...): a docstring saying
what is fused and why, the private ``@triton.jit`` kernels, then the launcher that checks
shapes, dtypes and contiguity, picks block sizes and allocates outputs. No ``nn.Module``
lives here: autograd Functions and modules over these kernels are in ``nertron.bindings``.
On machines without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the test-suite checks them.
"""
