"""nertron.tags: scheme names, the conlleval chunk rules and the CRF transition rules.

Spans, conversions and strict spans are tested through their old home in test_schemes.py
(``nertron.engine.data.schemes`` re-exports this module).
"""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
import torch

import nertron.tags as tags
from nertron.bindings.crf import allowed_transitions
from nertron.engine.data import schemes
from nertron.tags import (CONSTRAINT_SCHEMES, allowed, conll_spans, constraint_scheme, end_of_chunk,
                          normalize_scheme, normalize_strict_scheme, parse_label, scheme_prefixes, start_of_chunk)

BIO = ["<pad>", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
IOB1 = ["O", "I-PER", "B-PER", "I-LOC", "B-LOC", "[PAD]"]
BIOES = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "<pad>"]
BILOU = ["O", "B-PER", "I-PER", "L-PER", "U-PER", "B-LOC", "I-LOC", "L-LOC", "U-LOC"]


def test_module_depends_on_nothing_of_nertron_or_torch():
    tree = ast.parse(Path(tags.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "typing"}, imported


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, canonical, constraint", [
    ("IOB1", "IOB1", "IOB1"), ("iob1", "IOB1", "IOB1"), ("Iob1", "IOB1", "IOB1"),
    ("IOB2", "IOB2", "BIO"), ("iob2", "IOB2", "BIO"), ("BIO", "IOB2", "BIO"), ("bio", "IOB2", "BIO"),
    ("Bio", "IOB2", "BIO"),
    ("BIOES", "BIOES", "BIOES"), ("bioes", "BIOES", "BIOES"), ("IOBES", "BIOES", "BIOES"),
    ("iobes", "BIOES", "BIOES"),
])
def test_scheme_names(name, canonical, constraint):
    assert normalize_scheme(name) == canonical
    assert constraint_scheme(name) == constraint
    assert constraint in CONSTRAINT_SCHEMES
    assert normalize_strict_scheme(name) == canonical


@pytest.mark.parametrize("name", ["BILOU", "bilou", "BIOUL", "bioul"])
def test_bilou_is_a_constraint_scheme_only(name):
    # L-/U- are read by parse_label (CRF constraints), not by spans/conversions: those reject it,
    # as they always did.
    assert constraint_scheme(name) == "BIOES"
    with pytest.raises(ValueError, match="unknown tag scheme"):
        normalize_scheme(name)


@pytest.mark.parametrize("name", ["IOX", "", "IOE1", None, 3])
def test_unknown_scheme_names(name):
    with pytest.raises(ValueError, match="unknown tag scheme"):
        normalize_scheme(name)
    with pytest.raises(ValueError, match="unknown tag scheme"):
        constraint_scheme(name)
    with pytest.raises(ValueError, match="strict mode does not support scheme"):
        normalize_strict_scheme(name)


def test_strict_scheme_names():
    assert normalize_strict_scheme("ioe2") == "IOE2"
    assert normalize_strict_scheme("bilou") == "BILOU"
    assert tags.STRICT_SCHEMES == ("IOB1", "IOB2", "IOE2", "BIOES", "BILOU")


def test_scheme_prefixes():
    assert scheme_prefixes("bio") == scheme_prefixes("IOB1") == frozenset("BI")
    assert scheme_prefixes("IOBES") == tags.CONLL_PREFIXES == frozenset("BIES")


def test_schemes_module_reexports_tags():
    for name in schemes.__all__:
        assert getattr(schemes, name) is getattr(tags, name), name
    # old private names, kept for now (see schemes.py)
    assert schemes._start_of_chunk is start_of_chunk and schemes._end_of_chunk is end_of_chunk


# --- conlleval chunk rules ---------------------------------------------------------------------

@pytest.mark.parametrize("prev, cur, ends, starts", [
    (("O", ""), ("O", ""), False, False),
    (("O", ""), ("B", "X"), False, True),
    (("O", ""), ("I", "X"), False, True),   # lenient: I- after O starts an entity
    (("O", ""), ("E", "X"), False, True),
    (("O", ""), ("S", "X"), False, True),
    (("B", "X"), ("I", "X"), False, False),
    (("B", "X"), ("E", "X"), False, False),
    (("I", "X"), ("I", "X"), False, False),
    (("I", "X"), ("I", "Y"), True, True),   # a type change ends one entity, starts the next
    (("I", "X"), ("B", "X"), True, True),
    (("B", "X"), ("O", ""), True, False),
    (("I", "X"), ("S", "X"), True, True),
    (("E", "X"), ("I", "X"), True, True),
    (("E", "X"), ("O", ""), True, False),
    (("S", "X"), ("S", "X"), True, True),   # two single-token entities, not one
    (("S", "X"), ("E", "X"), True, True),
])
def test_start_and_end_of_chunk(prev, cur, ends, starts):
    assert end_of_chunk(prev[0], cur[0], prev[1], cur[1]) is ends
    assert start_of_chunk(prev[0], cur[0], prev[1], cur[1]) is starts


def test_conll_spans_reads_every_prefix():
    assert conll_spans(["B-X", "E-X", "I-Y", "S-Z", "O", "I-X"]) == [("X", 0, 2), ("Y", 2, 3), ("Z", 3, 4),
                                                                    ("X", 5, 6)]
    with pytest.raises(tags.TagError, match="position 1: bad tag 'E-X'"):
        conll_spans(["B-X", "E-X"], frozenset("BI"))


# --- CRF transition rules ----------------------------------------------------------------------

@pytest.mark.parametrize("label, scheme, parsed", [
    ("O", "BIO", ("O", None)),
    ("B-PER", "BIO", ("B", "PER")),
    ("I-a-b", "IOB1", ("I", "a-b")),
    ("E-PER", "BIO", ("?", None)),
    ("S-PER", "IOB1", ("?", None)),
    ("E-PER", "BIOES", ("E", "PER")),
    ("L-PER", "BIOES", ("E", "PER")),
    ("U-PER", "BIOES", ("S", "PER")),
    ("L-PER", "BIO", ("?", None)),
    ("Q-PER", "BIOES", ("?", None)),
    ("<pad>", "BIOES", ("?", None)),
    ("[PAD]", "BIO", ("?", None)),
    ("-PER", "BIO", ("?", None)),
    ("B-", "BIO", ("B", "")),
])
def test_parse_label(label, scheme, parsed):
    assert parse_label(label, scheme) == parsed


@pytest.mark.parametrize("labels, scheme", [
    (BIO, "BIO"), (BIO, "IOB2"), (IOB1, "IOB1"), (BIOES, "BIOES"), (BIOES, "IOBES"), (BILOU, "BILOU"),
    (BIOES + ["L-ORG", "U-ORG"], "BIOES"),
])
def test_allowed_matches_allowed_transitions(labels, scheme):
    key = constraint_scheme(scheme)
    parsed = [parse_label(label, key) for label in labels]
    outside = ("O", None)
    constraints = allowed_transitions(labels, scheme)
    expected = torch.tensor([[allowed(a, b, key) for b in parsed] for a in parsed])
    assert torch.equal(constraints.transitions, expected)
    # the start and the end of a sequence act as an O
    assert constraints.start.tolist() == [allowed(outside, p, key) for p in parsed]
    assert constraints.end.tolist() == [allowed(p, outside, key) for p in parsed]


def test_allowed_examples():
    per, loc = ("B", "PER"), ("B", "LOC")
    i_per, o, pad = ("I", "PER"), ("O", None), ("?", None)
    assert not allowed(o, i_per, "BIO") and allowed(per, i_per, "BIO") and not allowed(loc, i_per, "BIO")
    assert allowed(o, i_per, "IOB1") and not allowed(o, per, "IOB1") and allowed(i_per, per, "IOB1")
    assert not allowed(per, o, "BIOES") and allowed(per, ("E", "PER"), "BIOES")
    assert not allowed(per, ("E", "LOC"), "BIOES") and allowed(("S", "PER"), ("S", "PER"), "BIOES")
    for scheme, (a, b) in itertools.product(CONSTRAINT_SCHEMES, [(pad, i_per), (per, pad), (pad, pad)]):
        assert allowed(a, b, scheme)


# --- the models path ---------------------------------------------------------------------------

@pytest.mark.parametrize("tag_scheme, labels, key", [
    ("IOBES", BIOES, "BIOES"), ("bio", BIO, "BIO"), ("iob1", ["<pad>"] + IOB1[:-1], "IOB1"),
])
def test_model_constraints_accept_every_scheme_name(minilm_dir, tag_scheme, labels, key):
    from nertron.engine.models import BertBiLSTMCRF

    torch.manual_seed(0)
    model = BertBiLSTMCRF.create(len(labels), minilm_dir, labels=labels, tag_scheme=tag_scheme, enc_hidden_dim=32)
    transitions, start, end = allowed_transitions(labels, key)
    pad = labels.index("<pad>")
    transitions[pad, :] = transitions[:, pad] = start[pad] = end[pad] = False
    assert torch.equal(model.crf.allowed_transitions, transitions)
    assert torch.equal(model.crf.allowed_start, start) and torch.equal(model.crf.allowed_end, end)
