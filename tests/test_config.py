"""BertConfig from Google's bert_config.json and Hugging Face's config.json."""
import json

import pytest

from nertron import BertConfig
from nertron.engine.config import ConfigError

# Google's bert_config.json for BERT-Base, Uncased, exactly as released (no layer_norm_eps).
GOOGLE_BASE = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}


def _write(tmp_path, values, name="bert_config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(values) if not isinstance(values, str) else values)
    return path


def test_google_config(tmp_path):
    config = BertConfig.from_json_file(_write(tmp_path, GOOGLE_BASE))
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (768, 12, 64)
    assert config.layer_norm_eps == 1e-12  # Google's TF code hard-codes it
    assert config.extra == {}


def test_hugging_face_config_keeps_unknown_keys(minilm_dir, tmp_path):
    source = json.loads((minilm_dir / "config.json").read_text())
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 6, 12)
    assert config.extra["architectures"] == ["BertModel"] and "transformers_version" in config.extra
    config.to_json_file(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text()) == source
    assert BertConfig.from_json_file(tmp_path / "config.json") == config


@pytest.mark.parametrize("key", ["hidden_size", "vocab_size", "num_attention_heads", "type_vocab_size"])
def test_missing_key_names_key_and_file(tmp_path, key):
    values = {k: v for k, v in GOOGLE_BASE.items() if k != key}
    path = _write(tmp_path, values)
    with pytest.raises(ConfigError) as info:
        BertConfig.from_json_file(path)
    assert key in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "change, text",
    [
        ({"hidden_size": 770}, "not a multiple of num_attention_heads=12"),
        ({"num_hidden_layers": 0}, "'num_hidden_layers' must be a positive integer"),
        ({"vocab_size": "30522"}, "'vocab_size' must be a positive integer"),
        ({"hidden_act": "swish"}, "hidden_act='swish' is not supported"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not supported"),
        ({"layer_norm_eps": 0}, "layer_norm_eps=0 is out of range"),
    ],
)
def test_invalid_values(tmp_path, change, text):
    path = _write(tmp_path, {**GOOGLE_BASE, **change})
    with pytest.raises(ConfigError) as info:
        BertConfig.from_json_file(path)
    assert text in str(info.value) and str(path) in str(info.value)


def test_malformed_json_names_file_and_line(tmp_path):
    path = _write(tmp_path, '{\n  "hidden_size": 768,\n  "vocab_size": \n}')
    with pytest.raises(ConfigError, match=r"not valid JSON \(line 4"):
        BertConfig.from_json_file(path)


def test_not_an_object(tmp_path):
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        BertConfig.from_json_file(_write(tmp_path, "[1, 2]"))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="BERT config file not found"):
        BertConfig.from_json_file(tmp_path / "nope.json")


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match="not a multiple"):
        BertConfig(10, 65, 1, 4, 8, 16, 2)
