"""Evaluation metrics for tagging and joint (tagging + sentence class) models.

- ``span_scores``: entity-level exact match (same type, same start and end), micro and per
  type, as ``seqeval`` computes it (``mode='default'``/``'strict'``) or exactly as CoNLL's
  ``conlleval.pl`` does (``mode='conlleval'``).
- ``token_scores``: the seed's token-level "IOB" metric (per tag, micro over non-``O`` tags).
- ``classification_report``: seqeval's text table of span scores.
- ``sentence_scores``: intent/sentence-class accuracy and F1.

Zero-division convention (sklearn's and seqeval's ``zero_division=0``): precision is 0 when
nothing is predicted, recall 0 when nothing is gold, F1 0 when precision + recall is 0 — never
NaN, and no warning. One exception, seqeval's: the macro average over no entity types at
all is NaN (seqeval gives NaN there whatever its ``zero_division``).

``mode='default'`` and conlleval.pl: the default mode is seqeval's default (the chunk rules of
``conlleval.py``, seqeval's port, which adds S/E rules for BIOES). On tags with only the
prefixes ``B``/``I`` (IOB1, IOB2) and ``O`` it equals conlleval.pl exactly. With ``E``/``S``
prefixes (BIOES) it does not: conlleval.pl knows no ``S`` rule and no rule ending a chunk
before ``B`` after ``E``, so it joins ``S-PER S-PER``, ``E-PER B-PER``, ``S-PER B-PER``,
``B-PER S-PER``, ``S-PER I-PER`` (same type) into one chunk, where seqeval sees two.
``mode='conlleval'`` reproduces conlleval.pl (default options, no ``-r``) for any scheme.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Hashable, Sequence

from nertron.tags import TagError, conll_spans, normalize_scheme, normalize_strict_scheme, strict_spans

__all__ = ["span_scores", "token_scores", "classification_report", "sentence_scores", "prf"]

_MODES = ("default", "strict", "conlleval")


def prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """(precision, recall, F1) from counts, 0 where a denominator is 0."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _check_pairs(y_true: Sequence[Sequence], y_pred: Sequence[Sequence], lists: bool = False) -> None:
    if lists:
        # seqeval's check_consistent_length: every sentence must be a list (not a tuple, not
        # a numpy array); an empty input is accepted here (seqeval raises TypeError)
        for side, sentences in (("gold", y_true), ("predicted", y_pred)):
            for i, sentence in enumerate(sentences):
                if type(sentence) is not list:
                    raise TypeError(f"Found input variables without list of list: {side} sentence {i}: "
                                    f"expected a list of tags, got {type(sentence).__name__}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold sentences but {len(y_pred)} predicted")
    for i, (gold, pred) in enumerate(zip(y_true, y_pred)):
        if isinstance(gold, str) or isinstance(pred, str):
            raise TypeError(f"sentence {i}: expected a list of tags, got a string")
        if len(gold) != len(pred):
            raise ValueError(f"sentence {i}: {len(gold)} gold tags but {len(pred)} predicted")


def _entities(sequences: Sequence[Sequence[str]], scheme: str, mode: str, side: str) -> set[tuple]:
    found = set()
    for i, tags in enumerate(sequences):
        try:
            if mode == "strict":
                entities = strict_spans(tags, scheme)
            else:
                entities = conll_spans(tags)
        except TagError as err:
            raise TagError(f"{side} sentence {i}, {err}") from None
        found.update((i, *entity) for entity in entities)
    return found


# conlleval.pl endOfChunk / startOfChunk, rule for rule (its '[' / ']' rules included)
_PERL_END = {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}
_PERL_START = {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}
_PERL_TAG = re.compile(r"^([^-]*)-(.*)$", re.S)


def _perl_split(tag: str) -> tuple[str, str]:
    # conlleval.pl: /^([^-]*)-(.*)$/ splits prefix and type; otherwise the type is ""
    if not isinstance(tag, str):
        raise TypeError(f"expected a tag string, got {tag!r}")
    match = _PERL_TAG.match(tag)
    return (match.group(1), match.group(2)) if match else (tag, "")


def _perl_end(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return ((prev_tag, tag) in _PERL_END or (prev_tag not in ("O", ".") and prev_type != type_)
            or prev_tag in ("]", "["))


def _perl_start(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return ((prev_tag, tag) in _PERL_START or (tag not in ("O", ".") and prev_type != type_)
            or tag in ("[", "]"))


def _conlleval_counts(y_true, y_pred) -> tuple[Counter, Counter, Counter]:
    """(correct, predicted, gold) chunk counts per type, by conlleval.pl's own loop: one
    stream of tokens with an ``O`` boundary after every sentence."""
    correct, predicted, gold = Counter(), Counter(), Counter()
    in_correct = False
    last_c, last_g, last_ct, last_gt = "O", "O", "", ""
    stream = ((c, g) for gold_tags, pred_tags in zip(y_true, y_pred)
              for c, g in list(zip(gold_tags, pred_tags)) + [("O", "O")])
    for correct_tag, guessed_tag in stream:
        c, ct = _perl_split(correct_tag)
        g, gt = _perl_split(guessed_tag)
        end_c = _perl_end(last_c, c, last_ct, ct)
        end_g = _perl_end(last_g, g, last_gt, gt)
        start_c = _perl_start(last_c, c, last_ct, ct)
        start_g = _perl_start(last_g, g, last_gt, gt)
        if in_correct:
            if end_c and end_g and last_gt == last_ct:
                in_correct = False
                correct[last_ct] += 1
            elif end_c != end_g or gt != ct:
                in_correct = False
        if start_c and start_g and gt == ct:
            in_correct = True
        if start_c:
            gold[ct] += 1
        if start_g:
            predicted[gt] += 1
        last_c, last_g, last_ct, last_gt = c, g, ct, gt
    if in_correct:  # conlleval.pl's check after the last line
        correct[last_ct] += 1
    return correct, predicted, gold


def _check_mode(scheme: str, mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}; use 'default' (seqeval default), 'strict' "
                         "(seqeval strict) or 'conlleval' (conlleval.pl)")
    if mode == "conlleval":
        # conlleval.pl reads every scheme alike; the name is only checked
        if not (isinstance(scheme, str) and scheme.upper() in ("BILOU", "BIOUL", "IOE2")):
            normalize_scheme(scheme)
        return scheme
    if mode == "strict":
        return normalize_strict_scheme(scheme)
    name = normalize_scheme(scheme)
    if name not in ("IOB1", "IOB2", "BIOES"):  # IOE1/IOE2, BILOU, BMES: prefixes the B/I/E/S rules do not read
        raise ValueError(f"mode='default' follows conlleval's B/I/E/S chunk rules; "
                         f"use mode='strict' or 'conlleval' for {scheme}")
    return name


def span_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], scheme: str = "IOB2",
                mode: str = "default") -> dict:
    """Entity-level exact-match precision, recall and F1, micro and per type.

    Args:
        y_true: gold tag sequences, one per sentence.
        y_pred: predicted tag sequences, same lengths.
        scheme: the tags' scheme. ``mode='default'`` reads IOB1, IOB2 and BIOES alike by the
            chunk rules of seqeval's default mode (conlleval.py: an ``I-T`` after ``O`` or
            another type starts an entity, ``E``/``S`` end one, ``B``/``S`` start one); it
            equals conlleval.pl on IOB1/IOB2 tags but not on BIOES tags (see the module
            docstring). ``mode='strict'`` counts only entities valid under ``scheme``
            (seqeval ``mode='strict', scheme=...``): IOB1, IOB2, IOE2, BIOES, BILOU.
            ``mode='conlleval'`` gives conlleval.pl's counts for any tags (the scheme is
            checked as a name but not used: conlleval.pl reads every tag as prefix-type).
        mode: ``'default'``, ``'strict'`` or ``'conlleval'``.
    Returns:
        ``{'precision', 'recall', 'f1', 'support' (gold entities), 'predicted', 'correct',
        'macro': {precision, recall, f1}, 'weighted': {...}, 'per_type': {TYPE: {'precision',
        'recall', 'f1', 'support', 'predicted', 'correct'}}}``; types sorted, from gold and
        predictions. Macro/weighted averages are seqeval's (mean of per-type scores, plain or
        weighted by support); with no entity type at all the macro average is NaN, as seqeval's.
    Raises:
        ValueError: sentence count or a sentence's length differs (naming the sentence index),
            unknown scheme or mode; TagError (a ValueError): a malformed tag.
        TypeError: a sentence that is not a ``list`` (a tuple, a numpy array, a string), as
            seqeval raises it.
    """
    scheme = _check_mode(scheme, mode)
    _check_pairs(y_true, y_pred, lists=True)
    if mode == "conlleval":
        correct_n, pred_n, gold_n = _conlleval_counts(y_true, y_pred)
    else:
        gold = _entities(y_true, scheme, mode, "gold")
        pred = _entities(y_pred, scheme, mode, "predicted")
        correct_n, pred_n, gold_n = (Counter(e[1] for e in group) for group in (gold & pred, pred, gold))
    types = sorted(set(gold_n) | set(pred_n))
    per_type = {}
    for type_ in types:
        counts = [correct_n[type_], pred_n[type_], gold_n[type_]]
        p, r, f = prf(*counts)
        per_type[type_] = {"precision": p, "recall": r, "f1": f, "support": counts[2], "predicted": counts[1],
                           "correct": counts[0]}
    totals = [sum(c.values()) for c in (correct_n, pred_n, gold_n)]
    p, r, f = prf(*totals)
    result = {"precision": p, "recall": r, "f1": f, "support": totals[2], "predicted": totals[1],
              "correct": totals[0], "per_type": per_type}
    result.update(_averages(per_type, empty_macro=math.nan))
    return result


def _averages(per_class: dict[str, dict], empty_macro: float = 0.0) -> dict:
    n = len(per_class)
    total = sum(s["support"] for s in per_class.values())
    macro = {k: (sum(s[k] for s in per_class.values()) / n if n else empty_macro)
             for k in ("precision", "recall", "f1")}
    weighted = {k: (sum(s[k] * s["support"] for s in per_class.values()) / total if total else 0.0)
                for k in ("precision", "recall", "f1")}
    return {"macro": macro, "weighted": weighted}


def token_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]],
                 ignore: Sequence[str] = ("O",)) -> dict:
    """Token-level ("IOB") scores: every token is one classification of its full tag.

    This is the seed's token metric (sklearn's ``classification_report`` over flattened tags
    with ``O`` left out of the label list). For a tag ``t``: precision = tokens predicted ``t``
    that are gold ``t`` / tokens predicted ``t``; recall = the same / tokens gold ``t``. Micro
    scores pool all tags not in ``ignore``: a token counts as predicted if its predicted tag is
    not ignored, as gold if its gold tag is not ignored, and as correct if both tags are equal
    and not ignored (so ``B-PER`` for ``I-PER`` is wrong, unlike span scores of other kinds).

    Args:
        y_true: gold tag sequences.
        y_pred: predicted tag sequences of the same lengths.
        ignore: tags left out of the micro average and the per-tag table.
    Returns:
        ``{'precision', 'recall', 'f1', 'support' (gold non-ignored tokens), 'accuracy' (all
        tokens, ignored tags included), 'per_tag': {TAG: {'precision', 'recall', 'f1',
        'support'}}}``.
    Raises:
        ValueError: sentence count or a sentence's length differs, naming the sentence.
    """
    _check_pairs(y_true, y_pred)
    ignored = set(ignore)
    correct, predicted, gold = Counter(), Counter(), Counter()
    tokens = equal = 0
    for gold_tags, pred_tags in zip(y_true, y_pred):
        for g, p in zip(gold_tags, pred_tags):
            tokens += 1
            gold[g] += 1
            predicted[p] += 1
            if g == p:
                equal += 1
                correct[g] += 1
    tags = sorted((set(gold) | set(predicted)) - ignored)
    per_tag = {}
    for tag in tags:
        p, r, f = prf(correct[tag], predicted[tag], gold[tag])
        per_tag[tag] = {"precision": p, "recall": r, "f1": f, "support": gold[tag]}
    sums = [sum(counter[t] for t in tags) for counter in (correct, predicted, gold)]
    p, r, f = prf(*sums)
    return {"precision": p, "recall": r, "f1": f, "support": sums[2],
            "accuracy": equal / tokens if tokens else 0.0, "per_tag": per_tag}


def classification_report(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], scheme: str = "IOB2",
                          mode: str = "default", digits: int = 4) -> str:
    """seqeval's text report of span scores: one row per type, then micro/macro/weighted avg.

    Args:
        y_true, y_pred, scheme, mode: as in ``span_scores``.
        digits: decimals of the scores.
    Returns:
        The table (same layout as ``seqeval.metrics.classification_report``).
    """
    scores = span_scores(y_true, y_pred, scheme=scheme, mode=mode)
    names = list(scores["per_type"])
    width = max([len(name) for name in names] + [len("weighted avg"), digits])
    head = "{:>{width}s} " + " {:>9}" * 4
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}"
    lines = [head.format("", "precision", "recall", "f1-score", "support", width=width), ""]
    for name, s in scores["per_type"].items():
        lines.append(row.format(name, s["precision"], s["recall"], s["f1"], s["support"], width=width, digits=digits))
    lines.append("")
    for name, s in (("micro avg", scores), ("macro avg", scores["macro"]), ("weighted avg", scores["weighted"])):
        lines.append(row.format(name, s["precision"], s["recall"], s["f1"], scores["support"], width=width,
                                digits=digits))
    lines.append("")
    return "\n".join(lines)


def sentence_scores(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> dict:
    """Sentence classification (intent) scores: one label per sentence.

    Args:
        y_true: gold classes (ATIS multi-intents like ``a#b`` count as one class).
        y_pred: predicted classes.
    Returns:
        ``{'accuracy', 'f1' (= macro F1), 'macro_f1', 'micro_f1' (= accuracy for one label a
        sentence), 'macro_precision', 'macro_recall', 'support', 'per_class': {CLASS:
        {precision, recall, f1, support}}}``; the macro average runs over the classes seen in
        gold or predictions.
    Raises:
        ValueError: different lengths.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels but {len(y_pred)} predicted")
    correct, predicted, gold = Counter(), Counter(), Counter()
    for g, p in zip(y_true, y_pred):
        gold[g] += 1
        predicted[p] += 1
        if g == p:
            correct[g] += 1
    classes = sorted(set(gold) | set(predicted), key=str)
    per_class = {}
    for c in classes:
        p, r, f = prf(correct[c], predicted[c], gold[c])
        per_class[c] = {"precision": p, "recall": r, "f1": f, "support": gold[c]}
    averages = _averages(per_class)["macro"]
    n = len(y_true)
    accuracy = sum(correct.values()) / n if n else 0.0
    return {"accuracy": accuracy, "f1": averages["f1"], "macro_f1": averages["f1"], "micro_f1": accuracy,
            "macro_precision": averages["precision"], "macro_recall": averages["recall"], "support": n,
            "per_class": per_class}
