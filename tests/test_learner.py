"""NerData and NerLearner on real CoNLL-2003 / ATIS slices with the real MiniLM encoder.

The learning test trains a small model for a few hundred steps and requires the span F1 on
held-out dev sentences to rise far above chance: a real learning check, not a timing."""
import itertools
import json

import pytest
import torch

from nertron.engine.data.loader import NerData
from nertron.engine.data.readers import Sentence, read_atis, read_conll
from nertron.engine.data.vocab import LabelVocab
from nertron.engine.learner import TRAINER_STATE, NerLearner
from nertron.engine.models import BertBiLSTMAttnCRF, BertBiLSTMAttnCRFJoint, BertBiLSTMCRF, NerModel
from nertron.engine.tokenizer import WordPieceTokenizer


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def conll(data_dir, tokenizer):
    train = list(itertools.islice(read_conll(data_dir / "conll2003" / "eng.train"), 1000))
    valid = list(itertools.islice(read_conll(data_dir / "conll2003" / "eng.testa"), 300))
    return NerData.from_sentences(train, valid, tokenizer, source_scheme="IOB1", tag_scheme="IOB2", batch_tokens=400)


def test_batches_cover_every_example_once_and_are_deterministic(conll):
    examples = conll.examples("train")
    for epoch in (0, 1):
        batches = conll.batches("train", shuffle=True, epoch=epoch)
        seen = sorted(e.index for _, group in batches for e in group)
        assert seen == list(range(len(examples)))
        for batch, group in batches:
            assert batch["input_ids"].numel() <= 400 or len(group) == 1  # token budget
            assert batch["word_mask"].sum().item() == sum(len(e.word_starts) for e in group)
            assert (batch["labels"][batch["word_mask"]] >= 1).all()  # real words carry real labels (0 = <pad>)
            assert (batch["labels"][~batch["word_mask"]] == -100).all()
    first = [[e.index for e in g] for _, g in conll.batches("train", shuffle=True, epoch=0)]
    again = [[e.index for e in g] for _, g in conll.batches("train", shuffle=True, epoch=0)]
    other = [[e.index for e in g] for _, g in conll.batches("train", shuffle=True, epoch=1)]
    assert first == again and first != other


def test_word_index_points_at_first_subtokens(conll, tokenizer):
    batch, group = conll.batches("valid")[0]
    for row, example in enumerate(group):
        for w, start in enumerate(example.word_starts):
            position = batch["word_index"][row, w].item()
            assert position == start + 1  # [CLS] first
            assert batch["input_ids"][row, position].item() == example.input_ids[start]


def test_learning_on_conll_slice(conll, minilm_dir, tmp_path):
    """~200 optimizer steps of a BiLSTM-CRF head over frozen MiniLM: span F1 far above chance."""
    torch.manual_seed(0)
    model = BertBiLSTMCRF.create(conll.vocab.num_labels, minilm_dir, labels=conll.vocab.labels, enc_hidden_dim=64,
                                 input_dropout=0.2)
    learner = NerLearner(model, conll, tmp_path / "best", lr=5e-3, progress=False)
    history = learner.fit(4)
    steps = 4 * len(conll.batches("train", shuffle=True))
    assert steps >= 150
    f1 = [h["valid_span_f1"] for h in history]
    assert f1[0] >= 0.0 and max(f1) > 0.45, f1  # untrained: ~0; chance (random tags) is near 0 too
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # The best checkpoint and the log are on disk, and the saved model scores what the log says.
    log = [json.loads(line) for line in (tmp_path / "best" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    best = max(log, key=lambda r: r["valid_span_f1"])
    learner.model = NerModel.load(tmp_path / "best")
    assert learner.evaluate()["span_f1"] == pytest.approx(best["valid_span_f1"], abs=1e-9)

    # Resume: two more epochs continue from the trainer state (epoch counter, optimizer, best).
    resumed = NerLearner(BertBiLSTMCRF.create(conll.vocab.num_labels, minilm_dir, labels=conll.vocab.labels,
                                              enc_hidden_dim=64, input_dropout=0.2),
                         conll, tmp_path / "best", lr=5e-3, progress=False)
    more = resumed.fit(6, resume=True)
    assert [r["epoch"] for r in more] == [5, 6]
    assert resumed.best_metric >= best["valid_span_f1"]


def test_predict_restores_order_and_merges_long_sentences(conll, minilm_dir, tmp_path):
    """A sentence longer than the model's positions is windowed and merged: one tag per word."""
    torch.manual_seed(0)
    model = BertBiLSTMCRF.create(conll.vocab.num_labels, minilm_dir, labels=conll.vocab.labels, enc_hidden_dim=32)
    learner = NerLearner(model, conll, tmp_path, progress=False)
    sentences = [s.words for s in conll.sentences("valid")[:40]]
    long = list(itertools.chain.from_iterable(sentences))  # ~600 words, far over 512 sub-tokens
    tags, intents = learner.predict([sentences[3], long, sentences[0]])
    assert intents is None
    assert [len(t) for t in tags] == [len(sentences[3]), len(long), len(sentences[0])]
    assert len(conll.encode([long])) > 1  # it really was windowed
    assert all(t in conll.vocab.labels[1:] for sentence in tags for t in sentence)


def test_joint_model_on_atis(data_dir, tokenizer, minilm_dir, tmp_path):
    train = list(itertools.islice(read_atis(data_dir / "atis" / "atis.train.w-intent.iob"), 300))
    valid = list(itertools.islice(read_atis(data_dir / "atis" / "atis.test.w-intent.iob"), 100))
    valid = [s for s in valid if s.intent in {t.intent for t in train}
             and set(s.tags) <= {tag for t in train for tag in t.tags}]
    data = NerData.from_sentences(train, valid, tokenizer, batch_tokens=512)
    model = BertBiLSTMAttnCRFJoint.create(data.vocab.num_labels, minilm_dir, labels=data.vocab.labels,
                                          intent_size=len(data.intent_vocab), enc_hidden_dim=32, num_heads=2,
                                          key_dim=16, val_dim=16)
    learner = NerLearner(model, data, tmp_path, lr=5e-3, progress=False)
    history = learner.fit(2, target_metric="intent_accuracy")
    assert 0.0 <= history[-1]["valid_intent_accuracy"] <= 1.0 and "valid_intent_f1" in history[-1]
    tags, intents = learner.predict("valid")
    assert len(intents) == len(valid) and all(i in data.intent_vocab.names for i in intents)


def test_tagger_alone_on_data_with_intents(data_dir, tokenizer, minilm_dir, tmp_path):
    """A non-joint model trained on ATIS (whose sentences carry intents) saves without intents."""
    train = list(itertools.islice(read_atis(data_dir / "atis" / "atis.train.w-intent.iob"), 60))
    data = NerData.from_sentences(train, train, tokenizer, batch_tokens=512)
    assert data.intent_vocab is not None
    model = BertBiLSTMCRF.create(data.vocab.num_labels, minilm_dir, labels=data.vocab.labels, enc_hidden_dim=16)
    NerLearner(model, data, tmp_path / "run", progress=False).fit(1)
    assert NerModel.load(tmp_path / "run").intents is None


def test_fine_tuning_learning_rates_per_layer(conll, minilm_dir, tmp_path):
    """--fine-tune: the head at lr, BERT's top layer at bert_lr, each layer below at layer_decay
    times the one above, the embeddings lowest; a frozen BERT has no parameter group."""
    model = BertBiLSTMCRF.create(conll.vocab.num_labels, minilm_dir, labels=conll.vocab.labels, enc_hidden_dim=16,
                                 freeze=False)
    learner = NerLearner(model, conll, tmp_path / "tuned", lr=1e-3, bert_lr=1e-4, layer_decay=0.5, progress=False)
    learner._make_optimizer(10)
    lr_of = {id(p): group["lr"] for group in learner.optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    layers = model.features.bert.config.num_hidden_layers
    assert lr_of[id(named["lstm.lstm.weight_ih_l0"])] == 1e-3
    assert lr_of[id(named[f"features.bert.encoder.layer.{layers - 1}.output.dense.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(named["features.bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(1e-4 * 0.5 ** (layers - 1))
    assert lr_of[id(named["features.bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-4 * 0.5 ** layers)
    no_decay = {id(p) for group in learner.optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert id(named["features.bert.encoder.layer.0.output.dense.bias"]) in no_decay
    assert len(lr_of) == sum(p.requires_grad for p in model.parameters())
    frozen = NerLearner(BertBiLSTMCRF.create(conll.vocab.num_labels, minilm_dir, labels=conll.vocab.labels,
                                             enc_hidden_dim=16), conll, tmp_path / "frozen", bert_lr=1e-4, progress=False)
    frozen._make_optimizer(10)
    assert [g["lr"] for g in frozen.optimizer.param_groups] == [1e-3, 1e-3]  # decayed weights, then the rest


def test_errors(conll, minilm_dir, tokenizer, tmp_path):
    model = BertBiLSTMCRF.create(5, minilm_dir)
    with pytest.raises(ValueError, match="predicts 5 labels but the data's label vocabulary has 10"):
        NerLearner(model, conll, tmp_path)
    train = [Sentence(["Paris"], ["B-LOC"])]
    with pytest.raises(ValueError, match="the valid set has labels the training set never shows: B-PER"):
        NerData.from_sentences(train, [Sentence(["Ann"], ["B-PER"])], tokenizer)
    with pytest.raises(ValueError, match="the train set is empty"):
        NerData.from_sentences([], None, tokenizer)
    with pytest.raises(ValueError, match="sentence 1 has no words"):
        NerData.from_sentences([Sentence(["a"], ["O"]), Sentence([], [])], None, tokenizer)
    learner = NerLearner(BertBiLSTMCRF.create(conll.vocab.num_labels, minilm_dir, labels=conll.vocab.labels),
                         conll, tmp_path / "fresh", progress=False)
    with pytest.raises(FileNotFoundError, match=f"cannot resume: no {TRAINER_STATE}"):
        learner.fit(1, resume=True)
    with pytest.raises(KeyError, match="target_metric 'accuracy' is not one of"):
        learner.fit(1, target_metric="accuracy")


def test_feature_cache_on_disk_is_shared_and_matches_the_encoder(data_dir, tokenizer, minilm_dir, tmp_path):
    """Cached states give the same predictions as running BERT; a second run (another head) on the
    same data loads them from ``cache_dir`` instead of running BERT; other data gets another file."""
    train = list(itertools.islice(read_conll(data_dir / "conll2003" / "eng.train"), 60))
    valid = list(itertools.islice(read_conll(data_dir / "conll2003" / "eng.testa"), 40))
    vocab = LabelVocab.from_labels(["O"] + [f"{p}-{t}" for p in "BI" for t in ("PER", "ORG", "LOC", "MISC")])
    data = NerData.from_sentences(train, valid, tokenizer, source_scheme="IOB1", vocab=vocab, batch_tokens=512)
    torch.manual_seed(0)
    model = BertBiLSTMCRF.create(data.vocab.num_labels, minilm_dir, labels=data.vocab.labels, enc_hidden_dim=32)
    learner = NerLearner(model, data, tmp_path / "a", cache_dir=tmp_path / "cache", progress=False)
    learner.fit(1)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and files[0].startswith("train-") and files[1].startswith("valid-")
    cached = learner.predict("valid")[0]
    uncached = learner.predict([s.words for s in data.sentences("valid")])[0]  # word lists: BERT runs
    assert cached == uncached

    other = NerLearner(BertBiLSTMAttnCRF.create(data.vocab.num_labels, minilm_dir, labels=data.vocab.labels,
                                                enc_hidden_dim=32, num_heads=2, key_dim=16, val_dim=16),
                       data, tmp_path / "b", cache_dir=tmp_path / "cache", progress=False)

    def no_bert(*args, **kwargs):
        raise AssertionError("BERT ran although its states were cached on disk")

    other.model.features.hidden_states = no_bert
    other.fit(1)
    assert torch.equal(other._features["train"][0], learner._features["train"][0])

    shorter = NerData.from_sentences(train[:30], valid, tokenizer, source_scheme="IOB1", vocab=vocab, batch_tokens=512)
    NerLearner(BertBiLSTMCRF.create(shorter.vocab.num_labels, minilm_dir, labels=shorter.vocab.labels,
                                    enc_hidden_dim=32), shorter, tmp_path / "c", cache_dir=tmp_path / "cache",
               progress=False).fit(1)
    assert len(list((tmp_path / "cache").iterdir())) == 3  # a new train file; the same valid file


def test_trainer_state_holds_only_what_is_trained_and_resumes(small, minilm_dir, tmp_path):
    """trainer_state.pt keeps the trained weights, optimizer, schedule and epoch, not the frozen
    BERT (its checkpoint holds it); resuming from it restores the head exactly."""
    data = small
    torch.manual_seed(0)
    model = BertBiLSTMCRF.create(data.vocab.num_labels, minilm_dir, labels=data.vocab.labels, enc_hidden_dim=32)
    learner = NerLearner(model, data, tmp_path, progress=False)
    learner.fit(1)
    state = torch.load(tmp_path / TRAINER_STATE, weights_only=True)
    assert set(state) == {"epoch", "best_metric", "optimizer", "scheduler", "model"}
    assert state["epoch"] == 1
    assert state["model"] and not any(k.startswith("features.bert.") for k in state["model"])
    assert set(state["model"]) == set(model.trained_state_dict())
    assert (tmp_path / TRAINER_STATE).stat().st_size < 5_000_000  # the 90 MB encoder is not in it
    assert not list(tmp_path.glob(".*.tmp"))

    torch.manual_seed(1)
    fresh = BertBiLSTMCRF.create(data.vocab.num_labels, minilm_dir, labels=data.vocab.labels, enc_hidden_dim=32)
    resumed = NerLearner(fresh, data, tmp_path, progress=False)
    assert resumed.fit(1, resume=True) == []  # already at epoch 1: nothing to train, state restored
    assert resumed.epoch == 1 and resumed.best_metric == learner.best_metric
    for key, value in model.trained_state_dict().items():
        assert torch.equal(fresh.state_dict()[key].cpu(), value.cpu()), key
    assert [r["epoch"] for r in resumed.fit(2, resume=False)] == [2]


@pytest.fixture(scope="module")
def small(data_dir, tokenizer):
    train = list(itertools.islice(read_conll(data_dir / "conll2003" / "eng.train"), 40))
    valid = list(itertools.islice(read_conll(data_dir / "conll2003" / "eng.testa"), 20))
    vocab = LabelVocab.from_labels(["O"] + [f"{p}-{t}" for p in "BI" for t in ("PER", "ORG", "LOC", "MISC")])
    return NerData.from_sentences(train, valid, tokenizer, source_scheme="IOB1", vocab=vocab, batch_tokens=512)


def _small_learner(small, minilm_dir, directory, **kwargs):
    torch.manual_seed(0)
    model = BertBiLSTMCRF.create(small.vocab.num_labels, minilm_dir, labels=small.vocab.labels, enc_hidden_dim=16)
    return NerLearner(model, small, directory, progress=False, **kwargs)


def test_refuses_a_trained_directory_unless_resume_or_overwrite(small, minilm_dir, tmp_path):
    from nertron.engine.learner import OutputNotEmptyError

    out = tmp_path / "out"
    _small_learner(small, minilm_dir, out).fit(2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputNotEmptyError, match=f"{out} already holds .*resume=True .*overwrite=True") as info:
        _small_learner(small, minilm_dir, out).fit(1)
    assert isinstance(info.value, ValueError)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    with pytest.raises(ValueError, match="choose one"):
        _small_learner(small, minilm_dir, out).fit(1, resume=True, overwrite=True)

    # overwrite: a crash in the first epoch leaves the old model whole ...
    crashing = _small_learner(small, minilm_dir, out)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    crashing._train_epoch = crash
    with pytest.raises(KeyboardInterrupt):
        crashing.fit(1, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # ... and a finished one replaces it, with a fresh log
    _small_learner(small, minilm_dir, out).fit(1, overwrite=True)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]
    assert torch.load(out / TRAINER_STATE, weights_only=True)["epoch"] == 1
    NerModel.load(out)
    assert not list(out.glob(".*.tmp"))


def test_interrupted_saves_keep_the_previous_files_and_a_readable_log(small, minilm_dir, tmp_path, monkeypatch):
    import nertron.engine.learner as learner_module

    learner = _small_learner(small, minilm_dir, tmp_path)
    learner.fit(1)
    state_before = (tmp_path / TRAINER_STATE).read_bytes()
    real_save = torch.save

    def interrupted_save(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(learner_module.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        learner.fit(2)
    monkeypatch.setattr(learner_module.torch, "save", real_save)
    assert (tmp_path / TRAINER_STATE).read_bytes() == state_before
    assert torch.load(tmp_path / TRAINER_STATE, weights_only=True)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))

    # a log line a crash cut short (an older, appending writer) does not break the resumed log
    with (tmp_path / "train_log.jsonl").open("a") as log:
        log.write('{"epoch": 2, "train_lo')
    resumed = _small_learner(small, minilm_dir, tmp_path)
    resumed.fit(2, resume=True)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # epoch 2 logged once: the interrupted run's line is gone


def test_corrupt_trainer_state_is_one_clear_error(small, minilm_dir, tmp_path):
    from nertron.engine.models import ModelFileError

    learner = _small_learner(small, minilm_dir, tmp_path)
    learner.fit(1)
    state_file = tmp_path / TRAINER_STATE
    good = state_file.read_bytes()

    import argparse

    cases = {
        "truncated": (good[: len(good) // 2], "it is truncated or corrupt"),
        "empty": (b"", "the file is empty"),
        "garbage": (b"not a pytorch file at all" * 8, "it is not a PyTorch file"),
    }
    for name, (content, why) in cases.items():
        state_file.write_bytes(content)
        with pytest.raises(ModelFileError, match=f"cannot resume from {state_file}: {why}") as info:
            _small_learner(small, minilm_dir, tmp_path).fit(2, resume=True)
        assert "weights_only" not in str(info.value) and "\n" not in str(info.value), name
    torch.save({"epoch": 1, "payload": argparse.Namespace(code=1)}, state_file)
    with pytest.raises(ModelFileError, match="holds Python objects other than tensors") as info:
        _small_learner(small, minilm_dir, tmp_path).fit(2, resume=True)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    torch.save({"epoch": 1}, state_file)
    with pytest.raises(ModelFileError, match="it lacks best_metric, optimizer, scheduler, model"):
        _small_learner(small, minilm_dir, tmp_path).fit(2, resume=True)


def test_corrupt_feature_cache_is_computed_again(small, minilm_dir, tmp_path):
    cache = tmp_path / "cache"
    _small_learner(small, minilm_dir, tmp_path / "a", cache_dir=cache).fit(1)
    files = sorted(cache.iterdir())
    assert len(files) == 2 and not list(cache.glob(".*"))
    good = files[0].read_bytes()
    files[0].write_bytes(good[:100])
    _small_learner(small, minilm_dir, tmp_path / "b", cache_dir=cache).fit(1)
    assert files[0].read_bytes() == good  # recomputed and replaced whole
