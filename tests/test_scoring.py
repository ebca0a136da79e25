"""The three scoring modes on hand-made tricky answers, and the metrics against scikit-learn."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from evaluation.prompts import COMBINED_RELEASED, COMMON, SCIENTIFIC, ZF_HOW_MANY, PromptKind
from evaluation.reference import LabelMapping, MappingError
from evaluation.results import ResultRow
from evaluation.scoring import (
    PAPER_OUT_OF_SET,
    ROBUST_ABSTENTION,
    ROBUST_OUT_OF_SET,
    MissingMappingWarning,
    Outcome,
    ScoringMode,
    classification_metrics,
    paper_clean,
    score_classification,
    score_detection,
    score_rows,
    snap_to_labels,
)

WATKINS_LIKE = ["Walrus", "Fin, Finback Whale", "Humpback Whale", "Killer Whale", "False Killer Whale", "Harp Seal"]
MAPPING = LabelMapping(
    scientific={
        "Walrus": "Scientific name not found",
        "Fin, Finback Whale": "Balaenoptera physalus",
        "Humpback Whale": "Megaptera novaeangliae",
        "Killer Whale": "Scientific name not found",
        "False Killer Whale": "Pseudorca crassidens",
        "Harp Seal": "Phoca groenlandica",
    },
    synonyms={"Harp Seal": ("Pagophilus groenlandicus",)},
)


def score_one(answer, label, *, mode, dataset="watkins", kind=PromptKind.COMMON, labels=WATKINS_LIKE, mapping=None):
    answers, _ = score_classification(
        ["id"], [answer], [label], dataset=dataset, kind=kind, mode=ScoringMode(mode), label_set=labels, mapping=mapping
    )
    return answers[0]


# ---------------------------------------------------------------- official


def test_official_snaps_every_answer_to_some_label_without_threshold():
    scored = score_one("Wildebeest grazing on the savanna", "Walrus", mode="official")
    assert scored.predicted in WATKINS_LIKE
    assert scored.outcome is Outcome.IN_SET_CONFUSION


def test_official_cuts_at_end_of_text_and_keeps_exact_matches():
    scored = score_one("Harp Seal<|end_of_text|>Walrus Walrus", "Harp Seal", mode="official")
    assert scored.predicted == "Harp Seal"
    assert scored.outcome is Outcome.CORRECT


def test_official_does_not_strip_or_lowercase():
    # "walrus." is 2 edits from "Walrus": still nearest, so correct; no threshold to fail.
    assert score_one("walrus.", "Walrus", mode="official").outcome is Outcome.CORRECT
    # But the comma cut is paper-only: the full comma label matches exactly in official mode.
    assert score_one("Fin, Finback Whale", "Fin, Finback Whale", mode="official").outcome is Outcome.CORRECT


# ---------------------------------------------------------------- paper


def test_paper_removes_only_its_literal_preambles():
    prefix = "The common name for the focal species in the audio is"
    assert paper_clean(f"{prefix} Walrus.", "esc50") == " Walrus."
    # " Walrus." costs 2 of the 5 allowed edits: correct.
    assert score_one(f"{prefix} Walrus.", "Walrus", mode="paper").outcome is Outcome.CORRECT
    # " the Humpback Whale." is 6 edits away: out of set, although the species is right.
    scored = score_one(f"{prefix} the Humpback Whale.", "Humpback Whale", mode="paper")
    assert (scored.predicted, scored.outcome) == (PAPER_OUT_OF_SET, Outcome.OUT_OF_SET)
    # A different preamble is not removed at all.
    assert score_one("The common name for the species is Walrus", "Walrus", mode="paper").outcome is Outcome.OUT_OF_SET


def test_paper_quotes_and_trailing_period_cost_edits():
    assert score_one('"Walrus".', "Walrus", mode="paper").outcome is Outcome.CORRECT  # 3 edits
    assert score_one(' the "Walrus".', "Walrus", mode="paper").outcome is Outcome.OUT_OF_SET  # 8 edits


def test_paper_comma_cut_defeats_comma_labels_on_watkins_only():
    watkins = score_one("Fin, Finback Whale", "Fin, Finback Whale", mode="paper", dataset="watkins")
    assert watkins.outcome is Outcome.OUT_OF_SET
    elsewhere = score_one("Fin, Finback Whale", "Fin, Finback Whale", mode="paper", dataset="esc50")
    assert elsewhere.outcome is Outcome.CORRECT
    assert paper_clean("Walrus, probably", "cbi") == "Walrus"


def test_paper_near_miss_within_five_edits_counts_as_that_label():
    # "Fin Whale" is 3 edits from "Minke Whale" in a set that holds it: the paper calls that Minke.
    labels = [*WATKINS_LIKE, "Minke Whale"]
    scored = score_one("Fin Whale", "Minke Whale", mode="paper", labels=labels)
    assert scored.outcome is Outcome.CORRECT
    assert score_one("Fin Whale", "Minke Whale", mode="robust", labels=labels).outcome is Outcome.IN_SET_CONFUSION


def test_paper_scientific_labels_come_from_the_mapping_and_not_found_stays_literal():
    scored = score_one(
        "Megaptera novaeangliae", "Humpback Whale", mode="paper", kind=PromptKind.SCIENTIFIC, mapping=MAPPING
    )
    assert (scored.label, scored.outcome) == ("Megaptera novaeangliae", Outcome.CORRECT)
    walrus = score_one("Odobenus rosmarus", "Walrus", mode="paper", kind=PromptKind.SCIENTIFIC, mapping=MAPPING)
    assert walrus.label == "Scientific name not found"
    assert walrus.outcome is not Outcome.CORRECT


def test_paper_combined_label_is_scientific_space_colon_space_common():
    kwargs = {"mode": "paper", "kind": PromptKind.COMBINED, "mapping": MAPPING}
    scored = score_one("Megaptera novaeangliae: Humpback Whale", "Humpback Whale", **kwargs)
    assert scored.label == "Megaptera novaeangliae : Humpback Whale"
    assert scored.outcome is Outcome.CORRECT  # one edit (the missing space)
    # The comma label is cut at its comma on watkins, so even a perfect combined answer misses.
    perfect = "Balaenoptera physalus : Fin, Finback Whale"
    assert score_one(perfect, "Fin, Finback Whale", **kwargs).outcome is Outcome.OUT_OF_SET
    assert score_one(perfect, "Fin, Finback Whale", dataset="other", **kwargs).outcome is Outcome.CORRECT


def test_paper_zf_indiv_digits():
    labels = ["One", "More"]
    for answer, expected in [("0", "One"), ("1", "One"), ("2", "More"), ("17", "More")]:
        assert score_one(answer, expected, mode="paper", dataset="zf-indiv", labels=labels).predicted == expected
    # Only all-digit answers are mapped, and only for zf-indiv.
    assert paper_clean("2 birds", "zf-indiv") == "2 birds"
    assert paper_clean("2", "call-type") == "2"


def test_ties_break_to_the_first_label_in_sorted_order_whatever_the_input_order():
    labels = ["abd", "abc", "abe", "xyz"]
    for _ in range(5):
        random.shuffle(labels)
        snap = snap_to_labels(["abx", "abd", "xy"], labels)
        assert snap.labels == ["abc", "abd", "xyz"]
        # Only the first text had several equally near labels; an exact match never ties.
        assert snap.ties == {0: ("abc", "abd", "abe")}


def test_missing_mapping_entries_are_named():
    partial = LabelMapping({"Walrus": "Odobenus rosmarus"})
    with pytest.raises(MappingError, match="Harp Seal"):
        score_one("x", "Walrus", mode="paper", kind=PromptKind.SCIENTIFIC, mapping=partial)


# ---------------------------------------------------------------- robust


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        (' the "Walrus".', "Walrus"),
        ("The common name for the focal species in the audio is the Humpback Whale.", "Humpback Whale"),
        ("It sounds like a killer whale (Orcinus orca).", "Killer Whale"),
        ("False killer whale", "False Killer Whale"),
        ("Fin Whale", "Fin, Finback Whale"),
        ("finback whale", "Fin, Finback Whale"),
        ("Fin, Finback Whale", "Fin, Finback Whale"),
        ("**Harp seal**", "Harp Seal"),
        ("Walrus (also known as the morse)", "Walrus"),
        ("Humback Whale", "Humpback Whale"),
    ],
)
def test_robust_reads_verbose_but_correct_answers(answer, label):
    assert score_one(answer, label, mode="robust").outcome is Outcome.CORRECT


def test_robust_separates_abstentions_from_out_of_set_species():
    cannot = score_one("I cannot determine the species from this audio.", "Walrus", mode="robust")
    assert (cannot.predicted, cannot.outcome) == (ROBUST_ABSTENTION, Outcome.ABSTENTION)
    assert score_one("", "Walrus", mode="robust").outcome is Outcome.ABSTENTION
    wrong = score_one("Wildebeest", "Walrus", mode="robust")
    assert (wrong.predicted, wrong.outcome) == (ROBUST_OUT_OF_SET, Outcome.OUT_OF_SET)
    confused = score_one("Harp seal", "Walrus", mode="robust")
    assert (confused.predicted, confused.outcome) == ("Harp Seal", Outcome.IN_SET_CONFUSION)


def test_robust_does_not_confuse_a_name_with_a_longer_one_containing_it():
    assert score_one("Killer whale", "False Killer Whale", mode="robust").predicted == "Killer Whale"
    assert score_one("A false killer whale, I think", "Killer Whale", mode="robust").predicted == "False Killer Whale"


def test_robust_combined_parses_both_parts_and_reports_them():
    predictions = [
        "Balaenoptera physalus: Fin Whale",
        "Megaptera novaeangliae: Humpback Whale",
        "Orcinus orca: Killer Whale",
    ]
    labels = ["Fin, Finback Whale", "Killer Whale", "Killer Whale"]
    answers, metrics = score_classification(
        ["a", "b", "c"],
        predictions,
        labels,
        dataset="watkins",
        kind=PromptKind.COMBINED,
        mode=ScoringMode.ROBUST,
        label_set=WATKINS_LIKE,
        mapping=MAPPING,
    )
    assert [a.outcome for a in answers] == [Outcome.CORRECT, Outcome.IN_SET_CONFUSION, Outcome.CORRECT]
    assert metrics.extra["common_part_accuracy"] == pytest.approx(2 / 3)
    # Killer Whale has no scientific name in the mapping: only the first answer's part can be judged.
    assert metrics.extra["scientific_part_accuracy"] == 1.0


def test_robust_scientific_accepts_synonyms_and_sets_aside_unmapped_classes():
    answers, metrics = score_classification(
        ["a", "b", "c"],
        ["Pagophilus groenlandicus", "The scientific name is Phoca groenlandica.", "Odobenus rosmarus"],
        ["Harp Seal", "Harp Seal", "Walrus"],
        dataset="watkins",
        kind=PromptKind.SCIENTIFIC,
        mode=ScoringMode.ROBUST,
        label_set=WATKINS_LIKE,
        mapping=MAPPING,
    )
    assert [a.outcome for a in answers] == [Outcome.CORRECT, Outcome.CORRECT]
    assert metrics.n == 2
    assert metrics.extra["unscorable"] == 1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("There are two birds.", "More"), ("Just one bird", "One"), ("3", "More"), ("More.", "More"), ("'One'", "One")],
)
def test_robust_counts_for_one_or_more_labels(answer, expected):
    assert (
        score_one(answer, expected, mode="robust", dataset="zf-indiv", labels=["One", "More"]).outcome
        is Outcome.CORRECT
    )


# ---------------------------------------------------------------- metrics


def test_metrics_match_sklearn_weighted_and_macro():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d", "e"]
    y_true = list(rng.choice(classes, 200))
    y_pred = list(rng.choice([*classes, PAPER_OUT_OF_SET, "zz"], 200))
    outcomes = [Outcome.CORRECT if t == p else Outcome.IN_SET_CONFUSION for t, p in zip(y_true, y_pred, strict=True)]
    metrics = classification_metrics(y_true, y_pred, outcomes)
    assert metrics.f1_weighted == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    real = sorted((set(y_true) | set(y_pred)) - {PAPER_OUT_OF_SET})
    assert metrics.f1_macro == pytest.approx(f1_score(y_true, y_pred, labels=real, average="macro", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=real, zero_division=0)
    for i, label in enumerate(real):
        per_class = metrics.per_class[label]
        assert (per_class.precision, per_class.recall, per_class.f1, per_class.support) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i])
        )
    assert PAPER_OUT_OF_SET not in metrics.per_class
    assert metrics.accuracy == pytest.approx(np.mean(np.array(y_true) == np.array(y_pred)))


def test_error_breakdown_rates_sum_to_one():
    predictions = ["Walrus", "Harp seal", "Wildebeest", "I don't know", "humpback whale"]
    labels = ["Walrus", "Walrus", "Walrus", "Walrus", "Killer Whale"]
    _, metrics = score_classification(
        list("abcde"),
        predictions,
        labels,
        dataset="watkins",
        kind=PromptKind.COMMON,
        mode=ScoringMode.ROBUST,
        label_set=WATKINS_LIKE,
    )
    summary = metrics.summary()
    assert summary["accuracy"] == pytest.approx(0.2)
    assert (summary["in_set_confusion"], summary["out_of_set"], summary["abstention"]) == pytest.approx((0.4, 0.2, 0.2))


# ---------------------------------------------------------------- detection


def test_detection_snaps_pieces_with_threshold_and_scores_sets():
    labels = ["Robin, Blue Jay", "None", "Blue Jay", "Robin"]
    predictions = ["Robin, Blue Jay", "None", "Blue Jey", "Zebra finch in the distance"]
    answers, metrics = score_detection(list("abcd"), predictions, labels, mode=ScoringMode.PAPER, label_set=labels)
    assert [a.outcome for a in answers] == [Outcome.CORRECT, Outcome.CORRECT, Outcome.CORRECT, Outcome.OUT_OF_SET]
    truth = np.array([[1, 1], [0, 0], [1, 0], [0, 1]])  # columns: Blue Jay, Robin
    guess = np.array([[1, 1], [0, 0], [1, 0], [0, 0]])
    assert metrics.f1_macro == pytest.approx(f1_score(truth, guess, average="macro", zero_division=0))
    assert metrics.accuracy == pytest.approx(0.75)


def test_detection_robust_reads_lists_in_prose():
    labels = ["Robin, Blue Jay", "None"]
    predictions = ["I can hear a blue jay and an American robin.", "No species."]
    answers, metrics = score_detection(["a", "b"], predictions, labels, mode=ScoringMode.ROBUST, label_set=labels)
    assert [a.outcome for a in answers][1] is Outcome.CORRECT
    assert answers[0].predicted == "Blue Jay, Robin"
    assert metrics.extra["mAP"] == pytest.approx(1.0)


# ---------------------------------------------------------------- whole results


def _row(dataset, prompt, alpha, label, prediction, sample_id="x"):
    return ResultRow(sample_id, dataset, prompt.name, prompt.template, alpha, prediction, label)


def test_score_rows_groups_by_dataset_prompt_alpha_and_shares_the_label_set():
    rows = [
        _row("watkins", COMMON, 0.0, "Walrus", "Walrus", "1"),
        _row("watkins", COMMON, 0.5, "Harp Seal", "Harp Seal", "2"),
        _row("watkins", COMMON, 0.5, "Walrus", "Harp Seal.", "1"),
        _row("zf-indiv", ZF_HOW_MANY, 1.0, "More", "2", "3"),
        _row("captioning", COMMON, 1.0, "a bird sings", "a bird", "4"),
    ]
    scores = score_rows(rows, "paper")
    keys = [(s.dataset, s.prompt_name, s.alpha) for s in scores]
    assert keys == [("watkins", "common", 0.0), ("watkins", "common", 0.5), ("zf-indiv", "zf_how_many", 1.0)]
    # At alpha 0 only Walrus was a label, yet "Harp Seal" from another group is in the snapping set.
    assert scores[1].answers[1].predicted == "Harp Seal"
    assert scores[2].metrics.accuracy == 1.0


def test_score_rows_detects_prompt_kind_from_text_and_warns_without_mapping():
    rows = [_row("watkins", SCIENTIFIC, 1.0, "Humpback Whale", "Megaptera novaeangliae")]
    with pytest.warns(MissingMappingWarning):
        unmapped = score_rows(rows, "paper")
    assert unmapped[0].kind is PromptKind.SCIENTIFIC and unmapped[0].metrics.accuracy == 0.0
    mapped = score_rows(rows, "paper", mapping=MAPPING)
    assert mapped[0].metrics.accuracy == 1.0
    combined = score_rows([_row("watkins", COMBINED_RELEASED, 1.0, "Walrus", "x")], "paper", mapping=MAPPING)
    assert combined[0].kind is PromptKind.COMBINED
