"""Fuzzing the readers: random bytes and random tag sequences written as files give either
sentences or one ``DataFormatError`` naming the file (and line), never another exception, never a
hang, and never a changed input file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nertron.engine.data import DataFormatError, read_atis, read_conll, read_csv, read_dataset
from nertron.tags import SCHEMES, is_valid, spans
from support import deadline

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Pieces that make the readers' decisions interesting: tags of every scheme, bad tags, layout
# bytes (tabs, CR, quotes, commas), markers of the formats and invalid UTF-8.
PIECES = [b"a", b"Peter", b"O", b"B-PER", b"I-PER", b"E-PER", b"S-PER", b"L-LOC", b"U-LOC", b"M-LOC", b"I-LOC",
          b"Q-PER", b"B-", b"X", b"-DOCSTART-", b"BOS", b"EOS", b"labels", b"text", b"cls", b" ", b" ", b"\t",
          b"\n", b"\n", b"\n\n", b"\r", b"\r\n", b",", b'"', b"\xff", b"\xc3", b"\xe2\x82", b"\xc3\xa9", b"\x00"]
TAGS = ["O", "O", "B-PER", "I-PER", "E-PER", "S-PER", "L-PER", "U-PER", "M-PER", "B-LOC", "I-LOC", "E-LOC",
        "S-LOC", "Q-LOC", "B-", "X"]


def _read(path: Path, call) -> list | DataFormatError:
    """The sentences ``call`` gives, or its DataFormatError (checked to name ``path``); the file
    is left as it was."""
    before = path.read_bytes(), os.stat(path).st_mtime_ns
    try:
        with deadline(20, "a reader"):
            result = list(call())
    except DataFormatError as err:
        assert err.path == path
        assert str(err).startswith(f"{path}:" if err.line else f"{path}: ")
        assert "\n" not in str(err)  # one line
        lines = before[0].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        assert 0 <= err.line <= lines
        result = err
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    return result


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join)))
def test_random_bytes(folder, data):
    for name in ("f.conll", "f.txt", "f.iob", "f.csv"):
        path = folder / name
        path.write_bytes(data)
        readers = [lambda: read_dataset(path), lambda: read_dataset(path, "conll"),
                   lambda: read_dataset(path, "conll", tag_scheme="BIOES"), lambda: read_conll(path)]
        if name == "f.iob":
            readers.append(lambda: read_atis(path))
        if name == "f.csv":
            readers.append(lambda: read_csv(path))
        for call in readers:
            result = _read(path, call)
            if not isinstance(result, DataFormatError):
                assert result and all(len(s.words) == len(s.tags) > 0 for s in result)


@FUZZ
@given(st.lists(st.lists(st.sampled_from(TAGS), min_size=1, max_size=8), min_size=1, max_size=6),
       st.sampled_from((None,) + SCHEMES + ("bio", "ioe", "iobes", "bioul")))
def test_random_tag_sequences(folder, sentences, scheme):
    path = folder / "tags.conll"
    lines, where = [], {}
    for tags in sentences:
        for k, tag in enumerate(tags):
            lines.append(f"w{k} NN {tag}")
            where[len(lines)] = tag
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    result = _read(path, lambda: read_conll(path, tag_scheme=scheme))
    if isinstance(result, DataFormatError):
        # Named at the line of a tag, which the message quotes.
        assert result.line in where and repr(where[result.line]) in str(result), (str(result), where)
        return
    # Read: the tags as in the file, all valid in the file's scheme, which reads their entities.
    assert [s.tags for s in result] == sentences
    found = read_dataset(path, "conll", tag_scheme=scheme).scheme
    assert scheme is None or found.lower() in (scheme.lower(), {"bio": "iob2", "ioe": "ioe2", "iobes": "bioes",
                                                                "bioul": "bilou"}.get(scheme.lower()))
    for tags in sentences:
        assert is_valid(tags, found)
        spans(tags, found)
