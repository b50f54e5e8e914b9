"""Google TF checkpoint -> nertron conversion, for real: a TF checkpoint is written with
TensorFlow under Google's variable names from the MiniLM weights, converted with
`nertron convert-tf`, and the converted model must equal the original."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nertron import BertModel
from nertron.engine.checkpoint import CheckpointError
from nertron.engine.convert import convert_tf_checkpoint, tf_name_to_torch

tf = pytest.importorskip("tensorflow")


def google_name(hf_name: str) -> tuple[str, bool]:
    """Hugging Face name -> (Google's TF variable name, whether TF stores it transposed)."""
    name = re.sub(r"^encoder\.layer\.(\d+)\.", r"encoder/layer_\1/", hf_name)
    name = name.replace("LayerNorm.weight", "LayerNorm/gamma").replace("LayerNorm.bias", "LayerNorm/beta")
    if name.startswith("embeddings.") and name.endswith("_embeddings.weight"):
        return "bert/" + name[: -len(".weight")].replace(".", "/"), False
    kernel = name.endswith(".weight")
    if kernel:
        name = name[: -len(".weight")] + ".kernel"
    return "bert/" + name.replace(".", "/"), kernel


def write_tf_checkpoint(prefix, variables: dict[str, np.ndarray]) -> None:
    """Save ``variables`` under exactly these names, as Google's TF1 BERT code did (tf.train.Saver)."""
    with tf.Graph().as_default():
        tf_vars = {name: tf.compat.v1.Variable(value, name=f"v{i}") for i, (name, value) in enumerate(variables.items())}
        saver = tf.compat.v1.train.Saver(tf_vars)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False)


@pytest.fixture(scope="module")
def google_checkpoint(minilm_dir, tmp_path_factory):
    """A Google-style checkpoint directory: bert_model.ckpt.*, bert_config.json, vocab.txt."""
    directory = tmp_path_factory.mktemp("uncased_L-6_H-384_A-12")
    state = load_file(str(minilm_dir / "model.safetensors"))
    variables = {}
    for hf_name, tensor in state.items():
        if hf_name == "embeddings.position_ids":
            continue
        name, transposed = google_name(hf_name)
        value = tensor.numpy().T if transposed else tensor.numpy()
        variables[name] = np.ascontiguousarray(value)
        # Checkpoints saved mid-training carry Adam's slots beside every variable.
        variables[name + "/adam_m"] = np.zeros_like(variables[name])
        variables[name + "/adam_v"] = np.ones_like(variables[name])
    variables["global_step"] = np.int64(100000)
    # BERT's pre-training heads.
    variables["cls/predictions/output_bias"] = np.zeros(30522, np.float32)
    variables["cls/predictions/transform/dense/kernel"] = np.zeros((384, 384), np.float32)
    variables["cls/seq_relationship/output_weights"] = np.zeros((2, 384), np.float32)
    write_tf_checkpoint(directory / "bert_model.ckpt", variables)
    config = json.loads((minilm_dir / "config.json").read_text())
    google_keys = (
        "attention_probs_dropout_prob hidden_act hidden_dropout_prob hidden_size initializer_range "
        "intermediate_size max_position_embeddings num_attention_heads num_hidden_layers type_vocab_size vocab_size"
    ).split()
    (directory / "bert_config.json").write_text(json.dumps({k: config[k] for k in google_keys}))
    (directory / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    return directory


def test_checkpoint_uses_googles_names(google_checkpoint):
    names = set(tf.train.load_checkpoint(str(google_checkpoint / "bert_model.ckpt")).get_variable_to_shape_map())
    for expected in (
        "bert/embeddings/word_embeddings",
        "bert/embeddings/LayerNorm/gamma",
        "bert/encoder/layer_0/attention/self/query/kernel",
        "bert/encoder/layer_5/attention/output/LayerNorm/beta",
        "bert/encoder/layer_3/intermediate/dense/bias",
        "bert/encoder/layer_3/output/dense/kernel",
        "bert/pooler/dense/kernel",
        "bert/encoder/layer_0/attention/self/query/kernel/adam_m",
        "global_step",
    ):
        assert expected in names


def test_convert_tf_round_trip(google_checkpoint, minilm_dir, tmp_path):
    output = tmp_path / "converted"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nertron",
            "convert-tf",
            "--tf-checkpoint",
            str(google_checkpoint / "bert_model.ckpt"),
            "--bert-config",
            str(google_checkpoint / "bert_config.json"),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "converted 103 variables" in result.stdout
    assert "skipped 207 optimizer variables" in result.stdout  # 103 x (adam_m, adam_v) + global_step
    assert "skipped 3 pre-training head variables" in result.stdout and "cls/seq_relationship" in result.stdout
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert json.loads((output / "config.json").read_text())["layer_norm_eps"] == 1e-12

    original = BertModel.from_pretrained(minilm_dir)
    converted = BertModel.from_pretrained(output)
    for name, tensor in original.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name
    ids = torch.tensor([[101, 7327, 19164, 2446, 2655, 102, 0], [101, 2848, 6687, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.inference_mode():
        a = original(ids, mask, output_hidden_states=True)
        b = converted(ids, mask, output_hidden_states=True)
    for x, y in zip(a.hidden_states + (a.pooler_output,), b.hidden_states + (b.pooler_output,)):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_every_encoder_variable_maps_back(minilm_dir):
    for hf_name in load_file(str(minilm_dir / "model.safetensors")):
        if hf_name == "embeddings.position_ids":
            continue
        name, transposed = google_name(hf_name)
        assert tf_name_to_torch(name) == (hf_name, transposed)
    assert tf_name_to_torch("cls/predictions/output_bias") is None
    assert tf_name_to_torch("bert/encoder/layer_0/attention/self/rotary/kernel") is None


def test_unknown_variable_is_an_error(google_checkpoint, tmp_path):
    reader = tf.train.load_checkpoint(str(google_checkpoint / "bert_model.ckpt"))
    variables = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map() if "adam" not in n}
    variables["bert/encoder/layer_0/attention/self/rotary/kernel"] = np.zeros((2, 2), np.float32)
    write_tf_checkpoint(tmp_path / "bert_model.ckpt", variables)
    with pytest.raises(CheckpointError, match="does not know how to map: bert/encoder/layer_0/attention/self/rotary"):
        convert_tf_checkpoint(tmp_path / "bert_model.ckpt", google_checkpoint / "bert_config.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_that_does_not_fit_the_checkpoint(google_checkpoint, tmp_path):
    config = json.loads((google_checkpoint / "bert_config.json").read_text())
    config["intermediate_size"] = 1024
    (tmp_path / "bert_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"intermediate.dense.weight' has shape \(1536, 384\)"):
        convert_tf_checkpoint(google_checkpoint / "bert_model.ckpt", tmp_path / "bert_config.json", tmp_path / "out")


def test_missing_checkpoint_cli_error(google_checkpoint, tmp_path):
    from nertron.engine.cli import main

    code = main(
        [
            "convert-tf",
            "--tf-checkpoint",
            str(tmp_path / "bert_model.ckpt"),
            "--bert-config",
            str(google_checkpoint / "bert_config.json"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
