"""Checkpoint loading: every supported layout, safe loading, and every error path."""
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nertron import BertModel, load_checkpoint
from nertron.engine.checkpoint import CheckpointError, default_checkpoint_dir, normalize_names


@pytest.fixture(scope="module")
def minilm_state(minilm_dir):
    return load_file(str(minilm_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_output(minilm_dir):
    model = BertModel.from_pretrained(minilm_dir)
    ids = torch.tensor([[101, 7327, 19164, 2446, 2655, 2000, 17757, 2329, 12559, 1012, 102]])
    with torch.inference_mode():
        return ids, model(ids).last_hidden_state


def _same_model(path, reference_output):
    ids, expected = reference_output
    with torch.inference_mode():
        got = BertModel.from_pretrained(path)(ids).last_hidden_state
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def _checkpoint_dir(tmp_path, minilm_dir, config_name="config.json"):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    shutil.copyfile(minilm_dir / "config.json", directory / config_name)
    shutil.copyfile(minilm_dir / "vocab.txt", directory / "vocab.txt")
    return directory


def test_default_checkpoint_is_the_package(minilm_dir):
    assert default_checkpoint_dir() == minilm_dir


def test_hugging_face_directory(minilm_dir, minilm_state):
    checkpoint = load_checkpoint(minilm_dir)
    assert checkpoint.weights_file.name == "model.safetensors"
    assert checkpoint.vocab_file == minilm_dir / "vocab.txt"
    assert "embeddings.position_ids" in minilm_state and "embeddings.position_ids" not in checkpoint.state_dict
    assert len(checkpoint.state_dict) == len(minilm_state) - 1


def test_pytorch_pretrained_bert_layout(tmp_path, minilm_dir, minilm_state, reference_output):
    """bert_config.json, LayerNorm gamma/beta, a `bert.` prefix, pytorch_model.bin."""
    directory = _checkpoint_dir(tmp_path, minilm_dir, "bert_config.json")
    old = {}
    for name, tensor in minilm_state.items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old["bert." + name] = tensor
    torch.save(old, directory / "pytorch_model.bin")
    _same_model(directory, reference_output)


def test_sharded_safetensors_and_single_file(tmp_path, minilm_dir, minilm_state, reference_output):
    directory = _checkpoint_dir(tmp_path, minilm_dir)
    names = sorted(minilm_state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in halves.items():
        save_file({k: minilm_state[k] for k in keys}, str(directory / shard))
        weight_map.update({k: shard for k in keys})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _same_model(directory, reference_output)
    _same_model(directory / "model.safetensors.index.json", reference_output)
    _same_model(minilm_dir / "model.safetensors", reference_output)


def test_state_dicts_interchange_with_transformers(minilm_dir, reference_output):
    transformers = pytest.importorskip("transformers")
    ours = BertModel.from_pretrained(minilm_dir)
    hf = transformers.BertModel(transformers.BertConfig.from_json_file(str(minilm_dir / "config.json")))
    hf.config._attn_implementation = "sdpa"
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert unexpected == [] and set(missing) <= {"embeddings.position_ids"}
    ids, expected = reference_output
    with torch.inference_mode():
        torch.testing.assert_close(hf.eval()(ids).last_hidden_state, expected, atol=1e-6, rtol=0)
    back = BertModel(ours.config)
    back.load_state_dict(normalize_names(hf.state_dict()), strict=True)


def test_task_heads_are_reported_not_loaded(tmp_path, minilm_dir, minilm_state, reference_output):
    directory = _checkpoint_dir(tmp_path, minilm_dir)
    state = {("bert." + k): v for k, v in minilm_state.items()}
    state["classifier.weight"] = torch.zeros(9, 384)
    state["classifier.bias"] = torch.zeros(9)
    save_file(state, str(directory / "model.safetensors"))
    with pytest.warns(UserWarning, match=r"2 task-head tensors .* classifier.bias, classifier.weight"):
        _same_model(directory, reference_output)


def _expect_error(tmp_path, minilm_dir, state, *texts):
    directory = _checkpoint_dir(tmp_path, minilm_dir)
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        BertModel.from_pretrained(directory)
    for text in texts:
        assert text in str(info.value)


def test_missing_tensors_are_listed(tmp_path, minilm_dir, minilm_state):
    state = {k: v for k, v in minilm_state.items() if "layer.3.output" not in k}
    _expect_error(
        tmp_path,
        minilm_dir,
        state,
        "missing tensors: encoder.layer.3.output.LayerNorm.bias, encoder.layer.3.output.LayerNorm.weight, "
        "encoder.layer.3.output.dense.bias, encoder.layer.3.output.dense.weight",
    )


def test_unexpected_tensors_are_listed(tmp_path, minilm_dir, minilm_state):
    state = dict(minilm_state, **{"encoder.layer.6.extra.weight": torch.zeros(2), "adapter.bias": torch.zeros(2)})
    _expect_error(tmp_path, minilm_dir, state, "unexpected tensors: adapter.bias, encoder.layer.6.extra.weight")


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, minilm_dir, minilm_state):
    state = dict(minilm_state, **{"encoder.layer.2.intermediate.dense.weight": torch.zeros(1536, 380)})
    _expect_error(
        tmp_path,
        minilm_dir,
        state,
        "tensor 'encoder.layer.2.intermediate.dense.weight' has shape (1536, 380) in the checkpoint but (1536, 384)",
    )


def test_pickled_code_is_refused(tmp_path, minilm_dir):
    """torch.load(weights_only=True): a .bin that would run code on unpickling is rejected."""
    directory = _checkpoint_dir(tmp_path, minilm_dir)

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(directory / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"embeddings.word_embeddings.weight": Exploit()}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(directory)


def test_bin_that_is_not_a_state_dict(tmp_path, minilm_dir):
    directory = _checkpoint_dir(tmp_path, minilm_dir)
    torch.save([torch.zeros(1)], directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="expected a state dict, found list"):
        load_checkpoint(directory)


def test_missing_directory_and_files(tmp_path, minilm_dir):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nowhere")
    directory = _checkpoint_dir(tmp_path, minilm_dir)
    with pytest.raises(FileNotFoundError, match="no weights file in .*model.safetensors, .*pytorch_model.bin"):
        load_checkpoint(directory)
    (directory / "bert_model.ckpt.index").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="convert it first with `nertron convert-tf`"):
        load_checkpoint(directory)
    (directory / "config.json").unlink()
    shutil.copyfile(minilm_dir / "model.safetensors", directory / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no config file in .*config.json, bert_config.json"):
        load_checkpoint(directory)


def test_duplicate_names_after_normalising():
    with pytest.raises(CheckpointError, match="appears twice"):
        normalize_names({"pooler.dense.bias": torch.zeros(1), "bert.pooler.dense.bias": torch.zeros(1)})
