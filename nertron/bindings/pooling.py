"""Weighted-layer pooling (ELMo scalar mix): ``gamma * sum_l s_l * h_l`` over hidden layers.

Contents:

* ``pooling_torch``: the PyTorch reference, AllenNLP's ``ScalarMix.forward`` semantics
  (including the masked ``do_layer_norm`` variant) with the mixing scalars given. It is the
  CPU path and the oracle of the kernel tests;
* ``PoolingFunction``: the autograd Function over the Triton forward / backward kernels of
  :mod:`nertron.kernels.pooling`. It takes the mixing scalars ``s`` (fp32, (L,)) and returns
  their gradient; the mapping to the raw weights (softmax's Jacobian in softmax mode, the
  identity in "weighted" mode) is left to PyTorch autograd, an L-sized op;
* ``ScalarMix``: a drop-in for ``allennlp.modules.scalar_mix.ScalarMix`` (same constructor,
  parameter names ``scalar_parameters.{i}`` and ``gamma``, ``forward(tensors, mask=None)``,
  errors and messages), plus a ``backend`` keyword;
* ``LayerPooling``: nertron's own module over ``BertOutput.hidden_states``, with a ``mode``
  switch between ELMo's ``s = softmax(w)`` and ner-bert's unnormalised ``s = w``.

At inference the encoder accumulates the same mix in its LayerNorm epilogue
(``LayerPooling.mix_coefficients()`` gives the per-layer ``gamma * s_l``); the kernels here
are the training path over stored layers.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn import Parameter, ParameterList

from nertron.bindings import BACKENDS as _BACKENDS
from nertron.bindings import ops as _ops  # noqa: F401  (registers torch.ops.nertron.*)

__all__ = [
    "ConfigurationError",
    "tiny_value_of_dtype",
    "pooling_torch",
    "PoolingFunction",
    "ScalarMix",
    "LayerPooling",
]

_MODES = ("softmax", "weighted")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ConfigurationError(Exception):
    """Raised by :class:`ScalarMix` when misconfigured, like AllenNLP's own.

    A copy of ``allennlp.common.checks.ConfigurationError`` (AllenNLP is not a dependency):
    the text is kept in ``.message``, ``str(error)`` is the plain message, and ``__reduce__``
    makes it survive pickling (e.g. across DataLoader workers or multiprocessing). Code
    catching AllenNLP's class will not catch this one; catch
    ``nertron.bindings.pooling.ConfigurationError``.
    """

    def __reduce__(self):
        return type(self), (self.message,)

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def __str__(self) -> str:
        return self.message


def tiny_value_of_dtype(dtype: torch.dtype) -> float:
    """AllenNLP's ``allennlp.nn.util.tiny_value_of_dtype``: the epsilon added to variances.

    1e-13 for fp32/fp64, 1e-4 for fp16. Extension: bf16 (which AllenNLP rejects) gets 1e-13,
    as it has fp32's exponent range.
    """
    if not dtype.is_floating_point:
        raise TypeError("Only supports floating point dtypes.")
    if dtype in (torch.float, torch.double, torch.bfloat16):
        return 1e-13
    elif dtype == torch.half:
        return 1e-4
    else:
        raise TypeError("Does not support dtype " + str(dtype))


# --------------------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------------------
def pooling_torch(
    tensors: Sequence[torch.Tensor],
    s: torch.Tensor,
    gamma: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    do_layer_norm: bool = False,
) -> torch.Tensor:
    """``gamma * sum_l s_l * y_l``, AllenNLP ``ScalarMix`` semantics, operation for operation.

    ``y_l = tensors[l]``, or with ``do_layer_norm`` the layer normalised by its mean and
    variance over all non-masked elements (one scalar pair per layer), the variance
    stabilised by ``tiny_value_of_dtype``. Dtypes follow PyTorch's promotion (fp16 layers
    with fp32 scalars give fp32, as in AllenNLP).

    Args:
        tensors: L tensors of one shape ``(..., H)`` (typically (B, T, H)).
        s: (L,) mixing scalars (``softmax(w)`` or raw ``w``).
        gamma: (1,) scale.
        mask: ``(...)`` token mask (nonzero = real token), used by ``do_layer_norm`` only;
            None counts every token.
        do_layer_norm: normalise each layer before mixing.

    Returns:
        ``(..., H)`` mix.
    """
    # shape: L x (1,)
    weights = torch.split(s, split_size_or_sections=1)
    if not do_layer_norm:
        pieces = []
        for weight, tensor in zip(weights, tensors):
            # shape: (..., H)
            pieces.append(weight * tensor)
        return gamma * sum(pieces)

    if mask is None:
        mask = torch.ones(tensors[0].shape[:-1], dtype=torch.bool, device=tensors[0].device)
    # shape: (..., 1)
    broadcast_mask = mask.unsqueeze(-1)
    input_dim = tensors[0].size(-1)
    # shape: (); the number of elements the statistics run over
    num_elements_not_masked = torch.sum(mask) * input_dim

    def _do_layer_norm(tensor: torch.Tensor) -> torch.Tensor:
        # shape: (..., H)
        tensor_masked = tensor * broadcast_mask
        # shape: ()
        mean = torch.sum(tensor_masked) / num_elements_not_masked
        variance = torch.sum(((tensor_masked - mean) * broadcast_mask) ** 2) / num_elements_not_masked
        # shape: (..., H); padding is normalised too, with the real tokens' statistics
        return (tensor - mean) / torch.sqrt(variance + tiny_value_of_dtype(variance.dtype))

    pieces = []
    for weight, tensor in zip(weights, tensors):
        pieces.append(weight * _do_layer_norm(tensor))
    return gamma * sum(pieces)


# --------------------------------------------------------------------------------------
# autograd Function over the kernels
# --------------------------------------------------------------------------------------
class PoolingFunction:
    """``gamma * sum_l s_l * y_l`` on the Triton kernels, differentiable in s, gamma and the layers.

    ``PoolingFunction.apply(s, gamma, mask, do_layer_norm, eps, out_dtype, *layers)``:

    * ``s``: (L,) fp32 mixing scalars; ``gamma``: (1,) fp32;
    * ``mask``: ``(...)`` token mask for ``do_layer_norm`` (None: all tokens), not differentiated;
    * ``eps``: the variance epsilon of ``do_layer_norm``; ``out_dtype``: the output dtype;
    * ``layers``: L tensors of one shape ``(..., H)``, dtype fp32/fp16/bf16. They are used
      in place when they are equally spaced views of one buffer (e.g. ``stack.unbind(0)``),
      stacked (one copy) otherwise.

    Returns the ``(..., H)`` mix. The custom op ``nertron::pooling`` and its autograd formula
    ``nertron::pooling_backward`` (:mod:`nertron.bindings.ops`): ``grad_s`` and ``grad_gamma``
    in fp32, each layer's gradient in its dtype (views of one (L, N, H) buffer); reductions
    that no input needs (e.g. layer gradients of a frozen encoder) are skipped.
    """

    @staticmethod
    def apply(s: torch.Tensor, gamma: torch.Tensor, mask: Optional[torch.Tensor], do_layer_norm: bool,
              eps: float, out_dtype: torch.dtype, *layers: torch.Tensor) -> torch.Tensor:
        shape = layers[0].shape
        flat_mask = mask.reshape(-1) if mask is not None else None
        # shape: (N, H)
        out = torch.ops.nertron.pooling(list(layers), s, gamma, flat_mask, do_layer_norm, eps, out_dtype)[0]
        return out.reshape(shape)


def _check_same_shape(tensors: Sequence[torch.Tensor]) -> None:
    for i, tensor in enumerate(tensors):
        if tensor.shape != tensors[0].shape:
            raise ValueError(
                f"all tensors must have the same shape; tensor {i} has shape {tuple(tensor.shape)}, "
                f"tensor 0 has {tuple(tensors[0].shape)}")
        if tensor.dim() < 1:
            raise ValueError("the tensors to mix need a feature dimension")


def _want_triton(backend: str, tensors: Sequence[torch.Tensor], out_dtype: torch.dtype) -> bool:
    supported = (all(t.dtype == tensors[0].dtype for t in tensors)
                 and tensors[0].dtype in _KERNEL_DTYPES and out_dtype in _KERNEL_DTYPES)
    if backend == "torch":
        return False
    if backend == "auto":
        return supported and all(t.is_cuda for t in tensors)
    if not supported:
        raise ValueError(
            f"backend='triton' mixes fp32, fp16 or bf16 tensors of one dtype into fp32/fp16/bf16; "
            f"got {sorted({str(t.dtype) for t in tensors})} -> {out_dtype}")
    return True


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"invalid backend: {backend!r}; expected one of {_BACKENDS}")


# --------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------
class ScalarMix(nn.Module):
    """Drop-in for ``allennlp.modules.scalar_mix.ScalarMix``.

    Computes a parameterised scalar mixture of N tensors, ``mixture = gamma * sum(s_k * tensor_k)``
    where ``s = softmax(w)``, with ``w`` and ``gamma`` scalar parameters. If
    ``do_layer_norm=True``, each tensor is first normalised by its mean and variance over all
    non-masked elements.

    Same constructor, parameters (``scalar_parameters``: a ``ParameterList`` of
    ``mixture_size`` one-element parameters, ``gamma``: one element, both with
    ``requires_grad=trainable``), state_dict keys (``scalar_parameters.0``, ..., ``gamma``),
    ``forward(tensors, mask=None)`` and errors (:class:`ConfigurationError`, defined here,
    with AllenNLP's messages) as AllenNLP. The output dtype follows AllenNLP's type promotion
    (fp16 tensors with fp32 parameters give an fp32 mix).

    Extensions, off by default:

    * ``backend``: ``'auto'`` (the Triton kernels for CUDA fp32/fp16/bf16 tensors, the
      reference otherwise), ``'torch'`` (the reference, which is AllenNLP's code), ``'triton'``
      (the kernels; on CPU tensors they run in Triton's interpreter, which needs
      ``TRITON_INTERPRET=1`` before import);
    * ``mask=None`` with ``do_layer_norm=True`` counts every token (AllenNLP fails);
    * tensors of different shapes raise ``ValueError`` (AllenNLP broadcasts or fails);
    * bf16 works with ``do_layer_norm`` (epsilon 1e-13; AllenNLP rejects bf16 there).
    """

    def __init__(
        self,
        mixture_size: int,
        do_layer_norm: bool = False,
        initial_scalar_parameters: Optional[List[float]] = None,
        trainable: bool = True,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_backend(backend)
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm
        self.backend = backend

        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * mixture_size
        elif len(initial_scalar_parameters) != mixture_size:
            raise ConfigurationError(
                "Length of initial_scalar_parameters {} differs "
                "from mixture_size {}".format(initial_scalar_parameters, mixture_size)
            )

        self.scalar_parameters = ParameterList(
            [
                Parameter(torch.FloatTensor([initial_scalar_parameters[i]]), requires_grad=trainable)
                for i in range(mixture_size)
            ]
        )
        self.gamma = Parameter(torch.FloatTensor([1.0]), requires_grad=trainable)

    def forward(self, tensors: List[torch.Tensor], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Weighted average of ``tensors`` (any shape with at least two dimensions, all the same).

        Args:
            tensors: ``mixture_size`` tensors of shape ``(dim_0, ..., dim_{n-1}, dim_n)``.
            mask: ``(dim_0, ..., dim_{n-1})`` (e.g. (batch, timesteps) for (batch, timesteps,
                dim) tensors); used when ``do_layer_norm=True``, ignored otherwise.

        Returns:
            The mix, shaped like one tensor.
        """
        if len(tensors) != self.mixture_size:
            raise ConfigurationError(
                "{} tensors were passed, but the module was initialized to "
                "mix {} tensors.".format(len(tensors), self.mixture_size)
            )
        _check_same_shape(tensors)
        # shape: (L,)
        normed_weights = torch.nn.functional.softmax(
            torch.cat([parameter for parameter in self.scalar_parameters]), dim=0
        )
        out_dtype = torch.promote_types(normed_weights.dtype, tensors[0].dtype)
        if _want_triton(self.backend, tensors, out_dtype):
            mask_arg = None
            if self.do_layer_norm and mask is not None:
                if mask.shape != tensors[0].shape[:-1]:
                    raise ValueError(f"mask must have shape {tuple(tensors[0].shape[:-1])}, got {tuple(mask.shape)}")
                mask_arg = mask
            eps = tiny_value_of_dtype(tensors[0].dtype) if self.do_layer_norm else 0.0
            return PoolingFunction.apply(normed_weights.float(), self.gamma.float(), mask_arg, self.do_layer_norm,
                                  eps, out_dtype, *tensors)
        return pooling_torch(tensors, normed_weights, self.gamma, mask, self.do_layer_norm)

    def extra_repr(self) -> str:
        return f"mixture_size={self.mixture_size}, do_layer_norm={self.do_layer_norm}, backend={self.backend!r}"


class LayerPooling(nn.Module):
    """Weighted-layer pooling of a BERT encoder's hidden states: ``gamma * sum_l s_l * h_l``.

    Args:
        num_layers: the encoder's number of layers N.
        mode: ``'softmax'`` (ELMo/AllenNLP: ``s = softmax(weights)``, weights initialised to
            0, i.e. uniform) or ``'weighted'`` (ner-bert's ``bert_mode="weighted"``:
            ``s = weights`` unnormalised, initialised to 1/L).
        include_embeddings: mix the embeddings output too (L = N + 1 layers), not only the
            N layer outputs (L = N, the default, as ner-bert did).
        backend: ``'auto'`` (Triton kernels on CUDA tensors, the reference on CPU),
            ``'torch'`` (reference) or ``'triton'`` (kernels; on CPU in Triton's interpreter,
            which needs ``TRITON_INTERPRET=1`` before import).

    Parameters: ``weights`` (L,) and ``gamma`` (1,), gamma initialised to 1. The output has the
    hidden states' dtype; the mix is accumulated in fp32.
    """

    def __init__(self, num_layers: int, mode: str = "softmax", include_embeddings: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"invalid mode: {mode!r}; expected one of {_MODES}")
        _check_backend(backend)
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.num_layers = num_layers
        self.mode = mode
        self.include_embeddings = include_embeddings
        self.backend = backend
        L = num_layers + int(include_embeddings)
        init = torch.zeros(L) if mode == "softmax" else torch.full((L,), 1.0 / L)
        self.weights = Parameter(init)
        self.gamma = Parameter(torch.ones(1))

    @property
    def mixture_size(self) -> int:
        return self.weights.numel()

    def mixing_scalars(self) -> torch.Tensor:
        """``s`` (L,) in fp32: ``softmax(weights)`` or ``weights``, differentiable."""
        w = self.weights.float()
        return torch.softmax(w, dim=0) if self.mode == "softmax" else w

    def mix_coefficients(self) -> torch.Tensor:
        """``gamma * s`` (L,) fp32: the per-layer factors of a running accumulator (inference)."""
        return self.gamma.float() * self.mixing_scalars()

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mix the selected hidden states.

        Args:
            hidden_states: N + 1 tensors (B, T, H) as ``BertOutput.hidden_states``: the
                embeddings output first, then each layer's output.

        Returns:
            (B, T, H) mix in the hidden states' dtype.
        """
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(
                f"expected {self.num_layers + 1} hidden states (embeddings output + {self.num_layers} layers), "
                f"got {len(hidden_states)}")
        layers = list(hidden_states) if self.include_embeddings else list(hidden_states[1:])
        _check_same_shape(layers)
        dtype = layers[0].dtype
        s = self.mixing_scalars()
        gamma = self.gamma.float()
        if _want_triton(self.backend, layers, dtype):
            return PoolingFunction.apply(s, gamma, None, False, 0.0, dtype, *layers)
        return pooling_torch(layers, s, gamma).to(dtype)

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, mode={self.mode!r}, "
                f"include_embeddings={self.include_embeddings}, backend={self.backend!r}")
