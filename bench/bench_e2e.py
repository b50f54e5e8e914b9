"""pytest-benchmark: the tagger end to end, nertron ``BertBiLSTMAttnCRF`` (word batch in, tags
out, as the learner predicts) vs transformers BertModel + the same head + pytorch-crf decode
(``BaselineTagger``), and ``Tagger.tag_words`` (words in, entities out), over the ``e2e``
section's sweeps; the data, models and calls are ``nertron.bench.e2e``'s (all-MiniLM-L6-v2
checkpoint, CoNLL-2003 eng.testb where the data is there, else synthetic sentences).

    python -m pytest bench/bench_e2e.py --benchmark-only -p no:cacheprovider
"""
import random
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torchcrf")

from nertron.bench import e2e  # noqa: E402
from nertron.bench.harness import Bench, label_benchmark, pedantic, sweep_points  # noqa: E402

BENCH = Bench.here()
POINTS = list(sweep_points(BENCH, "model"))


@pytest.fixture(scope="module")
def setup():
    return e2e.Setup(BENCH)


@pytest.mark.parametrize("point", POINTS, ids=[f"{sweep}{point}" for sweep, point, _ in POINTS])
@pytest.mark.parametrize("impl", ["nertron", e2e.BASELINE, "nertron Tagger.tag_words"])
def test_e2e(benchmark, setup, impl, point):
    sweep, value, lengths = point
    words = setup.word_lists(sweep, value, len(lengths), random.Random(0))
    batch = setup.batch(words)
    label_benchmark(benchmark, BENCH, f"e2e {sweep}={value}", impl=impl, B=len(lengths),
                    T=int(batch["input_ids"].shape[1]), real_tokens=int(batch["attention_mask"].sum()))
    calls = {"nertron": lambda: setup.run_ours(batch), e2e.BASELINE: lambda: setup.run_base(batch),
             "nertron Tagger.tag_words": lambda: setup.tagger.tag_words(words)}
    pedantic(benchmark, calls[impl])
