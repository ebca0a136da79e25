"""Per-class numbers of a sweep (evaluation.sweep_metrics) and what the Sweeps tab draws of them (ui.sweep_display)."""

from __future__ import annotations

import math

import pytest

from evaluation.prompts import PromptKind
from evaluation.scoring import GroupScore, Metrics, Outcome, ScoredAnswer, ScoringMode
from evaluation.sweep_metrics import OTHER_CLASS, PlotInputError, confusion_counts, per_class_accuracy

ANSWERS = {  # alpha -> (label, predicted, outcome)
    0.0: [("Robin", "Robin", "correct"), ("Robin", "Wren", "in_set_confusion"), ("Wren", "Wren", "correct"),
          ("Owl", "<none>", "abstention")],
    1.0: [("Robin", "Robin", "correct"), ("Robin", "Robin", "correct"), ("Wren", "Owl", "in_set_confusion"),
          ("Owl", "<out>", "out_of_set")],
}  # fmt: skip


def _scores(prompt: str = "common") -> list[GroupScore]:
    scores = []
    for alpha, rows in ANSWERS.items():
        answers = [
            ScoredAnswer(f"s{i}", predicted, label, predicted, Outcome(outcome))
            for i, (label, predicted, outcome) in enumerate(rows)
        ]
        metrics = Metrics.__new__(Metrics)  # the per-class numbers never read the group's metrics
        scores.append(
            GroupScore("garden", prompt, alpha, PromptKind.COMMON, ScoringMode.OFFICIAL, "cls", answers, metrics)
        )
    return scores


def test_per_class_accuracy_is_the_share_correct_per_class_and_alpha():
    frame = per_class_accuracy(_scores())
    assert list(frame["class"]) == ["Robin", "Owl", "Wren"]  # most answers first, then by name
    by_class = frame.set_index("class")
    assert by_class.loc["Robin", 0.0] == 0.5 and by_class.loc["Robin", 1.0] == 1.0
    assert by_class.loc["Wren", 0.0] == 1.0 and by_class.loc["Wren", 1.0] == 0.0
    assert by_class.loc["Owl", 0.0] == 0.0 and by_class.loc["Robin", "n"] == 2


def test_per_class_accuracy_follows_the_prompt_filter():
    scores = _scores("common") + _scores("scientific")
    assert per_class_accuracy(scores, prompt="scientific").equals(per_class_accuracy(_scores("scientific")))
    assert per_class_accuracy(scores, prompt="nope").empty


def test_the_confusion_matrix_groups_rare_classes_and_keeps_abstentions_apart():
    counts = confusion_counts(_scores(), 0.0, top_n=1)
    assert list(counts.index) == ["Robin", OTHER_CLASS]
    assert counts.loc["Robin", "Robin"] == 1 and counts.loc["Robin", OTHER_CLASS] == 1
    assert counts.loc[OTHER_CLASS, OTHER_CLASS] == 1  # Wren answered Wren: both outside the top 1
    assert counts.loc[OTHER_CLASS, "(abstention)"] == 1
    assert counts.to_numpy().sum() == len(ANSWERS[0.0])
    full = confusion_counts(_scores(), 1.0, top_n=10)
    assert full.loc["Owl", "(out of set)"] == 1 and full.loc["Wren", "Owl"] == 1 and OTHER_CLASS not in full.index
    with pytest.raises(PlotInputError, match="at least 1"):
        confusion_counts(_scores(), 1.0, top_n=0)


def test_the_tab_draws_the_per_class_heatmap_and_the_confusion_matrix():
    from evaluation.sweep_views import SweepView
    from ui.sweep_display import class_figures

    view = SweepView("s", [], _scores(), None, None)
    drawn = class_figures(view, alpha=0.0, top_n=2)
    assert drawn.alphas == [0.0, 1.0] and drawn.alpha == 0.0
    assert list(drawn.table.columns) == ["class", "n", "α=0", "α=1"]
    assert list(drawn.table["α=0"]) == ["50%", "0%", "100%"]
    [heat] = drawn.heatmap.data
    assert heat.z[0] == (0.5, 1.0) or list(heat.z[0]) == [0.5, 1.0]
    [matrix] = drawn.confusion.data
    assert list(matrix.y) == ["Robin", "Owl", OTHER_CLASS] and "0" in drawn.confusion.layout.title.text
    assert not any(math.isnan(v) for row in matrix.z for v in row)
    assert class_figures(view, alpha=7.0).alpha == 1.0  # an alpha from another sweep: the largest
