"""The fused Triton encoder (nertron.bindings.bert) against the reference BERT, and patch().

On CPU the kernels run in Triton's interpreter on tiny configs (2 layers, hidden 64, head
dims 16 and 32, lengths 1..40 with padding); on a GPU the real MiniLM checkpoint is compared
with transformers in fp16/bf16.
"""
import warnings

import pytest
import torch

from nertron import BertConfig, BertModel
from nertron.bindings.bert import fusable, fused_encoder_forward, is_prefix_mask
from nertron.bindings.patch import patch, unpatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _config(heads=4, **overrides):
    values = dict(
        vocab_size=97,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=96,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    values.update(overrides)
    return BertConfig(**values)


def _pair(config, dtype=torch.float32, seed=0):
    """A reference model and a fused one with the same (frozen) weights."""
    torch.manual_seed(seed)
    reference = BertModel(config, backend="torch").eval().requires_grad_(False)
    fused = BertModel(config, backend="triton").eval().requires_grad_(False)
    fused.load_state_dict(reference.state_dict())
    return reference.to(DEVICE, dtype), fused.to(DEVICE, dtype)


def _batch(lengths, total, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), total), generator=g)
    mask = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    types = torch.randint(0, 2, ids.shape, generator=g) * mask
    return ids.masked_fill(~mask, 0).to(DEVICE), mask.long().to(DEVICE), types.to(DEVICE)


@pytest.mark.parametrize("heads", [4, 2])  # head dims 16 and 32
@pytest.mark.parametrize("lengths", [[1], [40, 17, 1, 9], [5, 5]])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_fused_equals_reference(heads, lengths, hidden_act):
    reference, fused = _pair(_config(heads, hidden_act=hidden_act), seed=len(lengths))
    ids, mask, types = _batch(lengths, max(lengths) + 2, seed=heads)
    coef = torch.tensor([0.2, 0.3, 0.5], device=DEVICE)
    expected = reference(ids, mask, types, output_hidden_states=True, layer_mix=coef)
    got = fused(ids, mask, types, output_hidden_states=True, layer_mix=coef)
    real = mask.bool()
    for a, b in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
        assert torch.equal(a[~real], torch.zeros_like(a[~real]))  # packed: padding is zero
    torch.testing.assert_close(got.layer_mix[real], expected.layer_mix[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)


def test_packed_equals_padded():
    reference, fused = _pair(_config())
    ids, mask, types = _batch([33, 2, 19], 36, seed=5)
    packed = fused(ids, mask, types, output_hidden_states=True)
    padded = fused(ids, mask, types, output_hidden_states=True, packed=False)
    expected = reference(ids, mask, types)
    real = mask.bool()
    for a, b in zip(packed.hidden_states, padded.hidden_states):
        torch.testing.assert_close(a[real], b[real], atol=1e-6, rtol=1e-6)
    # The padded layout computes padding positions exactly as the reference does.
    torch.testing.assert_close(padded.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_no_mask_and_layer_mix_without_hidden_states():
    reference, fused = _pair(_config())
    ids, _, _ = _batch([12, 12], 12)
    coef = torch.tensor([0.0, 1.0, -2.0], device=DEVICE)
    got, expected = fused(ids, layer_mix=coef), reference(ids, layer_mix=coef)
    assert got.hidden_states is None and expected.hidden_states is None
    torch.testing.assert_close(got.layer_mix, expected.layer_mix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_fp16_error_within_torch():
    """fp16 weights: our error against the fp32 reference is at most twice the reference's own
    fp16 error, plus atol."""
    reference32, _ = _pair(_config(), seed=3)
    reference16, fused16 = _pair(_config(), torch.float16, seed=3)
    ids, mask, types = _batch([30, 7, 1], 30, seed=2)
    real = mask.bool()
    oracle = reference32(ids, mask, types).last_hidden_state[real]
    ours = (fused16(ids, mask, types).last_hidden_state[real].float() - oracle).abs().max().item()
    theirs = (reference16(ids, mask, types).last_hidden_state[real].float() - oracle).abs().max().item()
    assert ours <= 2 * theirs + 5e-3, (ours, theirs)


def test_falls_back_when_gradients_are_needed():
    reference, fused = _pair(_config())
    fused.requires_grad_(True)
    ids, mask, types = _batch([8, 3], 8)
    assert fusable(fused, ids, mask) == "gradients are required (the fused encoder is inference-only)"
    with pytest.warns(UserWarning, match="running the reference forward because gradients are required"):
        out = fused(ids, mask, types)
    out.last_hidden_state.sum().backward()  # the reference path is differentiable
    assert fused.encoder.layer[0].attention.self.query.weight.grad is not None
    with torch.no_grad():
        assert fusable(fused, ids, mask) is None  # no grad mode: the kernels serve it


def test_falls_back_on_left_padding_and_dropout():
    reference, fused = _pair(_config())
    ids, mask, types = _batch([8, 3], 8)
    left = mask.flip(1)
    assert not is_prefix_mask(left.bool()) and is_prefix_mask(mask.bool())
    with pytest.warns(UserWarning, match="not right-padded"):
        got = fused(ids, left, types)
    torch.testing.assert_close(got.last_hidden_state, reference(ids, left, types).last_hidden_state)
    fused.train()
    assert fusable(fused, ids, mask) == "the model is in training mode with dropout"


def test_auto_backend_uses_reference_on_cpu(monkeypatch):
    if DEVICE == "cuda":
        pytest.skip("on CUDA 'auto' runs the kernels")
    model = BertModel(_config()).eval()
    calls = []
    monkeypatch.setattr("nertron.bindings.bert.fused_encoder_forward", lambda *a, **k: calls.append(1))
    model(torch.ones(1, 3, dtype=torch.long))
    assert calls == []


def test_layer_mix_shape_is_checked():
    model = BertModel(_config()).eval()
    with pytest.raises(ValueError, match="layer_mix must hold 3 coefficients"):
        model(torch.ones(1, 3, dtype=torch.long), layer_mix=torch.ones(2))


def test_fused_qkv_cache_follows_weight_updates():
    reference, fused = _pair(_config())
    ids, mask, types = _batch([6], 6)
    first = fused(ids, mask, types).last_hidden_state
    with torch.no_grad():
        for model in (reference, fused):
            model.encoder.layer[1].attention.self.value.weight.mul_(0.5)
    second = fused(ids, mask, types).last_hidden_state
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, reference(ids, mask, types).last_hidden_state, atol=1e-5, rtol=1e-5)


# --- patch() on Hugging Face models ---------------------------------------------------------


def test_patch_bert_for_token_classification():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=64, num_labels=9,
    )
    model = transformers.BertForTokenClassification(config).eval().to(DEVICE)
    ids, mask, types = _batch([20, 11, 1], 20, seed=7)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    replaced = patch(model, backend="triton")
    assert replaced == ["bert: transformers BertModel -> nertron fused encoder"]
    assert patch(model, backend="triton") == []  # idempotent
    calls = []
    original = fused_encoder_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    import nertron.bindings.patch as patch_module

    patch_module.fused_encoder_forward, saved = spy, patch_module.fused_encoder_forward
    try:
        with torch.no_grad():
            after = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            states = model.bert(ids, attention_mask=mask, output_hidden_states=True).hidden_states
            tuple_out = model.bert(ids, attention_mask=mask, return_dict=False)
        assert len(calls) == 3
        real = mask.bool()
        assert torch.equal(after.argmax(-1)[real], before.argmax(-1)[real])
        torch.testing.assert_close(after[real], before[real], atol=1e-5, rtol=1e-5)
        assert len(states) == 3 and isinstance(tuple_out, tuple)
        # Calls the kernels cannot serve go to Hugging Face's own forward.
        model.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        assert len(calls) == 3 and model.bert.embeddings.word_embeddings.weight.grad is not None
    finally:
        patch_module.fused_encoder_forward = saved
    # the fused calls cached one concatenated QKV copy per layer; unpatch frees them
    cached = [m for m in model.modules() if "_nertron_qkv" in vars(m)]
    assert len(cached) == model.config.num_hidden_layers
    assert unpatch(model) == 1 and "forward" not in vars(model.bert)
    assert not any("_nertron_qkv" in vars(m) for m in model.modules())


class _OwnModel(torch.nn.Module):
    """A user's model holding a bare Hugging Face BertEncoder (not inside a BertModel)."""

    def __init__(self, transformers, config):
        super().__init__()
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = transformers.models.bert.modeling_bert.BertEncoder(config)
        self.head = torch.nn.Linear(config.hidden_size, 5)

    def forward(self, ids, mask):
        return self.head(self.encoder(self.embed(ids), attention_mask=mask).last_hidden_state)


def test_patch_bare_bert_encoder():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
        max_position_embeddings=64,
    )
    config._attn_implementation = "eager"
    model = _OwnModel(transformers, config).eval().to(DEVICE)
    ids, mask, _ = _batch([13, 4, 1], 13, seed=3)
    real = mask.bool()
    neg = torch.finfo(torch.float32).min
    masks = {  # the forms BertModel hands its encoder: none, (B, T), SDPA boolean 4-D, eager additive 4-D
        "none": None,
        "2d": mask,
        "4d-bool": real[:, None, None, :].expand(-1, 1, 13, -1),
        "4d-additive": (~real)[:, None, None, :].float() * neg,
    }
    with torch.no_grad():
        expected = {k: model(ids, masks[k]) for k in ("none", "4d-additive")}  # eager attention's forms
    expected["2d"] = expected["4d-bool"] = expected["4d-additive"]  # the same padding in the other forms
    assert patch(model, backend="triton") == ["encoder: transformers BertEncoder -> nertron fused layers"]
    import nertron.bindings.patch as patch_module

    calls = []
    original = patch_module.fused_encoder_layers_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    patch_module.fused_encoder_layers_forward = spy
    try:
        with torch.no_grad():
            for name, m in masks.items():
                got = model(ids, m)
                rows = real if m is not None else torch.ones_like(real)
                torch.testing.assert_close(got[rows], expected[name][rows], atol=1e-4, rtol=1e-4, msg=name)
            assert len(calls) == len(masks)
            # A per-query (causal) mask is no padding mask: Hugging Face's forward runs.
            causal = torch.tril(torch.ones(13, 13, dtype=torch.bool, device=DEVICE))[None, None].expand(3, 1, 13, 13)
            model(ids, causal)
            assert len(calls) == len(masks)
            # Layer outputs being recorded by a hook: Hugging Face's forward runs.
            handle = model.encoder.layer[0].register_forward_hook(lambda *a: None)
            model(ids, masks["4d-additive"])
            handle.remove()
            assert len(calls) == len(masks)
        model(ids, masks["4d-additive"]).sum().backward()  # gradients: the original forward, which autograd can follow
        assert len(calls) == len(masks) and model.encoder.layer[0].output.dense.weight.grad is not None
    finally:
        patch_module.fused_encoder_layers_forward = original
    assert unpatch(model) == 1 and "forward" not in vars(model.encoder)


def test_patch_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        patch(torch.nn.Linear(2, 2), backend="cuda")


# --- GPU: the real checkpoint ------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_minilm_fused_against_transformers_gpu(minilm_dir, conll_dev, dtype):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    batch = tokenizer([w for w, _ in conll_dev[:128]], is_split_into_words=True, padding=True, return_tensors="pt")
    batch = {k: v.cuda() for k, v in batch.items()}
    oracle = transformers.BertModel.from_pretrained(str(minilm_dir)).cuda().eval()
    low = transformers.BertModel.from_pretrained(str(minilm_dir)).cuda().eval().to(dtype)
    ours = BertModel.from_pretrained(minilm_dir, dtype=dtype, device="cuda", backend="triton")
    real = batch["attention_mask"].bool()
    with torch.inference_mode():
        reference = oracle(**batch, output_hidden_states=True).hidden_states
        theirs = low(**batch, output_hidden_states=True).hidden_states
        got = ours(**batch, output_hidden_states=True).hidden_states
    for layer, (ref, a, b) in enumerate(zip(reference, got, theirs)):
        our_error = (a.float() - ref)[real].abs().max().item()
        their_error = (b.float() - ref)[real].abs().max().item()
        assert our_error <= 2 * their_error + 2e-2, (layer, our_error, their_error)
