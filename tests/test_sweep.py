"""Sweeps on the tiny model and synthetic BEANS-Zero: complete, resume, cancel, queue, encode once, full disk."""

from __future__ import annotations

import errno
import json
import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from rapidfuzz.distance import Levenshtein

from evaluation.scoring import Outcome
from evaluation.sweep import (
    RunsStorageError,
    SweepFolder,
    SweepLockedError,
    SweepQueue,
    SweepSpec,
    SweepSpecError,
    SweepState,
    durable,
    list_sweeps,
    load_results,
    model_window,
    plan_sweep,
    prepare_folder,
    run_sweep,
    runner,
    sample_items,
    score_sweep,
    select_sample_ids,
)
from evaluation.sweep_metrics import metrics_frame
from naturelm_core.audio import AudioTooShortError
from naturelm_core.engine import Engine, Priority
from tests.conftest import PacedModel
from tests.sweep_helpers import WATKINS_LABELS, ToneBackend, item_predictions, spec_dict, write_sweep_data
from ui.sweep_figures import error_breakdown_figure, metric_vs_alpha_figure


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(folder)
    return folder


@pytest.fixture
def engine(tiny_model):
    engine = Engine(tiny_model, max_batch_rows=8).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def complete_run(tiny_model, data_dir, tmp_path_factory):
    """The 72-item sweep run once without interruption: (spec, runs dir, status, records, engine stats)."""
    runs_dir = tmp_path_factory.mktemp("runs")
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        status = run_sweep(engine, spec, runs_dir)
    finally:
        engine.stop()
    records = SweepFolder(runs_dir, spec.sweep_id).results.read()
    return spec, runs_dir, status, records, engine.stats


# -- the spec ------------------------------------------------------------------------------------


def test_spec_from_dict_takes_presets_and_custom_prompts_and_its_id_depends_on_answers_only(data_dir):
    spec = SweepSpec.from_dict(spec_dict(data_dir, prompts=["common", {"name": "mine", "template": "Who sings?"}]))
    assert [p.name for p in spec.prompts] == ["common", "mine"]
    assert spec.prompts[1].template == "Who sings?"
    again = SweepSpec.from_dict(spec.to_dict())
    assert again == spec and again.sweep_id == spec.sweep_id
    assert spec.sweep_id.startswith("tiny-watkins-")
    rescored = SweepSpec.from_dict({**spec.to_dict(), "scoring_mode": "robust"})
    assert rescored.sweep_id == spec.sweep_id  # scoring options do not change the answers
    more_alphas = SweepSpec.from_dict({**spec.to_dict(), "alphas": [0.0, 0.25, 0.5, 1.0]})
    assert more_alphas.sweep_id != spec.sweep_id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alphas": [0.0, 1.5]}, r"must lie in \[0, 1\]"),
        ({"alphas": []}, "empty"),
        ({"alphas": [0.5, 0.5]}, "twice"),
        ({"prompts": ["common", "common"]}, "unique"),
        ({"prompts": ["no-such-preset"]}, "unknown preset"),
        ({"prompts": [{"name": "x", "template": "{species}"}]}, "placeholder"),
        ({"limit": 0}, "limit"),
        ({"num_beams": 0}, "num_beams"),
        ({"subsets": []}, "subset"),
        ({"source": "ftp"}, "ftp"),
        ({"path": None}, "needs a 'path'"),
        ({"colour": "red"}, "unknown spec field"),
        ({"window_s": 30}, "window_s"),
    ],
)
def test_bad_specs_fail_with_a_clear_message(data_dir, change, message):
    with pytest.raises(SweepSpecError, match=message):
        SweepSpec.from_dict(spec_dict(data_dir, **change))


def test_relative_paths_in_a_spec_file_are_resolved_against_its_folder(tmp_path, data_dir):
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "spec.json"
    path.write_text(json.dumps(spec_dict(data_dir, path=os.path.relpath(data_dir, path.parent))))
    assert SweepSpec.from_json_file(path).path == str(data_dir.resolve())
    with pytest.raises(SweepSpecError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        SweepSpec.from_json_file(tmp_path / "bad.json")


def test_sample_selection_is_seeded_reproducible_and_in_source_order():
    ids = [f"id-{i}" for i in range(50)]
    chosen = select_sample_ids(ids, 10, seed=0)
    assert len(chosen) == 10 and chosen == select_sample_ids(ids, 10, seed=0)
    assert chosen == sorted(chosen, key=ids.index)
    assert chosen != select_sample_ids(ids, 10, seed=1)
    assert chosen != ids[:10]
    assert select_sample_ids(list(reversed(ids)), 10, seed=0) == list(reversed(chosen))
    assert select_sample_ids(ids, None, seed=0) == ids


def test_plan_applies_top_k_and_limit_and_closed_set_prompts_shuffle_per_sample(data_dir):
    spec = SweepSpec.from_dict(
        spec_dict(data_dir, subsets=["esc50"], prompts=["closed_set"], alphas=[0.5], top_k_classes=3)
    )
    (plan,) = plan_sweep(spec)
    assert len(plan.labels) == 3 and len(plan.sample_ids) == 6
    assert len(plan_sweep(SweepSpec.from_dict({**spec.to_dict(), "limit": 4}))[0].sample_ids) == 4
    texts = [sample_items(spec, plan, sample_id)[0].prompt_text for sample_id in plan.sample_ids]
    orders = set()
    for text in texts:
        listed = text.split("Output exactly one of: ")[1]
        assert all(listed.count(label) == 1 for label in plan.labels)
        orders.add(tuple(sorted(plan.labels, key=listed.index)))
    assert len(orders) > 1  # each sample lists the labels in its own order
    assert texts == [sample_items(spec, plan, i)[0].prompt_text for i in plan.sample_ids]  # reproducible


# -- a complete sweep ---------------------------------------------------------------------------


def test_sweep_of_2_prompts_3_alphas_12_samples_writes_72_rows_and_a_complete_status(complete_run, data_dir):
    spec, runs_dir, status, records, _ = complete_run
    assert status.state is SweepState.COMPLETE
    assert (status.total, status.done, status.failed) == (72, 72, 0)
    assert status.rate_per_s > 0 and status.eta_s == 0.0
    predictions = item_predictions(records)
    assert len(predictions) == 72
    ids = {key[1] for key in predictions}
    assert len(ids) == 12
    assert set(predictions) == {
        ("watkins", i, p, a) for i in ids for p in ("common", "scientific") for a in (0, 0.5, 1)
    }
    assert {r["label"] for r in records} == set(WATKINS_LABELS)
    assert all(isinstance(r["latency_s"], float) and r["latency_s"] >= 0 for r in records)
    assert {r["prompt"] for r in records if r["prompt_name"] == "common"} == {spec.prompts[0].template}
    saved = SweepFolder(runs_dir, spec.sweep_id)
    assert SweepSpec.from_json_file(saved.spec_path) == spec
    assert saved.read_status().state is SweepState.COMPLETE
    assert len(load_results(runs_dir, spec.sweep_id)) == 72


def _official_accuracy(predictions: list[str], labels: list[str], label_set: list[str]) -> float:
    """Independent oracle: exact match, else the nearest label by Levenshtein (ties: first in sorted order)."""
    ordered = sorted(label_set)
    snapped = [
        text if text in ordered else min(ordered, key=lambda lab: Levenshtein.distance(text, lab))
        for text in predictions
    ]
    return float(np.mean([s == label for s, label in zip(snapped, labels, strict=True)]))


def test_metrics_and_figures_of_the_sweep_match_its_rows(complete_run):
    spec, runs_dir, _, _, _ = complete_run
    rows = load_results(runs_dir, spec.sweep_id)
    with pytest.warns(UserWarning, match="no label mapping"):  # scientific prompt scored without a mapping
        scores = score_sweep(runs_dir, spec.sweep_id)
    assert {score.mode.value for score in scores} == {"official"}  # the spec's scoring mode
    frame = metrics_frame(scores)
    assert len(frame) == 6 and set(frame["n"]) == {12}
    common = [r for r in rows if r.prompt_name == "common"]
    for alpha in (0.0, 0.5, 1.0):
        group = [r for r in common if r.alpha == alpha]
        expected = _official_accuracy([r.prediction for r in group], [r.label for r in group], WATKINS_LABELS)
        got = frame[(frame["prompt"] == "common") & (frame["alpha"] == alpha)]["accuracy"].item()
        assert got == pytest.approx(expected)

    figure = metric_vs_alpha_figure(frame, "accuracy")
    assert [trace.name for trace in figure.data] == ["common", "scientific"]
    for trace in figure.data:
        assert list(trace.x) == [0.0, 0.5, 1.0]
        assert list(trace.y) == frame[frame["prompt"] == trace.name].sort_values("alpha")["accuracy"].tolist()
    f1 = metric_vs_alpha_figure(frame, "f1_weighted")
    assert list(f1.data[0].y) == frame[frame["prompt"] == "common"]["f1_weighted"].tolist()

    breakdown = error_breakdown_figure(frame, "watkins", "common")
    shares = np.array([list(trace.y) for trace in breakdown.data])
    np.testing.assert_allclose(shares.sum(axis=0), 1.0)
    correct = next(trace for trace in breakdown.data if trace.meta["outcome"] == Outcome.CORRECT.value)
    assert list(correct.y) == pytest.approx(list(figure.data[0].y))  # share correct = accuracy


def test_each_recording_is_encoded_once_per_sweep(tiny_model, data_dir, tmp_path):
    """12 recordings x 6 (prompt, alpha) rows in batches of 4: rows of one recording span batches, yet 12 encodes."""
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    engine = Engine(tiny_model, max_batch_rows=4).start()
    try:
        run_sweep(engine, spec, tmp_path)
        assert engine.stats.rows_generated == 72
        assert engine.stats.batches >= 18
        assert engine.stats.windows_encoded == 12
        assert engine.stats.encoder_calls <= engine.stats.batches
        run_sweep(engine, spec, tmp_path)  # resuming a complete sweep asks the model nothing
        assert (engine.stats.rows_generated, engine.stats.windows_encoded) == (72, 12)
    finally:
        engine.stop()


# -- cancel and resume --------------------------------------------------------------------------


def test_cancel_stops_after_the_batch_in_flight_and_resume_completes_like_an_uninterrupted_run(
    tiny_model, data_dir, tmp_path, complete_run
):
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    cancel = threading.Event()

    def on_progress(status):
        if status.done >= 12:
            cancel.set()

    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        status = run_sweep(engine, spec, tmp_path, cancel=cancel, on_progress=on_progress)
        folder = SweepFolder(tmp_path, spec.sweep_id)
        written = folder.results.read()
        assert status.state is SweepState.CANCELLED
        assert 12 <= status.done < 72 and len(written) == status.done
        assert engine.stats.rows_generated == len(written)  # everything submitted was answered and written
        per_sample = {}
        for record in written:
            per_sample[record["id"]] = per_sample.get(record["id"], 0) + 1
        assert set(per_sample.values()) == {6}  # whole samples only
        with folder.results_path.open("ab") as handle:
            handle.write(b'{"id": "torn", "dataset": "wat')  # as a kill -9 mid-write would leave it

        resumed = run_sweep(engine, spec, tmp_path)
    finally:
        engine.stop()
    assert resumed.state is SweepState.COMPLETE and resumed.done == 72
    assert item_predictions(folder.results.read()) == item_predictions(complete_run[3])
    assert folder.results_path.read_bytes().endswith(b"\n")


def test_the_app_can_cancel_a_sweep_run_elsewhere_through_its_cancel_file(engine, data_dir, tmp_path):
    spec = SweepSpec.from_dict(spec_dict(data_dir, limit=6))
    folder = SweepFolder(tmp_path, spec.sweep_id)

    app_queue = SweepQueue(engine, tmp_path)  # the app's queue, which is not running this sweep

    def on_progress(status):
        if status.done > 0:
            assert app_queue.cancel(spec.sweep_id)  # goes through the cancel file, as for a headless run

    status = run_sweep(engine, spec, tmp_path, on_progress=on_progress)
    assert status.state is SweepState.CANCELLED and 0 < status.done < 36
    assert folder.cancel_requested()
    assert run_sweep(engine, spec, tmp_path).state is SweepState.COMPLETE
    assert not folder.cancel_requested()


# -- failures -----------------------------------------------------------------------------------


def test_unreadable_samples_are_skipped_and_the_sweep_still_completes(tiny_model, data_dir, tmp_path):
    spec = SweepSpec.from_dict(spec_dict(data_dir, subsets=["esc50"], prompts=["common"], alphas=[1.0]))
    engine = Engine(tiny_model).start()
    try:
        status = run_sweep(engine, spec, tmp_path)
    finally:
        engine.stop()
    assert status.state is SweepState.COMPLETE
    assert (status.skipped_samples, status.total, status.done) == (2, 6, 6)
    assert "2 unreadable sample(s) skipped" in status.message


def test_disk_full_mid_sweep_is_a_clear_error_earlier_rows_stay_intact_and_resume_finishes(
    tiny_model, data_dir, tmp_path, monkeypatch
):
    spec = SweepSpec.from_dict(spec_dict(data_dir, limit=6))
    folder = SweepFolder(tmp_path, spec.sweep_id)
    real_write = os.write
    appends = {"calls": 0, "rows": 0}

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl"):
            appends["calls"] += 1
            if appends["calls"] > 2:
                real_write(fd, bytes(data)[:10])  # part of the batch reaches the disk, then it is full
                raise OSError(errno.ENOSPC, "No space left on device")
            appends["rows"] += bytes(data).count(b"\n")
        return real_write(fd, data)

    monkeypatch.setattr(durable.os, "write", write)
    engine = Engine(tiny_model, max_batch_rows=6).start()
    try:
        with pytest.raises(RunsStorageError, match=r"disk is full.*rows written before are intact"):
            run_sweep(engine, spec, tmp_path, max_inflight_rows=6)
        monkeypatch.undo()
        kept = folder.results.read()
        assert 12 <= len(kept) == appends["rows"] < 36  # the two groups written before the disk filled, nothing torn
        assert folder.results_path.read_bytes().endswith(b"\n")
        status = folder.read_status()
        assert status.state is SweepState.FAILED and "disk is full" in status.message
        assert run_sweep(engine, spec, tmp_path).state is SweepState.COMPLETE
    finally:
        engine.stop()
    assert len(item_predictions(folder.results.read())) == 36


def test_a_runs_folder_that_cannot_be_written_fails_before_any_work(engine, data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunsStorageError, match="cannot create the runs folder"):
        run_sweep(engine, SweepSpec.from_dict(spec_dict(data_dir)), blocker / "runs")
    assert engine.stats.requests == 0


def test_a_sweep_already_running_elsewhere_is_not_run_twice(engine, data_dir, tmp_path):
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    with prepare_folder(tmp_path, spec).lock():
        with pytest.raises(SweepLockedError):
            run_sweep(engine, spec, tmp_path)
        with pytest.raises(SweepLockedError):
            SweepQueue(engine, tmp_path).submit(spec)
    assert engine.stats.requests == 0


# -- the queue ----------------------------------------------------------------------------------


def test_queued_sweeps_run_one_after_another_while_interactive_requests_are_served(tiny_model, data_dir, tmp_path):
    first = SweepSpec.from_dict(spec_dict(data_dir, name="first", limit=4))
    second = SweepSpec.from_dict(spec_dict(data_dir, name="second", limit=4, alphas=[0.25]))
    third = SweepSpec.from_dict(spec_dict(data_dir, name="third", limit=2))
    engine = Engine(PacedModel(tiny_model, 0.05), max_batch_rows=2, sweep_wait_ms=0).start()
    events: list[tuple[str, str, int]] = []
    first_running = threading.Event()

    def on_progress(status):
        events.append((status.sweep_id, status.state.value, status.done))
        if status.sweep_id == first.sweep_id and status.done > 0:
            first_running.set()

    queue = SweepQueue(engine, tmp_path, on_progress=on_progress)
    try:
        ids = [queue.submit(spec) for spec in (first, second, third)]
        assert queue.submit(first) == ids[0] and queue.pending().count(first.sweep_id) == 0
        assert SweepFolder(tmp_path, third.sweep_id).read_status().state is SweepState.QUEUED
        assert queue.cancel(third.sweep_id)
        assert first_running.wait(30)
        window = np.zeros(16000 * 3, dtype=np.float32)
        started = time.monotonic()
        answer = engine.answer([window], "What is this?", 0.5, priority=Priority.INTERACTIVE, timeout_s=30)
        waited = time.monotonic() - started
        first_done_then = SweepFolder(tmp_path, first.sweep_id).read_status().done
        assert queue.join(60)
    finally:
        queue.close()
        engine.stop()
    assert isinstance(answer, str)
    assert first_done_then < 24 and waited < 2.0  # answered while the sweep still had most of its work to do
    order = [sweep_id for sweep_id, _, _ in events]
    last_of_first = len(order) - 1 - order[::-1].index(first.sweep_id)
    assert order.index(second.sweep_id) > last_of_first  # the second started only after the first finished
    statuses = {s.sweep_id: s for s in list_sweeps(tmp_path)}
    assert statuses[first.sweep_id].state is SweepState.COMPLETE and statuses[first.sweep_id].done == 24
    assert statuses[second.sweep_id].state is SweepState.COMPLETE and statuses[second.sweep_id].done == 8
    assert statuses[third.sweep_id].state is SweepState.CANCELLED
    assert not SweepFolder(tmp_path, third.sweep_id).results_path.exists()


# -- decoding on the prefetch threads -----------------------------------------------------------


class SlowDecode:
    """The runner's model_window made slow (as a long file would be), counting calls and how many run at once."""

    def __init__(self, seconds: float, unusable: frozenset[str] = frozenset()) -> None:
        self.seconds = seconds
        self.unusable = unusable
        self.lock = threading.Lock()
        self.calls = self.running = self.most_running = 0

    def __call__(self, sample):
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.seconds)
            if sample.id in self.unusable:
                raise AudioTooShortError(f"{sample.id} is too short")
            return model_window(sample)
        finally:
            with self.lock:
                self.running -= 1


def prefetch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("prefetch")]


def test_recordings_are_decoded_in_parallel_so_a_fast_backend_is_not_kept_waiting(data_dir, tmp_path, monkeypatch):
    """12 recordings with 1 row each and 0.15 s of decoding apiece: one thread needs 1.8 s, four about a quarter."""
    decode = SlowDecode(0.15)
    monkeypatch.setattr(runner, "model_window", decode)
    spec = SweepSpec.from_dict(spec_dict(data_dir, prompts=["common"], alphas=[1.0]))
    backend = ToneBackend()
    started = time.perf_counter()
    status = run_sweep(backend, spec, tmp_path, decode_workers=4)
    elapsed = time.perf_counter() - started
    assert status.state is SweepState.COMPLETE and status.done == backend.rows == 12
    assert decode.calls == 12 and decode.most_running >= 3
    assert elapsed < 0.6 * 12 * 0.15
    assert prefetch_threads() == []


def test_any_number_of_decode_workers_writes_the_same_rows_and_skips_the_same_recordings(tmp_path, monkeypatch):
    """Files of different tones, a broken and a missing one: each id's answer is its own tone, whatever the threads."""
    rate = 44_100
    t = np.arange(int(0.8 * rate)) / rate
    tones = {f"bird{i:02d}.{'flac' if i % 2 else 'wav'}": 300.0 + 150 * i for i in range(9)}
    for name, frequency in tones.items():
        sf.write(tmp_path / name, 0.4 * np.sin(2 * np.pi * frequency * t), rate)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav file")
    lines = [f"{name},tone {frequency:.0f}" for name, frequency in tones.items()]
    lines[4:4] = ["broken.wav,tone 0", "missing.wav,tone 0"]
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(lines) + "\n")
    # bird03 decodes but its window cannot be made: skipped at once rather than at the end of the data set.
    monkeypatch.setattr(runner, "model_window", SlowDecode(0.01, unusable=frozenset({"bird03.flac"})))
    spec = SweepSpec.from_dict(
        {"name": "garden", "source": "recordings", "path": str(tmp_path), "subsets": ["garden"]}
        | {"prompts": ["common"], "alphas": [0.0, 1.0], "num_beams": 1, "max_new_tokens": 4}
    )
    answers = {}
    for workers in (1, 3):
        runs_dir = tmp_path / f"runs-{workers}"
        status = run_sweep(ToneBackend(), spec, runs_dir, decode_workers=workers)
        assert status.state is SweepState.COMPLETE
        assert (status.skipped_samples, status.total, status.done) == (3, 16, 16)
        records = SweepFolder(runs_dir, spec.sweep_id).results.read()
        answers[workers] = item_predictions(records)
        assert [record["id"] for record in records][::2] == [n for n in tones if n != "bird03.flac"]  # source order
    assert answers[1] == answers[3]
    assert {key[1]: float(answer) for key, answer in answers[3].items()} == pytest.approx(
        {name: frequency for name, frequency in tones.items() if name != "bird03.flac"}, abs=2
    )
    with pytest.raises(ValueError, match="decode_workers must be at least 1"):
        run_sweep(ToneBackend(), spec, tmp_path / "runs-0", decode_workers=0)


def test_a_cancel_stops_decoding_and_a_resume_decodes_only_unanswered_recordings(data_dir, tmp_path, monkeypatch):
    decode = SlowDecode(0.02)
    monkeypatch.setattr(runner, "model_window", decode)
    spec = SweepSpec.from_dict(spec_dict(data_dir, prompts=["common"], alphas=[1.0]))
    cancel = threading.Event()

    def on_progress(status):
        if status.done >= 3:
            cancel.set()

    status = run_sweep(ToneBackend(), spec, tmp_path, cancel=cancel, on_progress=on_progress, decode_workers=1)
    assert status.state is SweepState.CANCELLED and 3 <= status.done < 12
    assert decode.calls <= status.done + 3 + 4  # in flight, then at most `ahead` (4 per worker) decoded past it
    assert prefetch_threads() == []
    before_resume = decode.calls
    assert run_sweep(ToneBackend(), spec, tmp_path, decode_workers=2).state is SweepState.COMPLETE
    assert decode.calls - before_resume == 12 - status.done  # answered recordings are not decoded again
    assert run_sweep(ToneBackend(), spec, tmp_path).done == 12
    assert decode.calls - before_resume == 12 - status.done  # nor is anything, once the sweep is complete


def test_by_default_recordings_with_more_answers_each_are_decoded_on_fewer_threads(data_dir, monkeypatch):
    """evaluation.prefetch.default_workers of the sweep's answers per recording (alphas x prompts)."""
    import evaluation.prefetch as prefetch
    from evaluation.sweep import SweepRunner

    monkeypatch.setattr(prefetch.os, "cpu_count", lambda: 64)
    threads = {}
    for alphas in ([0.5], [0.0, 0.5, 1.0], [round(0.1 * i, 1) for i in range(11)]):
        spec = SweepSpec.from_dict(spec_dict(data_dir, alphas=alphas))
        threads[spec.items_per_sample] = SweepRunner(ToneBackend(), spec, "unused-runs").decode_workers
    assert threads == {2: 8, 6: 3, 22: 1}
    spec = SweepSpec.from_dict(spec_dict(data_dir, alphas=[0.5]))
    assert SweepRunner(ToneBackend(), spec, "unused-runs", decode_workers=5).decode_workers == 5


class ModelElsewhereBackend(ToneBackend):
    """A backend whose model computes off this process's CPU (a GPU engine, Ray actors)."""

    answers_on_this_cpu = False


@pytest.mark.parametrize(("backend_class", "torch_threads"), [(ToneBackend, 2), (ModelElsewhereBackend, 1)])
def test_recordings_are_decoded_on_one_torch_thread_each_only_where_the_model_is_elsewhere(
    data_dir, tmp_path, monkeypatch, backend_class, torch_threads
):
    import torch

    seen: set[int] = set()

    def counting_window(sample):
        seen.add(torch.get_num_threads())
        return model_window(sample)

    monkeypatch.setattr(runner, "model_window", counting_window)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spec = SweepSpec.from_dict(spec_dict(data_dir, prompts=["common"], alphas=[1.0]))
        status = run_sweep(backend_class(), spec, tmp_path, decode_workers=3)
        assert status.state is SweepState.COMPLETE
        assert seen == {torch_threads}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_engine_backend_says_whether_its_model_computes_on_this_cpu(tiny_model):
    import torch

    from evaluation.sweep.backends import EngineBackend
    from evaluation.sweep.ray_backend import RayBackend

    assert EngineBackend(Engine(tiny_model, inline=True)).answers_on_this_cpu
    on_a_gpu = type("OnAGpu", (), {"device": torch.device("cuda")})()  # a stand-in: nothing runs on it
    assert not EngineBackend(Engine(on_a_gpu, inline=True)).answers_on_this_cpu
    assert not RayBackend.answers_on_this_cpu
