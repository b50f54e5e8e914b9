"""Metrics against seqeval, sklearn and a literal port of conlleval.pl, on real CoNLL-2003/ATIS data."""
from __future__ import annotations

import math
import random
import warnings

import numpy as np

import pytest
from seqeval import metrics as sq
from seqeval.scheme import IOB1, IOB2, IOBES
from sklearn import metrics as skm

from nertron.engine import metrics
from nertron.engine.data import convert, read_atis, read_conll

TYPES = ("PER", "ORG", "LOC", "MISC")


# --- conlleval.pl, ported literally (the oracle) -------------------------------------------------


def end_of_chunk(prev_tag, tag, prev_type, type_):
    chunk_end = False
    if prev_tag == "B" and tag == "B": chunk_end = True  # noqa: E701 (kept line for line as in Perl)
    if prev_tag == "B" and tag == "O": chunk_end = True  # noqa: E701
    if prev_tag == "I" and tag == "B": chunk_end = True  # noqa: E701
    if prev_tag == "I" and tag == "O": chunk_end = True  # noqa: E701
    if prev_tag == "E" and tag == "E": chunk_end = True  # noqa: E701
    if prev_tag == "E" and tag == "I": chunk_end = True  # noqa: E701
    if prev_tag == "E" and tag == "O": chunk_end = True  # noqa: E701
    if prev_tag == "I" and tag == "O": chunk_end = True  # noqa: E701
    if prev_tag != "O" and prev_tag != "." and prev_type != type_: chunk_end = True  # noqa: E701
    if prev_tag == "]": chunk_end = True  # noqa: E701
    if prev_tag == "[": chunk_end = True  # noqa: E701
    return chunk_end


def start_of_chunk(prev_tag, tag, prev_type, type_):
    chunk_start = False
    if prev_tag == "B" and tag == "B": chunk_start = True  # noqa: E701
    if prev_tag == "I" and tag == "B": chunk_start = True  # noqa: E701
    if prev_tag == "O" and tag == "B": chunk_start = True  # noqa: E701
    if prev_tag == "O" and tag == "I": chunk_start = True  # noqa: E701
    if prev_tag == "E" and tag == "E": chunk_start = True  # noqa: E701
    if prev_tag == "E" and tag == "I": chunk_start = True  # noqa: E701
    if prev_tag == "O" and tag == "E": chunk_start = True  # noqa: E701
    if prev_tag == "O" and tag == "I": chunk_start = True  # noqa: E701
    if tag != "O" and tag != "." and prev_type != type_: chunk_start = True  # noqa: E701
    if tag == "[": chunk_start = True  # noqa: E701
    if tag == "]": chunk_start = True  # noqa: E701
    return chunk_start


def conlleval(y_true, y_pred):
    """conlleval.pl's main loop: counts per type, then its precision/recall/F1 (as fractions)."""
    correct_chunk, found_correct, found_guessed = {}, {}, {}
    in_correct = False
    last_correct, last_guessed, last_correct_type, last_guessed_type = "O", "O", "", ""
    lines = []
    for gold, pred in zip(y_true, y_pred):
        lines += list(zip(gold, pred)) + [None]  # None = the blank line between sentences
    for item in lines:
        if item is None:  # boundary: both O
            correct, correct_type, guessed, guessed_type = "O", "", "O", ""
        else:
            correct, _, correct_type = item[0].partition("-")
            guessed, _, guessed_type = item[1].partition("-")
        end_c = end_of_chunk(last_correct, correct, last_correct_type, correct_type)
        end_g = end_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
        if in_correct:
            if end_c and end_g and last_guessed_type == last_correct_type:
                in_correct = False
                correct_chunk[last_correct_type] = correct_chunk.get(last_correct_type, 0) + 1
            elif end_c != end_g or guessed_type != correct_type:
                in_correct = False
        start_c = start_of_chunk(last_correct, correct, last_correct_type, correct_type)
        start_g = start_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
        if start_c and start_g and guessed_type == correct_type:
            in_correct = True
        if start_c:
            found_correct[correct_type] = found_correct.get(correct_type, 0) + 1
        if start_g:
            found_guessed[guessed_type] = found_guessed.get(guessed_type, 0) + 1
        last_guessed, last_correct, last_guessed_type, last_correct_type = guessed, correct, guessed_type, correct_type
    if in_correct:
        correct_chunk[last_correct_type] = correct_chunk.get(last_correct_type, 0) + 1

    def prf(c, g, t):
        p = c / g if g else 0.0
        r = c / t if t else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    types = sorted(set(found_correct) | set(found_guessed))
    per_type = {t: prf(correct_chunk.get(t, 0), found_guessed.get(t, 0), found_correct.get(t, 0)) for t in types}
    micro = prf(sum(correct_chunk.values()), sum(found_guessed.values()), sum(found_correct.values()))
    return micro, per_type, sum(found_correct.values())


# --- data -------------------------------------------------------------------------------------


def corrupt(sequences, seed, prefixes="BI", rate=0.15):
    """Randomly perturbed copies: tags replaced by random O/P-TYPE (invalid I- after O, type
    changes, split and merged entities) and some entities shifted by one token."""
    rng = random.Random(seed)
    choices = ["O"] + [f"{p}-{t}" for p in prefixes for t in TYPES]
    out = []
    for tags in sequences:
        tags = list(tags)
        for i in range(len(tags)):
            r = rng.random()
            if r < rate:
                tags[i] = rng.choice(choices)
            elif r < rate * 1.3 and i + 1 < len(tags):
                tags[i], tags[i + 1] = tags[i + 1], tags[i]  # shift a boundary
            elif r < rate * 1.5 and tags[i] != "O":
                tags[i] = tags[i][:2] + rng.choice(TYPES)  # same shape, other type
        out.append(tags)
    return out


@pytest.fixture(scope="module")
def conll_gold(data_dir):
    """eng.testa + eng.testb gold tags, IOB1 as in the files."""
    return [s.tags for name in ("eng.testa", "eng.testb") for s in read_conll(data_dir / "conll2003" / name)]


def _seqeval_report(y_true, y_pred, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sq.classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kwargs)


def _assert_matches_seqeval(ours, report):
    micro = report["micro avg"]
    assert ours["precision"] == pytest.approx(micro["precision"], abs=1e-12)
    assert ours["recall"] == pytest.approx(micro["recall"], abs=1e-12)
    assert ours["f1"] == pytest.approx(micro["f1-score"], abs=1e-12)
    assert ours["support"] == micro["support"]
    for avg in ("macro", "weighted"):
        for key, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert ours[avg][key] == pytest.approx(report[f"{avg} avg"][theirs], abs=1e-12)
    types = {k for k in report if not k.endswith(" avg")}
    assert set(ours["per_type"]) == types
    for t in types:
        assert ours["per_type"][t]["precision"] == pytest.approx(report[t]["precision"], abs=1e-12)
        assert ours["per_type"][t]["recall"] == pytest.approx(report[t]["recall"], abs=1e-12)
        assert ours["per_type"][t]["f1"] == pytest.approx(report[t]["f1-score"], abs=1e-12)
        assert ours["per_type"][t]["support"] == report[t]["support"]


# --- span scores --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2"])
def test_default_mode_equals_seqeval_and_conlleval(conll_gold, scheme):
    gold = conll_gold if scheme == "IOB1" else [convert(t, "IOB1", "IOB2") for t in conll_gold]
    pred = corrupt(gold, seed=1)
    assert sum(g != p for g, p in zip(gold, pred)) > len(gold) // 3  # really perturbed
    ours = metrics.span_scores(gold, pred, scheme=scheme)
    assert 0.3 < ours["f1"] < 0.95
    _assert_matches_seqeval(ours, _seqeval_report(gold, pred))
    _assert_equals_conlleval(ours, gold, pred)


def _assert_equals_conlleval(ours: dict, gold, pred) -> tuple:
    """Our span scores equal conlleval.pl's (overall, support and per type); its (p, r, f)."""
    (p, r, f), per_type, support = conlleval(gold, pred)
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert ours["support"] == support
    assert set(ours["per_type"]) == set(per_type)
    for t, scores in per_type.items():
        got = ours["per_type"][t]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(scores, abs=1e-12)
    return p, r, f


def test_gold_against_itself(conll_gold):
    ours = metrics.span_scores(conll_gold, conll_gold, scheme="IOB1")
    assert ours["precision"] == ours["recall"] == ours["f1"] == 1.0
    # testa has 5942 entities, testb 5648 (the CoNLL-2003 paper's counts).
    assert ours["support"] == 5942 + 5648


@pytest.mark.parametrize("scheme, seqeval_scheme, prefixes", [
    ("IOB2", IOB2, "BI"), ("BIOES", IOBES, "BIES"), ("IOB1", IOB1, "BI")])
def test_strict_mode_equals_seqeval(conll_gold, scheme, seqeval_scheme, prefixes):
    gold = conll_gold[:2000] if scheme == "IOB1" else [convert(t, "IOB1", scheme) for t in conll_gold[:2000]]
    pred = corrupt(gold, seed=2, prefixes=prefixes)
    ours = metrics.span_scores(gold, pred, scheme=scheme, mode="strict")
    _assert_matches_seqeval(ours, _seqeval_report(gold, pred, mode="strict", scheme=seqeval_scheme))
    # Strict drops the invalid predicted entities that default mode repairs.
    default = metrics.span_scores(gold, pred, scheme=scheme)
    assert ours["predicted"] < default["predicted"]


def test_strict_versus_default_example():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"]]
    assert metrics.span_scores(gold, pred)["f1"] == 1.0  # conlleval: I- after O starts an entity
    strict = metrics.span_scores(gold, pred, mode="strict")
    assert (strict["precision"], strict["recall"], strict["predicted"]) == (1.0, 0.5, 1)
    assert strict["per_type"]["PER"]["recall"] == 0.0
    # A type change inside an entity splits it in both modes.
    split = metrics.span_scores([["B-PER", "I-PER"]], [["B-PER", "I-LOC"]])
    assert (split["predicted"], split["correct"]) == (2, 0)
    assert set(split["per_type"]) == {"PER", "LOC"} and split["per_type"]["LOC"]["support"] == 0


def test_no_predicted_entities_and_empty_input():
    gold = [["B-PER", "O"], ["B-LOC"]]
    none = metrics.span_scores(gold, [["O", "O"], ["O"]])
    # Convention: 0 (not NaN) where the denominator is 0.
    assert (none["precision"], none["recall"], none["f1"], none["support"], none["predicted"]) == (0.0, 0.0, 0.0, 2, 0)
    assert none["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0,
                                       "correct": 0}
    empty = metrics.span_scores([], [])
    assert (empty["precision"], empty["recall"], empty["f1"], empty["support"], empty["per_type"]) == (0, 0, 0, 0, {})
    # seqeval: the macro average over no entity type is NaN (whatever zero_division)
    assert all(math.isnan(v) for v in empty["macro"].values())
    assert empty["weighted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert metrics.span_scores([[]], [[]])["f1"] == 0.0
    only_pred = metrics.span_scores([["O"]], [["B-PER"]])
    assert (only_pred["precision"], only_pred["recall"], only_pred["support"]) == (0.0, 0.0, 0)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(y_true=[["O"], ["O", "O"]], y_pred=[["O"], ["O"]]), ValueError, "sentence 1: 2 gold tags but 1 predicted"),
    (dict(y_true=[["O"]], y_pred=[["O"], ["O"]]), ValueError, "1 gold sentences but 2 predicted"),
    (dict(y_true=["O"], y_pred=["O"]), TypeError, "sentence 0: expected a list of tags"),
    (dict(y_true=[["O", "O"]], y_pred=[["O", "Q-PER"]]), ValueError, "predicted sentence 0, position 1: bad tag 'Q-PER'"),
    (dict(y_true=[["B-PER"]], y_pred=[["B-PER"]], mode="lenient"), ValueError, "unknown mode 'lenient'"),
    (dict(y_true=[["B-PER"]], y_pred=[["B-PER"]], scheme="IOE1", mode="strict"), ValueError,
     "strict mode does not support scheme 'IOE1'"),
    (dict(y_true=[["B-PER"]], y_pred=[["B-PER"]], scheme="BILOU"), ValueError, "use mode='strict' or 'conlleval' for BILOU"),
    (dict(y_true=[["B-PER"]], y_pred=[["B-PER"]], scheme="XYZ"), ValueError, "unknown tag scheme 'XYZ'"),
    (dict(y_true=[["S-PER"]], y_pred=[["B-PER"]], mode="strict"), ValueError, "gold sentence 0, position 0"),
])
def test_span_errors(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        metrics.span_scores(**kwargs)


def test_classification_report_equals_seqeval(conll_gold):
    gold = [convert(t, "IOB1", "IOB2") for t in conll_gold[:1500]]
    pred = corrupt(gold, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sq.classification_report(gold, pred, digits=4)
        expected_strict = sq.classification_report(gold, pred, digits=3, mode="strict", scheme=IOB2)
    assert metrics.classification_report(gold, pred, digits=4) == expected
    assert metrics.classification_report(gold, pred, digits=3, mode="strict") == expected_strict
    assert "micro avg" in metrics.classification_report([], [])


# --- token scores ---------------------------------------------------------------------------------


def test_token_scores_equal_sklearn(conll_gold):
    gold = [convert(t, "IOB1", "IOB2") for t in conll_gold[:3000]]
    pred = corrupt(gold, seed=4)
    ours = metrics.token_scores(gold, pred)
    flat_gold = [t for s in gold for t in s]
    flat_pred = [t for s in pred for t in s]
    labels = sorted(set(flat_gold + flat_pred) - {"O"})
    p, r, f, _ = skm.precision_recall_fscore_support(flat_gold, flat_pred, labels=labels, average="micro",
                                                    zero_division=0)
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(flat_gold, flat_pred), abs=1e-12)
    assert ours["support"] == sum(t != "O" for t in flat_gold)
    ps, rs, fs, ss = skm.precision_recall_fscore_support(flat_gold, flat_pred, labels=labels, zero_division=0)
    assert list(ours["per_tag"]) == labels
    for i, label in enumerate(labels):
        got = ours["per_tag"][label]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((ps[i], rs[i], fs[i], ss[i]))


def test_token_scores_small_and_errors():
    scores = metrics.token_scores([["B-PER", "I-PER", "O"]], [["B-PER", "B-PER", "B-LOC"]])
    # B-PER: 1 right of 2 predicted; I-PER: 0 of 0 predicted, 1 gold; B-LOC: 0 of 1.
    assert scores["per_tag"]["B-PER"]["precision"] == 0.5
    assert scores["per_tag"]["I-PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert (scores["precision"], scores["recall"]) == (1 / 3, 1 / 2)
    assert scores["accuracy"] == 1 / 3
    # Ignoring more tags shrinks the pool.
    assert metrics.token_scores([["B-PER", "X"]], [["B-PER", "O"]], ignore=("O", "X"))["recall"] == 1.0
    assert metrics.token_scores([], [])["f1"] == 0.0
    with pytest.raises(ValueError, match="sentence 0: 1 gold tags but 2 predicted"):
        metrics.token_scores([["O"]], [["O", "O"]])


# --- sentence scores -------------------------------------------------------------------------------


def test_sentence_scores_equal_sklearn(data_dir):
    gold = [s.intent for s in read_atis(data_dir / "atis" / "atis.test.w-intent.iob")]
    rng = random.Random(5)
    names = sorted(set(gold))
    pred = [rng.choice(names) if rng.random() < 0.2 else g for g in gold]
    ours = metrics.sentence_scores(gold, pred)
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred), abs=1e-12)
    assert ours["micro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="micro"), abs=1e-12)
    assert ours["f1"] == ours["macro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="macro", zero_division=0),
                                                          abs=1e-12)
    assert ours["macro_precision"] == pytest.approx(
        skm.precision_score(gold, pred, average="macro", zero_division=0), abs=1e-12)
    assert ours["support"] == len(gold) == 893
    assert ours["per_class"]["atis_flight"]["support"] == gold.count("atis_flight")


def test_sentence_scores_edges():
    assert metrics.sentence_scores([], [])["accuracy"] == 0.0
    scores = metrics.sentence_scores(["a", "b"], ["a", "c"])
    assert scores["accuracy"] == 0.5 and scores["per_class"]["c"]["precision"] == 0.0
    with pytest.raises(ValueError, match="2 gold labels but 1 predicted"):
        metrics.sentence_scores(["a", "b"], ["a"])


# --- mode='conlleval', seqeval's input types, macro over no entities -------------------------


@pytest.mark.parametrize("scheme, prefixes", [("IOB1", "BI"), ("IOB2", "BI"), ("BIOES", "BIES"), ("BILOU", "BILU")])
def test_conlleval_mode_equals_conlleval_pl(conll_gold, scheme, prefixes):
    gold = [convert(t, "IOB1", scheme) for t in conll_gold[:1500]]
    pred = corrupt(gold, seed=3, prefixes=prefixes)
    ours = metrics.span_scores(gold, pred, scheme=scheme, mode="conlleval")
    p, r, f = _assert_equals_conlleval(ours, gold, pred)
    if scheme in ("IOB1", "IOB2"):  # only B/I prefixes: the default mode is conlleval.pl
        default = metrics.span_scores(gold, pred, scheme=scheme)
        assert (default["precision"], default["recall"], default["f1"]) == pytest.approx((p, r, f), abs=1e-12)


@pytest.mark.parametrize("gold, pred, default_counts, conlleval_counts", [
    # conlleval.pl has no S rule: S-PER S-PER is one chunk (seqeval: two)
    ([["S-PER", "S-PER"]], [["S-PER", "O"]], (1, 1, 2), (0, 1, 1)),
    # nor a rule ending a chunk at B after E
    ([["B-PER", "E-PER", "B-PER", "E-PER"]], [["B-PER", "E-PER", "B-PER", "E-PER"]], (2, 2, 2), (1, 1, 1)),
    ([["B-PER", "E-PER", "S-PER"]], [["B-PER", "E-PER", "O"]], (1, 1, 2), (0, 1, 1)),
])
def test_conlleval_mode_differs_from_default_on_bioes(gold, pred, default_counts, conlleval_counts):
    def counts(result):
        return result["correct"], result["predicted"], result["support"]
    assert counts(metrics.span_scores(gold, pred, scheme="BIOES")) == default_counts
    ours = metrics.span_scores(gold, pred, scheme="BIOES", mode="conlleval")
    assert counts(ours) == conlleval_counts
    (p, r, f), _, support = conlleval(gold, pred)
    assert (ours["precision"], ours["recall"], ours["f1"], ours["support"]) == pytest.approx((p, r, f, support))


@pytest.mark.parametrize("y_true, y_pred", [
    ([("B-PER", "I-PER", "O")], [("B-PER", "I-PER", "O")]),  # list of tuples
    (np.array([["B-PER", "O"]]), np.array([["B-PER", "O"]])),  # 2-D array
    ([np.array(["B-PER", "O"])], [np.array(["B-PER", "O"])]),  # list of arrays
    ([["B-PER", "O"]], [("B-PER", "O")]),  # one side only
])
@pytest.mark.parametrize("mode", ["default", "strict", "conlleval"])
def test_non_list_sentences_raise_type_error_like_seqeval(y_true, y_pred, mode):
    with pytest.raises(TypeError):
        sq.f1_score(y_true, y_pred)
    with pytest.raises(TypeError, match="list of list"):
        metrics.span_scores(y_true, y_pred, mode=mode)
    with pytest.raises(TypeError, match="list of list"):
        metrics.classification_report(y_true, y_pred, mode=mode)


@pytest.mark.parametrize("mode", ["default", "strict", "conlleval"])
def test_macro_average_over_no_entities_follows_seqeval(mode):
    gold = pred = [["O", "O"], ["O"]]
    ours = metrics.span_scores(gold, pred, mode=mode)
    for zero_division in ("warn", 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = sq.classification_report(gold, pred, output_dict=True, zero_division=zero_division)
        for key, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert math.isnan(report["macro avg"][theirs]) and math.isnan(ours["macro"][key])
            assert ours["weighted"][key] == report["weighted avg"][theirs] == 0.0
            assert ours[key] == report["micro avg"][theirs] == 0.0
