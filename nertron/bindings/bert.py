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

from nertron.kernels.attention import attention
from nertron.kernels.layernorm import embeddings_layernorm, layernorm
from nertron.kernels.matmul import linear

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


@dataclass
class EncoderResult:
    last_hidden_state: Tensor  # shape: (B, T, H)
    pooler_output: Tensor | None  # shape: (B, H)
    hidden_states: tuple[Tensor, ...] | None  # N + 1 of (B, T, H)
    layer_mix: Tensor | None  # shape: (B, T, H), fp32


def is_prefix_mask(mask: Tensor) -> bool:
    """True when every row of ``mask`` (B, T) is ones followed by zeros (right padding)."""
    lengths = mask.sum(1, keepdim=True)  # shape: (B, 1)
    return bool(torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths))


def fusable(module: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> str | None:
    """Why the fused forward cannot run this call, or None when it can."""
    if torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
        return "gradients are required (the fused encoder is inference-only)"
    config = module.config
    if module.training and (config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0):
        return "the model is in training mode with dropout"
    if config.hidden_act not in _ACTIVATIONS:
        return f"hidden_act={config.hidden_act!r} has no fused kernel"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return "only absolute position embeddings are fused"
    if module.embeddings.word_embeddings.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return "weights must be fp32, fp16 or bf16"
    if attention_mask is not None and not is_prefix_mask(attention_mask.bool()):
        return "the attention mask is not right-padded (ones, then zeros, in every row)"
    return None


def _fused_qkv(self_attention: nn.Module) -> tuple[Tensor, Tensor]:
    """(3H, H) weight and (3H,) bias of Q, K, V concatenated, cached until a weight changes."""
    params = [getattr(self_attention, n).weight for n in ("query", "key", "value")]
    params += [getattr(self_attention, n).bias for n in ("query", "key", "value")]
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
    cached = getattr(self_attention, "_nertron_qkv", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            weight = torch.cat(params[:3]).contiguous()  # shape: (3H, H)
            bias = torch.cat(params[3:]).contiguous()  # shape: (3H,)
        cached = (key, weight, bias)
        # Plain attribute (not a buffer): stays out of state_dict and follows the weights' dtype/device via the key.
        object.__setattr__(self_attention, "_nertron_qkv", cached)
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
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 for real tokens, right padding; None = all real.
        token_type_ids: (B, T); None = zeros.
        output_hidden_states: also return the embeddings output and every layer's output.
        layer_mix: optional (N + 1,) per-hidden-state coefficients (embeddings output first);
            returns ``sum_l layer_mix[l] * hidden_state_l`` accumulated in fp32.
        packed: run on real tokens only (default) or on the padded layout.

    Returns:
        ``EncoderResult``; padding positions hold zeros in packed mode.
    """
    config = module.config
    batch, length = input_ids.shape
    device = input_ids.device
    emb = module.embeddings
    dtype = emb.word_embeddings.weight.dtype
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

    x = embeddings_layernorm(
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
    activation = _ACTIVATIONS[config.hidden_act]
    for index, layer in enumerate(module.encoder.layer, start=1):
        qkv_weight, qkv_bias = _fused_qkv(layer.attention.self)
        qkv = linear(x, qkv_weight, qkv_bias)  # shape: (N, 3H)
        context = attention(qkv, config.num_attention_heads, seq_start, q_len, k_len, max_q_len)  # shape: (N, H)
        out = layer.attention.output
        h = linear(context, out.dense.weight, out.dense.bias, residual=x)
        h = layernorm(h, out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps)
        inner = linear(h, layer.intermediate.dense.weight, layer.intermediate.dense.bias, activation=activation)
        out = layer.output
        y = linear(inner, out.dense.weight, out.dense.bias, residual=h)
        x = layernorm(y, out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps, mix, mix_coef, index)
        if states is not None:
            states.append(x)

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
