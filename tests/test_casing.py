"""Casing features (nertron/engine/casing.py) for the uncased MiniLM encoder: word shapes and
character ids computed from the original words (never the lower-cased sub-tokens), collated
by the one batching path, read by every head, saved and reloaded, equal on the cached and the
uncased paths, and the frozen BERT kept in eval mode while the head trains."""
import json

import pytest
import torch

from nertron.engine import batching
from nertron.engine.casing import (
    CHAR_BUCKETS,
    MAX_CHARS,
    NUM_SHAPE_IDS,
    SHAPES,
    casing_tensors,
    char_id,
    shape_id,
    word_shape,
)
from nertron.engine.data.loader import NerData
from nertron.engine.data.readers import Sentence
from nertron.engine.learner import NerLearner
from nertron.engine.models import MODEL_CLASSES, BertBiLSTMAttnCRF, BertBiLSTMCRF, ModelFileError, NerModel
from nertron.engine.tokenizer import WordPieceTokenizer

LABELS = ["<pad>", "O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SMALL = dict(labels=LABELS, enc_hidden_dim=16, num_heads=2, key_dim=8, val_dim=8, dec_embedding_dim=8,
             dec_hidden_dim=16, shape_dim=4, char_dim=8, char_filters=6)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.mark.parametrize("word, shape", [
    ("apple", "lower"), ("Apple", "title"), ("A", "title"), ("USA", "upper"), ("U.S.", "upper"),
    ("iPhone", "mixed"), ("McDonald", "mixed"), ("1996", "number"), ("3.5", "number"), ("12-10", "number"),
    ("F16", "alnum"), ("1st", "alnum"), (",", "punct"), ("--", "punct"), ("«", "punct"), ("$", "other"),
    ("中国", "other"), ("москва", "lower"), ("Москва", "title"), ("МВД", "upper"), ("Élysée", "title"),
])
def test_word_shape(word, shape):
    assert word_shape(word) == shape
    assert shape_id(word, False) == 1 + 2 * SHAPES.index(shape)
    assert shape_id(word, True) == shape_id(word, False) + 1
    assert 1 <= shape_id(word, True) < NUM_SHAPE_IDS


def test_char_ids_keep_ascii_latin_and_cyrillic_apart():
    code_points = list(range(0x20, 0x7F)) + list(range(0xA0, 0x250)) + list(range(0x370, 0x530))
    ids = [char_id(chr(c)) for c in code_points]
    assert len(set(ids)) == len(ids) and min(ids) >= 1 and max(ids) < CHAR_BUCKETS


def test_shapes_come_from_the_original_words_not_the_lowercased_subtokens(tokenizer):
    """The uncased tokenizer gives "Paris" and "PARIS" the same sub-tokens; the casing inputs differ."""
    words = [["Paris", "is", "in", "France", "."], ["PARIS", "IS", "IN", "FRANCE", "."], ["paris", "is"]]
    windows = [w for _, _, w in batching.split_windows(tokenizer, batching.encode(tokenizer, words, words=True))]
    assert windows[0].input_ids == windows[1].input_ids  # BERT cannot tell them apart
    batch = batching.collate(tokenizer, windows, casing="chars")
    plain = batching.collate(tokenizer, windows)
    assert "word_shapes" not in plain and "word_chars" not in plain
    for key in plain:
        assert torch.equal(batch[key], plain[key])  # casing only adds inputs
    expected = [[shape_id(word, position == 0) for position, word in enumerate(row)] for row in words]
    assert batch["word_shapes"].tolist() == [row + [0] * (5 - len(row)) for row in expected]
    assert batch["word_shapes"].shape == batch["word_mask"].shape
    chars = batch["word_chars"]
    assert chars.shape == (3, 5, 6)  # the longest word, "France" / "FRANCE"
    assert chars[0, 0, :5].tolist() == [char_id(c) for c in "Paris"] and chars[0, 0, 5] == 0
    assert chars[1, 0, :5].tolist() == [char_id(c) for c in "PARIS"]
    assert (chars[2, 2:] == 0).all() and (batch["word_shapes"][2, 2:] == 0).all()  # padding words
    assert "word_chars" not in batching.collate(tokenizer, windows, casing="shape")
    with pytest.raises(ValueError, match="casing must be one of"):
        batching.collate(tokenizer, windows, casing="Shape")


def test_text_input_and_windows(tokenizer):
    """Text keeps its case in the words the tokenizer splits off; only a window that starts its
    input marks its first word as the first; long words keep their first MAX_CHARS characters."""
    pieces = batching.encode(tokenizer, ["Angela Merkel met Macron in PARIS."], words=False)
    (window,) = [w for _, _, w in batching.split_windows(tokenizer, pieces)]
    shapes = casing_tensors([window], "shape")["word_shapes"][0].tolist()
    assert shapes == [shape_id(w, i == 0) for i, w in enumerate(["Angela", "Merkel", "met", "Macron", "in", "PARIS", "."])]
    short = WordPieceTokenizer.from_pretrained(tokenizer.source, max_length=16)
    long_words = ["Word"] * 20 + ["Supercalifragilisticexpialidocious"]
    windows = [w for _, _, w in batching.split_windows(short, batching.encode(short, [long_words], words=True))]
    assert len(windows) > 1 and windows[1].word_index > 0
    out = casing_tensors(windows, "chars")
    assert out["word_shapes"][0, 0] == shape_id("Word", True)
    assert out["word_shapes"][1, 0] == shape_id("Word", False)  # not the input's first word
    last = windows[-1].words.index("Supercalifragilisticexpialidocious")
    assert out["word_chars"].shape[-1] == MAX_CHARS
    assert out["word_chars"][-1, last].tolist() == [char_id(c) for c in long_words[-1][:MAX_CHARS]]


def test_char_ids_of_any_script_equal_char_id(tokenizer):
    """The vectorised character ids equal ``char_id`` per character, beyond the BMP too."""
    words = [["Zürich", "😀ok", "МВД", "x"], ["中国", "naïve"]]
    windows = [w for _, _, w in batching.split_windows(tokenizer, batching.encode(tokenizer, words, words=True))]
    assert [w.words for w in windows] == words
    grid = casing_tensors(windows, "chars")["word_chars"]
    for row, sentence in enumerate(words):
        for column, word in enumerate(sentence):
            assert grid[row, column, : len(word)].tolist() == [char_id(c) for c in word]
            assert (grid[row, column, len(word):] == 0).all()
    assert casing_tensors([], "chars")["word_chars"].shape == (0, 0, 1)


@pytest.fixture(scope="module")
def sentences(conll_dev):
    return [Sentence(words, tags) for words, tags in conll_dev if 2 <= len(words) <= 25][:24]


@pytest.fixture(scope="module")
def data(sentences, tokenizer):
    return NerData.from_sentences(sentences, sentences, tokenizer, source_scheme="IOB1", tag_scheme="IOB2",
                                  batch_tokens=300)


@pytest.mark.parametrize("casing", ["shape", "chars"])
@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_every_head_trains_saves_and_reloads_with_casing(name, casing, minilm_dir, data, tmp_path):
    cls = MODEL_CLASSES[name]
    torch.manual_seed(0)
    options = dict(SMALL, intent_size=3) if cls.joint else dict(SMALL)
    model = cls.create(len(LABELS), minilm_dir, casing=casing, **options)
    data.casing = casing
    batch, _ = data.batches("train")[0]
    if cls.joint:
        batch["intents"] = torch.arange(batch["input_ids"].shape[0]) % 3
    model.train()
    model(batch, decode=False).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "casing.shape.weight" in trained
    assert ("casing.conv.weight" in trained and "casing.chars.weight" in trained) == (casing == "chars")
    model.eval()
    with torch.no_grad():
        first = model(batch)
    model.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["config"]["casing"] == casing and meta["config"]["shape_dim"] == 4
    loaded = NerModel.load(tmp_path / "model")
    assert loaded.config == model.config
    with torch.no_grad():
        second = loaded(batch)
    torch.testing.assert_close(first.emissions, second.emissions, atol=0, rtol=0)
    # the casing inputs change the output: the head reads them
    other = dict(batch, word_shapes=torch.where(batch["word_mask"], 1, 0))
    with torch.no_grad():
        assert not torch.equal(model(other).emissions, first.emissions)


def test_char_cnn_sees_each_word_alone(minilm_dir, tokenizer):
    """A word's casing vector depends on its own characters only (not on the batch's padding or
    its neighbours); a padding word's is 0."""
    model = BertBiLSTMCRF.create(len(LABELS), minilm_dir, casing="chars", **SMALL).eval()
    words = [["Paris", "x"], ["Supercalifragilistic", "Paris", "is", "far"]]
    windows = [w for _, _, w in batching.split_windows(tokenizer, batching.encode(tokenizer, words, words=True))]
    with torch.no_grad():
        both = model.casing(casing_tensors(windows, "chars"))  # shape: (2, 4, 4 + 6)
        alone = model.casing(casing_tensors(windows[:1], "chars"))  # shape: (1, 2, 4 + 6)
    chars = slice(SMALL["shape_dim"], None)
    torch.testing.assert_close(both[0, :2], alone[0])
    torch.testing.assert_close(both[1, 1, chars], alone[0, 0, chars])  # "Paris" as a second word
    assert (both[0, 2:] == 0).all() and both[1].abs().sum(-1).gt(0).all()


def test_create_turns_casing_on_for_a_lowercasing_tokenizer(minilm_dir, tmp_path):
    from nertron.engine.models import DEFAULT_CASING

    assert BertBiLSTMCRF.create(len(LABELS), minilm_dir, **SMALL).config.casing == DEFAULT_CASING != "none"
    assert BertBiLSTMCRF.create(len(LABELS), minilm_dir, casing="none", **SMALL).config.casing == "none"
    cased = tmp_path / "cased"
    cased.mkdir()
    for name in ("config.json", "vocab.txt", "model.safetensors"):
        (cased / name).symlink_to(minilm_dir / name)
    (cased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert BertBiLSTMCRF.create(len(LABELS), cased, **SMALL).config.casing == "none"
    with pytest.raises(ValueError, match="casing must be one of"):
        BertBiLSTMCRF.create(len(LABELS), minilm_dir, casing="upper", **SMALL)


def test_model_without_casing_inputs_says_so(minilm_dir, data):
    model = BertBiLSTMCRF.create(len(LABELS), minilm_dir, casing="chars", **SMALL).eval()
    data.casing = "shape"
    batch, _ = data.batches("valid")[0]
    with pytest.raises(ValueError, match=r"lacks word_chars; collate it with batching.collate\(..., casing=.chars.\)"):
        model(batch)


def test_old_model_json_without_casing_loads_with_casing_off(minilm_dir, tmp_path):
    model = BertBiLSTMCRF.create(len(LABELS), minilm_dir, casing="none", **SMALL)
    model.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "model.json").read_text())
    for key in ("casing", "shape_dim", "char_dim", "char_filters"):
        del meta["config"][key]  # as written before the option existed
    (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
    loaded = NerModel.load(tmp_path / "old")
    assert loaded.config.casing == "none" and loaded.casing is None
    meta["config"]["casing"] = "yes"
    (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="casing must be one of"):
        NerModel.load(tmp_path / "old")
    meta["config"]["casing"] = True
    (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="'casing' must be a string"):
        NerModel.load(tmp_path / "old")


def test_cached_path_equals_uncached(minilm_dir, sentences, tokenizer, tmp_path):
    """The learner's cached BERT states + per-batch casing inputs give the predictions, scores
    and training losses of running BERT on every batch."""
    results = []
    for cache in (True, False):
        torch.manual_seed(0)
        data = NerData.from_sentences(sentences, sentences, tokenizer, source_scheme="IOB1", tag_scheme="IOB2",
                                      batch_tokens=300)
        model = BertBiLSTMAttnCRF.create(data.vocab.num_labels, minilm_dir, casing="chars",
                                         **dict(SMALL, labels=data.vocab.labels, input_dropout=0.0, attn_dropout=0.0))
        learner = NerLearner(model, data, tmp_path / f"cache-{cache}", cache_features=cache, progress=False)
        assert data.casing == "chars"
        history = learner.fit(2)
        results.append(([round(r["train_loss"], 4) for r in history], learner.predict("valid")[0]))
        assert bool(learner._features) == cache
    assert results[0] == results[1]


def test_frozen_bert_stays_in_eval_mode_while_training(minilm_dir, data):
    """With cache_features=False the head trains on BERT run per batch: model.train() must not
    turn the frozen BERT's dropout on (its features would be noisy); a fine-tuned BERT trains."""
    model = BertBiLSTMCRF.create(len(LABELS), minilm_dir, casing="none", **SMALL)
    assert model.features.bert.config.hidden_dropout_prob > 0  # there is dropout to turn on
    data.casing = "none"
    batch, _ = data.batches("valid")[0]
    model.train()
    assert model.training and model.lstm.training and not model.features.bert.training
    assert not any(m.training for m in model.features.bert.modules())
    with torch.no_grad():
        first, second = model.features(batch), model.features(batch)
        model.eval()
        evaluated = model.features(batch)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(first, evaluated, atol=1e-5, rtol=1e-5)
    tuned = BertBiLSTMCRF.create(len(LABELS), minilm_dir, casing="none", freeze=False, **SMALL).train()
    assert tuned.features.bert.training


def test_frozen_bert_in_eval_mode_during_uncached_fit(minilm_dir, sentences, tokenizer, tmp_path, monkeypatch):
    """The learner's own loop with cache_features=False: every BERT call in training sees eval mode."""
    data = NerData.from_sentences(sentences, sentences, tokenizer, source_scheme="IOB1", tag_scheme="IOB2",
                                  batch_tokens=300)
    model = BertBiLSTMCRF.create(data.vocab.num_labels, minilm_dir, casing="shape",
                                 **dict(SMALL, labels=data.vocab.labels))
    modes = []
    original = type(model.features.bert).forward

    def spy(self, *args, **kwargs):
        modes.append(self.training)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model.features.bert), "forward", spy)
    NerLearner(model, data, tmp_path / "run", cache_features=False, progress=False).fit(1)
    assert modes and not any(modes)
