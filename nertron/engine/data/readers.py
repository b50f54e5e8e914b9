"""Streaming readers for the NER corpora nertron trains on.

Each reader is a generator of ``Sentence`` read line by line (UTF-8); malformed input
(invalid UTF-8 included) raises ``DataFormatError`` naming the file and line
(``eng.train:1234: ...``), and a file with no sentence raises ``DataFormatError('no sentences in ...')``.

Tag schemes: ``read_conll``, ``read_atis`` and ``read_csv`` take ``tag_scheme``, the scheme of
the file (any name ``nertron.tags.normalize_scheme`` accepts: IOB1, IOB2/BIO, IOE1, IOE2/IOE,
BIOES/IOBES, BILOU/BIOUL, BMES); ``None`` detects it per file (``nertron.tags.detect_scheme``,
one extra pass over the file). Every sentence is checked against the scheme
(``nertron.tags.validate``): a tag the scheme does not allow, e.g. an ``S-`` tag in an IOB1
file or in a file whose other tags say IOB1, raises ``DataFormatError`` at its line. The
readers yield the tags as in the file; ``Dataset.scheme`` says which scheme they are in, and
``NerData`` converts them to the model's scheme.

Formats:

- ``read_conll``: CoNLL-2003 columns ``word POS chunk NER`` (any fixed column count >= 2, the
  NER tag last), blank lines between sentences, ``-DOCSTART-`` lines between documents.
  Tags as in the file (IOB1 for CoNLL-2003: detected as such).
- ``read_atis``: ``BOS w1 .. wn EOS<TAB>O t1 .. tn INTENT``; the ``O`` of BOS is dropped, EOS
  has no tag, the intent (``a#b`` for several) goes to ``Sentence.intent``. Tags IOB2 (detected).
- ``read_factrueval``: FactRuEval-2016 ``book_N.tokens/.spans/.objects`` -> PER/ORG/LOC in IOB2
  (see ``read_factrueval`` for the choices made and the counts it reports).
- ``read_csv``: the seed's CSV/TSV: a header with columns ``labels`` and ``text`` (and
  optionally ``cls``, the sentence class), space-separated labels and tokens of equal count;
  the continuation label ``X`` is allowed anywhere and ignored by the scheme checks.

``read_dataset(path, format='auto')`` picks the reader and returns a re-iterable ``Dataset``
that also tells the tag scheme of the file.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from nertron.tags import TagError, detect_scheme, normalize_scheme, validate

__all__ = ["Sentence", "DataFormatError", "Dataset", "read_conll", "read_atis", "read_factrueval",
           "read_csv", "read_dataset", "detect_format", "conll_scheme", "atis_scheme", "csv_scheme",
           "FACTRUEVAL_TYPES", "FORMATS"]

FORMATS = ("conll", "atis", "factrueval", "csv")

# FactRuEval object type -> NER type. LocOrg (a place acting as an organisation, "Moscow
# decided") counts as LOC, as in the FactRuEval NER track; Project and Facility (2 objects in
# the corpus, not in its guidelines' NER types) are dropped and counted in the reader's stats.
FACTRUEVAL_TYPES = {"Person": "PER", "Org": "ORG", "Location": "LOC", "LocOrg": "LOC"}


@dataclass
class Sentence:
    """One sentence: words, one tag per word, and the sentence's intent/class if any."""

    words: list[str]
    tags: list[str]
    intent: str | None = None
    doc_id: str | None = None  # document within the source (CoNLL: running number; FactRuEval: book)
    source: str | None = None  # "path:line" of the sentence's first line

    def __post_init__(self) -> None:
        if len(self.words) != len(self.tags):
            raise ValueError(f"{len(self.words)} words but {len(self.tags)} tags")


class DataFormatError(ValueError):
    """Malformed input, with the file and (1-based) line where it was found (line 0: the file)."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path = Path(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line else str(self.path)
        super().__init__(f"{where}: {message}")


_NEWLINE = re.compile(r"(\r\n|\r|\n)")
IGNORE_TAG = "X"  # the CSV continuation label (nertron.engine.data.vocab.IGNORE_LABEL)


def _lines(path: Path, keepends: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based number, text) of a file's lines, split as text mode splits them (``\n``, ``\r\n``
    or ``\r``), decoded as UTF-8.

    Raises:
        DataFormatError: invalid UTF-8, naming the line (and the column of the bad byte).
    """
    number = 0
    with open(path, "rb") as stream:
        for raw in stream:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                before = raw[:err.start].decode("utf-8", "replace")
                pieces = _NEWLINE.split(before)
                line = number + 1 + len(pieces) // 2
                raise DataFormatError(path, line, f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                                                  f"{len(pieces[-1]) + 1}): the file must be UTF-8") from None
            if "\r" not in text:  # the common case: one line
                number += 1
                yield number, text if keepends or not text.endswith("\n") else text[:-1]
                continue
            pieces = _NEWLINE.split(text)  # [line, end, line, end, ..., rest]
            for k in range(0, len(pieces) - 1, 2):
                number += 1
                yield number, pieces[k] + pieces[k + 1] if keepends else pieces[k]
            if pieces[-1]:
                number += 1
                yield number, pieces[-1]


def _scheme(tag_scheme: str | None) -> str | None:
    """The canonical name of a given scheme (``None`` stays ``None``: detect)."""
    return None if tag_scheme is None else normalize_scheme(tag_scheme)


def _check_scheme(tags: list[str], scheme: str, detected: bool, path: Path, line_of, allow_x: bool = False) -> None:
    """Validate one sentence's tags against the file's scheme (``X`` left out if ``allow_x``).

    ``line_of(position)`` gives the file line of the tag at ``position`` of ``tags``.
    """
    kept = [i for i, tag in enumerate(tags) if not (allow_x and tag == IGNORE_TAG)]
    try:
        validate([tags[i] for i in kept], scheme)
    except TagError as err:
        position = kept[err.position] if err.position is not None and err.position < len(kept) else 0
        reason = re.sub(r"^position \d+: ", "", str(err))
        how = (f"the file's scheme is {scheme}, detected from its other tags: a file must keep to one scheme"
               if detected else f"tag_scheme {scheme} was given")
        raise DataFormatError(path, line_of(position), f"{reason} ({how})") from None


def _detect(records: Iterator, default: str, allow_x: bool = False) -> str:
    """The scheme of the records' tags (``records`` yields tuples whose second item is the tags),
    read until the end or the first malformed line (which the reading pass reports in its place)."""
    sequences = []
    try:
        for record in records:
            sequences.append([tag for tag in record[1] if not (allow_x and tag == IGNORE_TAG)])
    except DataFormatError:
        pass
    return detect_scheme(sequences, default=default)


def _no_sentences(path: Path) -> DataFormatError:
    return DataFormatError(path, 0, f"no sentences in {path}")


# --- CoNLL ------------------------------------------------------------------------------------


def read_conll(path: str | Path, columns: int | None = None, tag_scheme: str | None = None) -> Iterator[Sentence]:
    """Sentences of a CoNLL column file (CoNLL-2003: ``word POS chunk NER``).

    Args:
        path: the file.
        columns: expected columns per token line; ``None`` takes the first token line's count.
        tag_scheme: the file's tag scheme (any accepted name); ``None`` detects it
            (``conll_scheme``; IOB1 when the file has only ``O`` tags).
    Yields:
        ``Sentence`` with the first column as words, the last as tags (as in the file);
        ``doc_id`` counts ``-DOCSTART-`` documents ("0" before the first one).
    Raises:
        DataFormatError: a line with another column count, fewer than 2 columns, invalid
            UTF-8, a bad tag, a tag that breaks the scheme (e.g. ``S-ORG`` in an IOB1 file),
            or no sentence at all.
        ValueError: an unknown ``tag_scheme`` (at the first ``next``).
    """
    path = Path(path)
    scheme = _scheme(tag_scheme)
    yield from _read_conll(path, columns, scheme or conll_scheme(path, columns), scheme is None)


def conll_scheme(path: str | Path, columns: int | None = None) -> str:
    """The detected tag scheme of a CoNLL file (IOB1 when only ``O`` tags tell nothing)."""
    return _detect(_conll_records(Path(path), columns), "IOB1")


def _read_conll(path: Path, columns: int | None, scheme: str, detected: bool) -> Iterator[Sentence]:
    for words, tags, doc, start in _conll_records(path, columns):
        # A sentence's token lines are consecutive: tag k is on line start + k.
        _check_scheme(tags, scheme, detected, path, lambda k: start + k)
        yield Sentence(words, tags, doc_id=str(doc), source=f"{path}:{start}")


def _conll_records(path: Path, columns: int | None) -> Iterator[tuple[list[str], list[str], int, int]]:
    """(words, tags, document number, first line) of each sentence; checks the columns."""
    words: list[str] = []
    tags: list[str] = []
    doc, start, count = 0, 0, 0
    for number, line in _lines(path):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                yield words, tags, doc, start
                words, tags, count = [], [], count + 1
            if fields:
                doc += 1
            continue
        if columns is None:
            if len(fields) < 2:
                raise DataFormatError(path, number, f"expected at least 2 columns (word ... tag), got {len(fields)}")
            columns = len(fields)
        if len(fields) != columns:
            raise DataFormatError(path, number, f"expected {columns} columns, got {len(fields)}")
        if not words:
            start = number
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        yield words, tags, doc, start
        count += 1
    if not count:
        raise _no_sentences(path)


# --- ATIS -------------------------------------------------------------------------------------


def read_atis(path: str | Path, tag_scheme: str | None = None) -> Iterator[Sentence]:
    """Utterances of an ATIS ``.iob`` file with their intents.

    Args:
        path: a file of lines ``BOS w1 .. wn EOS<TAB>O t1 .. tn INTENT``.
        tag_scheme: the file's tag scheme; ``None`` detects it (``atis_scheme``; IOB2 for the
            ATIS corpora, and when only ``O`` tags tell nothing).
    Yields:
        ``Sentence(words=[w1..wn], tags=[t1..tn], intent=INTENT)``.
    Raises:
        DataFormatError: no tab, missing BOS/EOS, tag count != word count, BOS tag not O,
            invalid UTF-8, bad tag, a tag that breaks the scheme, or no utterance.
        ValueError: an unknown ``tag_scheme``.
    """
    path = Path(path)
    scheme = _scheme(tag_scheme)
    yield from _read_atis(path, scheme or atis_scheme(path), scheme is None)


def atis_scheme(path: str | Path) -> str:
    """The detected tag scheme of an ATIS file (IOB2 when only ``O`` tags tell nothing)."""
    return _detect(_atis_records(Path(path)), "IOB2")


def _read_atis(path: Path, scheme: str, detected: bool) -> Iterator[Sentence]:
    for words, tags, intent, number in _atis_records(path):
        _check_scheme(tags, scheme, detected, path, lambda k: number)
        yield Sentence(words, tags, intent=intent, source=f"{path}:{number}")


def _atis_records(path: Path) -> Iterator[tuple[list[str], list[str], str, int]]:
    """(words, word tags, intent, line) of each utterance; checks the layout."""
    count = 0
    for number, line in _lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataFormatError(path, number, f"expected 'BOS words EOS<TAB>tags INTENT' (one tab), "
                                                f"got {len(parts) - 1} tabs")
        words, tags = parts[0].split(), parts[1].split()
        if len(words) < 2 or words[0] != "BOS" or words[-1] != "EOS":
            raise DataFormatError(path, number, "the words must start with BOS and end with EOS")
        if len(tags) < 2:
            raise DataFormatError(path, number, "expected the BOS tag O, word tags and an intent")
        # Fields: BOS w1..wn EOS  vs  O t1..tn INTENT -> equal counts.
        if len(tags) != len(words):
            raise DataFormatError(path, number, f"{len(words) - 2} words but {len(tags) - 2} tags "
                                                f"(expected one tag per word plus O for BOS and the intent)")
        if tags[0] != "O":
            raise DataFormatError(path, number, f"the BOS tag must be O, got {tags[0]!r}")
        yield words[1:-1], tags[1:-1], tags[-1], number
        count += 1
    if not count:
        raise _no_sentences(path)


# --- FactRuEval-2016 --------------------------------------------------------------------------


def read_factrueval(directory: str | Path, stats: Counter | None = None) -> Iterator[Sentence]:
    """Sentences of a FactRuEval-2016 split with PER/ORG/LOC tags (IOB2).

    Per document ``book_N``: ``.tokens`` (``token_id offset length text``, blank line between
    sentences), ``.spans`` (``span_id type offset length first_token_id n_tokens  # ...``: the
    span covers ``n_tokens`` tokens from ``first_token_id`` in file order) and ``.objects``
    (``object_id TYPE span_id ...  # ...``). An object's tokens are the union of its spans'
    tokens; ``B-`` goes on the first token of each contiguous run (within a sentence).

    Choices, all counted in ``stats`` so nothing is lost silently:

    - types map by ``FACTRUEVAL_TYPES`` (LocOrg -> LOC); other types (Project, Facility) are
      dropped: ``stats['dropped_type:Project']`` etc.;
    - objects overlap (``Org`` "мэрии Москвы" holds ``LocOrg`` "Москвы"); flat tags keep the
      outer entity: objects are placed longest first, and one that shares a token with an
      object already placed is dropped: ``stats['dropped_overlap']``.

    Args:
        directory: a split folder (``devset``/``testset``) or a single ``book_N`` path prefix.
        stats: a Counter to update: ``documents``, ``sentences``, ``objects``, ``tagged``,
            ``dropped`` (all dropped objects), ``dropped_type:TYPE``, ``dropped_overlap``.
    Raises:
        DataFormatError: malformed lines, a span naming an unknown token, an object naming
            an unknown span, tokens not in increasing order, or no sentence at all.
    """
    directory = Path(directory)
    stats = Counter() if stats is None else stats
    if directory.is_dir():
        books = sorted(directory.glob("*.tokens"), key=_book_key)
    else:
        books = [directory.with_suffix(".tokens")]
    count = 0
    for tokens_path in books:
        for sentence in _read_book(tokens_path, stats):
            count += 1
            yield sentence
    if not count:
        raise _no_sentences(directory)


def _book_key(path: Path) -> tuple:
    # book_2 before book_10.
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def _fields(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields before any '#' comment) of non-blank lines."""
    for number, line in _lines(path):
        fields = line.split("#", 1)[0].split()
        if fields:
            yield number, fields


def _int(value: str, path: Path, line: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataFormatError(path, line, f"{what} must be an integer, got {value!r}") from None


def _read_book(tokens_path: Path, stats: Counter) -> Iterator[Sentence]:
    doc_id = tokens_path.stem
    base = tokens_path.with_suffix("")
    # Tokens: a sentence is a block between blank lines.
    words: list[str] = []
    index: dict[int, int] = {}  # token id -> position in the document
    sentence_of: list[int] = []  # position -> sentence number
    starts: list[int] = []  # sentence number -> its first line (for Sentence.source)
    sentence, last_offset, pending_break = 0, -1, False
    for number, line in _lines(tokens_path):
        fields = line.split()
        if not fields:
            pending_break = bool(words)
            continue
        if len(fields) != 4:
            raise DataFormatError(tokens_path, number, f"expected 4 fields (token_id offset length text), got {len(fields)}")
        token_id = _int(fields[0], tokens_path, number, "token_id")
        offset = _int(fields[1], tokens_path, number, "offset")
        _int(fields[2], tokens_path, number, "length")
        if token_id in index:
            raise DataFormatError(tokens_path, number, f"duplicate token id {token_id}")
        if offset <= last_offset:
            raise DataFormatError(tokens_path, number, f"token offset {offset} not after the previous token's")
        last_offset = offset
        if pending_break or not starts:
            if starts:
                sentence += 1
            starts.append(number)
            pending_break = False
        index[token_id] = len(words)
        words.append(fields[3])
        sentence_of.append(sentence)
    if not words:
        return
    stats["documents"] += 1
    # Spans: span id -> token positions.
    span_tokens: dict[int, list[int]] = {}
    spans_path = base.with_suffix(".spans")
    for number, fields in _fields(spans_path):
        if len(fields) < 6:
            raise DataFormatError(spans_path, number, f"expected 6 fields (span_id type offset length "
                                                      f"first_token_id n_tokens), got {len(fields)}")
        span_id = _int(fields[0], spans_path, number, "span_id")
        first = _int(fields[4], spans_path, number, "first_token_id")
        n = _int(fields[5], spans_path, number, "n_tokens")
        if first not in index:
            raise DataFormatError(spans_path, number, f"span {span_id} starts at unknown token id {first} "
                                                      f"(not in {tokens_path.name})")
        if n < 1 or index[first] + n > len(words):
            raise DataFormatError(spans_path, number, f"span {span_id} has {n} tokens from token {first}, "
                                                      f"beyond the document's end")
        span_tokens[span_id] = list(range(index[first], index[first] + n))
    # Objects -> typed token sets.
    objects: list[tuple[str, list[int]]] = []
    objects_path = base.with_suffix(".objects")
    for number, fields in _fields(objects_path):
        if len(fields) < 3:
            raise DataFormatError(objects_path, number, f"expected 'object_id TYPE span_id ...', got {len(fields)} fields")
        stats["objects"] += 1
        kind = fields[1]
        positions: set[int] = set()
        for value in fields[2:]:
            span_id = _int(value, objects_path, number, "span_id")
            if span_id not in span_tokens:
                raise DataFormatError(objects_path, number, f"object {fields[0]} names unknown span id {span_id} "
                                                            f"(not in {spans_path.name})")
            positions.update(span_tokens[span_id])
        if kind not in FACTRUEVAL_TYPES:
            stats["dropped"] += 1
            stats[f"dropped_type:{kind}"] += 1
            continue
        objects.append((FACTRUEVAL_TYPES[kind], sorted(positions)))
    # Longest first (ties: earlier first), so nested objects give way to the outer one.
    tags = ["O"] * len(words)
    for type_, positions in sorted(objects, key=lambda o: (-len(o[1]), o[1][0])):
        if any(tags[p] != "O" for p in positions):
            stats["dropped"] += 1
            stats["dropped_overlap"] += 1
            continue
        stats["tagged"] += 1
        for k, p in enumerate(positions):
            run_start = k == 0 or positions[k - 1] != p - 1 or sentence_of[p] != sentence_of[p - 1]
            tags[p] = f"{'B' if run_start else 'I'}-{type_}"
    begin = 0
    for s, line in enumerate(starts):
        end = begin
        while end < len(words) and sentence_of[end] == s:
            end += 1
        stats["sentences"] += 1
        yield Sentence(words[begin:end], tags[begin:end], doc_id=doc_id, source=f"{tokens_path}:{line}")
        begin = end


# --- CSV --------------------------------------------------------------------------------------


def read_csv(path: str | Path, sep: str | None = None, tag_scheme: str | None = None) -> Iterator[Sentence]:
    """Sentences of the seed's CSV/TSV file.

    Args:
        path: a file whose header names ``labels`` and ``text`` (and optionally ``cls``); each
            row holds space-separated labels and tokens of equal count (labels may include the
            continuation label ``X``, which the scheme checks leave out).
        sep: ``','`` or ``'\\t'``; ``None`` picks tab if the header line has one, else comma.
        tag_scheme: the file's tag scheme; ``None`` detects it (``csv_scheme``; IOB2 when only
            ``O``/``X`` labels tell nothing).
    Yields:
        ``Sentence(words, tags, intent=cls or None)``.
    Raises:
        DataFormatError: missing columns, wrong field count, labels/tokens count mismatch,
            empty text, invalid UTF-8 or CSV, bad label, a label that breaks the scheme, or no rows.
        ValueError: an unknown ``tag_scheme``.
    """
    path = Path(path)
    scheme = _scheme(tag_scheme)
    yield from _read_csv(path, sep, scheme or csv_scheme(path, sep), scheme is None)


def csv_scheme(path: str | Path, sep: str | None = None) -> str:
    """The detected tag scheme of a CSV/TSV file (IOB2 when only ``O``/``X`` labels tell nothing)."""
    return _detect(_csv_records(Path(path), sep), "IOB2", allow_x=True)


def _read_csv(path: Path, sep: str | None, scheme: str, detected: bool) -> Iterator[Sentence]:
    for words, tags, intent, line in _csv_records(path, sep):
        _check_scheme(tags, scheme, detected, path, lambda k: line, allow_x=True)
        yield Sentence(words, tags, intent=intent, source=f"{path}:{line}")


def _csv_records(path: Path, sep: str | None) -> Iterator[tuple[list[str], list[str], str | None, int]]:
    """(words, labels, class, first line) of each row; checks the layout."""
    count = 0
    lines = (text for _, text in _lines(path, keepends=True))
    header_line = next(lines, "")
    if not header_line.strip():
        raise _no_sentences(path)
    if sep is None:
        sep = "\t" if "\t" in header_line else ","
    try:
        header = next(csv.reader([header_line], delimiter=sep))
    except csv.Error as err:
        raise DataFormatError(path, 1, f"bad CSV header: {err}") from None
    header = [name.strip() for name in header]
    missing = [name for name in ("labels", "text") if name not in header]
    if missing:
        raise DataFormatError(path, 1, f"header lacks column(s) {', '.join(missing)}; "
                                       f"got {', '.join(map(repr, header))}")
    col_labels, col_text = header.index("labels"), header.index("text")
    col_cls = header.index("cls") if "cls" in header else None
    reader = csv.reader(lines, delimiter=sep)
    number = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataFormatError(path, number + 1, f"bad CSV: {err}") from None
        line = number + 1  # the row's first line (a quoted field may span lines)
        number = 1 + reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataFormatError(path, line, f"expected {len(header)} fields, got {len(row)}")
        words, tags = row[col_text].split(), row[col_labels].split()
        if not words:
            raise DataFormatError(path, line, "empty text")
        if len(words) != len(tags):
            raise DataFormatError(path, line, f"{len(words)} tokens but {len(tags)} labels")
        intent = (row[col_cls].strip() or None) if col_cls is not None else None
        yield words, tags, intent, line
        count += 1
    if not count:
        raise _no_sentences(path)


# --- dispatch ---------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """Guess a dataset's format: a folder of ``.tokens`` is FactRuEval; ``.iob`` or a first line
    ``BOS ...<TAB>...`` is ATIS; ``.csv``/``.tsv`` or a header with ``labels`` and ``text`` is
    CSV; anything else CoNLL.

    Raises:
        FileNotFoundError: ``path`` does not exist; DataFormatError: invalid UTF-8 on line 1.
    """
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.tokens")):
            return "factrueval"
        raise DataFormatError(path, 0, "a folder must hold FactRuEval .tokens files")
    if not path.exists() and path.with_suffix(".tokens").is_file():
        return "factrueval"
    if not path.is_file():
        raise FileNotFoundError(f"no such dataset: {path}")
    if path.suffix in (".iob",):
        return "atis"
    if path.suffix in (".csv", ".tsv"):
        return "csv"
    first = next((text for _, text in _lines(path, keepends=True)), "")
    if first.startswith("BOS ") and "\t" in first:
        return "atis"
    names = {name.strip() for name in re.split(r"[,\t]", first)}
    if {"labels", "text"} <= names:
        return "csv"
    return "conll"


@dataclass
class Dataset:
    """A re-iterable stream of sentences from one file or folder.

    ``tag_scheme`` is the scheme given for the file (``None``: detect). ``scheme`` is the tag
    scheme of the sentences it yields: the given one, else detected from the file (CoNLL-2003:
    IOB1; ATIS: IOB2; files with only ``O`` tags: IOB1 for CoNLL, IOB2 otherwise); FactRuEval
    is IOB2 (the reader writes its tags). ``stats`` is filled while iterating (FactRuEval's
    dropped-object counts).
    """

    path: Path
    format: str
    tag_scheme: str | None = None
    stats: Counter = field(default_factory=Counter)
    _scheme: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tag_scheme is not None:
            self._scheme = normalize_scheme(self.tag_scheme)
            if self.format == "factrueval" and self._scheme != "IOB2":
                raise ValueError(f"FactRuEval tags are IOB2 (the reader writes them); tag_scheme "
                                 f"{self.tag_scheme!r} does not apply")
        elif self.format == "factrueval":
            self._scheme = "IOB2"

    @property
    def scheme(self) -> str:
        """The tag scheme of the sentences (detected once, on first use, when not given).

        Raises:
            DataFormatError: invalid UTF-8 before any sentence (other errors come when iterating).
        """
        if self._scheme is None:
            if self.format == "conll":
                self._scheme = conll_scheme(self.path)
            elif self.format == "atis":
                self._scheme = atis_scheme(self.path)
            else:
                self._scheme = csv_scheme(self.path)
        return self._scheme

    def __iter__(self) -> Iterator[Sentence]:
        detected = self.tag_scheme is None
        if self.format == "conll":
            return _read_conll(self.path, None, self.scheme, detected)
        if self.format == "atis":
            return _read_atis(self.path, self.scheme, detected)
        if self.format == "csv":
            return _read_csv(self.path, None, self.scheme, detected)
        self.stats.clear()
        return read_factrueval(self.path, self.stats)


def read_dataset(path: str | Path, format: str = "auto", tag_scheme: str | None = None) -> Dataset:
    """A dataset in any supported format.

    Args:
        path: file (CoNLL, ATIS, CSV) or folder (FactRuEval).
        format: ``'auto'`` (``detect_format``), ``'conll'``, ``'atis'``, ``'factrueval'`` or ``'csv'``.
        tag_scheme: the file's tag scheme, any name of ``nertron.tags.SCHEME_NAMES`` (any case);
            ``None`` detects it from the file. FactRuEval takes only IOB2 (or ``None``).
    Returns:
        A ``Dataset``: iterate it (any number of times) for ``Sentence`` objects; its
        ``scheme`` says the tags' scheme.
    Raises:
        ValueError: unknown format or scheme; FileNotFoundError: missing path.
    """
    path = Path(path)
    if tag_scheme is not None:
        normalize_scheme(tag_scheme)  # unknown names fail before any reading
    if format == "auto":
        format = detect_format(path)
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; known: auto, {', '.join(FORMATS)}")
    if format != "factrueval" and not path.is_file():
        raise FileNotFoundError(f"no such dataset file: {path}")
    if format == "factrueval" and not (path.is_dir() or path.with_suffix(".tokens").is_file()):
        raise FileNotFoundError(f"no FactRuEval folder or book at {path}")
    return Dataset(path, format, tag_scheme)
