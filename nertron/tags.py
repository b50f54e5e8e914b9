"""Tag schemes, in one place: names, chunking, conversion, strict spans and CRF transition rules.

Pure Python, no imports from the rest of nertron (and no torch): every layer may use it.

A tag is ``O`` or ``P-TYPE`` with a one-letter prefix ``P``. The schemes:

- **IOB1** (CoNLL-2003): ``I-T`` marks every token of an entity; ``B-T`` only starts an
  entity that directly follows another entity of the same type.
- **IOB2** (BIO): every entity starts with ``B-T``, continues with ``I-T``.
- **IOE1**: ``I-T`` marks every token; ``E-T`` only ends an entity that is directly followed
  by another entity of the same type (the mirror image of IOB1).
- **IOE2** (IOE): every entity ends with ``E-T``, its other tokens are ``I-T``.
- **BIOES** (IOBES): ``S-T`` single-token entity; ``B-T``, ``I-T``..., ``E-T`` otherwise.
- **BILOU** (BIOUL): BIOES with ``L-`` (last) for ``E-`` and ``U-`` (unit) for ``S-``.
- **BMES**: BIOES with ``M-`` (middle) for ``I-`` (AllenNLP's name; ``O`` is allowed here).

Every name is accepted in any case (``normalize_scheme``): IOB1, IOB2, BIO, IOE1, IOE2, IOE,
BIOES, IOBES, BILOU, BIOUL, BMES.

``spans`` decodes with the CoNLL ``conlleval`` chunk rules (``start_of_chunk``/``end_of_chunk``,
extended for ``S-`` and ``E-`` as in seqeval's default mode; ``L-``/``U-``/``M-`` read as
``E-``/``S-``/``I-``), which read every scheme and are lenient: an ``I-T`` after ``O`` or after
another type starts a new entity. So conversions are defined on any well-formed tag sequence,
and on valid input they round-trip exactly. ``validate`` says whether a sequence is valid in a
scheme (and where it is not); ``detect_scheme`` infers the scheme of a corpus.
``strict_spans`` follows seqeval's ``mode='strict'``: only entities valid under the scheme count
(it also reads IOE2 and BILOU).

CRF constraints (``nertron.bindings.crf.allowed_transitions``) use ``constraint_scheme`` (any
accepted name -> ``'BIO'``, ``'IOB1'`` or ``'BIOES'``; BILOU/BIOUL and BMES map to ``'BIOES'``,
their ``L-``/``U-``/``M-`` read as ``E-``/``S-``/``I-``; the IOE schemes have no constraint
rules), ``parse_label`` and ``allowed``.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

__all__ = [
    "Span", "SCHEMES", "STRICT_SCHEMES", "CONSTRAINT_SCHEMES", "CONLL_PREFIXES", "TagError",
    "normalize_scheme", "normalize_strict_scheme", "constraint_scheme", "scheme_prefixes", "split_tag",
    "start_of_chunk", "end_of_chunk", "spans", "conll_spans", "strict_spans", "from_spans", "convert",
    "validate", "is_valid", "detect_scheme", "SCHEME_NAMES",
    "iob1_to_iob2", "iob2_to_iob1", "iob2_to_bioes", "bioes_to_iob2", "parse_label", "allowed",
]

Span = tuple[str, int, int]  # (type, start, end) with ``end`` exclusive (a Python slice)

SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "BIOES", "BILOU", "BMES")
_ALIASES = {"IOB1": "IOB1", "IOB2": "IOB2", "BIO": "IOB2", "IOE1": "IOE1", "IOE2": "IOE2", "IOE": "IOE2",
            "BIOES": "BIOES", "IOBES": "BIOES", "BILOU": "BILOU", "BIOUL": "BILOU", "BMES": "BMES"}
SCHEME_NAMES = tuple(_ALIASES)  # every accepted name (any case)
_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "IOE1": "IE", "IOE2": "IE", "BIOES": "BIES", "BILOU": "BILU", "BMES": "BMES"}
# What each prefix means to the conlleval chunk rules (which know B, I, E and S).
_ROLE = {"L": "E", "U": "S", "M": "I"}
# Prefixes the conlleval rules understand (used by ``spans``, whatever the declared scheme).
CONLL_PREFIXES = frozenset("BIES")


class TagError(ValueError):
    """A tag that is not ``O`` or ``P-TYPE`` with a known prefix, or that breaks its scheme.

    ``position`` is the tag's index in its sentence when known (``None`` otherwise).
    """

    position: Optional[int] = None

    def __init__(self, message: str, position: Optional[int] = None):
        super().__init__(message)
        self.position = position


# --- scheme names ------------------------------------------------------------------------------

def normalize_scheme(scheme: str) -> str:
    """Canonical name of a scheme (``'BIO'`` -> ``'IOB2'``, ``'IOBES'`` -> ``'BIOES'``), any case.

    Raises:
        ValueError: unknown scheme, naming the known ones.
    """
    try:
        return _ALIASES[scheme.upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown tag scheme {scheme!r}; known schemes: {', '.join(SCHEMES)} "
                         f"(aliases BIO = IOB2, IOE = IOE2, IOBES = BIOES, BIOUL = BILOU; any case)") from None


def scheme_prefixes(scheme: str) -> frozenset[str]:
    """Prefixes a scheme's tags may carry: ``B``/``I`` for IOB1 and IOB2, ``I``/``E`` for IOE1 and
    IOE2, ``B``/``I``/``E``/``S`` for BIOES, ``B``/``I``/``L``/``U`` for BILOU, ``B``/``M``/``E``/``S``
    for BMES."""
    return frozenset(_PREFIXES[normalize_scheme(scheme)])


# Constraint schemes: the rule sets of ``allowed``. BILOU (also written BIOUL) and BMES share
# BIOES's rules: ``parse_label`` reads their ``L-``/``U-``/``M-`` as ``E-``/``S-``/``I-``.
CONSTRAINT_SCHEMES = ("BIO", "IOB1", "BIOES")
_CONSTRAINT = {"IOB1": "IOB1", "IOB2": "BIO", "BIOES": "BIOES", "BILOU": "BIOES", "BMES": "BIOES"}


def constraint_scheme(scheme: str) -> str:
    """The CRF-constraint scheme of any accepted scheme name, any case.

    ``IOB2``/``BIO`` -> ``'BIO'``; ``IOB1`` -> ``'IOB1'``; ``BIOES``/``IOBES``/``BILOU``/``BIOUL``/``BMES``
    -> ``'BIOES'`` (the argument ``parse_label`` and ``allowed`` take). AllenNLP's names
    (``BIO``, ``IOB1``, ``BIOUL``, ``BMES``) all work; unlike AllenNLP's BMES (which has no
    ``O``), an ``O`` label may come between BMES entities here.

    Raises:
        ValueError: unknown scheme, or IOE1/IOE2 (no constraint rules for them).
    """
    name = normalize_scheme(scheme)
    if name not in _CONSTRAINT:
        raise ValueError(f"no CRF constraint rules for tag scheme {scheme!r}; constrained decoding supports "
                         f"IOB1, IOB2 (BIO), BIOES (IOBES), BILOU (BIOUL) and BMES")
    return _CONSTRAINT[name]


# --- tags and the conlleval chunk rules --------------------------------------------------------

def split_tag(tag: str, prefixes: frozenset[str] = CONLL_PREFIXES) -> tuple[str, str]:
    """``'B-PER'`` -> ``('B', 'PER')``; ``'O'`` -> ``('O', '')``.

    The type is everything after the first ``-`` (ATIS types contain dots, others dashes).

    Raises:
        TagError: not ``O``, no ``-``, empty type or a prefix outside ``prefixes``.
    """
    if tag == "O":
        return "O", ""
    if len(tag) < 3 or tag[1] != "-" or tag[0] not in prefixes:
        raise TagError(f"bad tag {tag!r}: expected 'O' or P-TYPE with P in {''.join(sorted(prefixes))}")
    return tag[0], tag[2:]


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk ends before the current token (prefixes and types of the previous and
    current tokens, ``'O'``/``''`` for outside)."""
    # conlleval.pl endOfChunk, with the S/E rules of seqeval's (and conlleval.py's) port so
    # that BIOES is read right (the Perl original joins S-T S-T into one chunk).
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != type_


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk starts at the current token (arguments as in ``end_of_chunk``)."""
    # conlleval.pl startOfChunk, extended likewise.
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != type_


def spans(tags: Sequence[str], scheme: str = "IOB2") -> list[Span]:
    """Entities of a tag sequence by the conlleval chunk rules.

    Args:
        tags: one sentence's tags.
        scheme: any scheme name; checks the prefixes (``scheme_prefixes``); the chunk rules
            themselves read every scheme the same way (``L-``/``U-``/``M-`` as ``E-``/``S-``/``I-``).
            Use ``validate`` to check the sequence is valid in the scheme, not just its prefixes.
    Returns:
        ``[(type, start, end), ...]`` in order, ``end`` exclusive.
    Raises:
        TagError: a tag with a prefix the scheme does not use, naming its position.
    """
    return conll_spans(tags, scheme_prefixes(scheme))


def conll_spans(tags: Sequence[str], prefixes: frozenset[str] = CONLL_PREFIXES) -> list[Span]:
    """Entities by the conlleval chunk rules, whatever the scheme (tags with any of ``prefixes``;
    ``L``/``U``/``M`` among them read as ``E``/``S``/``I``).

    Raises:
        TagError: a tag with a prefix outside ``prefixes``, naming its position.
    """
    result: list[Span] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        try:
            prefix, type_ = split_tag(tag, prefixes)
        except TagError as err:
            raise TagError(f"position {i}: {err}", i) from None
        prefix = _ROLE.get(prefix, prefix)
        if end_of_chunk(prev_tag, prefix, prev_type, type_):
            result.append((prev_type, begin, i))
        if start_of_chunk(prev_tag, prefix, prev_type, type_):
            begin = i
        prev_tag, prev_type = prefix, type_
    return result


# --- conversions -------------------------------------------------------------------------------

def from_spans(entities: Sequence[Span], length: int, scheme: str = "IOB2") -> list[str]:
    """Tags of ``length`` tokens holding the given (non-overlapping, sorted) entities.

    Args:
        entities: ``(type, start, end)`` with ``end`` exclusive.
        length: number of tokens.
        scheme: the output scheme (any name).
    Returns:
        The canonical tags of the entities in ``scheme`` (IOB1: ``B-`` only where an entity
        touches a previous one of its type; IOE1: ``E-`` only where one touches the next).
    """
    scheme = normalize_scheme(scheme)
    tags = ["O"] * length
    entities = list(entities)
    for k, (type_, start, end) in enumerate(entities):
        n = end - start
        if scheme in ("IOB1", "IOB2"):
            touches = k > 0 and entities[k - 1][2] == start and entities[k - 1][0] == type_
            first = "B" if scheme == "IOB2" or touches else "I"
            tags[start:end] = [f"{first}-{type_}"] + [f"I-{type_}"] * (n - 1)
        elif scheme in ("IOE1", "IOE2"):
            touches = k + 1 < len(entities) and entities[k + 1][1] == end and entities[k + 1][0] == type_
            last = "E" if scheme == "IOE2" or touches else "I"
            tags[start:end] = [f"I-{type_}"] * (n - 1) + [f"{last}-{type_}"]
        else:
            b, i, e, single = {"BIOES": "BIES", "BILOU": "BILU", "BMES": "BMES"}[scheme]
            if n == 1:
                tags[start] = f"{single}-{type_}"
            else:
                tags[start:end] = [f"{b}-{type_}"] + [f"{i}-{type_}"] * (n - 2) + [f"{e}-{type_}"]
    return tags


def convert(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Convert one sentence's tags between any two schemes (same entities).

    Args:
        tags: the tags, in ``source``.
        source: scheme of ``tags`` (any name of ``SCHEME_NAMES``).
        target: scheme wanted.
    Returns:
        A new list (a copy when ``source == target``): the canonical tags of the entities
        ``spans`` reads (so lenient input, e.g. IOB2's ``O I-T``, comes out valid).
    Raises:
        TagError: a prefix ``source`` does not use; ValueError: an unknown scheme.
    """
    source, target = normalize_scheme(source), normalize_scheme(target)
    if source == target:
        spans(tags, source)  # still validate
        return list(tags)
    return from_spans(spans(tags, source), len(tags), target)


_RULES = {
    "IOB1": "I-T marks entity tokens; B-T starts an entity only right after another T entity",
    "IOB2": "every entity starts with B-T and continues with I-T",
    "IOE1": "I-T marks entity tokens; E-T ends an entity only right before another T entity",
    "IOE2": "every entity ends with E-T, its other tokens are I-T",
    "BIOES": "a one-token entity is S-T, a longer one B-T I-T... E-T",
    "BILOU": "a one-token entity is U-T, a longer one B-T I-T... L-T",
    "BMES": "a one-token entity is S-T, a longer one B-T M-T... E-T",
}


def validate(tags: Sequence[str], scheme: str) -> None:
    """Check that a sentence's tags are valid in ``scheme``.

    Valid means: every prefix is one the scheme uses, and the tags are the scheme's own
    writing (``from_spans``) of the entities they hold, with the leniency real corpora need:
    IOB1 also accepts ``B-T`` at the start of any entity (CoNLL-2003 has two; conlleval reads
    them the same), IOE1 ``E-T`` at the end of any entity.

    Raises:
        TagError: the first tag that breaks the scheme, with ``position`` set and the rule in
            the message (e.g. ``'S-ORG'`` in IOB1, ``I-PER`` after ``O`` in IOB2, ``B-PER O`` in BIOES).
    """
    name = normalize_scheme(scheme)
    tags = list(tags)
    prefixes = _PREFIXES[name]
    for i, tag in enumerate(tags):
        try:
            split_tag(tag, frozenset(prefixes))
        except TagError:
            if tag != "O" and len(tag) >= 3 and tag[1] == "-" and tag[0] in "BIESLUM":
                raise TagError(f"position {i}: tag {tag!r} is not a {name} tag ({name} prefixes: "
                               f"{', '.join(prefixes)}): {_RULES[name]}", i) from None
            raise TagError(f"position {i}: bad tag {tag!r}: expected 'O' or P-TYPE with P in {prefixes} "
                           f"({name})", i) from None
    entities = spans(tags, name)
    canonical = from_spans(entities, len(tags), name)
    if canonical == tags:
        return
    starts = {start for _, start, _ in entities}
    ends = {end - 1 for _, _, end in entities}
    for i, (tag, want) in enumerate(zip(tags, canonical)):
        if tag == want:
            continue
        if name == "IOB1" and i in starts and tag == "B" + want[1:]:
            continue
        if name == "IOE1" and i in ends and tag == "E" + want[1:]:
            continue
        raise TagError(f"position {i}: tag {tag!r} breaks {name} (expected {want!r}): {_RULES[name]}", i)


def is_valid(tags: Sequence[str], scheme: str) -> bool:
    """Whether ``validate(tags, scheme)`` passes."""
    try:
        validate(tags, scheme)
    except TagError:
        return False
    return True


# Preference order of detect_scheme among the schemes a corpus is valid in.
_DETECT_ORDER = ("IOB2", "IOB1", "IOE2", "IOE1", "BIOES", "BILOU", "BMES")


def detect_scheme(tag_sequences: Iterable[Sequence[str]], default: str = "IOB2") -> str:
    """Infer the scheme of a corpus (its sentences' tag sequences) from its tags.

    The result is the first scheme of IOB2, IOB1, IOE2, IOE1, BIOES, BILOU, BMES in which every
    sentence is valid (``validate``). In effect:

    - ``U-``/``L-`` -> BILOU; ``M-`` -> BMES; ``S-``, or ``B-`` with ``E-`` -> BIOES;
    - ``E-`` without ``B-``/``S-`` -> IOE: IOE1 if some entity ends in ``I-`` (or ``E-`` only
      between touching entities of one type), else IOE2;
    - ``B-``/``I-`` only: IOB1 if some entity starts with ``I-`` (after ``O``, another type or at
      the sentence start), else IOB2;
    - only ``O`` (no evidence at all): ``default`` (normalised).

    Ambiguous cases, where the pick does not matter because every candidate reads the same
    entities: B/I tags that never start an entity with ``I-`` are valid IOB2 and IOB1 (IOB2
    is picked); ``I-`` only is valid IOB1 and IOE1 (IOB1); ``E-`` only is valid IOE2 and IOE1
    (IOE2); ``S-`` only, or ``B-``/``E-`` without ``I-``, is valid BIOES and BMES (BIOES).

    A corpus that mixes schemes is valid in none: the result is then the scheme the most
    sentences are valid in (ties in the order above), and ``validate`` with it finds the
    tags that do not fit (e.g. the one ``S-ORG`` of an IOB1 file).

    Args:
        tag_sequences: the sentences' tags (iterated once).
        default: the answer when no tag tells (only ``O``).
    Raises:
        ValueError: unknown ``default``.
    """
    default = normalize_scheme(default)
    sequences = [list(tags) for tags in tag_sequences]
    seen = {tag[0] for tags in sequences for tag in tags if tag != "O"}
    if not seen:
        return default
    candidates = [name for name in _DETECT_ORDER if seen <= set(_PREFIXES[name])]
    for name in candidates:
        if all(is_valid(tags, name) for tags in sequences):
            return name
    # Mixed: the scheme the most sentences fit.
    invalid = {name: sum(not is_valid(tags, name) for tags in sequences) for name in _DETECT_ORDER}
    return min(_DETECT_ORDER, key=lambda name: (invalid[name], _DETECT_ORDER.index(name)))


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 -> IOB2 (a no-op on tags already in valid IOB2)."""
    return convert(tags, "IOB1", "IOB2")


def iob2_to_iob1(tags: Sequence[str]) -> list[str]:
    """IOB2 -> IOB1."""
    return convert(tags, "IOB2", "IOB1")


def iob2_to_bioes(tags: Sequence[str]) -> list[str]:
    """IOB2 -> BIOES."""
    return convert(tags, "IOB2", "BIOES")


def bioes_to_iob2(tags: Sequence[str]) -> list[str]:
    """BIOES -> IOB2."""
    return convert(tags, "BIOES", "IOB2")


# --- strict spans (seqeval mode='strict') ------------------------------------------------------
# A port of seqeval.scheme: each scheme is (allowed prefixes, start, inside, end patterns), a
# pattern being (previous prefixes, current prefixes, type condition). '*' = any prefix.
_ANY = "BIOESLU"
_STRICT = {
    "IOB1": ("IOB",
             {("O", "I", "any"), ("I", "I", "diff"), ("B", "I", "any"), ("I", "B", "same"), ("B", "B", "same")},
             {("B", "I", "same"), ("I", "I", "same")},
             {("I", "I", "diff"), ("I", "O", "any"), ("I", "B", "any"), ("B", "O", "any"), ("B", "I", "diff"),
              ("B", "B", "same")}),
    "IOB2": ("IOB",
             {(_ANY, "B", "any")},
             {("B", "I", "same"), ("I", "I", "same")},
             {("I", "O", "any"), ("I", "I", "diff"), ("I", "B", "any"), ("B", "O", "any"), ("B", "I", "diff"),
              ("B", "B", "any")}),
    "IOE2": ("IOE",
             {("O", "I", "any"), ("O", "E", "any"), ("E", "I", "any"), ("E", "E", "any"), ("I", "I", "diff"),
              ("I", "E", "diff")},
             {("I", "E", "same"), ("I", "I", "same")},
             {("E", _ANY, "any")}),
    "BIOES": ("IOBES",
              {(_ANY, "B", "any"), (_ANY, "S", "any")},
              {("B", "I", "same"), ("B", "E", "same"), ("I", "I", "same"), ("I", "E", "same")},
              {("S", _ANY, "any"), ("E", _ANY, "any")}),
    "BILOU": ("BILOU",
              {(_ANY, "B", "any"), (_ANY, "U", "any")},
              {("B", "I", "same"), ("B", "L", "same"), ("I", "I", "same"), ("I", "L", "same")},
              {("U", _ANY, "any"), ("L", _ANY, "any")}),
}
STRICT_SCHEMES = tuple(_STRICT)


def normalize_strict_scheme(scheme: str) -> str:
    """Canonical name of a scheme strict mode reads: one of ``STRICT_SCHEMES``, any case, with
    the aliases ``BIO`` = IOB2 and ``IOBES`` = BIOES.

    Raises:
        ValueError: a scheme strict mode does not support, naming the supported ones.
    """
    name = _ALIASES.get(scheme.upper(), scheme.upper()) if isinstance(scheme, str) else scheme
    if name not in STRICT_SCHEMES:
        raise ValueError(f"strict mode does not support scheme {scheme!r}; supported: {', '.join(STRICT_SCHEMES)}")
    return name


def _matches(prev: tuple[str, str], cur: tuple[str, str], patterns) -> bool:
    for prev_prefixes, cur_prefixes, cond in patterns:
        if prev[0] in prev_prefixes and cur[0] in cur_prefixes:
            if cond == "any" or (cond == "same") == (prev[1] == cur[1]):
                return True
    return False


def strict_spans(tags: Sequence[str], scheme: str = "IOB2") -> list[Span]:
    """Entities valid under ``scheme``, as seqeval's ``mode='strict'`` finds them.

    An entity counts only if it starts, continues and ends by the scheme's rules (IOB2:
    ``I-T`` after ``O`` is no entity; BIOES: ``B-T I-T O`` is none).

    Args:
        tags: one sentence's tags.
        scheme: one of ``IOB1``, ``IOB2`` (``BIO``), ``IOE2``, ``BIOES`` (``IOBES``), ``BILOU``:
            the schemes seqeval's strict mode reads (its IOE1 is marked unfinished, so not here).
    Returns:
        ``[(type, start, end), ...]``, ``end`` exclusive.
    Raises:
        ValueError: unsupported scheme; TagError: a prefix the scheme does not allow.
    """
    name = normalize_strict_scheme(scheme)
    allowed_prefixes, start_p, inside_p, end_p = _STRICT[name]
    outside = ("O", "_")
    tokens = []
    for i, tag in enumerate(tags):
        try:
            prefix, type_ = split_tag(tag, frozenset(allowed_prefixes) - {"O"})
        except TagError as err:
            raise TagError(f"position {i}: {err} (scheme {name})", i) from None
        tokens.append((prefix, type_ or "_"))
    tokens.append(outside)
    # Same walk as seqeval.scheme.Tokens.entities, including where it resumes after a span.
    result: list[Span] = []
    i, prev = 0, outside
    while i < len(tokens):
        token = tokens[i]
        if _matches(prev, token, start_p):
            end, inner = i + 1, token
            while end < len(tokens) and _matches(inner, tokens[end], inside_p):
                inner = tokens[end]
                end += 1
            if end == len(tokens):  # unreachable: the final O is never inside
                end = len(tokens) - 2
            if _matches(tokens[end - 1], tokens[end], end_p):
                result.append((token[1], i, end))
            i = end
        else:
            i += 1
        prev = tokens[i - 1]
    return result


# --- transition rules for CRF constraints ------------------------------------------------------
# Unlike ``split_tag``, these never raise: a label outside the scheme (e.g. '[PAD]') parses as
# ('?', None) and is left unconstrained.

def parse_label(label: str, scheme: str) -> Tuple[str, Optional[str]]:
    """``'B-PER'`` -> ``('B', 'PER')``; ``'O'`` -> ``('O', None)``; others -> ``('?', None)``.

    Args:
        label: a tag name.
        scheme: a constraint scheme (``constraint_scheme``): ``'BIO'``, ``'IOB1'`` or ``'BIOES'``.
            BIOES also reads BILOU's ``L-``/``U-`` as ``E-``/``S-`` and BMES's ``M-`` as ``I-``.
    """
    if label == "O":
        return "O", None
    prefix, sep, kind = label.partition("-")
    if sep and prefix:
        if scheme == "BIOES":
            prefix = _ROLE.get(prefix, prefix)
            if prefix in ("B", "I", "E", "S"):
                return prefix, kind
        elif prefix in ("B", "I"):
            return prefix, kind
    return "?", None


def allowed(prev: Tuple[str, Optional[str]], nxt: Tuple[str, Optional[str]], scheme: str) -> bool:
    """Whether label ``nxt`` may follow label ``prev`` (both from ``parse_label``) in ``scheme``.

    The sequence's start and end act as ``('O', None)``; ``'?'`` labels are unconstrained.
    """
    (p, pk), (n, nk) = prev, nxt
    if p == "?" or n == "?":  # labels outside the scheme (e.g. '[PAD]') are unconstrained
        return True
    if scheme == "BIO":
        return n in ("O", "B") or (n == "I" and p in ("B", "I") and pk == nk)
    if scheme == "IOB1":
        return n in ("O", "I") or (n == "B" and p in ("B", "I") and pk == nk)
    # BIOES: inside an entity (after B or I) only I/E of the same type may follow
    if p in ("B", "I"):
        return n in ("I", "E") and pk == nk
    return n in ("O", "B", "S")
