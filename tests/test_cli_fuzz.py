"""Fuzzing ``nertron tag --input F --output O`` with random bytes: it succeeds, or fails with
exit status 2 and ONE line ``nertron tag: error: ...`` (no traceback); it never hangs, never
changes the input and never leaves a temporary file beside the output."""
import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nertron.engine import cli
from nertron.engine.tagger import Tagger
from support import deadline
from test_tagger import make_model_dir


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, minilm_dir, conll_dev):
    """The tagger, loaded once for the module: ``Tagger.load`` returns it."""
    path = tmp_path_factory.mktemp("fuzz_model")
    make_model_dir(path, minilm_dir, conll_dev)
    tagger = Tagger.load(path, device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Tagger, "load", classmethod(lambda cls, *args, **kwargs: tagger))
        yield path


words = st.sampled_from(["EU", "Peter", "Blackburn", "Paris", "é", "\t", " ", "\r", "\n", "\x00", "🙂", "\u2028"])
contents = st.one_of(
    st.binary(max_size=400),
    st.lists(words, max_size=40).map(lambda parts: "".join(parts).encode("utf-8")),
    st.tuples(st.binary(max_size=40), st.binary(max_size=40)).map(lambda pair: b"EU\n" + pair[0] + b"\n" + pair[1]),
)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=contents, existing=st.booleans(), fmt=st.sampled_from(["jsonl", "conll"]))
def test_random_bytes_input(loaded, data, existing, fmt):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        source, out = folder / "in.txt", folder / "out.txt"
        source.write_bytes(data)
        if existing:
            out.write_bytes(b"previous output\n")
        stderr, stdout = io.StringIO(), io.StringIO()
        with deadline(60, "nertron tag"), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            rc = cli.main(["tag", "--model", str(loaded), "--input", str(source), "--output", str(out),
                           "--format", fmt])
        err = stderr.getvalue()
        assert source.read_bytes() == data
        assert sorted(os.listdir(folder)) == (["in.txt", "out.txt"] if rc == 0 or existing else ["in.txt"])
        assert "Traceback" not in err
        if rc == 0:
            assert err == ""
            *ended, last = data.decode("utf-8").split("\n")  # \r\n or \n ends a line; a last line may have neither
            lines = [line.removesuffix("\r") for line in ended] + ([last] if last else [])
            written = out.read_text(encoding="utf-8")
            if fmt == "jsonl":
                records = written.split("\n")[:-1]  # not splitlines(): U+2028 in a JSON string is a text character
                assert len(records) == len(lines)
                assert [json.loads(record)["text"] for record in records] == lines
            else:
                assert written.endswith("\n") or not lines  # a blank line closes each text's block
        else:
            assert rc == 2
            assert err.startswith("nertron tag: error: ") and err.count("\n") == 1, err
            if existing:
                assert out.read_bytes() == b"previous output\n"
