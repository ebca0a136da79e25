"""Sweeps over merge recipes (issue 18): the spec's `recipes` axis end to end on the tiny model, resume,
exports, the CLI, the recipe presets, and the official tie range drawn on metric-vs-alpha figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evaluation.export import export_csv, export_json, export_paper_layout, results_frame
from evaluation.presets import PRESETS, RECIPE_PRESETS, list_presets
from evaluation.results import ResultRow
from evaluation.scoring import ScoringMode
from evaluation.sweep import (
    SweepFolder,
    SweepQueue,
    SweepSpec,
    SweepSpecError,
    SweepState,
    load_results,
    run_sweep,
    score_sweep,
)
from evaluation.sweep.cli import EXIT_BAD_INPUT, EXIT_COMPLETE, main
from evaluation.sweep.ray_backend import from_wire, to_wire
from evaluation.sweep_forms import SweepForm, grid_fields, spec_from_preset
from evaluation.sweep_metrics import metrics_frame
from naturelm_core.alphas import MergeRecipe, grid_key
from naturelm_core.engine import Engine
from tests.sweep_helpers import item_predictions, spec_dict, write_sweep_data
from ui.sweep_figures import metric_vs_alpha_figure

RECIPES = [{"layers": "linear:0:1"}, {"alpha": 0.5, "modules": {"k_proj": 0}}, {"rank": 1}]
NAMES = [MergeRecipe.from_dict(r).name for r in RECIPES]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(folder)
    return folder


def _spec(data_dir: Path, **overrides) -> SweepSpec:
    return SweepSpec.from_dict(spec_dict(data_dir, alphas=[0.0, 1.0], recipes=RECIPES, limit=4, **overrides))


@pytest.fixture(scope="module")
def recipe_run(tiny_model, data_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    spec = _spec(data_dir)
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        status = run_sweep(engine, spec, runs)
    finally:
        engine.stop()
    return runs, spec, status


def test_spec_recipes_axis_keeps_old_ids_and_round_trips(data_dir):
    plain = SweepSpec.from_dict(spec_dict(data_dir))
    assert "recipes" not in plain.to_dict()
    assert SweepSpec.from_dict(spec_dict(data_dir, recipes=[])).sweep_id == plain.sweep_id
    spec = _spec(data_dir)
    assert spec.to_dict()["recipes"] == [MergeRecipe.from_dict(r).to_dict() for r in RECIPES]
    assert SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.sweep_id != SweepSpec.from_dict(spec_dict(data_dir, alphas=[0.0, 1.0], limit=4)).sweep_id
    assert spec.items_per_sample == 2 * 5
    only = SweepSpec.from_dict({k: v for k, v in spec_dict(data_dir, recipes=RECIPES).items() if k != "alphas"})
    assert only.alphas == () and len(only.grid) == 3


@pytest.mark.parametrize(
    "overrides",
    [
        {"alphas": [], "recipes": []},
        {"recipes": [{"alpha": 0.5}]},  # a plain alpha belongs under alphas
        {"recipes": [{"rank": 2}, {"rank": 2}]},
        {"recipes": [{"alpha": 3}]},
        {"alphas": [{"rank": 2}]},
    ],
)
def test_bad_recipe_specs_are_refused(data_dir, overrides):
    with pytest.raises(SweepSpecError):
        SweepSpec.from_dict(spec_dict(data_dir, **overrides))


def test_recipe_sweep_end_to_end(recipe_run):
    runs, spec, status = recipe_run
    assert status.state.value == "complete" and status.done == status.total == 4 * 2 * 5
    records = SweepFolder(runs, spec.sweep_id).results.read()
    recipe_records = [r for r in records if "recipe" in r]
    assert {r["alpha"] for r in recipe_records} == set(NAMES)
    assert all(MergeRecipe.from_dict(r["recipe"]).name == r["alpha"] for r in recipe_records)
    assert all("recipe" not in r for r in records if isinstance(r["alpha"], float))
    rows = load_results(runs, spec.sweep_id)
    assert {grid_key(row.point) for row in rows} == {0.0, 1.0, *NAMES}
    scores = score_sweep(runs, spec.sweep_id)
    assert [s.alpha for s in scores if s.prompt_name == "common"] == [0.0, 1.0, *sorted(NAMES)]


def test_recipe_sweep_resumes_only_what_is_missing(recipe_run, tiny_model, tmp_path):
    runs, spec, _ = recipe_run
    source = SweepFolder(runs, spec.sweep_id).results_path
    folder = SweepFolder(tmp_path, spec.sweep_id).create()
    lines = source.read_text().splitlines(keepends=True)
    folder.write_spec(spec.to_dict())
    folder.results_path.write_text("".join(lines[:13]))
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        status = run_sweep(engine, spec, tmp_path)
    finally:
        engine.stop()
    assert status.done == status.total == len(lines)
    assert item_predictions(folder.results.read()) == item_predictions(SweepFolder(runs, spec.sweep_id).results.read())


def test_exports_keep_recipes(recipe_run, tmp_path):
    runs, spec, _ = recipe_run
    rows = load_results(runs, spec.sweep_id)
    scores = score_sweep(runs, spec.sweep_id)
    frame = results_frame(rows, scores)
    recipe_cells = frame[frame["alpha"].isin(NAMES)]
    assert len(recipe_cells) == 4 * 2 * 3 and recipe_cells["scored_as"].notna().all()
    assert {MergeRecipe.from_dict(json.loads(c)).name for c in recipe_cells["recipe"]} == set(NAMES)
    export_csv(rows, tmp_path / "r.csv", scores)
    document = json.loads(export_json(rows, tmp_path / "r.json", scores, spec.to_dict()).read_text())
    assert set(NAMES) <= set(document["metrics"]["watkins"]["common"])
    assert [ResultRow.from_dict(r) for r in document["results"]] == rows
    export_paper_layout(rows, tmp_path / "paper")
    assert len(list((tmp_path / "paper").glob("beans_zero_eval_*.jsonl"))) == 2 * 2  # plain alphas only


def test_cli_runs_a_recipe_spec(data_dir, tiny_checkpoint, tmp_path):
    spec_path = tmp_path / "recipes.json"
    spec_path.write_text(json.dumps(spec_dict(data_dir, alphas=[1.0], recipes=RECIPES[:1], limit=2)))
    runs = tmp_path / "runs"
    code = main([str(spec_path), "--runs-dir", str(runs), "--model", str(tiny_checkpoint), "--device", "cpu"])
    assert code == EXIT_COMPLETE
    spec = SweepSpec.from_json_file(spec_path)
    assert {row.alpha for row in load_results(runs, spec.sweep_id)} == {1.0, NAMES[0]}


# The tiny model has 2 decoder layers and a LoRA rank of 4: each recipe passes the spec's checks, not the model's.
MISFITS = [
    ({"layers": [1, 1, 1]}, "layers lists 3 multipliers but the model has 2 decoder layers"),
    ({"rank": 8}, r"rank 8 is outside 1..4 \(the LoRA rank\)"),
    ({"spectrum": [1, 0.5, 0.5, 0.5, 0.5]}, "spectrum lists 5 weights but the LoRA rank is 4"),
]


def _misfit_spec(data_dir: Path, recipe: dict) -> SweepSpec:
    return SweepSpec.from_dict(spec_dict(data_dir, alphas=[1.0], recipes=[RECIPES[0], recipe], limit=2))


def _refusal(spec: SweepSpec, part: str) -> str:
    """What a refusal says: the spec's recipe by position and name, then the part the model cannot run."""
    return rf"recipes\[1\]: recipe '{re.escape(spec.recipes[1].name)}': {part}"


@pytest.mark.parametrize(("recipe", "part"), MISFITS)
def test_a_recipe_the_model_cannot_run_fails_the_sweep_before_any_row_is_queued(
    tiny_model, data_dir, tmp_path, recipe, part
):
    spec = _misfit_spec(data_dir, recipe)
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        with pytest.raises(SweepSpecError, match=_refusal(spec, part)):
            run_sweep(engine, spec, tmp_path)
    finally:
        engine.stop()
    assert engine.stats.requests == 0  # not even the plain alpha's rows of the first sample
    folder = SweepFolder(tmp_path, spec.sweep_id)
    assert folder.results.read() == []
    status = folder.read_status()
    assert status.state is SweepState.FAILED and "recipes[1]" in status.message


@pytest.mark.parametrize(("recipe", "part"), MISFITS)
def test_the_queue_refuses_such_a_recipe_when_the_sweep_is_submitted(tiny_model, data_dir, tmp_path, recipe, part):
    """SweepQueue.submit is where the Sweeps tab (and start_sweep) hand a sweep over: the refusal reaches the caller
    at once, and nothing is queued or written."""
    spec = _misfit_spec(data_dir, recipe)
    engine = Engine(tiny_model, max_batch_rows=8)
    sweeps = SweepQueue(engine, tmp_path)
    try:
        with pytest.raises(SweepSpecError, match=_refusal(spec, part)):
            sweeps.submit(spec)
        assert sweeps.pending() == [] and sweeps.current is None
    finally:
        sweeps.close()
        engine.stop()
    assert not SweepFolder(tmp_path, spec.sweep_id).exists()


def test_the_cli_checks_every_specs_recipes_against_the_model_before_running_any(
    data_dir, tiny_checkpoint, tmp_path, capsys
):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(spec_dict(data_dir, name="good", alphas=[1.0], limit=2)))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec_dict(data_dir, name="bad", alphas=[1.0], recipes=[MISFITS[0][0]], limit=2)))
    runs = tmp_path / "runs"
    code = main([str(good), str(bad), "--runs-dir", str(runs), "--model", str(tiny_checkpoint), "--device", "cpu"])
    assert code == EXIT_BAD_INPUT
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "recipes[0]: recipe 'L1x3': " + MISFITS[0][1] in errors[0]
    assert not runs.exists()  # the good spec, listed first, did not run either


def test_ray_wire_format_carries_recipes():
    recipe = MergeRecipe.from_dict(RECIPES[1])
    assert from_wire(json.loads(json.dumps(to_wire(recipe)))) == recipe
    assert from_wire(to_wire(0.5)) == 0.5


def test_form_reads_recipes_beside_alphas():
    fields = grid_fields('0, 1, {"rank": 2}', json.dumps([{"alpha": 0.5}, {"layers": "linear:0:1"}]))
    assert fields["alphas"] == (0.0, 1.0, 0.5)
    assert [r.name for r in fields["recipes"]] == ["r2", MergeRecipe(layers="linear:0:1").name]
    assert grid_fields("0.5", "") == {"alphas": (0.5,), "recipes": ()}


def test_recipe_presets_are_listed_and_their_specs_valid(data_dir, tmp_path):
    keys = {entry["key"] for entry in list_presets()}
    assert {"lines-ramp", "module-ablation", "rank-truncation"} <= keys
    assert len(PRESETS["lines-ramp"].recipes) == 9
    assert len(PRESETS["module-ablation"].recipes) == 4 and PRESETS["module-ablation"].alphas == (1.0, 0.5)
    assert len(PRESETS["rank-truncation"].recipes) == 12
    form = SweepForm(source="parquet", local_path=str(data_dir), subsets=("watkins",), presets=("common",), limit=2)
    for preset in RECIPE_PRESETS:
        spec = spec_from_preset(preset.key, form, tmp_path)
        assert spec.subsets == ("watkins",) and [p.name for p in spec.prompts] == ["common"]
        assert spec.recipes == preset.recipes and spec.alphas == preset.alphas
        assert SweepSpec.from_dict(spec.to_dict()) == spec


def _scores(recipe_run, mode):
    runs, spec, _ = recipe_run
    return score_sweep(runs, spec.sweep_id, mode)


def test_tie_band_in_official_mode_only(recipe_run):
    official = metrics_frame(_scores(recipe_run, ScoringMode.OFFICIAL))
    assert official["accuracy_tie_min"].notna().all()
    figure = metric_vs_alpha_figure(official, "accuracy")
    bands = [shape for shape in figure.layout.shapes if shape.name.endswith("tie range")]
    assert {band.name for band in bands} == {"common tie range", "scientific tie range"}
    assert all(band.type == "path" and band.fillcolor for band in bands)
    recipe_traces = [t for t in figure.data if t.xaxis == "x2"]
    assert recipe_traces and set(recipe_traces[0].x) == set(NAMES) and recipe_traces[0].error_y.array is not None

    robust = metrics_frame(_scores(recipe_run, ScoringMode.ROBUST))
    assert robust["accuracy_tie_min"].isna().all()
    figure = metric_vs_alpha_figure(robust, "accuracy")
    assert not figure.layout.shapes
    assert all(t.error_y.array is None for t in figure.data if t.xaxis == "x2")
