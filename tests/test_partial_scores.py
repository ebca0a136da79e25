"""Scores of an unfinished sweep snap answers to the labels the finished sweep will have."""

from __future__ import annotations

import pytest

from evaluation.results import ResultRow
from evaluation.sweep import SweepSpec, planned_label_sets, prepare_folder, score_sweep, scores
from tests.sweep_helpers import spec_dict, write_sweep_data


@pytest.fixture
def partial_sweep(tmp_path):
    """A 12-sample watkins sweep (one label per sample) with one answer written: it names the label of
    a sample not answered yet, one character away from its own label."""
    rows = [row for row in write_sweep_data(tmp_path / "data") if row.dataset == "watkins"]
    spec = SweepSpec.from_dict(spec_dict(tmp_path / "data", prompts=["common"], alphas=[1.0], scoring_mode="paper"))
    folder = prepare_folder(tmp_path / "runs", spec)
    first = rows[1]  # "Whale species 01"
    answer = ResultRow(first.id, "watkins", "common", "prompt", 1.0, "Whale species 07", first.label)
    folder.results.append([answer.to_dict()])
    planned_label_sets.cache_clear()
    return tmp_path / "runs", spec, first


def test_a_running_sweep_is_scored_against_every_planned_label(partial_sweep):
    runs_dir, spec, _ = partial_sweep
    assert planned_label_sets(spec) == {"watkins": frozenset(f"Whale species {i:02d}" for i in range(12))}
    (group,) = score_sweep(runs_dir, spec.sweep_id)
    assert group.answers[0].predicted == "Whale species 07"
    assert group.metrics.accuracy == 0.0


def test_without_the_data_the_labels_seen_are_used(partial_sweep, monkeypatch):
    """The fallback (data moved away) is the old behaviour, where the one-letter miss snaps to the only
    label seen and counts as correct: what the planned labels prevent."""
    runs_dir, spec, first = partial_sweep
    monkeypatch.setattr(scores, "planned_label_sets", lambda spec: None)
    (group,) = score_sweep(runs_dir, spec.sweep_id)
    assert group.answers[0].predicted == first.label
    assert group.metrics.accuracy == 1.0


def test_a_moved_data_folder_falls_back_to_the_labels_seen(partial_sweep, tmp_path):
    runs_dir, spec, first = partial_sweep
    (tmp_path / "data").rename(tmp_path / "elsewhere")
    assert planned_label_sets(spec) is None
    (group,) = score_sweep(runs_dir, spec.sweep_id)
    assert group.answers[0].predicted == first.label
