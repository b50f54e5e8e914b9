"""The reference BERT against Hugging Face transformers, on the real MiniLM checkpoint and on
random tiny configs, in fp32 and half precision, plus its input validation."""
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nertron import BertConfig, BertModel  # noqa: E402


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return BertModel.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def hf_minilm(minilm_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="sdpa")
    return model.eval()


@pytest.fixture(scope="module")
def conll_batch(minilm_dir, conll_dev):
    """24 real CoNLL-2003 dev sentences of very different lengths, padded into one batch."""
    hf_tokenizer = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    by_length = sorted(conll_dev, key=lambda s: len(s[0]))
    picks = [by_length[i * (len(by_length) - 1) // 23][0] for i in range(24)]
    return dict(hf_tokenizer(picks, is_split_into_words=True, padding=True, return_tensors="pt"))


def _hf_twin(config: BertConfig, model: BertModel):
    """A transformers.BertModel with the same config and weights as ``model``."""
    values = {k: v for k, v in config.to_dict().items() if k in transformers.BertConfig().to_dict() or k == "hidden_act"}
    hf = transformers.BertModel(transformers.BertConfig(**values), add_pooling_layer=model.pooler is not None)
    hf.config._attn_implementation = "sdpa"
    hf.load_state_dict(model.state_dict(), strict=False)  # HF keeps a position_ids buffer of its own
    return hf.eval()


def _tiny_config(**overrides) -> BertConfig:
    values = dict(
        vocab_size=101,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    values.update(overrides)
    return BertConfig(**values)


def _ragged_batch(batch: int, length: int, vocab: int, generator: torch.Generator):
    ids = torch.randint(1, vocab, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length  # the longest row fills the batch
    lengths[-1] = 1  # and one row is a single token
    mask = torch.arange(length)[None, :] < lengths[:, None]  # shape: (B, T)
    types = torch.randint(0, 2, (batch, length), generator=generator)
    return ids.masked_fill(~mask, 0), mask.long(), types


# --- the real checkpoint ---------------------------------------------------------------


def test_minilm_equals_transformers_fp32(minilm, hf_minilm, conll_batch):
    assert conll_batch["attention_mask"].sum(1).unique().numel() > 10  # really ragged
    with torch.inference_mode():
        ours = minilm(**conll_batch, output_hidden_states=True)
        theirs = hf_minilm(**conll_batch, output_hidden_states=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 7
    for layer, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5, f"hidden state {layer}"
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_minilm_half_precision(minilm_dir, hf_minilm, conll_batch, dtype, atol):
    """Our low-precision error against the fp32 oracle is at most twice transformers' own error
    in that dtype, plus atol."""
    ours = BertModel.from_pretrained(minilm_dir, dtype=dtype)
    theirs = _hf_twin(ours.config, BertModel.from_pretrained(minilm_dir)).to(dtype)
    mask = conll_batch["attention_mask"].bool()
    with torch.inference_mode():
        reference = hf_minilm(**conll_batch, output_hidden_states=True).hidden_states
        low = ours(**conll_batch, output_hidden_states=True).hidden_states
        hf_low = theirs(**conll_batch, output_hidden_states=True).hidden_states
    for layer, (ref, a, b) in enumerate(zip(reference, low, hf_low)):
        assert a.dtype == dtype
        our_error = (a.float() - ref)[mask].abs().max().item()
        their_error = (b.float() - ref)[mask].abs().max().item()
        assert our_error <= 2 * their_error + atol, f"layer {layer}: {our_error} vs transformers {their_error}"


def test_minilm_gradients_equal_transformers(minilm_dir, hf_minilm, conll_batch):
    """Fine-tuning runs through the reference path: its gradients match transformers'."""
    ours = BertModel.from_pretrained(minilm_dir)
    batch = {k: v[:6] for k, v in conll_batch.items()}
    weights = torch.randn(ours(**batch).last_hidden_state.shape, generator=torch.Generator().manual_seed(0))
    (ours(**batch).last_hidden_state * weights).sum().backward()
    hf_minilm.zero_grad()
    (hf_minilm(**batch).last_hidden_state * weights).sum().backward()
    theirs = dict(hf_minilm.named_parameters())
    for name, param in ours.named_parameters():
        if param.grad is None:
            assert name.startswith("pooler."), name
            continue
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-4, rtol=1e-4, msg=name)
    hf_minilm.zero_grad()


def test_from_pretrained_options(minilm_dir, minilm):
    model = BertModel.from_pretrained(minilm_dir, dtype=torch.bfloat16, backend="torch")
    assert not model.training and model.backend == "torch"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config == minilm.config and model.config.extra["_name_or_path"] == "nreimers/MiniLM-L6-H384-uncased"
    assert "layers=6, hidden=384, heads=12" in repr(model)


# --- random tiny configs ------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 33, 512])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_random_weights_equal_transformers(length, hidden_act):
    torch.manual_seed(length)
    config = _tiny_config(hidden_act=hidden_act)
    model = BertModel(config).eval()
    hf = _hf_twin(config, model)
    ids, mask, types = _ragged_batch(3, length, config.vocab_size, torch.Generator().manual_seed(length))
    with torch.inference_mode():
        ours = model(ids, mask, types, output_hidden_states=True)
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, atol=1e-5, rtol=1e-5)


def test_defaults_for_mask_and_token_types():
    torch.manual_seed(0)
    model = BertModel(_tiny_config()).eval()
    ids = torch.randint(1, 101, (2, 9))
    with torch.inference_mode():
        plain = model(ids)
        explicit = model(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert plain.hidden_states is None
    torch.testing.assert_close(plain.last_hidden_state, explicit.last_hidden_state, atol=0, rtol=0)
    last, pooled = plain[0], plain[1]
    assert last is plain.last_hidden_state and pooled is plain.pooler_output


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(1)
    model = BertModel(_tiny_config()).eval()
    ids = torch.randint(1, 101, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 11, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 11)], 1).long()
    with torch.inference_mode():
        alone = model(ids).last_hidden_state
        inside = model(padded, mask).last_hidden_state[:, :5]
    torch.testing.assert_close(alone, inside, atol=1e-5, rtol=1e-5)


def test_all_padded_row_stays_finite():
    model = BertModel(_tiny_config()).eval()
    ids = torch.randint(1, 101, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1] = 0
    with torch.inference_mode():
        out = model(ids, mask, output_hidden_states=True)
    assert all(torch.isfinite(h).all() for h in out.hidden_states)


def test_no_pooler():
    model = BertModel(_tiny_config(), add_pooling_layer=False).eval()
    out = model(torch.ones(1, 3, dtype=torch.long))
    assert out.pooler_output is None and len(out.to_tuple()) == 1
    assert not any(name.startswith("pooler.") for name in model.state_dict())


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return BertModel(_tiny_config(max_position_embeddings=16)).eval()


@pytest.mark.parametrize(
    "make, error, text",
    [
        (lambda: (torch.ones(5, dtype=torch.long),), ValueError, "must be a (batch, length) tensor"),
        (lambda: ([[1, 2]],), ValueError, "must be a (batch, length) tensor, got list"),
        (lambda: (torch.ones(1, 4),), TypeError, "must be an integer tensor"),
        (lambda: (torch.ones(1, 0, dtype=torch.long),), ValueError, "length 0"),
        (lambda: (torch.ones(1, 17, dtype=torch.long),), ValueError, "exceeds the model's max_position_embeddings=16"),
        (lambda: (torch.full((1, 4), 101),), ValueError, "id 101, outside the vocabulary [0, 101)"),
        (lambda: (torch.full((1, 4), -1),), ValueError, "id -1, outside"),
        (lambda: (torch.ones(2, 4, dtype=torch.long), torch.ones(2, 5)), ValueError, "attention_mask has shape (2, 5)"),
        (
            lambda: (torch.ones(2, 4, dtype=torch.long), None, torch.ones(1, 4, dtype=torch.long)),
            ValueError,
            "token_type_ids has shape (1, 4)",
        ),
        (lambda: (torch.ones(1, 4, dtype=torch.long), None, torch.full((1, 4), 2)), ValueError, "token_type_ids must lie"),
    ],
)
def test_bad_input(tiny, make, error, text):
    with pytest.raises(error) as info:
        tiny(*make())
    assert text in str(info.value)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        BertModel(_tiny_config(), backend="cuda")


def test_reference_layer_mix_skips_padding(minilm, conll_batch):
    """Inference with ``layer_mix`` on a padded batch runs the reference on the real tokens only
    (packed): the real positions' states and mix are those of the full forward, padding holds
    zeros; ``packed=False`` computes every position."""
    coef = torch.linspace(0.1, 0.7, minilm.config.num_hidden_layers + 1)
    real = conll_batch["attention_mask"].bool()
    with torch.no_grad():
        packed = minilm(**conll_batch, output_hidden_states=True, layer_mix=coef)
        full = minilm(**conll_batch, output_hidden_states=True, layer_mix=coef, packed=False)
    for got, want in [(packed.last_hidden_state, full.last_hidden_state), (packed.layer_mix, full.layer_mix),
                      *zip(packed.hidden_states, full.hidden_states)]:
        torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-5)
        assert not got[~real].any()
    assert full.layer_mix[~real].abs().sum() > 0
    torch.testing.assert_close(packed.pooler_output, full.pooler_output, rtol=1e-4, atol=1e-5)
