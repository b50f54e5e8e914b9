"""The default model shipped in the package (nertron/resources/default_model): a
BertBiLSTMAttnCRF head trained on CoNLL-2003 over the installed MiniLM encoder. Checks its
files, the README's quick-start sentence, and its accuracy on real held-out CoNLL-2003
sentences (eng.testb), scored with the span metric against a from_spans round trip."""
import itertools
import json

import pytest
from safetensors import safe_open

from nertron import Tagger
from nertron.engine.checkpoint import DEFAULT_CHECKPOINT_PACKAGE
from nertron.engine.data.readers import read_conll
from nertron.engine.data.schemes import from_spans, iob1_to_iob2
from nertron.engine.metrics import span_scores
from nertron.engine.tagger import DEFAULT_MODEL_DIR


# The shipped model scores 0.936 on these 400 sentences (Tagger.load(device="cpu").tag_words,
# measured 2026-11-30); the bar leaves room for numerical differences, not for a worse model.
THRESHOLD_400 = 0.90


@pytest.fixture(scope="module")
def tagger():
    return Tagger.load(device="cpu")


def test_files_are_small_fp16_and_portable():
    names = sorted(p.name for p in DEFAULT_MODEL_DIR.iterdir())
    assert names == ["head.safetensors", "model.json", "provenance.json"]  # the labels are in model.json
    meta = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert meta["class"] == "BertBiLSTMAttnCRF"
    # the encoder is uncased: the head reads the casing of the original words
    assert meta["config"]["casing"] in ("shape", "chars") and meta["config"]["labels"][0] == "<pad>"
    assert meta["config"]["checkpoint_dir"] == DEFAULT_CHECKPOINT_PACKAGE  # found again at load, not a local path
    with safe_open(str(DEFAULT_MODEL_DIR / "head.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert not any(k.startswith("features.bert.") for k in f.keys())  # the encoder is not copied
    assert {str(d) for d in dtypes} == {"torch.float16"}
    assert (DEFAULT_MODEL_DIR / "head.safetensors").stat().st_size < 2 * 2**20


def test_quick_start_sentence(tagger):
    text = "Angela Merkel met Emmanuel Macron in Paris."
    found = [(e.label, e.text, e.start, e.end) for e in tagger.tag(text)]
    assert found == [("PER", "Angela Merkel", 0, 13), ("PER", "Emmanuel Macron", 18, 33), ("LOC", "Paris", 37, 42)]
    assert all(0.5 < e.score <= 1.0 for e in tagger.tag(text))


def test_accuracy_on_held_out_conll(tagger, data_dir):
    """Span F1 on the first 400 sentences of eng.testb (never seen in training or model selection)."""
    sentences = list(itertools.islice(read_conll(data_dir / "conll2003" / "eng.testb"), 400))
    gold = [iob1_to_iob2(s.tags) for s in sentences]
    entities = tagger.tag_words([s.words for s in sentences])
    predicted = [from_spans([(e.label, e.start, e.end) for e in found], len(s.words)) for s, found in
                 zip(sentences, entities)]
    scores = span_scores(gold, predicted)
    provenance = json.loads((DEFAULT_MODEL_DIR / "provenance.json").read_text())
    assert scores["f1"] > THRESHOLD_400, scores["f1"]  # the full test set gives provenance["test_span_f1"]
    assert provenance["test_span_f1"] >= 0.87 and provenance["chosen_by"].startswith("valid_span_f1")
