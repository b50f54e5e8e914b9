"""``nertron.pipeline`` vs ``transformers.pipeline("token-classification")``, same checkpoint, same
texts, same run; the checkpoint, the texts and the calls are ``nertron.bench.pipeline``'s
(MiniLM ``BertForTokenClassification`` with a seeded CoNLL head, CoNLL-2003 eng.testb sentences).

1. Side by side (the figure in the README): ``--rounds`` alternating calls of both pipelines on
   the same texts (nertron, transformers, nertron, ...: a shared machine's load hits both
   alike), the median of each and their ratio, and whether both returned the same entities
   (scores within 1e-4); printed as Markdown, ``--json`` / ``--markdown`` also write them.

       python bench/bench_pipeline.py --texts 1500 --batch-size 32 --threads 1 \\
           --markdown bench/results/pipeline_cpu.md

2. pytest-benchmark suite (one group, both implementations; 200 texts):

       python -m pytest bench/bench_pipeline.py --benchmark-only -p no:cacheprovider
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without an installed nertron

from nertron.bench import pipeline as section  # noqa: E402
from nertron.engine.files import open_atomic  # noqa: E402
from nertron.bench.harness import Bench, label_benchmark, pedantic  # noqa: E402
from nertron.bench.report import environment  # noqa: E402

BENCH = Bench.here()


@pytest.fixture(scope="module")
def setup():
    pytest.importorskip("transformers")
    return section.Setup(BENCH, 200)


@pytest.mark.parametrize("impl", ["nertron", section.BASELINE])
def test_pipeline(benchmark, setup, impl):
    label_benchmark(benchmark, BENCH, "pipeline ner simple", impl=impl, texts=len(setup.texts),
                    batch_size=setup.batch_size, real_tokens=setup.tokens)
    pedantic(benchmark, setup.run_ours if impl == "nertron" else setup.run_theirs)


def side_by_side(texts: int, batch_size: int, rounds: int, strategy: str = "simple") -> dict:
    """Alternating timed calls of both pipelines; medians, ratio, output agreement."""
    bench = Bench.here()
    s = section.Setup(bench, texts, batch_size=batch_size, strategy=strategy)
    theirs_out, ours_out = s.run_theirs(), s.run_ours()  # warm-up, and the outputs compared
    same = section.same_output(theirs_out, ours_out)
    times: dict[str, list[float]] = {"nertron": [], section.BASELINE: []}
    for _ in range(rounds):
        for name, call in (("nertron", s.run_ours), (section.BASELINE, s.run_theirs)):
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(values) for name, values in times.items()}
    env = environment(bench)
    return dict(
        date=env["date"], device=bench.device, device_name=env["device_name"], cpu_count=env["cpu_count"],
        torch_threads=env["torch_threads"], versions={k: env[k] for k in ("torch", "transformers", "python")}, config=s.config(), rounds=rounds, times_s=times, median_s=medians,
        texts_per_s={name: len(s.texts) / t for name, t in medians.items()},
        tokens_per_s={name: s.tokens / t for name, t in medians.items()},
        ratio=medians[section.BASELINE] / medians["nertron"], same_output=same,
        entities=sum(map(len, ours_out)))


def markdown(result: dict, command: str) -> str:
    c = result["config"]
    lines = [
        f"# nertron.pipeline vs transformers.pipeline ({result['device']}, {result['device_name']})", "",
        f"Run {result['date']}, {result['cpu_count']} CPU cores, torch threads {result['torch_threads']}, "
        f"torch {result['versions']['torch']}, transformers {result['versions']['transformers']}: `{command}`.", "",
        f"{c['texts']} texts ({c['data']}; {c['real_tokens']} sub-tokens with [CLS]/[SEP]), "
        f"aggregation_strategy={c['strategy']!r}, batch_size={c['B']}, {c['dtype']}; nertron path: {c['path']}. "
        f"Median of {result['rounds']} alternating rounds; same output (entities, scores within 1e-4): "
        f"{result['same_output']} ({result['entities']} entities).", "",
        "| implementation | median s | texts/s | tokens/s | all rounds (s) |", "|---|---:|---:|---:|---|",
    ]
    for name in ("nertron", section.BASELINE):
        lines.append(f"| {name} | {result['median_s'][name]:.2f} | {result['texts_per_s'][name]:.0f} | "
                     f"{result['tokens_per_s'][name]:.0f} | "
                     f"{', '.join(f'{t:.2f}' for t in result['times_s'][name])} |")
    lines += ["", f"**Ratio (transformers.pipeline / nertron.pipeline): {result['ratio']:.2f}x**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nertron.pipeline vs transformers.pipeline, side by side")
    parser.add_argument("--texts", type=int, default=1500, help="eng.testb sentences (default 1500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed calls of each (default 3)")
    parser.add_argument("--strategy", default="simple")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    parser.add_argument("--markdown", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = side_by_side(args.texts, args.batch_size, args.rounds, args.strategy)
    command = "python bench/bench_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(result, command.strip())
    print(text)
    if args.json:
        data = json.dumps(result, indent=1, default=str) + "\n"
        with open_atomic(args.json) as f:
            f.write(data)
    if args.markdown:
        with open_atomic(args.markdown) as f:
            f.write(text)
    return 0 if result["same_output"] else 1


if __name__ == "__main__":
    sys.exit(main())
