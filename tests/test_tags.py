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
BMES = ["B-PER", "M-PER", "E-PER", "S-PER", "B-LOC", "M-LOC", "E-LOC", "S-LOC"]


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


@pytest.mark.parametrize("name, canonical", [
    ("BILOU", "BILOU"), ("bilou", "BILOU"), ("BIOUL", "BILOU"), ("bioul", "BILOU"), ("BMES", "BMES"),
    ("bmes", "BMES"),
])
def test_bilou_and_bmes_names(name, canonical):
    # Full schemes (spans, conversions) whose CRF constraints are BIOES's, L-/U-/M- read as E-/S-/I-.
    assert normalize_scheme(name) == canonical
    assert constraint_scheme(name) == "BIOES"


@pytest.mark.parametrize("name, canonical", [
    ("IOE1", "IOE1"), ("ioe1", "IOE1"), ("IOE2", "IOE2"), ("Ioe2", "IOE2"), ("IOE", "IOE2"), ("ioe", "IOE2"),
])
def test_ioe_names(name, canonical):
    assert normalize_scheme(name) == canonical
    with pytest.raises(ValueError, match=f"no CRF constraint rules for tag scheme {name!r}"):
        constraint_scheme(name)


def test_every_name_in_any_case():
    assert set(tags.SCHEME_NAMES) == {"IOB1", "IOB2", "BIO", "IOE1", "IOE2", "IOE", "BIOES", "IOBES", "BILOU",
                                      "BIOUL", "BMES"}
    for name in tags.SCHEME_NAMES:
        for spelling in (name, name.lower(), name.capitalize()):
            assert normalize_scheme(spelling) in tags.SCHEMES
            assert scheme_prefixes(spelling) == scheme_prefixes(name)


@pytest.mark.parametrize("name", ["IOX", "", "IOB", "BILUO", None, 3])
def test_unknown_scheme_names(name):
    with pytest.raises(ValueError, match="unknown tag scheme"):
        normalize_scheme(name)
    with pytest.raises(ValueError, match="unknown tag scheme"):
        constraint_scheme(name)
    with pytest.raises(ValueError, match="strict mode does not support scheme"):
        normalize_strict_scheme(name)


def test_strict_scheme_names():
    assert normalize_strict_scheme("ioe2") == "IOE2"
    assert normalize_strict_scheme("bilou") == normalize_strict_scheme("BIOUL") == "BILOU"
    assert normalize_strict_scheme("ioe") == "IOE2"
    assert tags.STRICT_SCHEMES == ("IOB1", "IOB2", "IOE2", "BIOES", "BILOU")


def test_scheme_prefixes():
    assert scheme_prefixes("bio") == scheme_prefixes("IOB1") == frozenset("BI")
    assert scheme_prefixes("IOBES") == tags.CONLL_PREFIXES == frozenset("BIES")
    assert scheme_prefixes("ioe") == scheme_prefixes("IOE1") == frozenset("IE")
    assert scheme_prefixes("bioul") == frozenset("BILU") and scheme_prefixes("BMES") == frozenset("BMES")


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
    ("M-PER", "BIOES", ("I", "PER")),
    ("M-PER", "BIO", ("?", None)),
    ("M-PER", "IOB1", ("?", None)),
    ("<pad>", "BIOES", ("?", None)),
    ("[PAD]", "BIO", ("?", None)),
    ("-PER", "BIO", ("?", None)),
    ("B-", "BIO", ("B", "")),
])
def test_parse_label(label, scheme, parsed):
    assert parse_label(label, scheme) == parsed


@pytest.mark.parametrize("labels, scheme", [
    (BIO, "BIO"), (BIO, "IOB2"), (IOB1, "IOB1"), (BIOES, "BIOES"), (BIOES, "IOBES"), (BILOU, "BILOU"),
    (BIOES + ["L-ORG", "U-ORG"], "BIOES"), (BILOU, "bioul"), (BMES, "BMES"), (BMES, "bmes"),
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


# --- AllenNLP's constraint names -----------------------------------------------------------------

def _allennlp_allowed(constraint: str, from_label: str, to_label: str) -> bool:
    """AllenNLP's ``is_transition_allowed`` (allennlp/modules/conditional_random_field.py), with
    ``START``/``END`` as labels."""
    def split(label):
        return (label, "") if label in ("START", "END", "O") else (label[0], label[1:])
    (from_tag, from_entity), (to_tag, to_entity) = split(from_label), split(to_label)
    if to_tag == "START" or from_tag == "END":
        return False
    if constraint == "BIOUL":
        if from_tag == "START":
            return to_tag in ("O", "B", "U")
        if to_tag == "END":
            return from_tag in ("O", "L", "U")
        return (from_tag in ("O", "L", "U") and to_tag in ("O", "B", "U")) or (
            from_tag in ("B", "I") and to_tag in ("I", "L") and from_entity == to_entity)
    if constraint == "BIO":
        if from_tag == "START":
            return to_tag in ("O", "B")
        if to_tag == "END":
            return from_tag in ("O", "B", "I")
        return to_tag in ("O", "B") or (to_tag == "I" and from_tag in ("B", "I") and from_entity == to_entity)
    if constraint == "IOB1":
        if from_tag == "START":
            return to_tag in ("O", "I")
        if to_tag == "END":
            return from_tag in ("O", "B", "I")
        return to_tag in ("O", "I") or (to_tag == "B" and from_tag in ("B", "I") and from_entity == to_entity)
    assert constraint == "BMES"
    if from_tag == "START":
        return to_tag in ("B", "S")
    if to_tag == "END":
        return from_tag in ("E", "S")
    return (to_tag in ("B", "S") and from_tag in ("E", "S")) or (
        to_tag in ("M", "E") and from_tag in ("B", "M") and from_entity == to_entity)


@pytest.mark.parametrize("constraint, labels", [
    ("BIO", BIO[1:]), ("IOB1", IOB1[:-1]), ("BIOUL", BILOU), ("BMES", BMES),
])
def test_allennlp_constraint_names(constraint, labels):
    # AllenNLP's names go straight to nertron.bindings.crf.allowed_transitions and give its rules.
    for name in (constraint, constraint.lower()):
        c = allowed_transitions(labels, name)
        for i, a in enumerate(labels):
            assert c.start[i].item() == _allennlp_allowed(constraint, "START", a), (name, a)
            assert c.end[i].item() == _allennlp_allowed(constraint, a, "END"), (name, a)
            for j, b in enumerate(labels):
                assert c.transitions[i, j].item() == _allennlp_allowed(constraint, a, b), (name, a, b)


def test_bmes_allows_o_between_entities():
    # AllenNLP's BMES (word segmentation) has no O; here O may come between entities (BIOES rules).
    labels = ["O"] + BMES
    c = allowed_transitions(labels, "BMES")
    o = 0
    assert c.start[o] and c.end[o] and c.transitions[o, o]
    for j, label in enumerate(labels):
        assert c.transitions[o, j].item() == (label[0] in "OBS")
        assert c.transitions[j, o].item() == (label[0] in "OES")
