"""Tagging speed of trained models against ``transformers.pipeline`` on real CoNLL-2003 texts.

Usage: OMP_NUM_THREADS=1 python bench/ner/tag_speed.py [--repeats N] [--count 1500] [MODEL_DIR ...]
  (no MODEL_DIR: the shipped default model; e.g. also a run directory, or an older default
  extracted with ``git show``, to compare)

Texts in, entities out, on the CPU with torch's threads set to OMP_NUM_THREADS: each model's
``Tagger.tag`` and ``transformers.pipeline("token-classification", aggregation_strategy=
"simple", batch_size=32)`` over the same ``--count`` eng.testb sentences (words joined by
spaces). The pipeline's checkpoint is ``nertron/bench/pipeline.py``'s: the same MiniLM encoder
with a seeded token-classification head (no fine-tuned NER checkpoint can be downloaded here;
its work per text is a real one's). The runs are interleaved, each repeated, best time kept;
the ratio to the pipeline is printed (the bar for the default model: at least 1.5x).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model directories (default: the shipped default model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=1500)
    args = parser.parse_args(argv)
    import torch
    import transformers

    from nertron import Tagger
    from nertron.bench.pipeline import conll_texts, make_checkpoint
    from nertron.engine.tagger import DEFAULT_MODEL_DIR

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    texts, source = conll_texts(args.count)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(Path(tmp))
        pipe = transformers.pipeline("token-classification", model=str(path), aggregation_strategy="simple", device=-1)
        baseline = "transformers.pipeline (batch_size=32)"
        runs = {baseline: lambda: pipe(texts, batch_size=32)}
        for directory in args.models or [str(DEFAULT_MODEL_DIR)]:
            tagger = Tagger.load(directory, device="cpu")
            config = tagger.model.config
            runs[f"{directory} (casing {config.casing}, hidden {config.enc_hidden_dim})"] = \
                (lambda t: lambda: t.tag(texts))(tagger)
        for run in runs.values():
            run()  # warm-up
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"{len(texts)} texts of {source}; CPU, {threads} thread(s); best of {args.repeats}")
    for name, seconds in best.items():
        print(f"{name:70s} {seconds:7.2f} s {len(texts) / seconds:7.1f} texts/s  "
              f"x{best[baseline] / seconds:.2f} vs transformers.pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
