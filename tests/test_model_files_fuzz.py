"""Fuzzing a saved model's files: random bytes or JSON values in ``model.json`` and
``head.safetensors`` give a loaded model or the one clear ``ModelFileError``, never another
exception, and loading never modifies any file."""
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nertron.engine.models import BertBiLSTMCRF, ModelFileError, NerModel

LABELS = ["<pad>", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def saved(minilm_dir, tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("fuzz") / "model"
    BertBiLSTMCRF.create(len(LABELS), minilm_dir, labels=LABELS, enc_hidden_dim=16).save(directory)
    return directory


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _load_copy(saved: Path, name: str, content: bytes) -> None:
    """Write ``content`` into ``name`` of a copy of the saved model and load it."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(shutil.copytree(saved, Path(tmp) / "model"))
        (directory / name).write_bytes(content)
        before = _digests(directory)
        try:
            model = NerModel.load(directory)
        except ModelFileError as err:
            assert str(directory / name) in str(err) or str(directory) in str(err)
            assert "\n" not in str(err) and "Traceback" not in str(err)
        else:
            assert isinstance(model, NerModel)
        assert _digests(directory) == before  # loading never modifies, adds or removes a file


@FUZZ
@given(name=st.sampled_from(["model.json", "head.safetensors"]), content=st.binary(max_size=300))
def test_random_bytes(saved, name, content):
    _load_copy(saved, name, content)


@FUZZ
@given(value=json_values)
def test_random_json_as_model_json(saved, value):
    _load_copy(saved, "model.json", json.dumps(value).encode())


@FUZZ
@given(data=st.data())
def test_random_field_values(saved, data):
    """One field of model.json (or of its config) replaced, removed or added with a random value."""
    meta = json.loads((saved / "model.json").read_text())
    config = meta["config"]
    keys = sorted(k for k in config if k != "checkpoint_dir")  # a moved checkpoint is tested elsewhere
    where = data.draw(st.sampled_from(["meta", "config"]))
    target, choices = (meta, ["class", "config", "labels", "intents"]) if where == "meta" else (config, keys)
    key = data.draw(st.sampled_from(choices) | st.text(min_size=1, max_size=6))
    if data.draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = data.draw(json_values)
    _load_copy(saved, "model.json", json.dumps(meta).encode())


@FUZZ
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_damaged_head_bytes(saved, cut, flip):
    """Truncated or byte-flipped safetensors: loaded (a flipped weight) or the clear error."""
    content = bytearray((saved / "head.safetensors").read_bytes())
    content[flip % len(content)] ^= 0xFF
    _load_copy(saved, "head.safetensors", bytes(content[: len(content) - cut % len(content)]))
