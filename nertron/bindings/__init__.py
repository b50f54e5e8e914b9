"""Autograd Functions and ``nn.Module`` s over the kernels in ``nertron.kernels``.

Every module here has a plain PyTorch reference path (the CPU path and the tests' oracle)
and a ``backend`` switch: ``'auto'`` runs the Triton kernels on CUDA tensors and the
reference elsewhere, ``'torch'`` forces the reference, ``'triton'`` forces the kernels
(on CPU tensors they run in Triton's interpreter). Drop-in replacements for other
libraries' modules (``torchcrf.CRF``, Hugging Face ``BertModel``, AllenNLP ``ScalarMix``)
and ``patch()`` live here too.
"""

# The ``backend`` values every module, function and ``patch()`` accept (one definition).
BACKENDS = ("auto", "torch", "triton")
