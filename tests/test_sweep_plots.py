"""Sweep figures and exports, on answers whose scores are known by construction and on the paper's released files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evaluation.export import export_csv, export_json, export_paper_layout, import_paper_folder, results_frame
from evaluation.prompts import COMBINED, COMMON, SCIENTIFIC
from evaluation.reference import LabelMapping
from evaluation.results import ResultRow
from evaluation.scoring import score_rows
from evaluation.sweep_metrics import PlotInputError, metrics_frame, tradeoff_points
from ui.sweep_figures import (
    answers_table,
    error_breakdown_figure,
    metric_vs_alpha_figure,
    overlay_figure,
    tradeoff_figure,
)

SCIENTIFIC_NAMES = {
    "Bearded Seal": "Erignathus barbatus",
    "Fin Whale": "Balaenoptera physalus",
    "Walrus": "Odobenus rosmarus",
    "Killer Whale": "Orcinus orca",
}
LABELS = list(SCIENTIFIC_NAMES)
MAPPING = LabelMapping(SCIENTIFIC_NAMES)
ALPHAS = (0.0, 0.5, 1.0)
NONSENSE = "I really could not say which animal is making this sound"


def _answer(prompt_name: str, label: str) -> str:
    scientific = SCIENTIFIC_NAMES[label]
    return {"common": label, "scientific": scientific, "combined": f"{scientific} : {label}"}[prompt_name]


def _rows() -> list[ResultRow]:
    """alpha 0: every answer out of set; 0.5: samples 0-1 right and 2-3 swapped (combined: only sample 0 right);
    alpha 1: all right. So common and scientific score 0, .5, 1 and combined 0, .25, 1."""
    rows = []
    for prompt in (COMMON, SCIENTIFIC, COMBINED):
        for alpha in ALPHAS:
            for index, label in enumerate(LABELS):
                if alpha == 0.0:
                    text = NONSENSE
                elif alpha == 1.0 or index == 0 or (index == 1 and prompt is not COMBINED):
                    text = _answer(prompt.name, label)
                else:
                    text = _answer(prompt.name, LABELS[[1, 0, 3, 2][index]])
                rows.append(ResultRow(f"s{index}", "watkins", prompt.name, prompt.template, alpha, text, label))
    return rows


@pytest.fixture(scope="module")
def scores():
    return score_rows(_rows(), "paper", mapping=MAPPING)


@pytest.fixture(scope="module")
def frame(scores):
    return metrics_frame(scores)


def test_metrics_frame_holds_the_constructed_scores(frame):
    accuracy = frame.pivot_table(index="prompt", columns="alpha", values="accuracy")
    assert accuracy.loc["common"].tolist() == [0.0, 0.5, 1.0]
    assert accuracy.loc["scientific"].tolist() == [0.0, 0.5, 1.0]
    assert accuracy.loc["combined"].tolist() == [0.0, 0.25, 1.0]
    common = frame[frame["prompt"] == "common"].set_index("alpha")
    assert common["f1_weighted"].tolist() == [0.0, 0.5, 1.0]
    assert common.loc[0.0, "out_of_set"] == 1.0
    assert (common.loc[0.5, "correct"], common.loc[0.5, "in_set_confusion"]) == (0.5, 0.5)
    assert set(frame["n"]) == {4}
    assert dict(zip(frame["prompt"], frame["kind"], strict=True)) == {
        "combined": "combined",
        "common": "common",
        "scientific": "scientific",
    }


def test_metric_vs_alpha_has_one_line_per_prompt_with_its_values(frame):
    figure = metric_vs_alpha_figure(frame, "accuracy")
    lines = {trace.name: (list(trace.x), list(trace.y)) for trace in figure.data}
    assert lines == {
        "combined": ([0.0, 0.5, 1.0], [0.0, 0.25, 1.0]),
        "common": ([0.0, 0.5, 1.0], [0.0, 0.5, 1.0]),
        "scientific": ([0.0, 0.5, 1.0], [0.0, 0.5, 1.0]),
    }
    assert all(list(trace.customdata) == [4, 4, 4] for trace in figure.data)
    f1 = metric_vs_alpha_figure(frame, "f1_weighted")
    assert "weighted F1" in f1.layout.title.text
    with pytest.raises(PlotInputError, match="unknown metric"):
        metric_vs_alpha_figure(frame, "recall")


def test_tradeoff_curve_plots_combined_against_the_mean_of_individual_prompts_labelled_by_alpha(frame):
    figure = tradeoff_figure(frame)
    (trace,) = figure.data
    assert trace.name == "watkins"
    assert list(trace.x) == [0.0, 0.5, 1.0]  # mean of common and scientific
    assert list(trace.y) == [0.0, 0.25, 1.0]  # combined
    assert list(trace.text) == ["0", "0.5", "1"]
    points = tradeoff_points(frame, combined="combined", individual=["common"])
    assert points["individual_mean"].tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(PlotInputError, match="no scores for prompt"):
        tradeoff_points(frame, combined="absent")
    without_combined = tradeoff_figure(frame[frame["prompt"] != "combined"])
    assert len(without_combined.data) == 0 and "needs a combined prompt" in without_combined.layout.annotations[0].text


def test_error_breakdown_stacks_the_outcomes_per_alpha(frame):
    figure = error_breakdown_figure(frame, "watkins", "combined")
    assert figure.layout.barmode == "stack"
    bars = {trace.name: list(trace.y) for trace in figure.data}
    assert list(figure.data[0].x) == ["0", "0.5", "1"]
    assert bars["correct"] == [0.0, 0.25, 1.0]
    assert bars["in-set confusion"] == [0.0, 0.75, 0.0]
    assert bars["out of set"] == [1.0, 0.0, 0.0]
    assert bars["abstention"] == [0.0, 0.0, 0.0]
    assert error_breakdown_figure(frame).layout.title.text.endswith("watkins · combined")  # first in sorted order
    with pytest.raises(PlotInputError, match="no scores"):
        error_breakdown_figure(frame, "watkins", "nope")


def test_answers_table_shows_each_samples_answers_across_alphas_with_filters(scores):
    table = answers_table(scores)
    assert len(table) == 12  # 4 samples x 3 prompts
    assert list(table.columns[-3:]) == ["alpha=0", "alpha=0.5", "alpha=1"]
    row = table[(table["prompt"] == "common") & (table["id"] == "s2")].iloc[0]
    assert row["alpha=0"] == f"✗ {NONSENSE}" and row["alpha=0.5"] == "✗ Killer Whale" and row["alpha=1"] == "✓ Walrus"
    assert row["n_correct"] == 1 and row["n_alphas"] == 3
    sometimes = answers_table(scores, prompt="combined", correct="sometimes")
    assert sometimes["id"].tolist() == ["s0", "s1", "s2", "s3"]  # right at alpha 1, wrong at 0
    assert answers_table(scores, correct="always").empty
    assert answers_table(scores, dataset="esc50").empty
    with pytest.raises(PlotInputError, match="correct must be"):
        answers_table(scores, correct="yes")


def test_overlay_puts_two_sweeps_in_one_figure_same_colour_per_prompt(frame):
    other = frame.assign(accuracy=frame["accuracy"] / 2)
    figure = overlay_figure({"run A": frame, "run B": other}, "accuracy")
    traces = {trace.name: trace for trace in figure.data}
    assert set(traces) == {f"{run} · {p}" for run in ("run A", "run B") for p in ("combined", "common", "scientific")}
    assert list(traces["run B · common"].y) == [0.0, 0.25, 0.5]
    assert traces["run A · common"].line.color == traces["run B · common"].line.color
    assert traces["run A · common"].line.dash != traces["run B · common"].line.dash


def test_a_sweep_without_answers_yet_gives_empty_figures_not_errors():
    """The Sweeps tab refreshes its figures from the first second of a sweep, before any row is written."""
    frame = metrics_frame([])
    assert frame.empty and "accuracy" in frame.columns
    assert len(metric_vs_alpha_figure(frame).data) == 0
    assert len(tradeoff_figure(frame).data) == 0
    assert "no answers yet" in error_breakdown_figure(frame).layout.title.text
    assert answers_table([]).empty
    assert len(overlay_figure({"a": frame}).data) == 0


def test_csv_and_json_exports_carry_rows_scores_and_metrics(tmp_path, scores):
    rows = _rows()
    csv_path = export_csv(rows, tmp_path / "results.csv", scores)
    table = pd.read_csv(csv_path, keep_default_na=False)
    assert len(table) == len(rows) == 36
    combined = table[(table["prompt_name"] == "combined") & (table["alpha"] == 0.5)].set_index("id")
    assert combined.loc["s0", "outcome"] == "correct" and combined.loc["s1", "outcome"] == "in_set_confusion"
    assert combined.loc["s0", "scored_label"] == "Erignathus barbatus : Bearded Seal"
    document = json.loads(export_json(rows, tmp_path / "sweep.json", scores, spec={"name": "x"}).read_text())
    assert document["spec"] == {"name": "x"} and len(document["results"]) == 36
    assert document["metrics"]["watkins"]["combined"]["0.5"]["accuracy"] == 0.25


def test_paper_layout_round_trip_gives_the_same_rows_and_figures(tmp_path, frame):
    rows = _rows()
    queries = export_paper_layout(rows, tmp_path, mapping=MAPPING)
    assert sorted(queries) == ["combined", "common", "scientific"]
    assert len(list(tmp_path.glob("beans_zero_eval_watkins_query*_lora*.jsonl"))) == 9
    assert (tmp_path / "beans_zero_eval_watkins_query1_lora050.jsonl").is_file()
    imported = import_paper_folder(tmp_path)
    assert imported.mapping == MAPPING
    key = lambda r: (r.dataset, r.prompt_name, r.alpha, r.id)  # noqa: E731
    assert sorted(imported.rows, key=key) == sorted(rows, key=key)
    again = metrics_frame(score_rows(imported.rows, "paper", mapping=imported.mapping))
    for build in (metric_vs_alpha_figure, tradeoff_figure, error_breakdown_figure):
        assert [list(t.y) for t in build(again).data] == [list(t.y) for t in build(frame).data]
    assert results_frame(imported.rows).equals(results_frame(rows))


def test_the_papers_released_watkins_files_give_its_figure_4_numbers(shared_dir):
    """Imported as they were released, scored in paper mode: the trade-off points and accuracies the paper reports."""
    paper = shared_dir / "reference" / "paper_results"
    expected = json.loads((paper / "watkins_expected.json").read_text())
    imported = import_paper_folder(paper / "watkins")
    assert imported.mapping is not None and len(imported.rows) == 33 * 339
    frame = metrics_frame(score_rows(imported.rows, "paper", mapping=imported.mapping))
    (trace,) = tradeoff_figure(frame).data
    alphas = [f"{float(a):.1f}" for a in trace.customdata]
    curve = expected["combined_vs_mean_individual"]
    np.testing.assert_allclose(trace.x, [curve["mean_common_scientific"][a] for a in alphas], atol=0.003)
    np.testing.assert_allclose(trace.y, [curve["combined"][a] for a in alphas], atol=0.003)
    lines = {t.name: t for t in metric_vs_alpha_figure(frame, "f1_weighted").data}
    for query, name in (("0", "common"), ("1", "scientific"), ("2", "combined")):
        f1 = lines[query]
        np.testing.assert_allclose(f1.y, [expected["weighted_f1"][name][f"{a:.1f}"] for a in f1.x], atol=0.0065)
