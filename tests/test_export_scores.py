"""Exports carry what scoring adds beside each number: BEANS-Zero's own metrics, tie ranges, tied answers."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from evaluation.export import TIED_LABELS_SEPARATOR, export_csv, export_json
from evaluation.prompts import COMMON
from evaluation.results import ResultRow
from evaluation.scoring import score_rows

# "Fxi Whale" is two edits from "Fin Whale" and from "Sei Whale": the sorted order says Fin, another Sei.
ROWS = [
    ResultRow("1", "watkins", "common", COMMON.template, 0.5, "Fxi Whale", "Sei Whale"),
    ResultRow("2", "watkins", "common", COMMON.template, 0.5, "Fin Whale", "Fin Whale"),
    ResultRow("3", "watkins", "common", COMMON.template, 0.5, "Fin, Finback Whale", "Fin, Finback Whale"),
]


@pytest.fixture(params=["official", "paper"])
def scores(request):
    return score_rows(ROWS, request.param)


def test_csv_names_the_labels_each_tied_answer_was_chosen_among(tmp_path, scores):
    table = pd.read_csv(export_csv(ROWS, tmp_path / "results.csv", scores), keep_default_na=False).set_index("id")
    assert table.loc[1, "scored_as"] == "Fin Whale" and table.loc[1, "outcome"] == "in_set_confusion"
    assert table.loc[1, "tied_labels"].split(TIED_LABELS_SEPARATOR) == ["Fin Whale", "Sei Whale"]
    assert table.loc[2, "tied_labels"] == table.loc[3, "tied_labels"] == ""


def test_json_metrics_carry_the_official_numbers_and_their_tie_ranges(tmp_path):
    scores = score_rows(ROWS, "official")
    document = json.loads(export_json(ROWS, tmp_path / "sweep.json", scores).read_text())
    group = document["metrics"]["watkins"]["common"]["0.5"]
    assert group["official"]["Accuracy"] == group["accuracy"] == pytest.approx(2 / 3)
    assert group["official"]["Top-1 Accuracy"] == pytest.approx(1 / 3)  # a comma label is never Top-1 right
    assert group["ties"]["tied_answers"] == 1
    assert group["ties"]["ranges"]["Accuracy"] == pytest.approx([2 / 3, 1.0])
    # Under the other order every answer is right; the sorted order gives the range's low end.
    assert group["ties"]["ranges"]["f1_weighted"] == pytest.approx([group["f1_weighted"], 1.0])


def test_json_metrics_of_paper_mode_have_ties_but_no_official_numbers(tmp_path):
    document = json.loads(export_json(ROWS, tmp_path / "sweep.json", score_rows(ROWS, "paper")).read_text())
    group = document["metrics"]["watkins"]["common"]["0.5"]
    assert group["official"] is None
    assert group["ties"]["ranges"]["accuracy"] == pytest.approx([1 / 3, 2 / 3])
