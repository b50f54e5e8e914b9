"""BERT encoder: the plain PyTorch reference forward.

This is the oracle every fused kernel is checked against and the path CPU users run, so it
is written to be read: embeddings (word + position + token type, LayerNorm), then N encoder
layers (self-attention with a key-padding mask, output dense + residual + LayerNorm,
intermediate dense + GELU, output dense + residual + LayerNorm), then the pooler.

Module and parameter names follow Hugging Face's ``transformers.BertModel`` exactly, so the
two exchange state dicts unchanged. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (fused on every backend PyTorch has).
``forward(..., output_hidden_states=True)`` returns the embeddings output and every layer's
output, which weighted-layer pooling mixes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nertron.bindings import BACKENDS  # re-exported: the backend names, defined once
from nertron.bindings.masks import mask_gaps
from nertron.engine.config import BertConfig


@dataclass
class BertOutput:
    """What ``BertModel.forward`` returns (field names as in Hugging Face's output).

    Attributes:
        last_hidden_state: (B, T, H) output of the last encoder layer.
        pooler_output: (B, H) tanh(dense(first token)), or None without a pooler.
        hidden_states: with ``output_hidden_states=True``, a tuple of N + 1 tensors (B, T, H):
            the embeddings output first, then each layer's output; else None.
        layer_mix: with ``forward(..., layer_mix=coef)``, the fp32 (B, T, H) weighted sum
            ``sum_l coef[l] * hidden_states[l]`` (weighted-layer pooling); else None.
    """

    last_hidden_state: Tensor
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    layer_mix: Tensor | None = None

    def to_tuple(self) -> tuple:
        values = (self.last_hidden_state, self.pooler_output, self.hidden_states, self.layer_mix)
        return tuple(v for v in values if v is not None)

    def __getitem__(self, index):
        return self.to_tuple()[index]


def _activation(name: str):
    if name == "gelu":
        return F.gelu  # exact erf GELU, as Google's BERT
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported hidden_act {name!r}")


def _key_padding_bias(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, 1, 1, T)`` additive key-padding bias of the ``(B, T)`` bool mask ``keep``: 0 for
    real keys and the dtype's most negative value for padding. Softmax then gives padded keys
    zero weight, and a row with no real key stays finite (uniform) where a boolean mask would
    give NaN."""
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    bias.masked_fill_(~keep, torch.finfo(dtype).min)
    return bias[:, None, None, :]


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # shape: (T,)
        # Summed in Hugging Face's order (word + type, then position) so fp32 results match bit for bit.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # shape: (B, T, H)
        x = x + self.position_embeddings(positions)  # shape: (T, H), broadcast over B
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # shape: (B, nh, T, hd)

    def forward(self, x: Tensor, mask_bias: Tensor) -> Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask_bias, dropout_p=self.dropout_p if self.training else 0.0
        )  # shape: (B, nh, T, hd)
        return context.transpose(1, 2).flatten(2)  # shape: (B, T, H)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: Tensor, mask_bias: Tensor) -> Tensor:
        return self.output(self.self(x, mask_bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class BertOutputLayer(nn.Module):
    # Named ``output`` inside BertLayer (Hugging Face's ``BertOutput``); renamed here only to
    # keep ``BertOutput`` for the forward's result.
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutputLayer(config)

    def forward(self, x: Tensor, mask_bias: Tensor) -> Tensor:
        attended = self.attention(x, mask_bias)  # shape: (B, T, H)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, mask_bias: Tensor, output_hidden_states: bool = False):
        states = [x] if output_hidden_states else None
        for layer in self.layer:
            x = layer(x, mask_bias)
            if states is not None:
                states.append(x)
        return x, (tuple(states) if states is not None else None)


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, last_hidden_state: Tensor) -> Tensor:
        return torch.tanh(self.dense(last_hidden_state[:, 0]))  # shape: (B, H)


class BertModel(nn.Module):
    """BERT encoder with Hugging Face's module names and outputs.

    Args:
        config: the model's hyper-parameters.
        add_pooling_layer: build the pooler (tanh dense over the first token).
        backend: ``'auto'`` runs the fused Triton encoder (``nertron.bindings.bert``) on CUDA
            tensors and this reference forward elsewhere; ``'torch'`` always runs the
            reference; ``'triton'`` always runs the kernels (on CPU tensors in Triton's
            interpreter, slowly: for tests).

    The fused encoder is inference-only. A call it cannot serve runs the reference forward
    instead, never a wrong result: when gradients are required (a parameter requires grad
    and grad mode is on), in training mode with dropout, or with an attention mask that is
    not right-padded. With ``backend='triton'`` such a fallback is announced by a warning.
    In the fused path padding positions of the outputs hold zeros (packed mode, the
    default; ``forward(..., packed=False)`` computes them as the reference does).
    """

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.config = config
        self.backend = backend
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as BERT does: normal(0, initializer_range) weights, zero biases, unit LayerNorm."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        backend: str = "auto",
    ) -> "BertModel":
        """Load a checkpoint (see ``nertron.engine.checkpoint.load_checkpoint`` for the formats).

        Task heads stored beside the encoder (``cls.*``, ``classifier.*``, ...) are not part
        of a ``BertModel``; they are reported in a warning. Any other unexpected tensor, a
        missing one or a shape mismatch raises ``CheckpointError``. The model is returned in
        eval mode.
        """
        from nertron.engine.checkpoint import load_checkpoint, load_state_dict_into

        checkpoint = load_checkpoint(path)
        pooler_keys = [key for key in checkpoint.state_dict if key.startswith("pooler.")]
        model = cls(checkpoint.config, add_pooling_layer=bool(pooler_keys), backend=backend)
        heads = load_state_dict_into(model, checkpoint.state_dict, source=str(checkpoint.weights_file))
        if heads:
            warnings.warn(
                f"{checkpoint.weights_file}: {len(heads)} task-head tensors are not part of BertModel and were "
                f"not loaded: {', '.join(sorted(heads))}",
                stacklevel=2,
            )
        model.checkpoint_dir = checkpoint.directory
        if dtype is not None or device is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()

    def _check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, length) tensor, got {got}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        batch, length = input_ids.shape
        if length == 0:
            raise ValueError("input_ids has length 0: there is nothing to encode")
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"input length {length} exceeds the model's max_position_embeddings="
                f"{self.config.max_position_embeddings}; split long texts with WordPieceTokenizer.windows()"
            )
        for name, other in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if other is not None and tuple(other.shape) != (batch, length):
                raise ValueError(f"{name} has shape {tuple(other.shape)}, expected {(batch, length)} like input_ids")
        if torch.compiler.is_compiling():
            # the id range checks read tensor values (a host sync, a graph break): skipped
            # under torch.compile, where an id outside the tables fails inside the embedding
            return
        if input_ids.numel():
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(f"input_ids contains id {bad}, outside the vocabulary [0, {self.config.vocab_size})")
        if token_type_ids is not None and token_type_ids.numel():
            if int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= self.config.type_vocab_size:
                raise ValueError(f"token_type_ids must lie in [0, {self.config.type_vocab_size})")

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        *,
        layer_mix: Tensor | None = None,
        packed: bool = True,
    ) -> BertOutput:
        """Encode a padded batch.

        Args:
            input_ids: (B, T) sub-token ids, T <= max_position_embeddings.
            attention_mask: (B, T), 1/True for real tokens, 0/False for padding; None = all real.
            token_type_ids: (B, T) segment ids; None = all zeros.
            output_hidden_states: also return the embeddings output and every layer's output.
            layer_mix: optional (N + 1,) coefficients, one per hidden state (embeddings output
                first): also return their weighted sum, fused into the encoder on the Triton
                path (``LayerPooling.mix_coefficients()`` gives them).
            packed: run the GEMMs and norms on real tokens only (default), padding positions
                of the outputs holding zeros: always on the fused path; on the reference path
                when ``layer_mix`` is given (the inference mix nertron's models read, which
                skips the padding's share of the work) and the batch has padding. ``False``:
                every position computed, as Hugging Face does.

        Returns:
            ``BertOutput`` with ``last_hidden_state`` (B, T, H), ``pooler_output`` (B, H), on
            request ``hidden_states`` (N + 1 tensors of (B, T, H)) and ``layer_mix`` (B, T, H).

        Under ``torch.compile`` the forward has no graph break; the checks that read tensor
        values (the ids' and token types' ranges; on the fused path, that the mask is
        right-padded) are skipped there, and the fused path runs unpacked.
        """
        self._check_inputs(input_ids, attention_mask, token_type_ids)
        if layer_mix is not None and tuple(layer_mix.shape) != (self.config.num_hidden_layers + 1,):
            raise ValueError(
                f"layer_mix must hold {self.config.num_hidden_layers + 1} coefficients (embeddings output + "
                f"{self.config.num_hidden_layers} layers), got shape {tuple(layer_mix.shape)}"
            )
        if self._use_fused(input_ids, attention_mask):
            from nertron.bindings.bert import fused_encoder_forward

            result = fused_encoder_forward(
                self, input_ids, attention_mask, token_type_ids, output_hidden_states, layer_mix, packed
            )
            return BertOutput(result.last_hidden_state, result.pooler_output, result.hidden_states, result.layer_mix)
        if (packed and layer_mix is not None and attention_mask is not None and not torch.compiler.is_compiling()
                and not torch.is_grad_enabled()):
            keep = attention_mask.to(torch.bool)
            # one host sync (eager only): is there padding to skip, is the mask right-padded
            # and does every row hold a token
            if bool(~keep.all() & ~mask_gaps(keep) & keep[:, 0].all()):
                return self._forward_packed(input_ids, keep, token_type_ids, output_hidden_states, layer_mix)
        return self._forward_reference(input_ids, attention_mask, token_type_ids, output_hidden_states, layer_mix)

    def _use_fused(self, input_ids: Tensor, attention_mask: Tensor | None) -> bool:
        if self.backend == "torch" or (self.backend == "auto" and not input_ids.is_cuda):
            return False
        from nertron.bindings.bert import fusable

        reason = fusable(self, input_ids, attention_mask)
        if reason is not None and self.backend == "triton":
            warnings.warn(f"backend='triton': running the reference forward because {reason}", stacklevel=3)
        return reason is None

    def _forward_reference(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        output_hidden_states: bool,
        layer_mix: Tensor | None = None,
    ) -> BertOutput:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)  # shape: (B, T, H)
        mask_bias = None
        if attention_mask is not None:
            mask_bias = _key_padding_bias(attention_mask.to(device=hidden.device, dtype=torch.bool), hidden.dtype)
        last, states = self.encoder(hidden, mask_bias, output_hidden_states or layer_mix is not None)
        pooled = self.pooler(last) if self.pooler is not None else None
        mixed = None
        if layer_mix is not None:
            coef = layer_mix.to(device=last.device, dtype=torch.float32)  # shape: (N + 1,)
            mixed = sum(c * h.float() for c, h in zip(coef, states))  # shape: (B, T, H), fp32
        return BertOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=states if output_hidden_states else None,
            layer_mix=mixed,
        )

    def _forward_packed(
        self,
        input_ids: Tensor,
        keep: Tensor,
        token_type_ids: Tensor | None,
        output_hidden_states: bool,
        layer_mix: Tensor,
    ) -> BertOutput:
        """The reference forward on the real tokens only (inference): embeddings, every dense
        layer and LayerNorm run on the packed (N, H) rows; attention scatters Q, K, V back to
        (B, T) for SDPA with the key-padding bias (its cost is small against the GEMMs at
        these lengths). Outputs hold zeros at padding, as the fused packed path.

        Args:
            keep: (B, T) bool right-padded mask, every row with a first real token.
        """
        batch, length = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        rows = keep.flatten().nonzero().squeeze(1)  # shape: (N,) real positions in (B*T)
        emb = self.embeddings
        positions = torch.arange(length, device=input_ids.device).expand(batch, length).flatten()[rows]
        x = emb.word_embeddings(input_ids.flatten()[rows]) + emb.token_type_embeddings(token_type_ids.flatten()[rows])
        x = emb.LayerNorm(x + emb.position_embeddings(positions))  # shape: (N, H)
        hidden = x.shape[1]
        bias = _key_padding_bias(keep, x.dtype)  # shape: (B, 1, 1, T)

        def unpack(t: Tensor) -> Tensor:  # (N, H) -> (B, T, H), zeros at padding
            out = t.new_zeros(batch * length, t.shape[1])
            out[rows] = t
            return out.view(batch, length, t.shape[1])

        coef = layer_mix.to(device=x.device, dtype=torch.float32)  # shape: (N + 1,)
        mixed = coef[0] * x.float()
        states = [x] if output_hidden_states else None
        for index, layer in enumerate(self.encoder.layer, start=1):
            sa = layer.attention.self
            q, k, v = (sa._heads(unpack(proj(x))) for proj in (sa.query, sa.key, sa.value))  # shape: (B, nh, T, hd)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            context = context.transpose(1, 2).reshape(batch * length, hidden)[rows]  # shape: (N, H)
            attended = layer.attention.output(context, x)
            x = layer.output(layer.intermediate(attended), attended)
            mixed = mixed + coef[index] * x.float()
            if states is not None:
                states.append(x)
        last = unpack(x)
        pooled = self.pooler(last) if self.pooler is not None else None
        return BertOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=tuple(unpack(h) for h in states) if states is not None else None,
            layer_mix=unpack(mixed),
        )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"layers={c.num_hidden_layers}, hidden={c.hidden_size}, heads={c.num_attention_heads}, "
            f"backend={self.backend!r}"
        )

