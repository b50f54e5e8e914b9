"""pytest-benchmark: the BERT encoder, nertron ``BertModel`` vs transformers ``BertModel``
(SDPA), same run; the models, batch and timed call are ``nertron.bench.encoder``'s.

CPU: nertron's reference forward (what CPU users get) vs transformers, MiniLM shapes
(6 layers, hidden 384) with random weights, fp32, a batch of 32 CoNLL-2003 length-mix
sentences. CUDA: nertron's fused encoder vs transformers, bert-base shapes, bf16, batch 128,
CoNLL length mix. Each group holds the two rows to compare.

    python -m pytest bench/bench_encoder.py --benchmark-only --benchmark-json bench/results/encoder_cpu.json
"""
import pytest

pytest.importorskip("transformers")

from nertron.bench import encoder  # noqa: E402
from nertron.bench.harness import Bench, conll_lengths, label_benchmark  # noqa: E402

BENCH = Bench.here()


@pytest.fixture(scope="module")
def setup():
    shape, batch = ("bert-base", 128) if BENCH.cuda else ("minilm", 32)
    ours, hf = encoder.random_encoders(shape, BENCH.device, BENCH.dtype, backend="auto" if BENCH.cuda else "torch")
    lengths = conll_lengths(batch)
    return dict(nertron=ours, transformers=hf), encoder.encoder_batch(lengths, 30522, BENCH.device), \
        f"{BENCH.device} {shape}-shape {str(BENCH.dtype).replace('torch.', '')} B={batch} conll"


@pytest.mark.parametrize("impl", ["nertron", "transformers"])
def test_encoder(benchmark, setup, impl):
    models, batch, label = setup
    label_benchmark(benchmark, BENCH, f"encoder {label}", impl=impl, real_tokens=int(batch["attention_mask"].sum()))
    fn = encoder.forward(BENCH, models[impl], batch)
    fn()
    benchmark.pedantic(fn, rounds=50 if BENCH.cuda else 10, iterations=1, warmup_rounds=1)
