"""Encoder throughput on a GPU: nertron's fused encoder vs transformers BertModel (SDPA), eager
and under torch.compile, measured in the same run with triton.testing.do_bench.

Random weights in bert-base / bert-large shapes (speed does not depend on the values),
fp16 and bf16, batch sizes {1, 8, 32, 128, 256}, lengths drawn from the real CoNLL-2003
sub-token length distribution (bench/data/conll2003_lengths.json) and fixed lengths
{32, 128, 512}. Throughput counts real tokens only, and so do the FLOPs behind the
"fraction of dense peak" column.

    PYTHONPATH=. python bench/encoder_gpu.py --out bench/results      # default grid (~5 min on H100)
    PYTHONPATH=. python bench/encoder_gpu.py --full --out DIR        # every combination, compile for all

Writes encoder_<device>.json (every row, with device, versions, date) and encoder_<device>.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
BATCHES = (1, 8, 32, 128, 256)
LENGTHS = ("conll", 32, 128, 512)
# Dense (non-sparse) fp16/bf16 tensor-core peaks from NVIDIA's data sheets, in FLOP/s.
DENSE_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def conll_lengths(count: int, seed: int = 0) -> list[int]:
    """``count`` sentence lengths (sub-tokens incl. [CLS]/[SEP]) drawn from CoNLL-2003 train."""
    histogram = json.loads((HERE / "data" / "conll2003_lengths.json").read_text())["histogram"]
    values, weights = zip(*((int(k), v) for k, v in histogram.items()))
    return random.Random(seed).choices(values, weights=weights, k=count)


def make_batch(lengths: list[int], vocab: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded (B, max(lengths)) input_ids / attention_mask / token_type_ids."""
    g = torch.Generator().manual_seed(seed)
    total = max(lengths)
    ids = torch.randint(1000, vocab, (len(lengths), total), generator=g)
    mask = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~mask, 0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.long().to(device),
        "token_type_ids": torch.zeros_like(ids).to(device),
    }


def encoder_flops(lengths: list[int], hidden: int, layers: int, intermediate: int) -> float:
    """Forward FLOPs on real tokens: the four GEMMs per layer plus attention's QK^T and PV."""
    tokens = sum(lengths)
    gemm = 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 4 * hidden * sum(n * n for n in lengths)
    return float(layers * (gemm + attention))


def dense_peak(name: str) -> float | None:
    for key in sorted(DENSE_PEAK, key=len, reverse=True):
        if key in name:
            return DENSE_PEAK[key]
    return None


def build_models(shape: str, dtype: torch.dtype, device: str):
    import transformers

    from nertron import BertConfig, BertModel

    values = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, **SHAPES[shape])
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**values), add_pooling_layer=True)
    hf.config._attn_implementation = "sdpa"
    hf = hf.to(device, dtype).eval()
    ours = BertModel(BertConfig(**values), backend="triton")
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k != "embeddings.position_ids"})
    ours = ours.to(device, dtype).eval().requires_grad_(False)
    return ours, hf


def main(argv: list[str] | None = None) -> int:
    import triton
    import triton.testing
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="output directory")
    parser.add_argument("--full", action="store_true", help="every shape/dtype/batch/length, torch.compile for all")
    parser.add_argument("--shapes", nargs="*", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("encoder_gpu.py needs a CUDA device", file=sys.stderr)
        return 2
    device = "cuda"
    name = torch.cuda.get_device_name()
    peak = dense_peak(name)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Measured cuBLAS ceiling, to read the peak fractions against something achievable.
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ a, quantiles=[0.5, 0.2, 0.8])[0]
    cublas_tflops = 2 * 8192**3 / (ms * 1e-3) / 1e12
    del a

    shapes = args.shapes or (list(SHAPES) if args.full else ["bert-base", "bert-large"])
    rows = []
    for shape in shapes:
        dtypes = (torch.bfloat16, torch.float16) if (args.full or shape == "bert-base") else (torch.bfloat16,)
        for dtype in dtypes:
            ours, hf = build_models(shape, dtype, device)
            compiled = torch.compile(hf, dynamic=False)
            batches = BATCHES if (args.full or shape == "bert-base") else (32, 128)
            lengths_set = LENGTHS if (args.full or shape == "bert-base") else ("conll", 128)
            for batch in batches:
                for length in lengths_set:
                    lengths = conll_lengths(batch, seed=batch) if length == "conll" else [length] * batch
                    inputs = make_batch(lengths, 30522, device, seed=batch)
                    tokens = sum(lengths)
                    flops = encoder_flops(lengths, SHAPES[shape]["hidden_size"], SHAPES[shape]["num_hidden_layers"],
                                          SHAPES[shape]["intermediate_size"])
                    run_compile = args.full or (length == "conll" and batch == 128) or (length == 128 and batch == 256)
                    impls = {"nertron": lambda: ours(**inputs), "transformers": lambda: hf(**inputs)}
                    if run_compile:
                        impls["transformers+compile"] = lambda: compiled(**inputs)
                    timings = {}
                    with torch.inference_mode():
                        for impl, fn in impls.items():
                            try:
                                fn()  # compile / autotune outside the timing
                                torch.cuda.synchronize()
                                timings[impl] = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
                            except Exception as err:  # report, keep benchmarking the rest
                                timings[impl] = None
                                print(f"{shape} {dtype} B={batch} L={length} {impl} failed: {err!r}", file=sys.stderr)
                    row = dict(shape=shape, dtype=str(dtype).replace("torch.", ""), batch=batch, lengths=str(length),
                               real_tokens=tokens, padded_tokens=batch * max(lengths))
                    for impl, t in timings.items():
                        if t is None:
                            continue
                        median, p20, p80 = t
                        row[f"{impl}_ms"] = median
                        row[f"{impl}_ms_p20_p80"] = [p20, p80]
                        row[f"{impl}_tokens_per_s"] = tokens / (median * 1e-3)
                        row[f"{impl}_tflops"] = flops / (median * 1e-3) / 1e12
                    if "nertron_ms" in row:
                        for base in ("transformers", "transformers+compile"):
                            if f"{base}_ms" in row:
                                row[f"speedup_vs_{base}"] = row[f"{base}_ms"] / row["nertron_ms"]
                        if peak:
                            row["nertron_peak_fraction"] = row["nertron_tflops"] * 1e12 / peak
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            del ours, hf, compiled
            torch.cuda.empty_cache()

    meta = {
        "device": name,
        "dense_peak_tflops": peak / 1e12 if peak else None,
        "cublas_bf16_8192_tflops": cublas_tflops,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "method": "triton.testing.do_bench(quantiles=[0.5, 0.2, 0.8]); medians in ms; real tokens only",
    }
    slug = name.replace(" ", "_").replace("/", "_")
    (out_dir / f"encoder_{slug}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# Encoder throughput on {name}",
        "",
        f"{meta['date']}, torch {meta['torch']}, triton {meta['triton']}, transformers {meta['transformers']}. "
        f"Random weights; lengths `conll` = drawn from CoNLL-2003 train. Tokens/s count real tokens. "
        f"Dense peak {meta['dense_peak_tflops']} TFLOP/s (data sheet); measured cuBLAS bf16 8192^3: {cublas_tflops:.0f} TFLOP/s.",
        "",
        "| shape | dtype | batch | lengths | nertron tok/s | transformers tok/s | x eager | compile tok/s | x compile | nertron TFLOP/s | % peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f="{:.3g}": f.format(v) if v is not None else "-"  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['batch']} | {r['lengths']} | {fmt(r.get('nertron_tokens_per_s'))} | "
            f"{fmt(r.get('transformers_tokens_per_s'))} | {fmt(r.get('speedup_vs_transformers'), '{:.2f}')} | "
            f"{fmt(r.get('transformers+compile_tokens_per_s'))} | {fmt(r.get('speedup_vs_transformers+compile'), '{:.2f}')} | "
            f"{fmt(r.get('nertron_tflops'), '{:.0f}')} | {fmt(100 * r['nertron_peak_fraction'] if 'nertron_peak_fraction' in r else None, '{:.0f}')} |"
        )
    (out_dir / f"encoder_{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
