"""Triton GPU kernels and their launchers.

One module per fused op (``matmul.py``, ``attention.py``, ``layernorm.py``, ``pooling.py``,
``crf.py``): a docstring saying
what is fused and why, the private ``@triton.jit`` kernels, then the launcher that checks
shapes, dtypes and contiguity, picks block sizes and allocates outputs. No ``nn.Module``
lives here: autograd Functions and modules over these kernels are in ``nertron.bindings``.
On machines without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the test-suite checks their math; ``bench/gpu_compile.py`` (run by
``tests/test_gpu_compile.py``) compiles every variant the launchers pass for real GPU targets,
which is how it checks that they compile, fit and launch within CUDA's limits.

Beside them, the CPU's own loops in C (built once with the system compiler and cached,
``cbuild.py``; each falls back to its Python reference without a compiler): the CRF
recursions (``crf_cpu.py``) and the host pipeline's word split and casing features
(``text_cpu.py``), called through ``ctypes``, which releases the GIL.
"""
