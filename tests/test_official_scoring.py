"""Official mode against a small independent re-statement of BEANS-Zero's evaluator, and its tie ranges.

The re-statement follows the beans-zero package's rules (compute_metrics, EvalPostProcessor, evaluate)
with plain loops, sklearn and torch, sharing no code with evaluation.scoring: raw labels only, exact
match or nearest by Levenshtein distance over the label list in a given order (min() keeps the first of
equally near labels), the weighted sklearn metrics, Top-1 on the true label's comma parts, and for
detection the comma pieces, the 5-edit threshold, "None", the macro binary F1 and the float32 mAP.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from rapidfuzz.distance import Levenshtein
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from evaluation.prompts import COMBINED_RELEASED, COMMON, SCIENTIFIC, PromptKind
from evaluation.reference import LabelMapping, load_label_mapping, read_reference_folder
from evaluation.results import ResultRow
from evaluation.scoring import (
    TIE_ORDERS,
    MissingMappingWarning,
    RawLabelsWarning,
    ScoringMode,
    score_classification,
    score_detection,
    score_rows,
    snap_to_labels,
)

END = "<|end_of_text|>"


# ---------------------------------------------------------------- the re-statement


def beans_snap(text: str, order: list[str]) -> str:
    """EvalPostProcessor.get_nearest_label for classification, over `order` (a set's iteration order)."""
    text = text.split(END)[0]
    if text in order:
        return text
    return min(order, key=lambda label: Levenshtein.distance(text, label))


def beans_classification(predictions: list[str], labels: list[str], order: list[str] | None = None) -> dict:
    order = sorted(set(labels)) if order is None else order
    guesses = [beans_snap(text, order) for text in predictions]
    parts = [[part.strip() for part in label.split(",")] for label in labels]
    return {
        "Accuracy": accuracy_score(labels, guesses),
        "Precision": precision_score(labels, guesses, average="weighted", zero_division=0),
        "Recall": recall_score(labels, guesses, average="weighted", zero_division=0),
        "F1 Score": f1_score(labels, guesses, average="weighted", zero_division=0),
        "Top-1 Accuracy": sum(guess in part for guess, part in zip(guesses, parts, strict=True)) / len(labels),
    }


def beans_tied(predictions: list[str], labels: list[str]) -> int:
    """Answers that are no label and have two or more labels at their smallest distance."""
    tied = 0
    for text in (prediction.split(END)[0] for prediction in predictions):
        distances = [Levenshtein.distance(text, label) for label in set(labels)]
        tied += text not in labels and distances.count(min(distances)) > 1
    return tied


def beans_detection(predictions: list[str], labels: list[str]) -> dict:
    targets = sorted({*labels, "None"})

    def piece_label(piece: str) -> str:
        text = piece.split(END)[0]
        if text in targets:
            return text
        nearest = min(targets, key=lambda label: Levenshtein.distance(text, label))
        return nearest if Levenshtein.distance(text, nearest) <= 5 else "None"

    classes = sorted({p.strip() for label in labels if label.lower() != "none" for p in label.split(",")})

    def vector(text: str) -> list[float]:
        named = [] if text.lower() == "none" else text.split(", ")
        return [float(name in named) for name in classes]

    snapped = [", ".join(piece_label(piece.strip()) for piece in text.split(",")) for text in predictions]
    guess = torch.tensor([vector(text) for text in snapped])
    truth = torch.tensor([vector(label) for label in labels]).long()
    average_precisions = torch.zeros(len(classes))
    for k in range(len(classes)):
        ranked = truth[:, k][torch.sort(guess[:, k], 0, True)[1]]
        precision = ranked.float().cumsum(0) / torch.arange(1, len(labels) + 1).float()
        average_precisions[k] = precision[ranked.bool()].sum() / max(ranked.sum(), 1)
    sums = {"prec": 0.0, "rec": 0.0, "f1": 0.0}
    for k in range(len(classes)):
        positives, trues = int(guess[:, k].sum()), int(truth[:, k].sum())
        hits = int(((guess[:, k] == 1) & (truth[:, k] == 1)).sum())
        prec = hits / positives if positives else 0.0
        rec = hits / trues if trues else 0.0
        sums["prec"] += prec
        sums["rec"] += rec
        sums["f1"] += 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    macro = {key: value / len(classes) for key, value in sums.items()}
    return {
        "mAP": average_precisions.mean().item(),
        "F1": macro["f1"],
        "Recall": macro["rec"],
        "Precision": macro["prec"],
    }


# ---------------------------------------------------------------- hand-made subsets

ANIMALS = ["cat", "bat", "rat", "dog", "Beluga, White Whale", "Beluga"]
MAPPING = LabelMapping(
    scientific={
        "cat": "Felis catus",
        "bat": "Myotis myotis",
        "rat": "Rattus rattus",
        "dog": "Canis familiaris",
        "Beluga, White Whale": "Delphinapterus leucas",
        "Beluga": "Huso huso",
    }
)
# (truth, answer): "hat" and "mat" are one edit from cat, bat and rat; "cxg" two from cat and dog;
# "Felis catus" nine from Beluga and cat. Five answers are tied, between five of the six labels.
ANSWERS = [
    ("cat", "hat"),
    ("rat", "mat"),
    ("bat", "bat"),
    ("dog", "cxg"),
    ("cat", "cxg"),
    ("dog", f"dog{END}cat"),
    ("Beluga, White Whale", "Beluga, White Whale"),
    ("Beluga, White Whale", "Beluga"),
    ("Beluga", "Felis catus"),
    ("rat", "Rattus rattus"),
]


def rows_of(answers, prompt=SCIENTIFIC, alpha=0.5):
    return [
        ResultRow(str(i), "watkins", prompt.name, prompt.template, alpha, answer, truth)
        for i, (truth, answer) in enumerate(answers)
    ]


def test_official_equals_the_restatement_with_ties_and_with_or_without_a_mapping(recwarn):
    truths, answers = map(list, zip(*ANSWERS, strict=True))
    expected = beans_classification(answers, truths)
    with_mapping = score_rows(rows_of(ANSWERS), "official", mapping=MAPPING)[0]
    without = score_rows(rows_of(ANSWERS), "official")[0]
    for score in (with_mapping, without):
        assert score.kind is PromptKind.SCIENTIFIC  # a scientific prompt, yet scored on the raw labels
        assert list(score.metrics.official) == list(expected)
        assert score.metrics.official == pytest.approx(expected, abs=1e-12)
        assert [answer.label for answer in score.answers] == truths
    # Official never maps, so no mapping is missing; it says, with or without one, that it uses the raw labels.
    assert [w.category for w in recwarn] == [RawLabelsWarning, RawLabelsWarning]
    assert MissingMappingWarning not in {w.category for w in recwarn}
    assert with_mapping.metrics.ties.tied == beans_tied(answers, truths) == 5
    assert [bool(answer.tied) for answer in with_mapping.answers] == [1, 1, 0, 1, 1, 0, 0, 0, 1, 0]


@pytest.mark.parametrize("kind", [PromptKind.SCIENTIFIC, PromptKind.COMBINED])
def test_official_ignores_a_mapping_handed_to_it_directly(kind):
    truths, answers = map(list, zip(*ANSWERS, strict=True))
    scored, metrics = score_classification(
        [str(i) for i in range(len(truths))],
        answers,
        truths,
        dataset="watkins",
        kind=kind,
        mode=ScoringMode.OFFICIAL,
        label_set=truths,
        mapping=MAPPING,
    )
    assert [answer.label for answer in scored] == truths
    assert metrics.official == pytest.approx(beans_classification(answers, truths), abs=1e-12)


def test_the_mapped_scoring_is_the_papers_and_differs_from_official():
    paper = score_rows(rows_of(ANSWERS), "paper", mapping=MAPPING)[0]
    official = score_rows(rows_of(ANSWERS), "official", mapping=MAPPING)[0]
    assert [answer.label for answer in paper.answers][8:] == ["Huso huso", "Rattus rattus"]
    assert [answer.label for answer in official.answers][8:] == ["Beluga", "rat"]
    assert paper.metrics.accuracy != official.metrics.accuracy
    assert paper.metrics.official == {} and paper.metrics.ties is not None


def test_top1_accuracy_never_credits_a_label_holding_a_comma():
    truths = ["Beluga, White Whale", "Beluga, White Whale", "Walrus", "Beluga, White Whale", "Beluga"]
    answers = ["Beluga, White Whale", "Beluga, White Whale.", "Walrus", "Beluga", "Beluga"]
    _, metrics = score_classification(
        list("abcde"),
        answers,
        truths,
        dataset="watkins",
        kind=PromptKind.COMMON,
        mode=ScoringMode.OFFICIAL,
        label_set=["Beluga, White Whale", "Walrus", "Beluga"],
    )
    # Two answers are the full comma label: right for Accuracy, never for Top-1. The fourth is the
    # reverse: another label, but one of the true label's parts.
    assert metrics.official["Accuracy"] == 0.8
    assert metrics.official["Top-1 Accuracy"] == 0.6
    assert metrics.official == pytest.approx(beans_classification(answers, truths), abs=1e-12)


def test_tie_ranges_hold_the_sorted_order_value_and_every_label_orders_outcome():
    truths, answers = map(list, zip(*ANSWERS, strict=True))
    score = score_rows(rows_of(ANSWERS, prompt=COMMON), "official")[0]
    ranges = score.metrics.ties.ranges
    tied_labels = ["Beluga", "bat", "cat", "dog", "rat"]
    assert sorted({label for answer in score.answers for label in answer.tied}) == tied_labels
    # BEANS-Zero's result under every order of the label set (the untied label's place does not matter).
    every_order = [
        beans_classification(answers, truths, [*order, "Beluga, White Whale"])
        for order in itertools.permutations(tied_labels)
    ]
    for name, reported in score.metrics.official.items():
        low, high = ranges[name]
        assert low <= reported <= high, name
        found = [result[name] for result in every_order]
        assert (low, high) == pytest.approx((min(found), max(found)), abs=1e-12), name
    assert ranges["Accuracy"][0] < ranges["Accuracy"][1]  # these ties do decide answers
    assert ranges["accuracy"] == ranges["Accuracy"] and ranges["f1_weighted"] == ranges["F1 Score"]


def test_tie_redraws_touch_only_tied_answers_and_are_seeded():
    snap = snap_to_labels(["hat", "mat", "dog", "cxg"], ANIMALS)
    assert set(snap.ties) == {0, 1, 3}
    draws = [snap.redraw(seed) for seed in range(TIE_ORDERS)]
    assert draws == [snap.redraw(seed) for seed in range(TIE_ORDERS)]
    for draw in draws:
        assert set(draw) == set(snap.ties)
        assert all(label in snap.ties[i] for i, label in draw.items())
    assert len({tuple(draw.values()) for draw in draws}) > 1


def test_a_group_without_ties_has_degenerate_ranges_and_flat_columns():
    score = score_rows(rows_of([("cat", "cat"), ("dog", "cat")], prompt=COMMON), "official")[0]
    ties = score.metrics.ties
    assert ties.tied == 0
    assert all(low == high for low, high in ties.ranges.values())
    columns = ties.columns()
    assert columns["tied_answers"] == 0
    assert columns["accuracy_tie_min"] == columns["accuracy_tie_max"] == score.metrics.accuracy == 0.5
    assert columns["Top-1 Accuracy_tie_max"] == score.metrics.official["Top-1 Accuracy"]


def test_robust_mode_reports_no_tie_sensitivity_and_no_official_metrics():
    score = score_rows(rows_of(ANSWERS, prompt=COMBINED_RELEASED), "robust", mapping=MAPPING)[0]
    assert score.metrics.ties is None and score.metrics.official == {}


# ---------------------------------------------------------------- detection

DETECTION_LABELS = ["Robin, Blue Jay", "None", "Blue Jay", "Robin", "Wren", "Robin, Wren", "Wren", "None"]
DETECTION_ANSWERS = [
    "Robin, Blue Jay",
    "None",
    "Blue Jey",
    "Zebra finch in the distance",  # too far from every label: "None"
    "Wran",
    f"Robin{END}, Wren",
    "Roen, Wobin",  # "Roen" is two edits from Robin and from Wren
    "Roen",
]


def test_official_detection_equals_the_restatement():
    _, metrics = score_detection(
        [str(i) for i in range(len(DETECTION_LABELS))],
        DETECTION_ANSWERS,
        DETECTION_LABELS,
        mode=ScoringMode.OFFICIAL,
        label_set=DETECTION_LABELS,
    )
    expected = beans_detection(DETECTION_ANSWERS, DETECTION_LABELS)
    assert metrics.ties.tied == 2
    assert list(metrics.official) == ["mAP", "F1", "Recall", "Precision"]
    assert metrics.official == pytest.approx(expected, abs=1e-12)
    for name, value in metrics.official.items():
        assert metrics.ties.ranges[name][0] <= value <= metrics.ties.ranges[name][1]


def test_official_detection_map_follows_torch_order_on_a_larger_random_set():
    rng = np.random.default_rng(3)
    species = ["Robin", "Wren", "Blue Jay", "Finch"]
    labels = [", ".join(sorted(rng.choice(species, rng.integers(1, 3), replace=False))) for _ in range(300)]
    answers = [", ".join(rng.choice([*species, "Robn", "Fnch", "owl"], rng.integers(1, 3))) for _ in range(300)]
    _, metrics = score_detection(
        [str(i) for i in range(300)], answers, labels, mode=ScoringMode.OFFICIAL, label_set=labels
    )
    assert metrics.official == pytest.approx(beans_detection(answers, labels), abs=1e-12)


# ---------------------------------------------------------------- the paper's 33 released Watkins files


@pytest.fixture(scope="module")
def watkins(shared_dir):
    results = shared_dir / "reference" / "paper_results"
    rows = read_reference_folder(results / "watkins")
    mapping = load_label_mapping(results / "watkins_vernacular_scientific_mapping.jsonl")
    return rows, mapping, json.loads((results / "watkins_expected.json").read_text())


def test_official_equals_the_restatement_on_all_33_watkins_files(watkins):
    rows, mapping, _ = watkins
    checked = 0
    for score in score_rows(rows, "official", mapping=mapping):
        group = [r for r in rows if (r.prompt_name, r.alpha) == (score.prompt_name, score.alpha)]
        answers, truths = [r.prediction for r in group], [r.label for r in group]
        assert score.metrics.official == pytest.approx(beans_classification(answers, truths), abs=1e-12)
        assert score.metrics.ties.tied == beans_tied(answers, truths)
        for name, value in score.metrics.official.items():
            low, high = score.metrics.ties.ranges[name]
            assert low <= value <= high
        checked += 1
    assert checked == 33


def test_scientific_answers_score_near_zero_officially_but_not_in_paper_mode(watkins):
    rows, mapping, expected = watkins
    official = {(s.prompt_name, s.alpha): s.metrics for s in score_rows(rows, "official", mapping=mapping)}
    paper = {(s.prompt_name, s.alpha): s.metrics for s in score_rows(rows, "paper", mapping=mapping)}
    # Query 1 asks for scientific names; BEANS-Zero compares them with common-name labels.
    assert official[("1", 1.0)].official["Accuracy"] < 0.1
    assert paper[("1", 1.0)].accuracy == pytest.approx(expected["accuracy"]["scientific"]["1.0"], abs=0.003)
