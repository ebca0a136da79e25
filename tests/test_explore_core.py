"""Explore's non-UI helpers: the recipe scan's grids, the recipe field, the absent list, long-file previews,
and the detection timeline figure (one x axis for the spectrogram and the events)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from naturelm_core.alphas import MergeRecipe
from naturelm_core.events import DEFAULT_ABSENT_ANSWERS, Event
from naturelm_core.explore import (
    MAX_RECIPE_SCAN_POINTS,
    answer_point,
    parse_absent_answers,
    parse_knob_values,
    preview_waveform,
    recipe_grid,
    recipe_scan_cells,
)
from naturelm_core.recipes import RecipeError
from ui.explore_figures import detection_timeline_figure


def test_a_ramp_grid_has_a0_rows_and_a1_columns():
    grid = recipe_grid("ramp", [0.0, 1.0], [0.5, 1.0])
    assert grid.rows == ("0", "1") and grid.columns == ("0.5", "1")
    assert grid.points[0][0] == MergeRecipe(layers="linear:0:0.5")
    assert grid.points[1][1] == 1.0  # a ramp from 1 to 1 is the plain alpha 1
    assert len(grid.flat()) == 4


def test_a_rank_grid_keeps_whole_ranks_and_refuses_others():
    grid = recipe_grid("rank", [0.5], [1, 8])
    assert grid.points[0] == (MergeRecipe(alpha=0.5, rank=1), MergeRecipe(alpha=0.5, rank=8))
    with pytest.raises(RecipeError, match="whole numbers"):
        recipe_grid("rank", [0.5], [1.5])


def test_the_module_off_grid_switches_one_projection_off_per_column():
    grid = recipe_grid("module_off", [1.0])
    assert grid.columns == ("none", "q_proj", "k_proj", "v_proj", "o_proj")
    assert grid.points[0][0] == 1.0
    assert grid.points[0][2] == MergeRecipe(modules={"k_proj": 0.0})


def test_grids_refuse_out_of_range_points_unknown_kinds_and_too_many_points():
    with pytest.raises(RecipeError, match="grid point"):
        recipe_grid("ramp", [1.5], [1.0])
    with pytest.raises(RecipeError, match="unknown recipe scan"):
        recipe_grid("spiral", [1.0], [1.0])
    values = [i / 20 for i in range(12)]
    assert len(values) ** 2 > MAX_RECIPE_SCAN_POINTS
    with pytest.raises(RecipeError, match="more than"):
        recipe_grid("ramp", values, values)


def test_knob_values_are_numbers_without_repeats():
    assert parse_knob_values("0, 0.5; 0.5, 1", "rows") == [0.0, 0.5, 1.0]
    with pytest.raises(RecipeError, match="rows: 'x' is not a number"):
        parse_knob_values("0, x", "rows")
    with pytest.raises(RecipeError, match="no values"):
        parse_knob_values(" , ", "rows")


def test_the_recipe_field_replaces_the_slider_only_when_filled():
    assert answer_point(0.3, "") == 0.3
    assert answer_point(0.3, '{"alpha": 0.8}') == 0.8
    assert answer_point(0.3, '{"alpha": 0.8, "rank": 4}') == MergeRecipe(alpha=0.8, rank=4)
    with pytest.raises(RecipeError, match="one JSON object"):
        answer_point(0.3, '[{"alpha": 0.8}, {"alpha": 0.2}]')
    with pytest.raises(ValueError, match="merge recipe"):
        answer_point(0.3, '{"alpha": 3}')


def test_the_heatmap_colours_by_label_similarity_when_given_else_length():
    grid = recipe_grid("ramp", [0.0, 1.0], [1.0])
    answers = [["American Robin"], ["robin?"]]
    by_length = recipe_scan_cells(grid, answers)
    assert by_length["z"] == [[14], [6]] and "length" in by_length["colour"]
    by_label = recipe_scan_cells(grid, answers, "american robin")
    assert by_label["z"][0] == [1.0] and by_label["z"][1][0] < 1.0
    assert by_label["recipes"] == [["L0~1"], ["1"]]


def test_the_absent_list_reads_commas_and_lines_and_defaults_when_empty():
    assert parse_absent_answers("none, silence\nno bird") == ("none", "silence", "no bird")
    assert parse_absent_answers("  ") == DEFAULT_ABSENT_ANSWERS


def test_a_long_recording_preview_reads_only_its_first_minutes(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, 0.1 * np.sin(np.arange(16000 * 95) / 5.0), 16000)
    waveform, duration_s = preview_waveform(path, max_s=30.0)
    assert duration_s == pytest.approx(95.0)
    assert len(waveform) == 30 * 16000


def test_the_timeline_shares_the_spectrograms_time_axis():
    events = [
        Event(0.0, 10.0, "0.5", "Robin", 1),
        Event(10.0, 20.0, "0.5", "Crane", 1),
        Event(20.0, 25.0, "0.5", "Robin", 1),
    ]
    figure = detection_timeline_figure(np.zeros(16000 * 25, dtype=np.float32) + 0.01, events, 25.0)
    heatmap, *bars = figure.data
    assert heatmap.type == "heatmap" and heatmap.x[-1] == pytest.approx(25.0)
    assert [bar.name for bar in bars] == ["Robin", "Crane"]
    assert list(bars[0].base) == [0.0, 20.0] and list(bars[0].x) == [10.0, 5.0]
    assert figure.layout.xaxis.matches == "x2" or figure.layout.xaxis2.matches == "x"
    assert "no events" in detection_timeline_figure(np.full(16000, 0.01, np.float32), [], 1.0).layout.title.text
