"""Section ``encoder``: nertron ``BertModel`` vs ``transformers.BertModel``
(``attn_implementation='sdpa'``), eager and under ``torch.compile``, on the real
all-MiniLM-L6-v2 checkpoint and, on GPU, a bert-base-shaped model (random weights).

The models (``random_encoders``, ``load_encoders``), the batch (``encoder_batch``) and the
FLOP count (``encoder_flops``) are shared with ``bench/bench_encoder.py``,
``bench/encoder_gpu.py`` and ``bench/gpu_quick.py``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .harness import (Bench, compiled_measure, dtype_name, error_text, make_config, make_row, measure, padding_mask,
                      status_row, sweep_points)

TITLE = "BERT encoder"
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
SHAPES = {  # random-weight shapes (speed does not depend on the values)
    "bert-base": BERT_BASE,
    "bert-large": dict(BERT_BASE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096),
    "minilm": dict(BERT_BASE, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def encoder_flops(lengths: list[int], hidden: int, layers: int, intermediate: int) -> float:
    """Forward FLOPs on real tokens: the 4 GEMMs of a layer (QKV, attention output, FFN in,
    FFN out) and attention's QK^T and PV."""
    tokens = sum(lengths)
    gemm = 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 4 * hidden * sum(n * n for n in lengths)
    return float(layers * (gemm + attention))


def checkpoint_dir() -> Path:
    from nertron.engine.checkpoint import default_checkpoint_dir

    return Path(default_checkpoint_dir())


def random_encoders(shape: str, device: str, dtype: torch.dtype, backend: str = "auto"):
    """(nertron BertModel, transformers BertModel with sdpa) of ``SHAPES[shape]``, same random
    weights, eval, no gradients."""
    import transformers

    from nertron import BertConfig, BertModel

    values = SHAPES[shape]
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**values)
    hf_config._attn_implementation = "sdpa"
    hf = transformers.BertModel(hf_config)
    ours = BertModel(BertConfig(**values), backend=backend)
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k != "embeddings.position_ids"})
    return (ours.to(device, dtype).eval().requires_grad_(False), hf.to(device, dtype).eval().requires_grad_(False))


def load_encoders(bench: Bench, shape: str):
    """``random_encoders`` in the run's dtype, or for ``"minilm"`` both loaded from the
    all-MiniLM-L6-v2 checkpoint."""
    if shape != "minilm":
        return random_encoders(shape, bench.device, bench.dtype)
    import transformers

    from nertron import BertModel

    path = checkpoint_dir()
    hf = transformers.BertModel.from_pretrained(str(path), attn_implementation="sdpa")
    ours = BertModel.from_pretrained(path)
    return (ours.to(bench.device, bench.dtype).eval().requires_grad_(False),
            hf.to(bench.device, bench.dtype).eval().requires_grad_(False))


def encoder_batch(lengths: list[int], vocab: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded (B, max(lengths)) input_ids / attention_mask / token_type_ids."""
    g = torch.Generator().manual_seed(seed)
    mask = padding_mask(lengths, "cpu")
    ids = torch.randint(1000, vocab, mask.shape, generator=g).masked_fill(~mask, 0)
    return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device),
            "token_type_ids": torch.zeros_like(ids).to(device)}


def forward(bench: Bench, model, batch: dict[str, torch.Tensor]):
    """The timed call: last hidden state under inference mode, then a sync."""
    def fn():
        with torch.inference_mode():
            out = model(**batch).last_hidden_state
        bench.sync()
        return out
    return fn


def section(bench: Bench) -> list[dict]:
    rows = []
    shapes = ["minilm", "bert-base"] if bench.cuda else ["minilm"]
    for shape in shapes:
        op = f"BertModel {shape}"
        try:
            ours, hf = load_encoders(bench, shape)
        except Exception as err:  # noqa: BLE001 - e.g. the checkpoint package is not installed
            rows.append(status_row("encoder", op, "error", error_text(err), baseline="transformers"))
            continue
        c = ours.config
        for sweep, point, lengths in sweep_points(bench, "model"):
            batch = encoder_batch(lengths, c.vocab_size, bench.device, seed=len(lengths))
            tokens, B = sum(lengths), len(lengths)
            config = make_config(sweep, point, lengths, shape=shape, layers=c.num_hidden_layers, hidden=c.hidden_size,
                                 heads=c.num_attention_heads, dtype=dtype_name(bench.dtype),
                                 weights="all-MiniLM-L6-v2 checkpoint" if shape == "minilm" else "random",
                                 path="triton (fused, packed)" if bench.cuda else "reference (torch)")
            label = f"encoder {shape} B={B} T={max(lengths)}"
            impls = {"nertron": measure(bench, forward(bench, ours, batch), tokens=tokens, sentences=B,
                                        label=label + " nertron"),
                     "transformers": measure(bench, forward(bench, hf, batch), tokens=tokens, sentences=B,
                                             label=label + " transformers")}
            if bench.compile_here(sweep, point):
                impls["transformers+compile"] = compiled_measure(
                    bench, lambda model=hf: forward(bench, torch.compile(model, dynamic=False), batch), tokens=tokens,
                    sentences=B, label=label + " transformers+compile")
                # nertron's encoder under torch.compile: no graph break, one graph for every shape
                impls["nertron compiled"] = compiled_measure(
                    bench, lambda model=ours: forward(bench, torch.compile(model, dynamic=True), batch), tokens=tokens,
                    sentences=B, label=label + " nertron compiled")
            rows.append(make_row("encoder", op, sweep, config, impls, "transformers", tokens, B))
        del ours, hf
        if bench.cuda:
            torch.cuda.empty_cache()
    return rows
