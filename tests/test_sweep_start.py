"""Starting a sweep does each step once (check the data, plan, prepare the folder), and every backend has its
prompts checked against the model's context before anything is submitted."""

from __future__ import annotations

import pytest

from evaluation.icl import ContextBudget, ContextLengthError
from evaluation.sweep import (
    QueuedSweep,
    SweepFolder,
    SweepPlan,
    SweepQueue,
    SweepRunner,
    SweepSpec,
    SweepState,
    check_sweep,
    run_sweep,
    start_sweep,
)
from evaluation.sweep import plan as plan_module
from evaluation.sweep import queue as queue_module
from evaluation.sweep import runner as runner_module
from tests.sweep_helpers import ToneBackend, item_predictions, spec_dict, write_sweep_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(folder)
    return folder


def _counting(monkeypatch, calls: dict[str, int], module, name: str, key: str) -> None:
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls[key] = calls.get(key, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_a_started_sweep_is_planned_once_and_its_folder_prepared_once(data_dir, tmp_path, monkeypatch):
    calls: dict[str, int] = {}
    _counting(monkeypatch, calls, plan_module, "plan_sweep", "plan")
    _counting(monkeypatch, calls, queue_module, "prepare_folder", "prepare")
    _counting(monkeypatch, calls, runner_module, "prepare_folder", "prepare")
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    backend = ToneBackend()
    sweeps = SweepQueue(backend, tmp_path)
    try:
        assert start_sweep(spec, lambda: sweeps) == QueuedSweep(spec.sweep_id, 12 * 2 * 3)
        assert sweeps.join(60)
    finally:
        sweeps.close()
    assert calls == {"plan": 1, "prepare": 1}
    folder = SweepFolder(tmp_path, spec.sweep_id)
    assert folder.read_status().state is SweepState.COMPLETE and backend.rows == 72
    assert len(item_predictions(folder.results.read())) == 72


def test_bad_data_or_a_failed_check_stops_a_start_before_a_queue_is_chosen_or_a_folder_written(data_dir, tmp_path):
    chosen: list[str] = []

    def choose():
        chosen.append("queue")  # would start a Ray pool, for "Ray cluster"
        return SweepQueue(ToneBackend(), tmp_path / "runs")

    with pytest.raises(FileNotFoundError, match="no-data"):
        start_sweep(SweepSpec.from_dict(spec_dict(tmp_path / "no-data")), choose)

    def refuse(plan: SweepPlan) -> None:
        raise ValueError(f"{plan.items} items is too many")

    with pytest.raises(ValueError, match="72 items is too many"):
        start_sweep(SweepSpec.from_dict(spec_dict(data_dir)), choose, check=refuse)
    assert chosen == [] and not (tmp_path / "runs").exists()


def test_a_subset_not_cached_yet_is_planned_by_the_sweep_not_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("BEANS_ZERO_CACHE", str(tmp_path / "empty-cache"))
    spec = SweepSpec.from_dict({**spec_dict(tmp_path), "source": "beans-zero", "path": None})
    assert check_sweep(spec) is None  # no download when the user presses Start


def test_a_runner_refuses_a_plan_or_folder_of_another_sweep(data_dir, tmp_path):
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    other = SweepSpec.from_dict(spec_dict(data_dir, limit=2))
    with pytest.raises(ValueError, match="plan given is of sweep"):
        SweepRunner(ToneBackend(), spec, tmp_path, plan=SweepPlan.of(other))
    with pytest.raises(ValueError, match="folder given is sweep"):
        SweepRunner(ToneBackend(), spec, folder=SweepFolder(tmp_path, other.sweep_id))


def test_a_prompt_too_long_is_refused_on_a_backend_that_is_not_the_local_engine(tiny_model, data_dir, tmp_path):
    """The runner asks the backend for its context; it never looks for a local engine's model."""
    budget = ContextBudget.of_model(tiny_model)
    spec = SweepSpec.from_dict(spec_dict(data_dir, limit=2, max_context_tokens=40))
    backend = ToneBackend(budget)
    with pytest.raises(ContextLengthError, match=r"needs \d+ positions .* max_context_tokens is 40"):
        run_sweep(backend, spec, tmp_path)
    assert backend.rows == 0
    assert SweepFolder(tmp_path, spec.sweep_id).read_status().state is SweepState.FAILED
    fits = SweepSpec.from_dict(spec_dict(data_dir, limit=2))
    assert run_sweep(ToneBackend(budget), fits, tmp_path).state is SweepState.COMPLETE
