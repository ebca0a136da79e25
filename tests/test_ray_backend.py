"""Sweeps on a local Ray instance (CPU, tiny model): same rows as the local runner, generated or scored against
the labels (likelihood sweeps), and no item lost or doubled when an actor dies mid-sweep or a sweep resumes."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")  # an optional extra (requirements-ray.txt); CI installs it

from evaluation.icl import ContextLengthError  # noqa: E402
from evaluation.sweep import (  # noqa: E402
    DISTRIBUTION_FIELD,
    LabelBackend,
    SweepFolder,
    SweepQueue,
    SweepSpec,
    SweepSpecError,
    SweepState,
    read_label_sets,
    run_sweep,
)
from evaluation.sweep.cli import EXIT_BAD_INPUT, EXIT_COMPLETE, main  # noqa: E402
from evaluation.sweep.provenance import read_runs  # noqa: E402
from evaluation.sweep.ray_backend import ModelSource, RayBackend, RayBackendError, connect, plan_actors  # noqa: E402
from evaluation.synthetic import write_synthetic_beans_zero  # noqa: E402
from naturelm_core.alphas import AlphaError, MergeRecipe  # noqa: E402
from naturelm_core.engine import Engine  # noqa: E402
from tests.sweep_helpers import WATKINS_LABELS, item_predictions, spec_dict, write_sweep_data  # noqa: E402

pytestmark = pytest.mark.slow  # starting Ray and its actors takes seconds, not milliseconds

SWEEP_DEADLINE_S = 120.0
SIX_ALPHAS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # 12 samples x 2 prompts x 6 alphas = 144 items: time to kill an actor


@pytest.fixture(scope="module")
def ray_instance():
    """A small local Ray: 3 CPU slots (2 for the pool, 1 for the command-line test), no dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    connect(None, num_cpus=3, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_instance, tiny_checkpoint):
    """Two CPU actors that loaded the tiny checkpoint; dead actors are replaced, so the tests can share it.

    Replacements are capped (by default at the pool's size): enough here for every test that kills an actor.
    """
    model = ModelSource(str(tiny_checkpoint), device="cpu")
    backend = RayBackend(model, num_actors=2, max_batch_rows=8, max_replacements=len(KILLS)).start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(folder)
    return folder


def _run_locally(tiny_model, spec, runs_dir):
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        status = run_sweep(engine, spec, runs_dir)
    finally:
        engine.stop()
    return status, SweepFolder(runs_dir, spec.sweep_id).results.read()


def _within_deadline(call, what):
    """`call()` in a thread, so that a sweep that never ends fails the test instead of hanging the run."""
    outcome = {}

    def target():
        try:
            outcome["result"] = call()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(SWEEP_DEADLINE_S)
    assert not thread.is_alive(), f"{what()} did not finish in {SWEEP_DEADLINE_S:g} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _run_with_deadline(backend, spec, runs_dir, **options):
    return _within_deadline(
        lambda: run_sweep(backend, spec, runs_dir, **options), lambda: f"the sweep ({backend.stats})"
    )


def _cancelled_after(backend, spec, runs_dir, answers: int, total: int):
    """Run the sweep, cancelling it once `answers` rows are done: it stops short of `total`, and every row it
    answered is in results.jsonl. Returns its status and folder."""
    cancel = threading.Event()

    def on_progress(status):
        if status.done >= answers:
            cancel.set()

    status = _run_with_deadline(backend, spec, runs_dir, cancel=cancel, on_progress=on_progress)
    folder = SweepFolder(runs_dir, spec.sweep_id)
    assert status.state is SweepState.CANCELLED and answers <= status.done < total
    assert len(folder.results.read()) == status.done
    return status, folder


def _wait_for_actors(backend, count, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while len(backend.live_actors()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return backend.live_actors()


def _engine_counters(backend):
    stats = backend.actor_stats()
    return {key: sum(s[key] for s in stats) for key in ("rows_generated", "rows_scored", "windows_encoded")}, stats


def _assert_same_answers(records, reference):
    """Same items and predictions (none written twice) and, in a likelihood sweep, the same log-likelihoods.

    To 1e-6 relative, not exactly: float32 scores move in their last bits with the rows batched together, which
    differ between two local runs already (a stored value, 5 decimals, of about -150 then differs by 1e-5 or so).
    """
    assert item_predictions(records) == item_predictions(reference)
    assert {(r["id"], r["label"]) for r in records} == {(r["id"], r["label"]) for r in reference}

    def scores(rows):
        keyed = {(r["dataset"], r["id"], r["prompt_name"], r["alpha"]): r.get(DISTRIBUTION_FIELD) for r in rows}
        return {key: values for key, values in keyed.items() if values is not None}  # none in a generation sweep

    found, expected = scores(records), scores(reference)
    assert found.keys() == expected.keys()
    for key, values in found.items():
        assert values == pytest.approx(expected[key], rel=1e-6), key


# -- same results as the local runner ----------------------------------------------------------------


def test_two_actors_write_the_same_rows_as_the_local_runner_and_encode_each_recording_once(pool, tiny_model, tmp_path):
    # Recordings of their own (another seed), so no earlier test has warmed the actors' caches with them.
    data = tmp_path / "data"
    write_synthetic_beans_zero(data, {"watkins": 12}, seed=1, labels={"watkins": WATKINS_LABELS})
    spec = SweepSpec.from_dict(spec_dict(data))
    local_status, local_records = _run_locally(tiny_model, spec, tmp_path / "local")
    before, _ = _engine_counters(pool)

    status = _run_with_deadline(pool, spec, tmp_path / "ray")

    records = SweepFolder(tmp_path / "ray", spec.sweep_id).results.read()
    assert status.state is SweepState.COMPLETE and (status.total, status.done, status.failed) == (72, 72, 0)
    assert (local_status.total, local_status.done) == (72, 72)
    assert item_predictions(records) == item_predictions(local_records)
    assert [set(r) for r in records] == [set(r) for r in local_records]  # the same row format
    assert {(r["id"], r["label"]) for r in records} == {(r["id"], r["label"]) for r in local_records}
    after, per_actor = _engine_counters(pool)
    assert after["rows_generated"] - before["rows_generated"] == 72
    assert after["windows_encoded"] - before["windows_encoded"] == 12  # one encode per recording, pool-wide
    assert all(s["rows_generated"] > 0 for s in per_actor)  # the work was spread over both actors


def test_a_sweep_cancelled_on_ray_resumes_on_the_local_runner_to_the_same_rows(pool, tiny_model, data_dir, tmp_path):
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    _, folder = _cancelled_after(pool, spec, tmp_path / "runs", answers=12, total=72)

    resumed, _ = _run_locally(tiny_model, spec, tmp_path / "runs")  # a driver restart, here without Ray

    assert resumed.state is SweepState.COMPLETE and resumed.done == 72
    runs = read_runs(folder.path)  # one record per run, the Ray run's from what an actor said of its model
    assert [run["backend"] for run in runs] == ["ray", "local engine"] and runs[0]["ray_actors"] == 2
    numerics = ("model_source", "demo", "llm_dtype", "audio_precision", "device")
    assert {field: runs[0][field] for field in numerics} == {field: runs[1][field] for field in numerics}
    assert runs[0]["audio_precision"] == "float32" and resumed.message == ""  # same numerics: no warning
    _, reference = _run_locally(tiny_model, spec, tmp_path / "reference")
    assert item_predictions(folder.results.read()) == item_predictions(reference)


def test_a_prompt_too_long_for_the_actors_model_is_refused_before_it_reaches_the_pool(
    pool, tiny_model, data_dir, tmp_path
):
    """The driver checks prompts against the context one actor reported, as the local runner checks its own."""
    assert pool.context_budget(None).limit == tiny_model.llm.config.max_position_embeddings
    spec = SweepSpec.from_dict(spec_dict(data_dir, limit=2, max_context_tokens=40))
    submitted = pool.stats.shards_submitted
    with pytest.raises(ContextLengthError, match=r"needs \d+ positions .* max_context_tokens is 40"):
        _run_with_deadline(pool, spec, tmp_path)
    assert pool.stats.shards_submitted == submitted
    assert SweepFolder(tmp_path, spec.sweep_id).read_status().state is SweepState.FAILED


def test_a_recipe_the_actors_model_cannot_run_is_refused_before_the_pool_gets_a_row(pool, data_dir, tmp_path):
    """The driver has no model: it checks recipes with the decoder layers and LoRA rank one actor reported."""
    assert pool.check_grid_point({"rank": 4}) == MergeRecipe(rank=4)
    with pytest.raises(AlphaError, match=r"rank 5 is outside 1..4 \(the LoRA rank\)"):
        pool.check_grid_point({"rank": 5})
    spec = SweepSpec.from_dict(spec_dict(data_dir, limit=2, alphas=[1.0], recipes=[{"layers": [1, 1, 1]}]))
    refusal = r"recipes\[0\]: recipe 'L1x3': layers lists 3 multipliers but the model has 2 decoder layers"
    submitted = pool.stats.shards_submitted
    with pytest.raises(SweepSpecError, match=refusal):
        SweepQueue(pool, tmp_path / "queued").submit(spec)
    with pytest.raises(SweepSpecError, match=refusal):
        _run_with_deadline(pool, spec, tmp_path / "runs")
    assert pool.stats.shards_submitted == submitted
    assert SweepFolder(tmp_path / "runs", spec.sweep_id).results.read() == []


# -- likelihood sweeps -------------------------------------------------------------------------------


def _likelihood_spec(data_dir, **overrides):
    """12 watkins samples x 2 prompts x 3 alphas = 72 items, each scored against the subset's 12 labels."""
    return SweepSpec.from_dict(spec_dict(data_dir, answer_mode="likelihood", **overrides))


def test_a_likelihood_sweep_on_ray_writes_the_rows_the_local_engine_writes(pool, tiny_model, data_dir, tmp_path):
    """The pool scores labels (it used to refuse likelihood sweeps) through the local EngineBackend's entry point."""
    assert isinstance(pool, LabelBackend)
    spec = _likelihood_spec(data_dir)
    local_status, local_records = _run_locally(tiny_model, spec, tmp_path / "local")
    before, _ = _engine_counters(pool)

    status = _run_with_deadline(pool, spec, tmp_path / "ray")

    folder = SweepFolder(tmp_path / "ray", spec.sweep_id)
    records = folder.results.read()
    assert status.state is SweepState.COMPLETE and (status.total, status.done, status.failed) == (72, 72, 0)
    assert (local_status.total, local_status.done) == (72, 72)
    _assert_same_answers(records, local_records)
    assert all(len(r[DISTRIBUTION_FIELD]) == len(WATKINS_LABELS) for r in records)
    assert [set(r) for r in records] == [set(r) for r in local_records]  # the same row format
    assert read_label_sets(folder.path) == read_label_sets(tmp_path / "local" / spec.sweep_id)
    after, per_actor = _engine_counters(pool)
    assert after["rows_scored"] - before["rows_scored"] == 72
    assert all(s["rows_scored"] > 0 for s in per_actor)  # both actors scored


def test_a_likelihood_sweep_cancelled_on_ray_resumes_on_ray_and_writes_each_item_once(
    pool, tiny_model, data_dir, tmp_path
):
    spec = _likelihood_spec(data_dir, prompts=["common"])  # 36 items
    first, folder = _cancelled_after(pool, spec, tmp_path / "runs", answers=6, total=36)
    answered = pool.stats.rows_answered

    resumed = _run_with_deadline(pool, spec, tmp_path / "runs")

    assert resumed.state is SweepState.COMPLETE and (resumed.done, resumed.failed) == (36, 0)
    assert pool.stats.rows_answered - answered == 36 - first.done  # only what the first run left
    assert folder.results_path.read_bytes().count(b"\n") == 36
    _, reference = _run_locally(tiny_model, spec, tmp_path / "reference")
    _assert_same_answers(folder.results.read(), reference)


# -- an actor dies mid-sweep ------------------------------------------------------------------------


def _kill_with_ray(actor):
    ray.kill(actor.handle, no_restart=True)


def _kill_process(actor):
    os.kill(actor.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would


KILLS = {
    "ray.kill": (_kill_with_ray, "generate"),
    "SIGKILL": (_kill_process, "generate"),
    "SIGKILL-likelihood": (_kill_process, "likelihood"),
}


@pytest.mark.parametrize(("kill", "answer_mode"), list(KILLS.values()), ids=list(KILLS))
def test_an_actor_killed_mid_sweep_has_its_recordings_retried_and_every_item_is_written_once(
    pool, tiny_model, data_dir, tmp_path, kill, answer_mode
):
    spec = SweepSpec.from_dict(spec_dict(data_dir, alphas=SIX_ALPHAS, answer_mode=answer_mode))
    _, reference = _run_locally(tiny_model, spec, tmp_path / "reference")
    assert len(_wait_for_actors(pool, 2)) == 2
    lost, retried = pool.stats.actors_lost, pool.stats.shards_retried
    killed = []

    def on_progress(status):
        if status.done >= 12 and not killed:
            victim = (pool.busy_actors() or pool.live_actors())[0]
            kill(victim)
            killed.append(victim)

    status = _run_with_deadline(pool, spec, tmp_path / "runs", on_progress=on_progress)

    assert killed, "the sweep finished before an actor could be killed"
    assert status.state is SweepState.COMPLETE and (status.total, status.done, status.failed) == (144, 144, 0)
    results = SweepFolder(tmp_path / "runs", spec.sweep_id).results_path
    assert results.read_bytes().count(b"\n") == 144  # no row written twice
    _assert_same_answers(SweepFolder(tmp_path / "runs", spec.sweep_id).results.read(), reference)
    assert pool.stats.actors_lost == lost + 1
    assert pool.stats.shards_retried > retried  # the dead actor's recording went to another actor
    actors = _wait_for_actors(pool, 2)
    assert len(actors) == 2 and killed[0].pid not in {a.pid for a in actors}  # a replacement took its place


# -- the command line -------------------------------------------------------------------------------


def test_the_command_line_runs_a_generation_and_a_likelihood_spec_on_ray_with_the_demo_model(
    pool, tiny_model, data_dir, tmp_path, capsys
):
    paths = [tmp_path / "generate.json", tmp_path / "likelihood.json"]
    for path, mode in zip(paths, ["generate", "likelihood"], strict=True):
        SweepSpec.from_dict(spec_dict(data_dir, limit=4, answer_mode=mode)).to_json_file(path)
    specs = [SweepSpec.from_json_file(path) for path in paths]
    runs_dir = tmp_path / "runs"

    argv = [*map(str, paths), "--runs-dir", str(runs_dir), "--demo", "--ray", "--ray-actors", "1"]
    code = _within_deadline(lambda: main(argv), lambda: "the command line")

    out = capsys.readouterr()
    assert code == EXIT_COMPLETE, out.err
    assert "Ray: 1 actor(s)" in out.err
    for spec in specs:
        assert f"{spec.sweep_id}: complete, 24/24 items" in out.out
        _, reference = _run_locally(tiny_model, spec, tmp_path / "reference")  # the demo is the seed-0 tiny model
        _assert_same_answers(SweepFolder(runs_dir, spec.sweep_id).results.read(), reference)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray-actors", "9"], r"9 actor\(s\) asked for, but the Ray cluster has 3 slot\(s\)"),
        (["--device", "cuda:1"], "Ray gives each actor its own"),
    ],
)
def test_the_command_line_refuses_a_pool_it_cannot_start(ray_instance, data_dir, tmp_path, capsys, flags, message):
    spec_path = tmp_path / "spec.json"
    SweepSpec.from_dict(spec_dict(data_dir, limit=1)).to_json_file(spec_path)
    assert main([str(spec_path), "--runs-dir", str(tmp_path), "--demo", "--ray", *flags]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(message, err), err


# -- sizing the pool --------------------------------------------------------------------------------


def test_the_pool_takes_one_actor_per_gpu_or_else_one_per_cpu_slot():
    assert plan_actors({"CPU": 64.0, "GPU": 8.0}) == (8, {"num_gpus": 1, "num_cpus": 1})
    assert plan_actors({"CPU": 64.0, "GPU": 8.0}, num_actors=2) == (2, {"num_gpus": 1, "num_cpus": 1})
    assert plan_actors({"CPU": 8.0}) == (8, {"num_cpus": 1})
    assert plan_actors({"CPU": 8.0}, cpus_per_actor=4) == (2, {"num_cpus": 4})
    with pytest.raises(RayBackendError, match=r"3 actor\(s\) asked for, but the Ray cluster has 2 GPU"):
        plan_actors({"CPU": 16.0, "GPU": 2.0}, num_actors=3)
    with pytest.raises(RayBackendError, match="has 0 slot"):
        plan_actors({"CPU": 2.0}, cpus_per_actor=4)
