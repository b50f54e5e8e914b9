"""Encoder throughput on a GPU: nertron's fused encoder vs transformers BertModel (SDPA), eager
and under torch.compile, measured in the same run with triton.testing.do_bench.

Random weights in bert-base / bert-large shapes (speed does not depend on the values),
fp16 and bf16, batch sizes {1, 8, 32, 128, 256}, lengths drawn from the real CoNLL-2003
sub-token length distribution (nertron/bench/data/conll2003_lengths.json) and fixed lengths
{32, 128, 512}. Throughput counts real tokens only, and so do the FLOPs behind the
"fraction of dense peak" column.

    python bench/encoder_gpu.py --out bench/results      # default grid (~5 min on H100)
    python bench/encoder_gpu.py --full --out DIR        # every combination, compile for all

The models, batches, FLOP count and the length mix are ``nertron.bench.encoder``'s and
``nertron.bench.harness``'s (the ``encoder`` section of ``nertron bench``).

Writes encoder_<device>.json (every row, with device, versions, date) and encoder_<device>.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without an installed nertron

from nertron.bench.encoder import SHAPES, encoder_batch, encoder_flops, random_encoders  # noqa: E402
from nertron.bench.harness import DENSE_BF16_TFLOPS, conll_lengths, lookup  # noqa: E402
from nertron.engine.files import open_atomic  # noqa: E402

BATCHES = (1, 8, 32, 128, 256)
LENGTHS = ("conll", 32, 128, 512)


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
    peak = lookup(DENSE_BF16_TFLOPS, name)[1]
    peak = peak * 1e12 if peak else None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Measured cuBLAS ceiling, to read the peak fractions against something achievable.
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda a=a: a @ a, quantiles=[0.5, 0.2, 0.8])[0]
    cublas_tflops = 2 * 8192**3 / (ms * 1e-3) / 1e12
    del a

    shapes = args.shapes or ["bert-base", "bert-large"]
    rows = []
    for shape in shapes:
        dtypes = (torch.bfloat16, torch.float16) if (args.full or shape == "bert-base") else (torch.bfloat16,)
        for dtype in dtypes:
            ours, hf = random_encoders(shape, device, dtype, backend="triton")
            compiled = torch.compile(hf, dynamic=False)
            batches = BATCHES if (args.full or shape == "bert-base") else (32, 128)
            lengths_set = LENGTHS if (args.full or shape == "bert-base") else ("conll", 128)
            for batch in batches:
                for length in lengths_set:
                    lengths = conll_lengths(batch, seed=batch) if length == "conll" else [length] * batch
                    inputs = encoder_batch(lengths, 30522, device, seed=batch)
                    tokens = sum(lengths)
                    flops = encoder_flops(lengths, SHAPES[shape]["hidden_size"], SHAPES[shape]["num_hidden_layers"],
                                          SHAPES[shape]["intermediate_size"])
                    run_compile = args.full or (length == "conll" and batch == 128) or (length == 128 and batch == 256)
                    impls = {"nertron": lambda m=ours, x=inputs: m(**x), "transformers": lambda m=hf, x=inputs: m(**x)}
                    if run_compile:
                        impls["transformers+compile"] = lambda m=compiled, x=inputs: m(**x)
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
    with open_atomic(out_dir / f"encoder_{slug}.json") as f:
        f.write(json.dumps({"meta": meta, "rows": rows}, indent=1))
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
    with open_atomic(out_dir / f"encoder_{slug}.md") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
