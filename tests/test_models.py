"""The ner-bert model family: every class builds, trains a step, decodes, saves and loads
identically, on the real MiniLM checkpoint and real CoNLL-2003 sentences."""
from pathlib import Path

import pytest
import torch

from nertron.engine.models import (
    MODEL_CLASSES,
    BertBiLSTMAttnCRF,
    BertBiLSTMAttnCRFJoint,
    BertBiLSTMCRF,
    ModelConfig,
    NerModel,
)

transformers = pytest.importorskip("transformers")

LABELS = ["<pad>", "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def iob1_to_iob2(tags):
    out, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


@pytest.fixture(scope="module")
def batch(minilm_dir, conll_dev):
    """8 real sentences: sub-token inputs, first-sub-token index per word, IOB2 labels."""
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    sentences = [s for s in conll_dev if 3 <= len(s[0]) <= 30][:8]
    enc = tokenizer([w for w, _ in sentences], is_split_into_words=True, padding=True, return_tensors="pt")
    width = max(len(w) for w, _ in sentences)
    word_index = torch.zeros(len(sentences), width, dtype=torch.long)
    word_mask = torch.zeros(len(sentences), width, dtype=torch.bool)
    labels = torch.full((len(sentences), width), -100)
    for i, (words, tags) in enumerate(sentences):
        seen = set()
        for position, word in enumerate(enc.word_ids(i)):
            if word is not None and word not in seen:
                seen.add(word)
                word_index[i, word] = position
        word_mask[i, : len(words)] = True
        labels[i, : len(words)] = torch.tensor([LABELS.index(t) for t in iob1_to_iob2(tags)])
    return dict(enc, word_index=word_index, word_mask=word_mask, labels=labels, intents=torch.arange(8) % 3)


def _make(cls, minilm_dir, **kwargs):
    torch.manual_seed(0)
    options = dict(labels=LABELS, enc_hidden_dim=32, num_heads=2, key_dim=16, val_dim=16, dec_embedding_dim=8,
                   dec_hidden_dim=32, input_dropout=0.1, attn_dropout=0.1,
                   casing="none")  # the batches here come from transformers' tokenizer (casing: test_casing.py)
    if cls.joint:
        options["intent_size"] = 3
    options.update(kwargs)
    return cls.create(len(LABELS), minilm_dir, **options)


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_train_step_decode_save_load(name, minilm_dir, batch, tmp_path):
    cls = MODEL_CLASSES[name]
    model = _make(cls, minilm_dir)
    assert not any(p.requires_grad for p in model.features.bert.parameters())  # frozen BERT
    model.train()
    out = model(batch, decode=False)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert "features.pooling.weights" in trained and "features.pooling.gamma" in trained
    assert not any(n.startswith("features.bert.") for n in trained)
    head = "crf.transitions" if cls.decoder == "crf" else "nmt.out.weight"
    assert head in trained
    if cls.joint:
        assert "intent.weight" in trained

    model.eval()
    with torch.no_grad():
        first = model(batch)
    mask = batch["word_mask"]
    assert first.tags.shape == mask.shape
    assert (first.tags[mask] >= 0).all() and (first.tags[~mask] == -1).all()

    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["head.safetensors", "model.json"]
    loaded = NerModel.load(tmp_path / "model")
    assert type(loaded) is cls and loaded.config == model.config
    with torch.no_grad():
        second = loaded(batch)
    assert torch.equal(first.tags, second.tags)
    torch.testing.assert_close(first.emissions, second.emissions, atol=0, rtol=0)
    if cls.joint:
        torch.testing.assert_close(first.intent_logits, second.intent_logits, atol=0, rtol=0)


def test_head_file_excludes_frozen_bert(minilm_dir, tmp_path):
    model = _make(BertBiLSTMCRF, minilm_dir)
    model.save(tmp_path)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "head.safetensors"))
    assert not any(k.startswith("features.bert.") for k in keys)
    assert (tmp_path / "head.safetensors").stat().st_size < 2_000_000  # the 90 MB encoder stays in its checkpoint


def test_inference_mix_equals_training_mix(minilm_dir, batch):
    """The fused inference path (layer_mix accumulated in the encoder) equals mixing stored layers."""
    model = _make(BertBiLSTMAttnCRF, minilm_dir, bert_mode="weighted").eval()
    with torch.no_grad():
        model.features.pooling.weights.copy_(torch.linspace(-1, 1, 6))
        model.features.pooling.gamma.fill_(0.7)
        fused = model.features(batch)
        stored = model.features.mix(model.features.hidden_states(batch))
    torch.testing.assert_close(fused, stored, atol=1e-5, rtol=1e-5)


def test_cached_features_equal_running_bert(minilm_dir, batch):
    model = _make(BertBiLSTMCRF, minilm_dir).eval()
    with torch.no_grad():
        direct = model(batch).emissions
        cached = model(batch, features=model.features.hidden_states(batch)).emissions
    torch.testing.assert_close(direct, cached, atol=1e-5, rtol=1e-5)


def test_constraints_forbid_invalid_bio(minilm_dir, batch):
    model = _make(BertBiLSTMAttnCRF, minilm_dir).eval()
    with torch.no_grad():
        # Emissions that strongly prefer I-PER right after O: constrained decoding must refuse it.
        model.emissions.bias.zero_()
        model.emissions.bias[LABELS.index("I-PER")] = 50.0
        tags = model(batch).tags
    for row, mask in zip(tags, batch["word_mask"]):
        previous = "O"
        for tag in row[mask].tolist():
            name = LABELS[tag]
            assert not (name.startswith("I-") and previous[2:] != name[2:]), (previous, name)
            previous = name


def test_last_mode_and_unfrozen(minilm_dir, batch):
    model = _make(BertBiLSTMCRF, minilm_dir, bert_mode="last", freeze=False)
    assert model.features.pooling is None
    model.train()
    model(batch, decode=False).loss.backward()
    assert model.features.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_marginals_are_probabilities(minilm_dir, batch):
    model = _make(BertBiLSTMCRF, minilm_dir).eval()
    probs = model.marginals(batch)
    mask = batch["word_mask"]
    torch.testing.assert_close(probs[mask].sum(-1), torch.ones(int(mask.sum())), atol=1e-5, rtol=0)


def test_bad_configurations(minilm_dir, tmp_path):
    with pytest.raises(ValueError, match="bert_mode must be one of"):
        ModelConfig(label_size=5, checkpoint_dir=".", bert_mode="mean").validate()
    with pytest.raises(ValueError, match="3 label names for label_size=5"):
        ModelConfig(label_size=5, checkpoint_dir=".", labels=["O", "B-X", "I-X"]).validate()
    with pytest.raises(ValueError, match="intent_size must be at least 2"):
        BertBiLSTMAttnCRFJoint.create(len(LABELS), minilm_dir, labels=LABELS)
    with pytest.raises(FileNotFoundError, match="model.json missing"):
        NerModel.load(tmp_path)
    (tmp_path / "model.json").write_text('{"class": "Nope", "config": {}}')
    with pytest.raises(ValueError, match="unknown model class 'Nope'"):
        NerModel.load(tmp_path)


def test_portable_fp16_head(minilm_dir, batch, tmp_path, monkeypatch):
    """The shipped-model form: fp16 head weights and the default checkpoint recorded by package
    name, found again at load; a checkpoint that moved away gives an error naming it."""
    from safetensors.torch import load_file

    import nertron.engine.models as models
    from nertron.engine.checkpoint import DEFAULT_CHECKPOINT_PACKAGE

    model = _make(BertBiLSTMAttnCRF, minilm_dir).eval()
    model.save(tmp_path / "ship", head_dtype=torch.float16, checkpoint_dir=DEFAULT_CHECKPOINT_PACKAGE)
    stored = load_file(str(tmp_path / "ship" / "head.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    monkeypatch.setattr(models, "default_checkpoint_dir", lambda: Path(minilm_dir))
    loaded = NerModel.load(tmp_path / "ship")
    assert loaded.config.checkpoint_dir == str(minilm_dir)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        reference, shipped = model(batch), loaded(batch)
    torch.testing.assert_close(shipped.emissions, reference.emissions, atol=2e-2, rtol=2e-2)  # fp16 weights

    model.save(tmp_path / "moved", checkpoint_dir=str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="the BERT checkpoint this model was trained on, .*gone, is not there"):
        NerModel.load(tmp_path / "moved")
    assert NerModel.load(tmp_path / "moved", checkpoint_dir=minilm_dir).config.checkpoint_dir == str(minilm_dir)


def test_save_writes_each_piece_once_and_load_reads_the_old_layout(minilm_dir, tmp_path):
    """model.json holds the label and intent names (no labels.json / intents.json); a model
    saved in the older layout (labels.json, intents.json beside it) still loads with them."""
    import json

    from nertron.engine.data.vocab import LabelVocab

    model = _make(BertBiLSTMAttnCRFJoint, minilm_dir)
    intents = ["atis_airfare", "atis_flight", "atis_ground_service"][: model.config.intent_size]
    model.save(tmp_path / "new", LabelVocab(model.config.labels), intents=intents)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["head.safetensors", "model.json"]
    meta = json.loads((tmp_path / "new" / "model.json").read_text())
    assert meta["intents"] == intents and meta["config"]["labels"] == model.config.labels
    loaded = NerModel.load(tmp_path / "new")
    assert loaded.intents == intents and loaded.label_names == model.config.labels
    with pytest.raises(ValueError, match="intent names for intent_size"):
        model.save(tmp_path / "bad", intents=["one"])
    with pytest.raises(ValueError, match="are not the model's"):
        model.save(tmp_path / "bad", LabelVocab(["O", "B-X"]))

    # the older layout: labels.json beside model.json, intents.json written by `nertron train`
    old = tmp_path / "old"
    old.mkdir()
    (old / "head.safetensors").write_bytes((tmp_path / "new" / "head.safetensors").read_bytes())
    del meta["intents"]
    (old / "model.json").write_text(json.dumps(meta))
    LabelVocab(model.config.labels).save(old / "labels.json")
    (old / "intents.json").write_text(json.dumps(intents))
    legacy = NerModel.load(old)
    assert legacy.intents == intents and legacy.config == loaded.config

    # a config without label names: the vocab's are kept in model.json, the config stays as it was
    bare = BertBiLSTMCRF.create(len(LABELS), minilm_dir, enc_hidden_dim=32)
    bare.save(tmp_path / "bare", LabelVocab(LABELS))
    again = NerModel.load(tmp_path / "bare")
    assert again.config.labels is None and again.label_names == LabelVocab(LABELS).labels
    assert not list((tmp_path / "bare").glob(".*.tmp"))  # no temporary file left behind


@pytest.fixture(scope="module")
def saved_dir(minilm_dir, tmp_path_factory):
    """One small saved model, copied by each test that damages it."""
    directory = tmp_path_factory.mktemp("saved") / "model"
    _make(BertBiLSTMCRF, minilm_dir).save(directory)
    return directory


def _copy(saved_dir, tmp_path):
    import shutil

    return Path(shutil.copytree(saved_dir, tmp_path / "copy"))


@pytest.mark.parametrize("content, message", [
    (b"", r"head\.safetensors: not a readable safetensors file \(empty, truncated or corrupt"),
    (b"garbage, not safetensors" * 4, r"head\.safetensors: not a readable safetensors file"),
    ("truncated", r"head\.safetensors: not a readable safetensors file \(empty, truncated or corrupt"),
])
def test_damaged_head_file_is_one_clear_error(saved_dir, tmp_path, content, message):
    from nertron.engine.models import ModelFileError

    directory = _copy(saved_dir, tmp_path)
    head = directory / "head.safetensors"
    if content == "truncated":
        content = head.read_bytes()[:-100]
    head.write_bytes(content)
    with pytest.raises(ModelFileError, match=message) as info:
        NerModel.load(directory)
    assert str(head) in str(info.value) and "\n" not in str(info.value)


def test_model_json_errors_name_the_file_and_the_problem(saved_dir, tmp_path):
    import json

    from nertron.engine.models import ModelFileError

    directory = _copy(saved_dir, tmp_path)
    meta_file = directory / "model.json"
    meta = json.loads(meta_file.read_text())

    def fails(text, message):
        meta_file.write_text(text if isinstance(text, str) else json.dumps(text))
        with pytest.raises(ModelFileError, match=message) as info:
            NerModel.load(directory)
        assert str(meta_file) in str(info.value) and "\n" not in str(info.value)

    fails('{"class": "BertBiLSTMCRF",\n "config": {,}}', r"not valid JSON: .* at line 2, column 13")
    fails("", "not valid JSON: Expecting value at line 1, column 1")
    fails([meta], "expected a JSON object with 'class' and 'config', found a list")
    fails({k: v for k, v in meta.items() if k != "config"}, "the field 'config' is missing")
    fails({**meta, "surplus": 1}, "unknown field")
    fails({**meta, "config": [1]}, "'config' must be an object, found a list")
    config = meta["config"]
    fails({**meta, "config": {k: v for k, v in config.items() if k != "label_size"}}, "lacks the field.*'label_size'")
    fails({**meta, "config": {**config, "colour": "red"}}, "unknown config field.*'colour'")
    fails({**meta, "config": {**config, "enc_hidden_dim": "32"}}, "'enc_hidden_dim' must be an integer, found a string")
    fails({**meta, "config": {**config, "freeze": 1}}, "'freeze' must be true or false, found an integer")
    fails({**meta, "config": {**config, "labels": "O"}}, "'labels' must be a list of strings, found a string")
    fails({**meta, "config": {**config, "input_dropout": 3}}, "'input_dropout' must be a probability")
    fails({**meta, "config": {**config, "rnn_layers": 10**9}}, "'rnn_layers' must be between 1 and 64")
    fails({**meta, "class": 7}, "unknown model class 7")
    meta_file.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ModelFileError, match="model.json: not UTF-8 text"):
        NerModel.load(directory)
    # a config that does not fit the weights: named before anything is allocated
    fails({**meta, "config": {**config, "enc_hidden_dim": 1 << 20}}, r"head\.safetensors does not fit BertBiLSTMCRF")
    meta_file.write_text(json.dumps(meta))
    assert NerModel.load(directory).config.enc_hidden_dim == 32  # the original still loads
    (directory / "head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"head\.safetensors: missing"):
        NerModel.load(directory)
