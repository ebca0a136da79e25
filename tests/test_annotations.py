"""The exports read back: Raven through pandas with exactly its columns, Audacity lines, CSV and JSON."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from naturelm_core.annotations import (
    RAVEN_COLUMNS,
    SUFFIXES,
    AnnotationError,
    to_audacity,
    to_csv,
    to_json,
    to_raven,
    write_exports,
)
from naturelm_core.events import DetectionResult, Event, WindowAnswer, merge_events


def _result(alphas: tuple[str, ...] = ("1",), confidence: float | None = None) -> DetectionResult:
    windows = tuple(
        WindowAnswer(10.0 * i, min(10.0 * i + 10.0, 42.5), alpha, text)
        for alpha in alphas
        for i, text in enumerate(["Common loon", "common loon.", "None", "Gray wolf, howling", "Gray wolf, howling"])
    )
    events = merge_events(windows, alpha_order=alphas)
    if confidence is not None:
        events = tuple(Event(e.start_s, e.end_s, e.alpha, e.label, e.windows, confidence) for e in events)
    return DetectionResult("dawn.flac", 42.5, 10.0, 10.0, "What is calling?", alphas, windows, events)


def test_raven_selection_table_reads_back_with_exactly_its_columns(tmp_path):
    path = to_raven(_result(), tmp_path / "dawn.txt")
    table = pd.read_csv(path, sep="\t")
    assert tuple(table.columns) == RAVEN_COLUMNS
    assert table["Selection"].tolist() == [1, 2]
    assert set(table["View"]) == {"Spectrogram 1"} and set(table["Channel"]) == {1}
    assert table["Begin Time (s)"].tolist() == [0.0, 30.0]
    assert table["End Time (s)"].tolist() == [20.0, 42.5]
    assert set(table["Low Freq (Hz)"]) == {0.0} and set(table["High Freq (Hz)"]) == {8000.0}
    assert table["Annotation"].tolist() == ["Common loon", "Gray wolf, howling"]
    assert table["Alpha"].tolist() == [1, 1]
    assert table["Confidence"].isna().all()  # no candidate list: the column stays empty


def test_raven_takes_a_narrowed_band_and_a_confidence_when_there_is_one(tmp_path):
    path = to_raven(_result(confidence=0.8125), tmp_path / "dawn.txt", low_freq_hz=150, high_freq_hz=4000)
    table = pd.read_csv(path, sep="\t")
    assert set(table["Low Freq (Hz)"]) == {150.0} and set(table["High Freq (Hz)"]) == {4000.0}
    assert table["Confidence"].tolist() == [0.8125, 0.8125]


@pytest.mark.parametrize(("low", "high"), [(-1, 8000), (0, 9000), (4000, 4000), (float("nan"), 100)])
def test_a_band_outside_what_the_model_hears_is_refused(tmp_path, low, high):
    with pytest.raises(AnnotationError, match=r"0-8000 Hz|number of Hz"):
        to_raven(_result(), tmp_path / "dawn.txt", low_freq_hz=low, high_freq_hz=high)


def test_audacity_labels_parse_as_start_end_label_and_name_the_alpha_when_there_are_several(tmp_path):
    lines = to_audacity(_result(), tmp_path / "one.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines]
    assert rows == [["0.0", "20.0", "Common loon"], ["30.0", "42.5", "Gray wolf, howling"]]
    several = to_audacity(_result(("0", "1")), tmp_path / "two.txt").read_text().splitlines()
    assert [line.split("\t")[2] for line in several][:2] == ["Common loon (alpha 0)", "Common loon (alpha 1)"]
    assert all(float(start) <= float(end) for start, end, _ in (line.split("\t") for line in several))


def test_csv_quotes_labels_with_commas_and_leaves_confidence_empty(tmp_path):
    with to_csv(_result(), tmp_path / "dawn.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1] == {
        "start_s": "30.0",
        "end_s": "42.5",
        "label": "Gray wolf, howling",
        "alpha": "1",
        "confidence": "",
        "windows": "2",
    }


def test_json_holds_settings_every_window_and_the_events(tmp_path):
    data = json.loads(to_json(_result(), tmp_path / "dawn.json").read_text())
    assert data["source"] == "dawn.flac" and data["window_s"] == 10.0 and data["complete"] is True
    assert len(data["windows"]) == 5
    assert data["events"][0] == {
        "start_s": 0.0,
        "end_s": 20.0,
        "alpha": "1",
        "label": "Common loon",
        "windows": 2,
        "confidence": None,
    }


def test_write_exports_writes_each_chosen_format_and_refuses_unknown_ones(tmp_path):
    written = write_exports(_result(), tmp_path / "out", "dawn", formats=["raven", "json"])
    assert {name: path.name for name, path in written.items()} == {
        "raven": "dawn" + SUFFIXES["raven"],
        "json": "dawn" + SUFFIXES["json"],
    }
    with pytest.raises(AnnotationError, match="unknown export format pdf"):
        write_exports(_result(), tmp_path / "out", "dawn", formats=["pdf"])


def test_a_recording_without_events_gives_a_header_only_table_and_an_empty_label_track(tmp_path):
    empty = DetectionResult("quiet.wav", 10.0, 10.0, 10.0, "?", ("1",), (WindowAnswer(0, 10, "1", "None"),), ())
    assert pd.read_csv(to_raven(empty, tmp_path / "q.txt"), sep="\t").empty
    assert to_audacity(empty, tmp_path / "q.labels.txt").read_text() == ""
