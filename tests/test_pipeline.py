"""``nertron.pipeline`` against ``transformers.pipeline("token-classification")`` on the same
checkpoint: a ``BertForTokenClassification`` over the real MiniLM encoder with a seeded
9-label CoNLL head, saved with ``save_pretrained``; real CoNLL-2003 test sentences
(eng.testb), every aggregation strategy, ``stride`` windows, empty text; a loaded model
object; nertron CRF / NMT models; bad inputs."""
import json
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import read_conll  # noqa: E402

import nertron  # noqa: E402
from nertron.engine import pipeline as pipeline_module  # noqa: E402
from nertron.engine.hf_token_classification import TokenClassificationCheckpointError  # noqa: E402
from nertron.engine.tagger import DEFAULT_MODEL_DIR, Tagger  # noqa: E402

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
STRATEGIES = ["none", "simple", "first", "average", "max"]
# eng.testb is ASCII: accented words, non-Latin scripts, literal special tokens and odd spacing come from here.
EXTRA = [
    "José Manuel Barroso met François Hollande in Zürich , São Paulo and Kraków .",
    "Müller-Lüdenscheidt's café sold crème brûlée for 3,50 € on 1996-08-22 ( naïve résumé ) .",
    "北京 and 東京 are capitals ; ΣΊΣΥΦΟΣ wrote [UNK] and [SEP] inside the text .",
    "  leading and   inner   spaces\tand a tab  ",
    "x" * 150 + " Smith",  # a word longer than WordPiece's 100 characters: [UNK] over the whole word
]


@pytest.fixture(scope="module", autouse=True)
def quiet_transformers():
    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, minilm_dir):
    """(directory, model, tokenizer): MiniLM + a seeded head, O favoured as a trained NER head does.

    The head's weights are large enough (std 0.5) that token decisions are far from ties, so
    float rounding differences between the two encoders cannot flip an argmax."""
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification.from_pretrained(
        str(minilm_dir), num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)}).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 0.5)
        model.classifier.bias.zero_()
        model.classifier.bias[0] = 2.0
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    path = tmp_path_factory.mktemp("hf_ner")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


@pytest.fixture(scope="module")
def texts(data_dir):
    """The first 230 eng.testb sentences, the extra ones above and an empty string."""
    sentences = [" ".join(words) for words, _ in read_conll(data_dir / "conll2003" / "eng.testb", limit=230)]
    texts = sentences + EXTRA + [""]
    assert len(sentences) >= 200
    assert any(any(c.isdigit() for c in t) for t in sentences) and any("-" in t for t in sentences)
    assert any(c in t for t in sentences for c in ",.;:()\"'")
    return texts


@pytest.fixture(scope="module")
def long_text(data_dir):
    """Consecutive eng.testb sentences joined into one text of well over 512 sub-tokens."""
    text = " ".join(" ".join(words) for words, _ in read_conll(data_dir / "conll2003" / "eng.testb", limit=90)[30:])
    return text


@pytest.fixture(scope="module")
def hf_pipe(hf_model):
    return transformers.pipeline("token-classification", model=str(hf_model[0]), device=-1)


@pytest.fixture(scope="module")
def hf_results(hf_pipe, texts):
    """transformers' output for every strategy. Its model runs once per text (preprocess and
    forward, the pipeline's own stages); ``postprocess`` then aggregates for each strategy.
    test_staged_reference_equals_pipeline_call checks the staging against a plain call."""
    from transformers.pipelines.token_classification import AggregationStrategy

    outputs = []
    for text in texts:
        chunks = hf_pipe.preprocess(text, is_split_into_words=False)
        outputs.append([hf_pipe.forward(chunk) for chunk in chunks])
    return {strategy: [hf_pipe.postprocess(out, aggregation_strategy=AggregationStrategy(strategy)) for out in outputs]
            for strategy in STRATEGIES}


def assert_same(theirs, ours, where="output"):
    """Same structure, keys in the same order, same values and types; scores np.float32 within 1e-4."""
    if isinstance(theirs, list):
        assert isinstance(ours, list), where
        assert len(ours) == len(theirs), f"{where}: {len(ours)} items, transformers {len(theirs)}"
        for n, (a, b) in enumerate(zip(theirs, ours)):
            assert_same(a, b, f"{where}[{n}]")
        return
    assert list(ours) == list(theirs), f"{where}: keys {list(ours)} != {list(theirs)}"
    for key, value in theirs.items():
        if key == "score":
            assert type(ours[key]) is np.float32 and type(value) is np.float32, where
            assert abs(float(ours[key]) - float(value)) <= 1e-4, f"{where}: {ours} vs {value}"
        else:
            assert ours[key] == value and type(ours[key]) is type(value), f"{where}.{key}: {ours} vs {theirs}"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_output_as_transformers(hf_model, hf_results, texts, strategy):
    ner = nertron.pipeline("token-classification", model=str(hf_model[0]), aggregation_strategy=strategy,
                           device=-1, batch_size=16)
    ours = ner(texts)
    assert_same(hf_results[strategy], ours)
    assert sum(map(len, ours)) > len(texts)  # the head finds things: the comparison is not of empty lists
    assert ner("") == [] and ours[-1] == []
    for text, entities in zip(texts, ours):
        for entity in entities:
            assert 0 <= entity["start"] <= entity["end"] <= len(text)


def test_staged_reference_equals_pipeline_call(hf_model, hf_results, texts):
    """The staged reference above is what transformers.pipeline(...)(texts) returns (batched)."""
    theirs = transformers.pipeline("ner", model=str(hf_model[0]), device=-1, aggregation_strategy="simple")(
        texts[:60] + texts[-len(EXTRA) - 1:], batch_size=8)
    assert_same(theirs, hf_results["simple"][:60] + hf_results["simple"][-len(EXTRA) - 1:])


def test_ignore_labels_and_call_overrides(hf_model, hf_pipe, texts):
    ner = nertron.pipeline("ner", model=str(hf_model[0]), device=-1)
    few = texts[:20]
    for strategy, ignore in (("none", []), ("simple", ["O", "PER"]), ("first", ["MISC"])):
        theirs = hf_pipe(few, aggregation_strategy=strategy, ignore_labels=ignore)
        assert_same(theirs, ner(few, aggregation_strategy=strategy, ignore_labels=ignore))
    assert any(e["entity"] == "O" for r in ner(few, ignore_labels=[]) for e in r)
    # batch size changes the batching only
    assert_same(ner(few, aggregation_strategy="average"), ner(few, aggregation_strategy="average", batch_size=1))


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_stride_windows_long_text_as_transformers(hf_model, hf_pipe, long_text, texts, strategy):
    ner = nertron.pipeline("ner", model=str(hf_model[0]), device=-1, aggregation_strategy=strategy, stride=64)
    assert len(ner.tokenizer.encode([long_text], None)[0][0].overflowing) > 0  # > 512 sub-tokens
    inputs = [long_text, texts[3], ""]
    theirs = hf_pipe(inputs, aggregation_strategy=strategy, stride=64)
    ours = ner(inputs)
    assert_same(theirs, ours)
    assert ours[0][-1]["end"] > len(long_text) - 200  # the end of the text was tagged


def test_long_text_without_stride_is_truncated_as_transformers_with_a_warning(hf_model, hf_pipe, long_text,
                                                                                monkeypatch):
    ner = nertron.pipeline("ner", model=str(hf_model[0]), device=-1, aggregation_strategy="simple", batch_size=1)
    monkeypatch.setattr(pipeline_module, "CHUNK_BATCHES", 1)  # one text a chunk: the index is the input's
    with pytest.warns(UserWarning, match=r"item 1\) .*longer than model_max_length=512.*stride"):
        ours = ner(["short text", long_text])
    assert_same(hf_pipe(long_text, aggregation_strategy="simple"), ours[1])


def test_loaded_model_object_and_vocab_only_directory(hf_model, hf_results, texts, tmp_path, minilm_dir):
    path, model, tokenizer = hf_model
    few = texts[:40] + texts[-len(EXTRA) - 1:]
    expected = {s: hf_results[s][:40] + hf_results[s][-len(EXTRA) - 1:] for s in ("none", "max")}
    from_object = nertron.pipeline("ner", model=model, tokenizer=tokenizer, device=-1)
    for strategy in ("none", "max"):
        assert_same(expected[strategy], from_object(few, aggregation_strategy=strategy))
    # A checkpoint with vocab.txt (and tokenizer_config.json) but no tokenizer.json: WordPiece built as HF does.
    vocab_only = tmp_path / "vocab_only"
    shutil.copytree(path, vocab_only)
    (vocab_only / "tokenizer.json").unlink()
    shutil.copy(minilm_dir / "vocab.txt", vocab_only / "vocab.txt")
    assert_same(expected["none"], nertron.pipeline("ner", model=str(vocab_only), device=-1)(few))
    # a directory with a tokenizer given, as transformers.pipeline(model=dir, tokenizer=...) takes it
    assert_same(expected["max"], nertron.pipeline("ner", model=str(vocab_only), tokenizer=tokenizer, device=-1,
                                                  aggregation_strategy="max")(few))


def test_pytorch_model_bin_is_loaded_safely(hf_model, hf_results, texts, tmp_path, monkeypatch):
    """A checkpoint with pytorch_model.bin instead of model.safetensors: read with weights_only=True."""
    path, model, _ = hf_model
    target = tmp_path / "bin"
    shutil.copytree(path, target)
    (target / "model.safetensors").unlink()
    torch.save(model.state_dict(), target / "pytorch_model.bin")
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ner = nertron.pipeline("ner", model=str(target), device=-1, aggregation_strategy="average")
    assert calls == [True]
    assert_same(hf_results["average"][:20], ner(texts[:20]))


def test_iterables_stream_with_progress_on_stderr_only(hf_model, hf_results, texts, capsys, monkeypatch):
    ner = nertron.pipeline("ner", model=str(hf_model[0]), device=-1, aggregation_strategy="simple", batch_size=4)
    few = texts[:30]
    monkeypatch.setattr(pipeline_module, "CHUNK_BATCHES", 2)  # chunks of 8 texts: 4 of them
    expected = ner(few)
    assert_same(hf_results["simple"][:30], expected)
    assert capsys.readouterr().err == ""  # lists: no bar by default
    stream = ner(text for text in few)
    assert not isinstance(stream, list)
    assert list(stream) == expected
    captured = capsys.readouterr()
    assert captured.out == "" and "nertron.pipeline" in captured.err and "tokens/s" in captured.err
    assert list(ner(iter(few), progress=False)) == expected
    assert capsys.readouterr().err == ""
    ner(few, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and f"{len(few)}/{len(few)}" in captured.err
    assert_same(expected[0], ner(few[0]))  # another batching: equal to float rounding
    assert_same(expected[:2], ner(tuple(few[:2])))


def test_iterable_error_names_the_item_after_earlier_results(hf_model, texts):
    ner = nertron.pipeline("ner", model=str(hf_model[0]), device=-1, progress=False)
    results = []
    with pytest.raises(TypeError, match="item 3 is int"):
        for result in ner(iter(texts[:3] + [7] + texts[3:5])):
            results.append(result)
    assert results == ner(texts[:3])


def test_device_and_dtype_semantics(hf_model):
    path = str(hf_model[0])
    assert nertron.pipeline("ner", model=path, device=-1).device == torch.device("cpu")
    assert nertron.pipeline("ner", model=path, device="cpu", dtype="fp32").dtype == torch.float32
    if not torch.cuda.is_available():
        assert nertron.pipeline("ner", model=path).device == torch.device("cpu")
        for device in (0, "cuda:0"):
            with pytest.raises(ValueError, match="CUDA"):
                nertron.pipeline("ner", model=path, device=device)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        nertron.pipeline("ner", model=path, device=-1, dtype="bf16")


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and text
    return text


def test_bad_checkpoints_give_one_clear_line(hf_model, tmp_path):
    path = hf_model[0]

    def variant(name, edit_config=None, drop=()):
        target = tmp_path / name
        shutil.copytree(path, target)
        if edit_config:
            config = json.loads((target / "config.json").read_text())
            edit_config(config)
            (target / "config.json").write_text(json.dumps(config))
        for file in drop:
            (target / file).unlink()
        return str(target)

    no_labels = variant("no_labels", lambda c: (c.pop("id2label"), c.pop("label2id")))
    with pytest.raises(ValueError, match="no id2label") as err:
        nertron.pipeline("ner", model=no_labels)
    one_line(err)

    def roberta(config):
        config.update(model_type="roberta", architectures=["RobertaForTokenClassification"])
    supported = "RobertaForTokenClassification is not supported.*BertForTokenClassification"
    with pytest.raises(ValueError, match=supported) as err:
        nertron.pipeline("ner", model=variant("roberta", roberta))
    one_line(err)

    with pytest.raises(FileNotFoundError, match="no tokenizer in .*tokenizer.json and vocab.txt") as err:
        nertron.pipeline("ner", model=variant("no_tokenizer", drop=("tokenizer.json",)))
    one_line(err)
    with pytest.raises(FileNotFoundError, match="no weights file") as err:
        nertron.pipeline("ner", model=variant("no_weights", drop=("model.safetensors",)))
    one_line(err)
    with pytest.raises(TokenClassificationCheckpointError, match="classifier.weight has shape") as err:
        nertron.pipeline("ner", model=variant("few_labels", lambda c: c.update(
            id2label={"0": "O", "1": "B-PER"}, label2id={"O": 0, "B-PER": 1})))
    one_line(err)
    with pytest.raises(FileNotFoundError, match="no model at"):
        nertron.pipeline("ner", model=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no model in"):
        nertron.pipeline("ner", model=str(tmp_path))


def test_bad_arguments_and_inputs(hf_model):
    path = str(hf_model[0])
    with pytest.raises(ValueError, match="unsupported task 'summarization'"):
        nertron.pipeline("summarization", model=path)
    with pytest.raises(ValueError, match="unknown aggregation_strategy 'longest'"):
        nertron.pipeline("ner", model=path, aggregation_strategy="longest")
    with pytest.raises(ValueError, match="`stride` was provided .*aggregation_strategy=\"none\""):
        nertron.pipeline("ner", model=path, stride=16)
    ner = nertron.pipeline("ner", model=path, device=-1)
    for stride in (512, 510):
        with pytest.raises(ValueError, match="stride"):
            ner("text", aggregation_strategy="simple", stride=stride)
    with pytest.raises(ValueError, match="At least one input is required"):
        ner([])
    with pytest.raises(TypeError, match="item 1 is bytes"):
        ner(["fine", b"bytes"])
    with pytest.raises(ValueError, match="item 0 is not valid Unicode"):
        ner("\ud800")
    with pytest.raises(TypeError, match="not a dict"):
        ner({"a": 1})
    with pytest.raises(TypeError, match="not int"):
        ner(5)
    with pytest.raises(ValueError, match="a BertModel model object is not supported"):
        nertron.pipeline("ner", model=hf_model[1].bert, tokenizer=hf_model[2])
    with pytest.raises(ValueError, match="needs its tokenizer"):
        nertron.pipeline("ner", model=hf_model[1])
    with pytest.raises(ValueError, match="tokenizer= is for Hugging Face models"):
        nertron.pipeline("ner", model=str(DEFAULT_MODEL_DIR), tokenizer=hf_model[2])


# --- nertron models ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crf_tagger():
    return Tagger.load(DEFAULT_MODEL_DIR, device="cpu")


def check_shapes(text, strategy, results):
    for d in results:
        keys = ["entity", "score", "index", "word", "start", "end"] if strategy == "none" else \
            ["entity_group", "score", "word", "start", "end"]
        assert list(d) == keys
        assert type(d["score"]) is np.float32 and 0.0 < d["score"] <= 1.0
        assert text[d["start"]:d["end"]] == d["word"]


def test_nertron_crf_model_directory(crf_tagger, texts):
    few = texts[:40] + EXTRA[:2] + [""]
    grouped = nertron.pipeline("ner", model=str(DEFAULT_MODEL_DIR), device=-1, aggregation_strategy="simple")
    words = nertron.pipeline("ner", model=str(DEFAULT_MODEL_DIR), device=-1)
    entities = crf_tagger.tag(few)
    ours, per_word = grouped(few), words(few)
    assert sum(map(len, ours)) > 20
    singles = 0
    for text, expected, got, tagged in zip(few, entities, ours, per_word):
        check_shapes(text, "simple", got)
        check_shapes(text, "none", tagged)
        # grouped: the Tagger's entities, score = the exact CRF span probability (Entity.score)
        assert [(d["entity_group"], d["word"], d["start"], d["end"]) for d in got] == \
            [(e.label, e.text, e.start, e.end) for e in expected]
        assert [d["score"] for d in got] == [np.float32(e.score) for e in expected]
        # none: every non-O word with its CRF marginal; the entities are made of those words
        for entity in expected:
            inside = [d for d in tagged if entity.start <= d["start"] and d["end"] <= entity.end]
            assert inside and inside[0]["entity"] == f"B-{entity.label}"
            assert all(d["entity"] == f"I-{entity.label}" for d in inside[1:])
            if len(inside) == 1:  # a one-word entity: span probability = that word's marginal
                singles += 1
                assert inside[0]["score"] == pytest.approx(entity.score, rel=1e-4)
        assert [d["index"] for d in tagged] == sorted(d["index"] for d in tagged)
    assert singles > 5
    # every grouping strategy gives the Viterbi entities (other batches: scores equal to rounding)
    assert_same(ours[:10], grouped(few[:10], aggregation_strategy="max"))
    assert_same(ours[:10], nertron.pipeline("ner", model=crf_tagger, aggregation_strategy="first")(few[:10]))


def test_nertron_nmt_model(crf_tagger, texts):
    from test_tagger import nmt_tagger

    nmt = nmt_tagger(crf_tagger)
    few = texts[:12]
    grouped = nertron.pipeline("ner", model=nmt, aggregation_strategy="simple")(few)
    per_word = nertron.pipeline("ner", model=nmt, ignore_labels=[])(few)
    assert sum(map(len, grouped)) > 0
    for text, got, tagged, entities in zip(few, grouped, per_word, nmt.tag(few)):
        check_shapes(text, "simple", got)
        check_shapes(text, "none", tagged)
        assert [d["score"] for d in got] == [np.float32(e.score) for e in entities]
        for entity in entities:  # NMT: the entity's score is the product of its words' probabilities
            inside = [d["score"] for d in tagged if entity.start <= d["start"] and d["end"] <= entity.end]
            assert float(np.prod(inside, dtype=np.float64)) == pytest.approx(entity.score, rel=1e-4)


def test_default_model_when_none():
    ner = nertron.pipeline(aggregation_strategy="simple", device=-1)
    result = ner("Angela Merkel met Emmanuel Macron in Paris .")
    assert [d["entity_group"] for d in result] == ["PER", "PER", "LOC"]
    assert "pipeline" in nertron.__all__ and sys.modules.get("nertron.engine.pipeline") is not None



def test_fused_encoder_path_gives_the_same_entities(hf_model, tmp_path, texts):
    """The path CUDA runs, nertron's fused Triton encoder (here in Triton's interpreter on CPU),
    gives transformers' entities too: a small random BERT (2 layers, hidden 64, head dim 16)
    with MiniLM's tokenizer keeps the interpreter quick."""
    config = transformers.BertConfig(vocab_size=hf_model[2].vocab_size, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=96, id2label=dict(enumerate(LABELS)),
                                     label2id={label: i for i, label in enumerate(LABELS)})
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 2.0)
    model.save_pretrained(tmp_path)
    hf_model[2].save_pretrained(tmp_path)
    few = texts[:6] + [""]
    theirs = transformers.pipeline("ner", model=str(tmp_path), device=-1, aggregation_strategy="max")(few)
    ner = nertron.pipeline("ner", model=str(tmp_path), device=-1, aggregation_strategy="max")
    assert_same(theirs, ner(few))
    ner.model.bert.backend = "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # backend="triton" warns when it falls back to the reference
        assert_same(theirs, ner(few))
    assert sum(map(len, theirs)) > 10
