"""The fused BERT encoder forward: nertron's Triton kernels chained over one batch.

Per layer: one GEMM for Q, K and V together (bias in its epilogue), flash attention reading
that (tokens, 3H) matrix in place, the attention-output GEMM with bias + residual in its
epilogue, LayerNorm, the FFN-in GEMM with bias + GELU, the FFN-out GEMM with bias + residual,
LayerNorm. Weighted-layer pooling rides in the LayerNorm kernels as a running fp32
accumulator (``layer_mix``), so the stack of layer outputs is never stored.

No work on padding: by default the real tokens of the batch are packed into one
(total_tokens, H) matrix, every GEMM and norm runs on those rows only, and attention runs per
sequence over ``cu_seqlens``; outputs are scattered back into (B, T, H) at the end, padding
positions holding zeros. ``packed=False`` keeps the padded layout (every position computed,
padding queries attending to the real keys, as in the reference) for comparison.

The forward reads weights through Hugging Face's attribute names (``embeddings.word_embeddings``,
``encoder.layer[i].attention.self.query``, ...), which nertron's ``BertModel`` shares, so it
serves both nertron's model and a patched ``transformers.BertModel``. It is inference-only:
callers fall back to the reference forward when gradients or dropout are needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nertron.bindings import ops as _ops  # noqa: F401  (registers torch.ops.nertron.*)
from nertron.bindings.masks import is_prefix_mask

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


@dataclass
class EncoderResult:
    last_hidden_state: Tensor  # shape: (B, T, H)
    pooler_output: Tensor | None  # shape: (B, H)
    hidden_states: tuple[Tensor, ...] | None  # N + 1 of (B, T, H)
    layer_mix: Tensor | None  # shape: (B, T, H), fp32


def _unfusable(module: nn.Module, dtype: torch.dtype) -> str | None:
    """What stops the fused layers from serving ``module`` (a BERT model or encoder), or None."""
    if torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
        return "gradients are required (the fused encoder is inference-only)"
    config = module.config
    if module.training and (config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0):
        return "the model is in training mode with dropout"
    if config.hidden_act not in _ACTIVATIONS:
        return f"hidden_act={config.hidden_act!r} has no fused kernel"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return "only absolute position embeddings are fused"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return "weights must be fp32, fp16 or bf16"
    return None


def fusable(module: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> str | None:
    """Why the fused forward cannot run this call, or None when it can."""
    reason = _unfusable(module, module.embeddings.word_embeddings.weight.dtype)
    if reason is not None:
        return reason
    # a data-dependent check: under torch.compile the mask is taken as right-padded
    if (attention_mask is not None and not torch.compiler.is_compiling()
            and not is_prefix_mask(attention_mask.bool())):
        return "the attention mask is not right-padded (ones, then zeros, in every row)"
    return None


def encoder_key_mask(encoder: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None) -> tuple[Tensor | None, str | None]:
    """The (B, T) key mask of a call to a Hugging Face ``BertEncoder``, and why the fused layers
    cannot serve the call (None when they can).

    ``attention_mask`` is what ``BertModel`` hands its encoder: None (no padding), a (B, T)
    0/1 mask, or a 4-D (B, 1, Q, T) mask, boolean (True = attend, the SDPA form) or additive
    (0 = attend, a large negative value = masked, the eager form), Q being 1 or T. It must say
    the same for every query of a row (a key-padding mask, not a causal one), and be
    right-padded.
    """
    reason = _unfusable(encoder, encoder.layer[0].attention.self.query.weight.dtype)
    if reason is None and torch.is_grad_enabled() and hidden_states.requires_grad:
        reason = "gradients are required (the fused encoder is inference-only)"
    if reason is not None:
        return None, reason
    if hidden_states.dim() != 3 or hidden_states.dtype != encoder.layer[0].attention.self.query.weight.dtype:
        return None, "hidden states must be (B, T, H) in the weights' dtype"
    batch, length, _ = hidden_states.shape
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=hidden_states.device), None
    if attention_mask.dim() == 2 and attention_mask.shape == (batch, length):
        keys = attention_mask.bool()
    elif attention_mask.dim() == 4 and attention_mask.shape[0] == batch and attention_mask.shape[1] == 1 \
            and attention_mask.shape[2] in (1, length) and attention_mask.shape[3] == length:
        attend = attention_mask[:, 0] if attention_mask.dtype == torch.bool else attention_mask[:, 0] == 0  # (B, Q, T)
        keys = attend[:, 0]  # shape: (B, T), what the first query may see
        # Every query row must repeat it (rows that attend everywhere are tolerated: some
        # versions unmask fully-masked rows so that SDPA gives no NaN there).
        same = (attend == keys[:, None, :]).all(-1) | attend.all(-1)  # shape: (B, Q)
        if not bool(same.all()):
            return None, "the attention mask differs between queries (not a key-padding mask)"
    else:
        return None, f"attention mask of shape {tuple(attention_mask.shape)} is not a padding mask"
    if not is_prefix_mask(keys):
        return None, "the attention mask is not right-padded (ones, then zeros, in every row)"
    return keys, None


# The attribute under which _fused_qkv caches a self-attention module's concatenated weights.
_QKV_CACHE = "_nertron_qkv"


def drop_cached_weights(module: nn.Module) -> int:
    """Free the concatenated QKV copies the fused forward cached on ``module``'s submodules
    (see ``_fused_qkv``); returns how many. ``nertron.unpatch`` calls it."""
    count = 0
    for sub in module.modules():
        if _QKV_CACHE in sub.__dict__:
            object.__delattr__(sub, _QKV_CACHE)
            count += 1
    return count


def _fused_qkv(self_attention: nn.Module) -> tuple[Tensor, Tensor]:
    """(3H, H) weight and (3H,) bias of Q, K, V concatenated, cached until a weight changes
    (under torch.compile concatenated in the graph: the cache key reads storage pointers)."""
    params = [getattr(self_attention, n).weight for n in ("query", "key", "value")]
    params += [getattr(self_attention, n).bias for n in ("query", "key", "value")]
    if torch.compiler.is_compiling():
        return torch.cat(params[:3]), torch.cat(params[3:])
    # A weight changed if its storage moved, it was modified in place (the tensor's version
    # counter, ``_version``, which torch bumps on every in-place op), or its dtype changed.
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
    cached = self_attention.__dict__.get(_QKV_CACHE)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            weight = torch.cat(params[:3]).contiguous()  # shape: (3H, H)
            bias = torch.cat(params[3:]).contiguous()  # shape: (3H,)
        cached = (key, weight, bias)
        # Plain attribute (not a buffer): stays out of state_dict and follows the weights' dtype/device via the key.
        object.__setattr__(self_attention, _QKV_CACHE, cached)
    return cached[1], cached[2]


@torch.no_grad()
def fused_encoder_forward(
    module: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    token_type_ids: Tensor | None = None,
    output_hidden_states: bool = False,
    layer_mix: Tensor | None = None,
    packed: bool = True,
) -> EncoderResult:
    """Run the BERT encoder ``module`` with nertron's kernels.

    Args:
        module: nertron's or Hugging Face's ``BertModel`` (right-padded masks only; see ``fusable``).
        input_ids, attention_mask (right padding), token_type_ids, output_hidden_states: as
            ``nertron.engine.bert.BertModel.forward``.
        layer_mix: optional (N + 1,) per-hidden-state coefficients (embeddings output first);
            returns ``sum_l layer_mix[l] * hidden_state_l`` accumulated in fp32.
        packed: run on real tokens only (default) or on the padded layout. Under
            torch.compile always the padded layout: packing sizes tensors by the data
            (``nonzero``, the longest length), which would break the graph.

    Returns:
        ``EncoderResult``; padding positions hold zeros in packed mode.
    """
    if torch.compiler.is_compiling():
        packed = False
    batch, length = input_ids.shape
    device = input_ids.device
    emb = module.embeddings
    hidden = emb.word_embeddings.weight.shape[1]
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    mask = (
        attention_mask.to(device=device, dtype=torch.bool)
        if attention_mask is not None
        else torch.ones(batch, length, dtype=torch.bool, device=device)
    )
    lengths = mask.sum(1).to(torch.int32)  # shape: (B,)
    positions = torch.arange(length, device=device).expand(batch, length)  # shape: (B, T)
    if packed:
        rows = mask.flatten().nonzero().squeeze(1)  # shape: (N,) indices of real tokens in (B*T)
        cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=device)
        cu_seqlens[1:] = lengths.cumsum(0)
        seq_start, q_len, k_len = cu_seqlens[:-1].contiguous(), lengths, lengths
        max_q_len = int(lengths.max()) if batch else 0
        ids, pos, types = (t.flatten()[rows] for t in (input_ids, positions, token_type_ids))
    else:
        rows = None
        seq_start = torch.arange(batch, dtype=torch.int32, device=device) * length
        q_len = torch.full((batch,), length, dtype=torch.int32, device=device)
        k_len, max_q_len = lengths, length
        ids, pos, types = (t.flatten() for t in (input_ids, positions, token_type_ids))

    def unpack(x: Tensor) -> Tensor:  # (rows, H) -> (B, T, H)
        if rows is None:
            return x.view(batch, length, -1)
        out = x.new_zeros(batch * length, x.shape[1])
        out[rows] = x
        return out.view(batch, length, -1)

    mix = mix_coef = None
    if layer_mix is not None:
        mix_coef = layer_mix.to(device=device, dtype=torch.float32).contiguous()
        mix = torch.empty(ids.shape[0], hidden, dtype=torch.float32, device=device)

    x = torch.ops.nertron.embeddings_layernorm(
        ids,
        pos,
        types,
        emb.word_embeddings.weight,
        emb.position_embeddings.weight,
        emb.token_type_embeddings.weight,
        emb.LayerNorm.weight,
        emb.LayerNorm.bias,
        emb.LayerNorm.eps,
        mix,
        mix_coef,
    )  # shape: (N, H)
    states = [x] if output_hidden_states else None
    x = _layers(module.config, module.encoder, x, seq_start, q_len, k_len, max_q_len, mix, mix_coef, states)
    last = unpack(x)
    pooled = None
    if getattr(module, "pooler", None) is not None:
        pooled = torch.tanh(module.pooler.dense(last[:, 0]))  # shape: (B, H); a (B, H) GEMM, cuBLAS is right here
    return EncoderResult(
        last_hidden_state=last,
        pooler_output=pooled,
        hidden_states=tuple(unpack(s) for s in states) if states is not None else None,
        layer_mix=unpack(mix) if mix is not None else None,
    )


def _layers(config, encoder: nn.Module, x: Tensor, seq_start: Tensor, q_len: Tensor, k_len: Tensor, max_q_len: int,
            mix: Tensor | None = None, mix_coef: Tensor | None = None, states: list | None = None) -> Tensor:
    """Every layer of ``encoder`` (``encoder.layer[i]``, Hugging Face names) over rows ``x`` (N, H)."""
    activation = _ACTIVATIONS[config.hidden_act]
    ops = torch.ops.nertron
    for index, layer in enumerate(encoder.layer, start=1):
        qkv_weight, qkv_bias = _fused_qkv(layer.attention.self)
        qkv = ops.linear(x, qkv_weight, qkv_bias, None, None)  # shape: (N, 3H)
        context = ops.attention(qkv, config.num_attention_heads, seq_start, q_len, k_len, max_q_len)  # shape: (N, H)
        out = layer.attention.output
        h = ops.linear(context, out.dense.weight, out.dense.bias, None, x)
        h = ops.layernorm(h, out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps, None, None, 0, False)
        inner = ops.linear(h, layer.intermediate.dense.weight, layer.intermediate.dense.bias, activation, None)
        out = layer.output
        y = ops.linear(inner, out.dense.weight, out.dense.bias, None, h)
        x = ops.layernorm(y, out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps, mix, mix_coef, index, False)
        if states is not None:
            states.append(x)
    return x


@torch.no_grad()
def fused_encoder_layers_forward(encoder: nn.Module, hidden_states: Tensor, key_mask: Tensor) -> Tensor:
    """A Hugging Face ``BertEncoder``'s layers on nertron's kernels, over packed real tokens.

    Args:
        encoder: the encoder (``encoder.layer[i]`` with Hugging Face names, ``encoder.config``).
        hidden_states: (B, T, H) its input (the embeddings output).
        key_mask: (B, T) bool, right-padded (see ``encoder_key_mask``).

    Returns:
        (B, T, H) the last layer's output; padding positions hold zeros.
    """
    batch, length, hidden = hidden_states.shape
    lengths = key_mask.sum(1).to(torch.int32)  # shape: (B,)
    rows = key_mask.flatten().nonzero().squeeze(1)  # shape: (N,)
    cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=hidden_states.device)
    cu_seqlens[1:] = lengths.cumsum(0)
    max_len = int(lengths.max()) if batch else 0
    x = hidden_states.reshape(batch * length, hidden)[rows].contiguous()  # shape: (N, H)
    x = _layers(encoder.config, encoder, x, cu_seqlens[:-1].contiguous(), lengths, lengths, max_len)
    out = x.new_zeros(batch * length, hidden)
    out[rows] = x
    return out.view(batch, length, hidden)
