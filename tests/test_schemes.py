"""Tag schemes: spans, conversion between IOB1, IOB2, IOE1, IOE2, BIOES, BILOU and BMES on all of
CoNLL-2003 and on random tags, validation and scheme detection."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nertron.engine.data import readers, schemes
from nertron.engine.data.schemes import (TagError, bioes_to_iob2, convert, from_spans, iob1_to_iob2, iob2_to_bioes,
                                         iob2_to_iob1, spans, strict_spans)
from nertron.tags import SCHEMES, detect_scheme, is_valid, validate


def test_spans_by_scheme():
    assert spans(["B-PER", "I-PER", "O", "B-LOC"], "IOB2") == [("PER", 0, 2), ("LOC", 3, 4)]
    # IOB1: B- separates two adjacent entities of one type.
    assert spans(["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "IOB1") == [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
    assert spans(["S-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "O"], "BIOES") == [
        ("PER", 0, 1), ("PER", 1, 2), ("LOC", 2, 5)]
    # conlleval leniency: I- after O or after another type starts an entity.
    assert spans(["O", "I-PER", "I-LOC"], "IOB2") == [("PER", 1, 2), ("LOC", 2, 3)]
    assert spans([], "IOB2") == []
    # Types with dashes and dots (ATIS) keep everything after the first dash.
    assert spans(["B-fromloc.city_name", "I-fromloc.city_name", "B-a-b"]) == [
        ("fromloc.city_name", 0, 2), ("a-b", 2, 3)]


def test_conversions_examples():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]
    bioes = ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "S-ORG"]
    assert iob1_to_iob2(iob1) == iob2
    assert iob2_to_iob1(iob2) == iob1
    assert iob2_to_bioes(iob2) == bioes
    assert bioes_to_iob2(bioes) == iob2
    assert convert(iob1, "IOB1", "BIOES") == bioes
    assert convert(bioes, "IOBES", "IOB1") == iob1
    assert convert(iob2, "BIO", "IOB2") == iob2 and convert(iob2, "BIO", "IOB2") is not iob2
    # Valid IOB2 read as IOB1 is unchanged (so declaring CoNLL files IOB1 is safe).
    assert iob1_to_iob2(iob2) == iob2


@pytest.mark.parametrize("call, message", [
    (lambda: spans(["B-PER", "Q-PER"], "IOB2"), "position 1: bad tag 'Q-PER'"),
    (lambda: spans(["S-PER"], "IOB2"), "bad tag 'S-PER'"),
    (lambda: spans(["B-"], "IOB2"), "bad tag 'B-'"),
    (lambda: spans(["PER"], "IOB2"), "bad tag 'PER'"),
    (lambda: convert(["O"], "IOB2", "BILUO"), "unknown tag scheme 'BILUO'"),
    (lambda: spans(["I-PER", "E-PER"], "BIO"), "position 1: bad tag 'E-PER'"),
    (lambda: spans(["L-PER"], "BIOES"), "bad tag 'L-PER'"),
    (lambda: spans(["I-PER"], "BMES"), "bad tag 'I-PER'"),
    (lambda: validate(["I-PER", "S-ORG"], "IOB1"), "position 1: tag 'S-ORG' is not a IOB1 tag"),
    (lambda: validate(["O", "I-PER"], "IOB2"), "position 1: tag 'I-PER' breaks IOB2 (expected 'B-PER')"),
    (lambda: validate(["B-PER", "O"], "IOBES"), "position 0: tag 'B-PER' breaks BIOES (expected 'S-PER')"),
    (lambda: validate(["B-PER", "I-PER"], "bioul"), "position 1: tag 'I-PER' breaks BILOU (expected 'L-PER')"),
    (lambda: validate(["I-PER", "I-PER", "O"], "IOE"), "position 1: tag 'I-PER' breaks IOE2 (expected 'E-PER')"),
    (lambda: validate(["O", "Q-PER"], "IOB1"), "position 1: bad tag 'Q-PER'"),
    (lambda: validate(["O"], "XYZ"), "unknown tag scheme 'XYZ'"),
    (lambda: convert(["B-X", "Z"], "IOB2", "IOB2"), "bad tag 'Z'"),
    (lambda: strict_spans(["B-PER"], "IOE1"), "strict mode does not support scheme 'IOE1'"),
    (lambda: strict_spans(["S-PER"], "IOB2"), "position 0"),
])
def test_errors(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
    assert issubclass(TagError, ValueError)


def _conll_tags(data_dir, name):
    return [s.tags for s in readers.read_conll(data_dir / "conll2003" / name)]


@pytest.fixture(scope="module")
def conll_all(data_dir):
    return [tags for name in ("eng.train", "eng.testa", "eng.testb") for tags in _conll_tags(data_dir, name)]


def test_round_trips_on_all_of_conll2003(conll_all):
    assert len(conll_all) == 14041 + 3250 + 3453
    changed = noncanonical = 0
    for iob1 in conll_all:
        entities = spans(iob1, "IOB1")
        iob2 = iob1_to_iob2(iob1)
        bioes = iob2_to_bioes(iob2)
        assert spans(iob2, "IOB2") == entities
        assert spans(bioes, "BIOES") == entities
        # The converted tags are valid in their scheme: strict decoding finds the same entities.
        assert strict_spans(iob2, "IOB2") == entities
        assert strict_spans(bioes, "BIOES") == entities
        assert bioes_to_iob2(bioes) == iob2
        back = iob2_to_iob1(iob2)
        assert spans(back, "IOB1") == entities
        assert convert(bioes, "BIOES", "IOB1") == back
        # Canonical IOB1 (B- only right after the same type) comes back tag for tag; the
        # corpus has two sentences with a superfluous B- (after O), found here independently.
        superfluous = any(t.startswith("B-") and (i == 0 or iob1[i - 1][2:] != t[2:]) for i, t in enumerate(iob1))
        assert (back == iob1) != superfluous
        noncanonical += superfluous
        changed += iob2 != iob1
    assert changed > 10000  # conversions really happened
    assert noncanonical == 2


def test_iob1_b_tags_in_conll(conll_all):
    # CoNLL-2003 has a few B- tags (adjacent same-type entities): check they split entities.
    with_b = [tags for tags in conll_all if any(t.startswith("B-") for t in tags)]
    assert with_b
    for tags in with_b:
        n_entities = sum(1 for i, t in enumerate(tags)
                         if t != "O" and (t.startswith("B-") or i == 0 or tags[i - 1][2:] != t[2:]))
        assert len(spans(tags, "IOB1")) == n_entities


TYPES = ["PER", "LOC", "a-b"]


def _tags(prefixes):
    return st.lists(st.one_of(st.just("O"), st.builds(lambda p, t: f"{p}-{t}", st.sampled_from(prefixes),
                                                     st.sampled_from(TYPES))), max_size=25)


@settings(max_examples=300, deadline=None)
@given(_tags("BI"))
def test_random_iob_sequences(tags):
    # Any (possibly invalid) B/I sequence: every conversion keeps the conlleval entities, the
    # outputs are valid in their scheme, and conversions compose.
    entities = spans(tags, "IOB2")
    assert spans(tags, "IOB1") == entities
    assert convert(tags, "IOB2", "IOB2") == tags  # same scheme: a copy, not a normalisation
    assert convert(convert(tags, "IOB2", "BIOES"), "BIOES", "IOB2") == from_spans(entities, len(tags), "IOB2")
    for target in ("IOB1", "BIOES"):
        out = convert(tags, "IOB2", target)
        assert len(out) == len(tags)
        assert spans(out, target) == entities
        assert strict_spans(out, target) == entities
        for other in ("IOB1", "IOB2", "BIOES"):
            assert convert(out, target, other) == from_spans(entities, len(tags), other)
    # Entities are disjoint, in order, non-empty.
    ends = [0] + [e for _, s, e in entities]
    starts = [s for _, s, e in entities] + [len(tags)]
    assert all(a <= b for a, b in zip(ends, starts))
    assert all(s < e for _, s, e in entities)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TYPES), st.integers(1, 4), st.integers(0, 2)), max_size=8))
def test_random_entities_round_trip(layout):
    # Entities laid out with gaps (possibly 0: adjacent, same type included) survive every scheme.
    entities, position = [], 0
    for type_, length, gap in layout:
        position += gap
        entities.append((type_, position, position + length))
        position += length
    n = position + 1
    for scheme in ("IOB1", "IOB2", "BIOES"):
        tags = from_spans(entities, n, scheme)
        assert spans(tags, scheme) == entities
        assert strict_spans(tags, scheme) == entities


def test_strict_spans_match_seqeval_tokens():
    from seqeval.scheme import IOB1, IOB2, IOBES, Tokens

    cases = [
        (["O", "I-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"], IOB2, "IOB2"),
        (["B-PER", "I-LOC", "B-PER", "I-PER", "O"], IOB2, "IOB2"),
        (["B-PER", "I-PER", "O", "S-LOC", "B-ORG", "E-ORG", "I-ORG", "E-PER"], IOBES, "BIOES"),
        (["I-PER", "B-PER", "O", "B-LOC", "I-LOC", "I-ORG", "B-ORG"], IOB1, "IOB1"),
    ]
    for tags, cls, name in cases:
        expected = [(e.tag, e.start, e.end) for e in Tokens(tags, cls).entities]
        assert strict_spans(tags, name) == expected, (tags, name)


def test_scheme_names():
    assert schemes.normalize_scheme("bio") == "IOB2"
    assert schemes.normalize_scheme("IOBES") == "BIOES"
    assert [schemes.normalize_scheme(n) for n in ("ioe", "IOE1", "bioul", "Bmes")] == ["IOE2", "IOE1", "BILOU", "BMES"]
    with pytest.raises(ValueError, match="known schemes: IOB1, IOB2, IOE1, IOE2, BIOES, BILOU, BMES"):
        schemes.normalize_scheme("IOX")


# --- every scheme ------------------------------------------------------------------------------

# Two PER entities touching, a one-token LOC, a three-token ORG, a PER at the end.
EXAMPLES = {
    "IOB1": ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG", "I-PER"],
    "IOB2": ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG", "I-ORG", "B-PER"],
    "IOE1": ["I-PER", "E-PER", "I-PER", "O", "I-LOC", "I-ORG", "I-ORG", "I-ORG", "I-PER"],
    "IOE2": ["I-PER", "E-PER", "E-PER", "O", "E-LOC", "I-ORG", "I-ORG", "E-ORG", "E-PER"],
    "BIOES": ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "I-ORG", "E-ORG", "S-PER"],
    "BILOU": ["B-PER", "L-PER", "U-PER", "O", "U-LOC", "B-ORG", "I-ORG", "L-ORG", "U-PER"],
    "BMES": ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "M-ORG", "E-ORG", "S-PER"],
}
EXAMPLE_SPANS = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 8), ("PER", 8, 9)]


def test_known_examples_every_scheme():
    assert set(EXAMPLES) == set(SCHEMES)
    for source, tags in EXAMPLES.items():
        assert spans(tags, source) == EXAMPLE_SPANS, source
        assert from_spans(EXAMPLE_SPANS, len(tags), source) == tags, source
        validate(tags, source)
        for target, expected in EXAMPLES.items():
            assert convert(tags, source, target) == expected, (source, target)
            assert convert(tags, source.lower(), target.lower()) == expected
    for name, alias in (("IOB2", "BIO"), ("IOE2", "IOE"), ("BIOES", "IOBES"), ("BILOU", "BIOUL")):
        assert convert(EXAMPLES["IOB1"], "IOB1", alias) == EXAMPLES[name]


def test_strict_spans_agree_on_valid_tags():
    for name in ("IOB1", "IOB2", "IOE2", "BIOES", "BILOU"):
        assert strict_spans(EXAMPLES[name], name) == EXAMPLE_SPANS, name


def test_validate_leniency():
    # IOB1 takes B- at any entity start (CoNLL-2003 has two), IOE1 E- at any entity end.
    validate(["B-PER", "I-PER", "O"], "IOB1")
    validate(["O", "I-PER", "E-PER", "O"], "IOE1")
    assert not is_valid(["O", "I-PER"], "IOB2") and is_valid(["O", "I-PER"], "IOB1")
    assert not is_valid(["B-PER", "O"], "BIOES") and not is_valid(["B-PER", "M-PER"], "BMES")
    assert not is_valid(["I-PER", "M-PER"], "BMES")  # BMES has no I-
    assert is_valid([], "BIOES") and is_valid(["O", "O"], "BILOU")
    with pytest.raises(TagError) as info:
        validate(["O", "O", "S-ORG"], "IOB1")
    assert info.value.position == 2


def _layout(draw_layout):
    entities, position = [], 0
    for type_, length, gap in draw_layout:
        position += gap
        entities.append((type_, position, position + length))
        position += length
    return entities, position + 1


_LAYOUTS = st.lists(st.tuples(st.sampled_from(TYPES), st.integers(1, 4), st.integers(0, 2)), max_size=8)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_LAYOUTS)
def test_round_trips_every_pair(layout):
    # Random valid span sets: written in any scheme, they read back, validate, and convert to
    # every other scheme's own writing of the same spans; converting back gives the input.
    entities, n = _layout(layout)
    written = {name: from_spans(entities, n, name) for name in SCHEMES}
    for source, tags in written.items():
        assert spans(tags, source) == entities
        assert is_valid(tags, source)
        for target in SCHEMES:
            out = convert(tags, source, target)
            assert out == written[target], (source, target)
            assert convert(out, target, source) == tags


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_LAYOUTS, st.sampled_from(SCHEMES))
def test_detect_scheme_reads_the_same_entities(layout, scheme):
    entities, n = _layout(layout)
    tags = from_spans(entities, n, scheme)
    found = detect_scheme([tags])
    assert is_valid(tags, found)
    assert spans(tags, found) == entities
    assert convert(tags, found, scheme) == tags
    # The detected scheme is the written one unless the tags are ambiguous (see detect_scheme).
    if found != scheme:
        assert (scheme, found) in {("IOB1", "IOB2"), ("IOE1", "IOE2"), ("IOE1", "IOB1"), ("BMES", "BIOES"),
                                   ("IOB2", "IOB1"), ("IOE2", "IOB1"), ("IOE2", "IOB2")} or not entities, (scheme, found)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(_tags("BIESLUM"), max_size=4))
def test_detect_scheme_on_any_tags(sequences):
    # Any sequences, valid or not: detection returns a known scheme and never raises.
    found = detect_scheme(sequences)
    assert found in SCHEMES
    if all(is_valid(tags, found) for tags in sequences):
        for tags in sequences:
            assert convert(convert(tags, found, "IOB2"), "IOB2", found) == from_spans(spans(tags, found), len(tags),
                                                                                       found)


def test_detect_scheme_examples():
    assert detect_scheme([EXAMPLES["IOB1"], ["O"]]) == "IOB1"
    for name in ("IOB2", "IOE1", "IOE2", "BIOES", "BILOU", "BMES"):
        assert detect_scheme([EXAMPLES[name]]) == name
    assert detect_scheme([["O"], []]) == "IOB2" and detect_scheme([["O"]], default="bio") == "IOB2"
    assert detect_scheme([["O"]], default="iob1") == "IOB1"
    assert detect_scheme([["I-PER", "O"]]) == "IOB1"  # I- only: IOB1 (IOE1 reads the same)
    assert detect_scheme([["E-PER", "O"]]) == "IOE2"
    assert detect_scheme([["S-PER"]]) == "BIOES"  # S- only: BIOES (BMES reads the same)
    assert detect_scheme([["B-PER", "E-PER"]]) == "BIOES"
    assert detect_scheme([["U-PER"]]) == "BILOU"
    # Mixed: the scheme most sentences fit; validate finds the odd tag.
    mixed = [EXAMPLES["IOB1"]] * 3 + [["O", "S-ORG"]]
    assert detect_scheme(mixed) == "IOB1"
    assert detect_scheme([EXAMPLES["BIOES"]] * 3 + [["I-PER", "O"]]) == "BIOES"
    assert detect_scheme(iter([EXAMPLES["BILOU"]])) == "BILOU"  # any iterable, read once


def test_every_scheme_on_all_of_conll2003(conll_all):
    for iob1 in conll_all[::7]:
        entities = spans(iob1, "IOB1")
        for name in SCHEMES:
            out = convert(iob1, "IOB1", name)
            assert is_valid(out, name) and spans(out, name) == entities
            # (IOB1 -> IOB1 is a copy: the two sentences with a superfluous B- keep it)
            assert convert(out, name, "IOB1") == (iob1 if name == "IOB1" else from_spans(entities, len(iob1), "IOB1"))
    assert detect_scheme(conll_all) == "IOB1"
