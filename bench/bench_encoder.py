"""pytest-benchmark: the BERT encoder, nertron vs transformers BertModel (SDPA), same run.

CPU: nertron's reference forward (what CPU users get) vs transformers eager, MiniLM shapes
(6 layers, hidden 384) with random weights, a batch of 32 CoNLL-2003 length-mix sentences.
CUDA: nertron's fused encoder vs transformers eager, bert-base shapes, bf16, batch 128,
CoNLL length mix. Each group holds the two rows to compare.

    python -m pytest bench/bench_encoder.py --benchmark-only --benchmark-json bench/results/encoder_cpu.json
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from encoder_gpu import build_models, conll_lengths, make_batch  # noqa: E402

from nertron import BertConfig, BertModel  # noqa: E402

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def setup():
    if CUDA:
        ours, hf = build_models("bert-base", torch.bfloat16, "cuda")
        batch = make_batch(conll_lengths(128), 30522, "cuda")
        return ours, hf, batch, "cuda bert-base bf16 B=128 conll"
    values = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                  intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**values))
    hf.config._attn_implementation = "sdpa"
    hf.eval()
    ours = BertModel(BertConfig(**values), backend="torch").eval()
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k != "embeddings.position_ids"})
    batch = make_batch(conll_lengths(32), 30522, "cpu")
    return ours, hf, batch, "cpu minilm-shape fp32 B=32 conll"


def _run(model, batch):
    with torch.inference_mode():
        out = model(**batch).last_hidden_state
    if CUDA:
        torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("impl", ["nertron", "transformers"])
def test_encoder(benchmark, setup, impl):
    ours, hf, batch, label = setup
    benchmark.group = f"encoder {label}"
    benchmark.extra_info["real_tokens"] = int(batch["attention_mask"].sum())
    model = ours if impl == "nertron" else hf
    _run(model, batch)
    benchmark.pedantic(_run, args=(model, batch), rounds=10 if not CUDA else 50, iterations=1, warmup_rounds=1)
