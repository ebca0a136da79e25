"""Likelihood sweeps (answer_mode "likelihood") on the tiny model and synthetic BEANS-Zero: the spec field, the
stored distributions, resume, refusals, scoring and the headless CLI (on Ray: tests/test_ray_backend.py)."""

from __future__ import annotations

import json
import math

import pytest

from evaluation.icl import ContextBudget, ContextLengthError
from evaluation.sweep import (
    DISTRIBUTION_FIELD,
    AnswerMode,
    LabelSetError,
    SweepFolder,
    SweepPlan,
    SweepSpec,
    SweepSpecError,
    SweepState,
    model_window,
    read_label_sets,
    run_sweep,
    sample_items,
    score_sweep,
)
from evaluation.sweep.cli import EXIT_COMPLETE, main
from evaluation.sweep.label_sets import label_sets_path
from naturelm_core.engine import Engine
from tests.sweep_helpers import WATKINS_LABELS, ToneBackend, spec_dict, write_sweep_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(folder)
    return folder


def likelihood_dict(data_dir, **overrides):
    """4 watkins samples x 1 prompt x 2 alphas = 8 items, each scored against the subset's 12 labels."""
    values = {"answer_mode": "likelihood", "limit": 4, "prompts": ["common"], "alphas": [0.0, 1.0], **overrides}
    return spec_dict(data_dir, **values)


@pytest.fixture(scope="module")
def likelihood_run(tiny_model, data_dir, tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    spec = SweepSpec.from_dict(likelihood_dict(data_dir))
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        status = run_sweep(engine, spec, runs_dir)
    finally:
        engine.stop()
    return spec, runs_dir, status, SweepFolder(runs_dir, spec.sweep_id)


def test_answer_mode_defaults_to_generate_and_is_written_only_when_not_the_default(data_dir):
    plain = SweepSpec.from_dict(spec_dict(data_dir))
    assert plain.answer_mode is AnswerMode.GENERATE
    assert "answer_mode" not in plain.to_dict()
    explicit = SweepSpec.from_dict(spec_dict(data_dir, answer_mode="generate"))
    assert explicit.sweep_id == plain.sweep_id  # old specs keep their ids
    likelihood = SweepSpec.from_dict(likelihood_dict(data_dir))
    assert likelihood.to_dict()["answer_mode"] == "likelihood"
    assert SweepSpec.from_dict(likelihood.to_dict()) == likelihood
    assert likelihood.sweep_id != SweepSpec.from_dict(likelihood_dict(data_dir, answer_mode="generate")).sweep_id


def test_answer_mode_is_checked(data_dir):
    with pytest.raises(SweepSpecError, match="answer_mode must be one of"):
        SweepSpec.from_dict(spec_dict(data_dir, answer_mode="guess"))
    with pytest.raises(SweepSpecError, match="closed label set"):
        SweepSpec.from_dict(spec_dict(data_dir, answer_mode="likelihood", subsets=["captioning"]))


def test_a_likelihood_sweep_stores_each_rows_distribution_over_the_subsets_labels(likelihood_run):
    spec, _, status, folder = likelihood_run
    assert status.state is SweepState.COMPLETE and status.done == status.total == 8
    order = read_label_sets(folder.path)["watkins"]
    assert sorted(order) == sorted(WATKINS_LABELS)
    records = folder.results.read()
    assert len(records) == 8
    for record in records:
        scores = record[DISTRIBUTION_FIELD]
        assert len(scores) == len(order) and all(s <= 0 and math.isfinite(s) for s in scores)
        assert record["prediction"] == order[max(range(len(order)), key=scores.__getitem__)]
        assert sum(math.exp(s) for s in scores) <= 1 + 1e-6  # disjoint answers: their probabilities sum to <= 1
    # Every existing scoring mode reads the rows as it reads generated ones.
    scores = score_sweep(folder.runs_dir, spec.sweep_id)
    assert {len(score.answers) for score in scores} == {4} and len(scores) == 2


def test_alphas_change_the_distribution(likelihood_run):
    _, _, _, folder = likelihood_run
    by_alpha = {}
    for record in folder.results.read():
        by_alpha.setdefault(record["alpha"], []).append(record[DISTRIBUTION_FIELD])
    assert by_alpha[0.0] != by_alpha[1.0]


def test_a_resume_answers_nothing_twice_and_refuses_changed_labels(likelihood_run, tiny_model):
    spec, runs_dir, _, folder = likelihood_run
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        assert run_sweep(engine, spec, runs_dir).done == 8
        assert len(folder.results.read()) == 8
        stored = json.loads(label_sets_path(folder.path).read_text())
        label_sets_path(folder.path).write_text(json.dumps({"watkins": stored["watkins"][::-1]}))
        with pytest.raises(LabelSetError, match="other labels"):
            run_sweep(engine, spec, runs_dir)
        label_sets_path(folder.path).write_text(json.dumps(stored))
    finally:
        engine.stop()


def test_a_backend_that_cannot_score_labels_refuses_the_sweep_clearly(data_dir, tmp_path):
    spec = SweepSpec.from_dict(likelihood_dict(data_dir))
    with pytest.raises(TypeError, match="ToneBackend does not answer likelihood sweeps"):
        run_sweep(ToneBackend(), spec, tmp_path)


def test_a_likelihood_prompt_needs_room_for_its_longest_label_not_for_max_new_tokens(tiny_model, data_dir, tmp_path):
    """Scoring generates nothing: after the prompt come the labels' tokens, so a context that holds the prompt and
    the longest label is enough, however large max_new_tokens is; the same prompt is refused when generating."""
    spec = SweepSpec.from_dict(likelihood_dict(data_dir, limit=2, alphas=[1.0], max_new_tokens=100))
    (plan,) = SweepPlan.of(spec).subsets
    prompt = sample_items(spec, plan, plan.sample_ids[0])[0].prompt_text
    text, audio = ContextBudget.of_model(tiny_model).positions(prompt, [len(model_window(next(iter(plan.subset))))])
    longest = max(len(tiny_model.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in WATKINS_LABELS)
    assert longest < spec.max_new_tokens
    limit = text + audio + longest

    def run(max_context_tokens: int, answer_mode: str = "likelihood"):
        overrides = {"max_context_tokens": max_context_tokens, "answer_mode": answer_mode}
        runs_dir = tmp_path / f"{answer_mode}-{max_context_tokens}"  # the limit is not part of the sweep id
        return run_sweep(engine, SweepSpec.from_dict({**spec.to_dict(), **overrides}), runs_dir)

    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        assert run(limit).state is SweepState.COMPLETE
        with pytest.raises(ContextLengthError, match=rf"\+ max_new_tokens 100\) but .* max_context_tokens is {limit}"):
            run(limit, answer_mode="generate")
        with pytest.raises(ContextLengthError, match=rf"\+ {longest} tokens of the longest label 'Whale species \d+'"):
            run(limit - 1)
    finally:
        engine.stop()


def test_the_cli_runs_a_likelihood_spec_on_the_tiny_checkpoint(tiny_checkpoint, data_dir, tmp_path):
    spec_path = tmp_path / "likelihood.json"
    spec_path.write_text(json.dumps(likelihood_dict(data_dir, alphas=[0.5])))
    runs_dir = tmp_path / "runs"
    command = [str(spec_path), "--runs-dir", str(runs_dir), "--model", str(tiny_checkpoint), "--device", "cpu"]
    assert main(command) == EXIT_COMPLETE
    (folder,) = [path for path in runs_dir.iterdir() if path.is_dir()]
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r[DISTRIBUTION_FIELD]) == len(WATKINS_LABELS) for r in records)


def test_likelihood_metrics_of_the_stored_sweep(likelihood_run):
    from evaluation.likelihood_metrics import likelihood_metrics_frame
    from evaluation.sweep import likelihood_groups

    spec, runs_dir, _, _ = likelihood_run
    frame = likelihood_metrics_frame(likelihood_groups(runs_dir, spec.sweep_id))
    assert frame["alpha"].tolist() == [0.0, 1.0] and frame["n"].tolist() == [4, 4]
    assert frame["labels"].tolist() == [len(WATKINS_LABELS)] * 2
    assert ((frame["top5_accuracy"] >= frame["accuracy"]) & frame["ece"].between(0, 1)).all()


def test_figures_and_exports_of_a_likelihood_sweep(likelihood_run, tiny_model, data_dir, tmp_path):
    import pandas as pd

    from evaluation.sweep_views import SweepViews, export_view
    from ui.sweep_display import knows_vs_says, view_figures

    spec, runs_dir, _, _ = likelihood_run
    views = SweepViews(runs_dir)
    view = views.load(spec.sweep_id)
    assert view.is_likelihood and len(view.distributions) == 8
    figures = view_figures(view)
    assert "knows" in figures.accuracy.layout.title.text and "reliability" in figures.breakdown.layout.title.text
    assert {trace.name for trace in figures.breakdown.data} >= {"alpha 0", "alpha 1"}

    generated = SweepSpec.from_dict(likelihood_dict(data_dir, answer_mode="generate"))
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        run_sweep(engine, generated, runs_dir)
    finally:
        engine.stop()
    says = views.load(generated.sweep_id)
    assert not says.is_likelihood
    names = [trace.name for trace in knows_vs_says(view, says).data]
    assert any(n.startswith("knows") for n in names) and any(n.startswith("says") for n in names)

    document = json.loads(export_view(view, "json", tmp_path).read_text())
    assert document["label_sets"]["watkins"] == read_label_sets(runs_dir / spec.sweep_id)["watkins"]
    assert all(len(r[DISTRIBUTION_FIELD]) == len(WATKINS_LABELS) for r in document["results"])
    table = pd.read_csv(export_view(view, "csv", tmp_path))
    assert all(len(json.loads(cell)) == len(WATKINS_LABELS) for cell in table[DISTRIBUTION_FIELD])
