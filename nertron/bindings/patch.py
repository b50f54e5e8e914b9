"""``nertron.patch(model)``: swap nertron's fast paths into someone else's model, in place.

What it recognises anywhere in the module tree:

- a Hugging Face ``transformers`` ``BertModel`` (inside ``BertForTokenClassification`` and
  friends too): its ``forward`` is wrapped so that calls the fused encoder can serve run on
  nertron's kernels, with the model's own weights and output types; every other call
  (gradients, dropout in training, ``inputs_embeds``, ``position_ids``, attention outputs,
  caches, non-right-padded masks, CPU tensors under ``backend='auto'``) runs the original
  forward untouched;
- a Hugging Face ``BertEncoder`` used on its own (in a model of the user's that is not a
  ``BertModel``): its ``forward`` is wrapped the same way, the layers running on nertron's
  kernels over the packed real tokens of ``hidden_states``, for padding masks in any of the
  forms Hugging Face builds (None, (B, T), 4-D boolean or additive); cross-attention, caches,
  per-query masks and calls whose layer outputs are being recorded by hooks
  (``output_hidden_states``/``output_attentions``) run the original forward;
- ``torchcrf.CRF`` (pytorch-crf): replaced by ``nertron.CRF`` sharing its parameters;
- an AllenNLP ``ScalarMix``: replaced by ``nertron.ScalarMix`` sharing its parameters.

Weights are shared, not copied: training the patched model trains the original parameters.
Outputs at padding positions are zeros where the kernels served the call (Hugging Face
computes values there that no real token reads). ``unpatch(model)`` undoes the forward
wrapping of Hugging Face models.

What ``patch`` stores on your modules, and for how long:

- on each wrapped ``BertModel`` / ``BertEncoder``: an instance attribute ``forward`` (the
  wrapper) and ``_nertron_original_forward`` (the original bound method), until ``unpatch``;
- on each ``BertSelfAttention`` the fused encoder serves: ``_nertron_qkv``, a concatenated
  ``(3H, H)`` copy of the query/key/value weights and ``(3H,)`` biases in the weights' dtype
  and device (one extra copy of those weights: 3 x 768 x 768 x 12 layers, 42 MB in bf16 for
  bert-base), built at the first fused call and rebuilt when a Q/K/V weight changes (moved,
  modified in place -- torch's per-tensor version counter ``_version`` -- or cast); a plain
  attribute, not a buffer, so it stays out of ``state_dict``. ``unpatch`` frees it.

Encoder calls whose layer outputs are recorded by hooks are detected through torch's
``Module._forward_hooks`` / ``_forward_pre_hooks`` dictionaries (torch has no public way to
ask whether a module has hooks); such calls run the original forward.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from nertron.bindings import BACKENDS
from nertron.bindings.bert import (drop_cached_weights, encoder_key_mask, fusable, fused_encoder_forward,
                                   fused_encoder_layers_forward)

# Arguments of Hugging Face's BertModel.forward the fused encoder serves; any other argument
# given a non-default value sends the call to the original forward.
_FUSED_ARGS = {"input_ids", "attention_mask", "token_type_ids", "output_hidden_states", "return_dict", "kwargs"}


def _is_hf_bert(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "BertModel" and cls.__module__.startswith("transformers.")


def _is_hf_bert_encoder(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "BertEncoder" and cls.__module__.startswith("transformers.")


def _is_torchcrf(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "CRF" and cls.__module__.split(".")[0] == "torchcrf"


def _is_allennlp_scalar_mix(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "ScalarMix" and cls.__module__.split(".")[0] == "allennlp"


def _split_call(signature: inspect.Signature, args: tuple, kwargs: dict, served_args: set[str]):
    """Bind a call: (its named arguments, ``**kwargs`` included; the ones outside ``served_args``)."""
    arguments = dict(signature.bind(*args, **kwargs).arguments)
    extra = arguments.pop("kwargs", {}) if "kwargs" in signature.parameters else {}
    arguments.update(extra)
    return arguments, {k: v for k, v in arguments.items() if k not in served_args}


# What a wrapper's ``serve`` returns for a call the kernels cannot serve.
_NOT_SERVED = object()


def _wrap(module: nn.Module, served_args: set[str], serve) -> None:
    """Replace ``module.forward`` by a wrapper that binds each call and hands it to
    ``serve(arguments, others)``, running the original forward when that returns ``_NOT_SERVED``."""
    original = module.forward
    signature = inspect.signature(original)

    def forward(*args: Any, **kwargs: Any):
        arguments, others = _split_call(signature, args, kwargs, served_args)
        result = serve(arguments, others)
        return original(*args, **kwargs) if result is _NOT_SERVED else result

    forward.__wrapped__ = original
    module._nertron_original_forward = original
    module.forward = forward


def _wrap_hf_bert(module: nn.Module, backend: str) -> None:
    def serve(arguments: dict, others: dict):
        input_ids = arguments.get("input_ids")
        attention_mask = arguments.get("attention_mask")
        served = (
            input_ids is not None
            and input_ids.dim() == 2
            and (attention_mask is None or attention_mask.shape == input_ids.shape)
            and all(v is None or v is False for v in others.values())
            and not getattr(module.config, "is_decoder", False)
            and backend != "torch"
            and (backend == "triton" or input_ids.is_cuda)
            and fusable(module, input_ids, attention_mask) is None
        )
        if not served:
            return _NOT_SERVED
        from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

        want_states = arguments.get("output_hidden_states")
        if want_states is None:
            want_states = bool(getattr(module.config, "output_hidden_states", False))
        result = fused_encoder_forward(
            module, input_ids, attention_mask, arguments.get("token_type_ids"), bool(want_states)
        )
        output = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=result.last_hidden_state,
            pooler_output=result.pooler_output,
            hidden_states=result.hidden_states,
        )
        return output.to_tuple() if arguments.get("return_dict") is False else output

    _wrap(module, _FUSED_ARGS, serve)


# Arguments of BertEncoder.forward the fused layers serve (position_ids only matter to the
# embeddings, which ran already); any other given a value other than None/False is left to HF.
_ENCODER_ARGS = {"hidden_states", "attention_mask", "position_ids", "return_dict", "kwargs"}


def _wrap_hf_bert_encoder(module: nn.Module, backend: str) -> None:
    def serve(arguments: dict, others: dict):
        hidden_states = arguments.get("hidden_states")
        served = (
            isinstance(hidden_states, torch.Tensor)
            and all(v is None or v is False for v in others.values())
            and backend != "torch"
            and (backend == "triton" or hidden_states.is_cuda)
            # transformers records hidden states / attentions with hooks on the layers: leave those calls alone
            and not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
        )
        if not served:
            return _NOT_SERVED
        key_mask, reason = encoder_key_mask(module, hidden_states, arguments.get("attention_mask"))
        if reason is not None:
            return _NOT_SERVED
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=fused_encoder_layers_forward(module, hidden_states, key_mask))

    _wrap(module, _ENCODER_ARGS, serve)


def _replace_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _fast_crf(crf: nn.Module, backend: str) -> nn.Module:
    from nertron.bindings.crf import CRF

    fast = CRF(crf.num_tags, batch_first=crf.batch_first, backend=backend)
    fast.start_transitions = crf.start_transitions
    fast.end_transitions = crf.end_transitions
    fast.transitions = crf.transitions
    return fast


def _fast_scalar_mix(mix: nn.Module, backend: str) -> nn.Module:
    from nertron.bindings.pooling import ScalarMix

    fast = ScalarMix(mix.mixture_size, do_layer_norm=mix.do_layer_norm, backend=backend)
    fast.scalar_parameters = mix.scalar_parameters
    fast.gamma = mix.gamma
    return fast


def patch(model: nn.Module, backend: str = "auto") -> list[str]:
    """Swap nertron's fast modules into ``model`` in place (see the module docstring).

    Args:
        model: any ``nn.Module`` tree.
        backend: ``'auto'`` (kernels on CUDA tensors), ``'torch'`` or ``'triton'``.

    Returns:
        One line per replacement, ``"<qualified name>: <what>"`` (the root is ``""``).

    Raises:
        ValueError: the root module itself is a CRF or ScalarMix (swap it yourself:
            there is no parent to hold the replacement), or an unknown backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    replaced = []
    served_encoders = {id(m.encoder) for m in model.modules() if _is_hf_bert(m)}  # their BertModel is wrapped
    for name, module in list(model.named_modules()):
        if _is_hf_bert(module):
            if getattr(module, "_nertron_original_forward", None) is None:
                _wrap_hf_bert(module, backend)
                replaced.append(f"{name}: transformers BertModel -> nertron fused encoder")
        elif _is_hf_bert_encoder(module) and id(module) not in served_encoders:
            if getattr(module, "_nertron_original_forward", None) is None:
                _wrap_hf_bert_encoder(module, backend)
                replaced.append(f"{name}: transformers BertEncoder -> nertron fused layers")
        elif _is_torchcrf(module) or _is_allennlp_scalar_mix(module):
            if not name:
                raise ValueError(f"patch() cannot replace the root module itself ({type(module).__name__}); "
                                 "use nertron.CRF / nertron.ScalarMix directly")
            if _is_torchcrf(module):
                _replace_child(model, name, _fast_crf(module, backend))
                replaced.append(f"{name}: torchcrf.CRF -> nertron.CRF")
            else:
                _replace_child(model, name, _fast_scalar_mix(module, backend))
                replaced.append(f"{name}: allennlp ScalarMix -> nertron.ScalarMix")
    return replaced


def unpatch(model: nn.Module) -> int:
    """Restore the original forward of every Hugging Face BertModel / BertEncoder ``patch`` wrapped
    and free the weight copies the fused encoder cached on them; returns how many were restored."""
    drop_cached_weights(model)
    count = 0
    for module in model.modules():
        original = getattr(module, "_nertron_original_forward", None)
        if original is not None:
            del module.forward
            del module._nertron_original_forward
            count += 1
    return count
