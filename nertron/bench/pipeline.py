"""Section ``pipeline``: ``nertron.pipeline`` vs ``transformers.pipeline("token-classification")``
on the same Hugging Face checkpoint and the same texts: real CoNLL-2003 test sentences
(eng.testb, words joined by spaces), ``aggregation_strategy="simple"``, the same ``batch_size``,
texts in, entity dicts out (tokenisation, batching, the model and the aggregation all timed).

The checkpoint: ``BertForTokenClassification`` over the all-MiniLM-L6-v2 encoder with a seeded
9-label CoNLL head (std 0.5, ``O`` favoured by a +2 bias), saved with ``save_pretrained`` into a
temporary directory that both pipelines load. (No fine-tuned BERT NER checkpoint can be
downloaded on these machines; the encoder, the shapes and the work per text are a real
checkpoint's, and the head's labels only decide how many entities the aggregation builds.)

On CPU nertron runs its PyTorch reference encoder in fp32, as transformers does; on CUDA its
fused Triton encoder, both pipelines in bf16. Each row also records whether both returned the
same entities (scores within 1e-4). ``bench/bench_pipeline.py`` holds the pytest-benchmark suite
and the side-by-side command with alternating repeats.
"""
from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .harness import Bench, error_text, make_row, measure, status_row

TITLE = "nertron.pipeline vs transformers.pipeline (token classification, texts in, entity dicts out)"
OP = "pipeline ner simple (minilm)"
BASELINE = "transformers.pipeline"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def make_checkpoint(out: Path, source: Path | None = None, seed: int = 0) -> Path:
    """Save a ``BertForTokenClassification`` (the MiniLM encoder + a seeded CoNLL head) and its
    tokenizer into ``out``; return ``out``."""
    import transformers

    from .encoder import checkpoint_dir

    source = checkpoint_dir() if source is None else source
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "newly initialised classifier" report
    try:
        torch.manual_seed(seed)
        model = transformers.BertForTokenClassification.from_pretrained(
            str(source), num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)})
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, 0.5)
            model.classifier.bias.zero_()
            model.classifier.bias[0] = 2.0
        model.save_pretrained(out)
        transformers.AutoTokenizer.from_pretrained(str(source)).save_pretrained(out)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return out


def conll_texts(count: int) -> tuple[list[str], str]:
    """The first ``count`` eng.testb sentences as texts (or synthetic ones without the data)."""
    from .e2e import conll_sentences

    sentences, source = conll_sentences()
    if sentences is None:
        rng = np.random.default_rng(0)
        words = ["Peter", "Blackburn", "Germany", "rejects", "call", "boycott", "British", "lamb", "the", "said",
                 "1996-08-22", "U.S.", ",", "."]
        return [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(3, 40, size=count)], "synthetic"
    return [" ".join(s.words) for s in sentences[:count]], f"{source}, first {count} sentences"


def same_output(theirs: list[list[dict]], ours: list[list[dict]], tolerance: float = 1e-4) -> bool:
    """Whether both give the same dicts (keys, order, values), scores within ``tolerance``."""
    if len(theirs) != len(ours):
        return False
    for a_list, b_list in zip(theirs, ours):
        if len(a_list) != len(b_list):
            return False
        for a, b in zip(a_list, b_list):
            if list(a) != list(b):
                return False
            for key in a:
                if key == "score":
                    if abs(float(a[key]) - float(b[key])) > tolerance:
                        return False
                elif a[key] != b[key]:
                    return False
    return True


class Setup:
    """The checkpoint, the texts and both pipelines on the bench's device."""

    def __init__(self, bench: Bench, count: int, batch_size: int = 32, strategy: str = "simple"):
        import transformers

        import nertron

        self.bench = bench
        self._dir = tempfile.TemporaryDirectory(prefix="nertron_bench_pipeline_")
        self.path = make_checkpoint(Path(self._dir.name))
        self.texts, self.source = conll_texts(count)
        self.batch_size = batch_size
        self.strategy = strategy
        dtype = torch.bfloat16 if bench.cuda else torch.float32
        device = 0 if bench.cuda else -1
        self.ours = nertron.pipeline("token-classification", model=str(self.path), aggregation_strategy=strategy,
                                     device=device, batch_size=batch_size, dtype=dtype, progress=False)
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            self.theirs = transformers.pipeline("token-classification", model=str(self.path),
                                                aggregation_strategy=strategy, device=device, dtype=dtype)
        finally:
            transformers.logging.set_verbosity(verbosity)
        encodings = self.ours.tokenizer.encode(self.texts, None)
        self.tokens = sum(len(e[0].ids) for e in encodings)  # real sub-tokens, [CLS]/[SEP] included

    def run_ours(self, texts: list[str] | None = None) -> list[list[dict]]:
        out = self.ours(self.texts if texts is None else texts)
        self.bench.sync()
        return out

    def run_theirs(self, texts: list[str] | None = None) -> list[list[dict]]:
        out = self.theirs(self.texts if texts is None else texts, batch_size=self.batch_size)
        self.bench.sync()
        return out

    def config(self) -> dict[str, Any]:
        return dict(B=self.batch_size, T="-", lengths="conll", texts=len(self.texts), real_tokens=self.tokens,
                    strategy=self.strategy, data=self.source,
                    dtype="bf16" if self.bench.cuda else "fp32",
                    path="triton (fused encoder)" if self.bench.cuda else "reference (torch)")


def section(bench: Bench) -> list[dict]:
    count = 64 if bench.quick else 1500
    try:
        s = Setup(bench, count)
        agree = same_output(s.run_theirs(), s.run_ours())
    except Exception as err:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return [status_row("pipeline", OP, "error", error_text(err), baseline=BASELINE)]
    label = f"pipeline {len(s.texts)} texts B={s.batch_size}"
    count_args = dict(tokens=s.tokens, sentences=len(s.texts))
    impls = {"nertron": measure(bench, s.run_ours, label=label + " nertron", **count_args),
             BASELINE: measure(bench, s.run_theirs, label=f"{label} {BASELINE}", **count_args)}
    return [make_row("pipeline", OP, "batch", s.config(), impls, BASELINE, s.tokens, len(s.texts),
                     same_output=agree)]
