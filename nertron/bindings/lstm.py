"""A bidirectional LSTM over padded, variable-length sequences that ``torch.compile`` keeps in
one graph.

``nn.LSTM`` over a ``PackedSequence`` is what the models run eagerly (each direction reads a
sequence's own steps only), but Dynamo refuses to trace ``pack_padded_sequence`` (and RNN
modules): a graph break per call. Here each layer is the custom op ``nertron::bilstm_layer``
(pack, one ``torch._VF.lstm`` call, unpack, inside the op), with a fake implementation for
shapes and an autograd formula that recomputes the layer under autograd in its backward op
(``nertron::bilstm_layer_backward``, ``vjp_by_recomputation``; a layer is deterministic, so the recomputation is exact).
The dropout between layers, which ``nn.LSTM`` applies inside its call, runs between the ops
as ``F.dropout`` (same distribution, another random stream).

:func:`packed_bilstm` is what ``BiLSTM.forward`` (``nertron/engine/models.py``) calls under
``torch.compile``; eagerly it keeps ``nn.LSTM`` on a packed sequence, which it matches
(``tests/test_compile.py``).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.library import custom_op, register_autograd

from nertron.bindings.ops import vjp_by_recomputation

__all__ = ["packed_bilstm"]


def _layer(x: Tensor, lengths: Tensor, weights: List[Tensor]) -> Tensor:
    """One bidirectional LSTM layer over the first ``lengths[b]`` steps of each row of ``x``
    ``(B, T, D)``; ``(B, T, 2 * hidden)``, zero past each length."""
    hidden = weights[1].shape[1]  # weight_hh: (4 * hidden, hidden)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    hx = x.new_zeros((2, x.shape[0], hidden))
    out, _, _ = torch._VF.lstm(packed.data, packed.batch_sizes, (hx, hx), weights, True, 1, 0.0, False, True)
    out = nn.utils.rnn.PackedSequence(out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


@custom_op("nertron::bilstm_layer", mutates_args=())
def bilstm_layer(x: Tensor, lengths: Tensor, weights: List[Tensor]) -> Tensor:
    """One bidirectional LSTM layer on packed sequences: ``x`` ``(B, T, D)``, ``lengths`` ``(B,)``
    each in ``[1, T]``, ``weights`` as ``nn.LSTM``'s flat weights of one layer (forward then
    reverse: w_ih, w_hh, b_ih, b_hh). Returns ``(B, T, 2 * hidden)``, zero past each length."""
    return _layer(x, lengths, weights)


@bilstm_layer.register_fake
def _(x, lengths, weights):
    return x.new_empty((x.shape[0], x.shape[1], 2 * weights[1].shape[1]))


@custom_op("nertron::bilstm_layer_backward", mutates_args=())
def bilstm_layer_backward(grad_out: Tensor, x: Tensor, lengths: Tensor,
                          weights: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """Gradients of ``bilstm_layer`` w.r.t. ``x`` and each weight, by recomputation."""
    grads = vjp_by_recomputation(lambda x_, *w: _layer(x_, lengths, list(w)), [x, *weights], grad_out)
    return grads[0], grads[1:]


@bilstm_layer_backward.register_fake
def _(grad_out, x, lengths, weights):
    return torch.empty_like(x), [torch.empty_like(w) for w in weights]


def _setup(ctx, inputs, output):
    x, lengths, weights = inputs
    ctx.save_for_backward(x, lengths, *weights)


def _backward(ctx, grad_out):
    x, lengths, *weights = ctx.saved_tensors
    grad_x, grad_weights = torch.ops.nertron.bilstm_layer_backward(grad_out.contiguous(), x, lengths, weights)
    return grad_x, None, list(grad_weights)


register_autograd("nertron::bilstm_layer", _backward, setup_context=_setup)


def packed_bilstm(weights: Sequence[Tensor], num_layers: int, dropout: float, training: bool, x: Tensor,
                  mask: Tensor) -> Tensor:
    """A bidirectional, batch-first ``nn.LSTM`` with biases over the prefix-masked rows of ``x``
    ``(B, T, D)``, as ``pad_packed_sequence(lstm(pack_padded_sequence(x, mask.sum(1))))``
    computes it: ``(B, T, 2 * hidden)``, zero at padding; rows with no step count as length 1.

    Args:
        weights: the LSTM's ``_flat_weights`` (per layer: w_ih, w_hh, b_ih, b_hh, then the
            same for the reverse direction). Passed as tensors, not as the module: Dynamo
            refuses to touch an ``nn.LSTM`` object at all.
        num_layers, dropout, training: the LSTM's; dropout applies between layers in training.

    Compiles without a graph break (one custom op per layer)."""
    if len(weights) != 8 * num_layers:
        raise ValueError(f"packed_bilstm needs 8 weights per layer (bidirectional, with biases), "
                         f"got {len(weights)} for {num_layers} layers")
    lengths = mask.sum(1).clamp(min=1)
    for layer in range(num_layers):
        if layer > 0:
            x = F.dropout(x, dropout, training)
        x = torch.ops.nertron.bilstm_layer(x, lengths, list(weights[8 * layer:8 * layer + 8]))
    return x
