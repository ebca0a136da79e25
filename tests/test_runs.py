"""The runs folder: where it lives, atomic state files, an append-only log that survives kill -9 and a full disk."""

from __future__ import annotations

import errno
import json
import os

import pytest

from evaluation.sweep import durable, store
from evaluation.sweep.durable import ResultsCorruptError, ResultsLog, RunsStorageError, atomic_write_json
from evaluation.sweep.store import (
    SweepFolder,
    SweepLockedError,
    SweepState,
    SweepStatus,
    default_runs_dir,
    list_sweeps,
)


def fail_writes_to(monkeypatch, file_name: str, after_bytes: int = 0) -> None:
    """Make os.write to `file_name` write `after_bytes` bytes and then fail as a full disk does."""
    real_write = os.write
    room = {"left": after_bytes}

    def write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(file_name):
            return real_write(fd, data)
        if room["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = real_write(fd, bytes(data)[: room["left"]])
        room["left"] -= written
        return written

    monkeypatch.setattr(durable.os, "write", write)


def test_runs_dir_is_the_env_override_then_data_on_spaces_then_local(monkeypatch, tmp_path):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "custom"))
    assert default_runs_dir() == tmp_path / "custom"
    monkeypatch.delenv(store.RUNS_DIR_ENV)
    monkeypatch.setattr(store, "SPACES_DATA_DIR", tmp_path)
    assert default_runs_dir() == tmp_path / "runs"
    monkeypatch.setattr(store, "SPACES_DATA_DIR", tmp_path / "absent")
    assert default_runs_dir() == store.Path("runs")


def test_atomic_write_replaces_whole_file_and_a_full_disk_keeps_the_old_one(monkeypatch, tmp_path):
    path = tmp_path / "status.json"
    atomic_write_json(path, {"done": 1})
    atomic_write_json(path, {"done": 2})
    assert json.loads(path.read_text()) == {"done": 2}
    fail_writes_to(monkeypatch, ".tmp")
    with pytest.raises(RunsStorageError, match=r"disk is full.*previous version of that file is intact"):
        atomic_write_json(path, {"done": 3})
    assert json.loads(path.read_text()) == {"done": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temporary file left behind


def test_results_log_appends_and_reads_back(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    assert log.read() == []
    log.append([{"i": 1}, {"i": 2}])
    log.append([{"i": 3, "text": 'naïve, "quoted"\nnewline'}])
    assert [r["i"] for r in log.read()] == [1, 2, 3]
    assert log.read()[2]["text"] == 'naïve, "quoted"\nnewline'


@pytest.mark.parametrize("tail", [b'{"i": 3, "te', b'{"i": 3}', b"\x00\x00\x00\x00", b'{"i": 3, "te\n\x00\x00'])
def test_torn_last_line_is_dropped_and_cut_off_before_the_next_append(tmp_path, tail):
    """A kill -9 mid-write leaves a partial line (or, after a power cut, zeros); neither may glue onto new rows."""
    path = tmp_path / "results.jsonl"
    ResultsLog(path).append([{"i": 1}, {"i": 2}])
    intact = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(tail)
    log = ResultsLog(path)
    assert [r["i"] for r in log.read()] == [1, 2]
    assert path.read_bytes() == intact + tail  # reading alone changes nothing
    assert [r["i"] for r in log.read(repair=True)] == [1, 2]
    assert path.read_bytes() == intact
    log.append([{"i": 3}])
    assert [r["i"] for r in log.read()] == [1, 2, 3]


def test_unreadable_line_in_the_middle_is_an_error_not_silently_dropped(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"i": 1}\nnot json\n{"i": 3}\n')
    with pytest.raises(ResultsCorruptError, match=r"results.jsonl:2"):
        ResultsLog(path).read(repair=True)
    assert path.read_bytes() == b'{"i": 1}\nnot json\n{"i": 3}\n'


def test_disk_full_during_append_keeps_earlier_rows_intact(monkeypatch, tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([{"i": 1}, {"i": 2}])
    before = log.path.read_bytes()
    fail_writes_to(monkeypatch, "results.jsonl", after_bytes=5)  # half a row reaches the disk, then ENOSPC
    with pytest.raises(RunsStorageError, match=r"disk is full.*rows written before are intact") as caught:
        log.append([{"i": 3, "padding": "x" * 50}])
    assert isinstance(caught.value, OSError)
    assert log.path.read_bytes() == before
    monkeypatch.undo()
    log.append([{"i": 3}])
    assert [r["i"] for r in log.read()] == [1, 2, 3]


def test_a_runs_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should go")
    with pytest.raises(RunsStorageError, match=r"cannot create the runs folder.*--runs-dir"):
        SweepFolder(blocker / "runs", "demo-0123456789").create()


def test_sweep_ids_cannot_escape_the_runs_folder(tmp_path):
    for bad in ("../elsewhere", "a/b", "", "UPPER"):
        with pytest.raises(ValueError, match="not a sweep id"):
            SweepFolder(tmp_path, bad)


def test_lock_is_exclusive_and_released(tmp_path):
    folder = SweepFolder(tmp_path, "s-1").create()
    assert not folder.is_locked()
    with folder.lock():
        assert folder.is_locked()
        with pytest.raises(SweepLockedError, match="already running"), SweepFolder(tmp_path, "s-1").lock():
            pass
    assert not folder.is_locked()


def _sweep(tmp_path, sweep_id: str, status: SweepStatus | None, rows: int = 0) -> SweepFolder:
    folder = SweepFolder(tmp_path, sweep_id).create()
    folder.write_spec({"name": sweep_id})
    if status is not None:
        folder.write_status(status)
    folder.results.append([{"i": i} for i in range(rows)])
    return folder


def test_listing_reports_each_sweep_and_notices_dead_runners(tmp_path):
    _sweep(tmp_path, "done-1", SweepStatus("done-1", "done", SweepState.COMPLETE, total=4, done=4, created_at=1.0))
    live = _sweep(tmp_path, "live-2", SweepStatus("live-2", "live", SweepState.RUNNING, total=4, created_at=2.0))
    _sweep(tmp_path, "dead-3", SweepStatus("dead-3", "dead", SweepState.RUNNING, total=4, created_at=3.0))
    _sweep(tmp_path, "gone-4", SweepStatus("gone-4", "gone", SweepState.QUEUED, pid=2**22 + 12345, created_at=4.0))
    _sweep(tmp_path, "bare-5", None, rows=3)
    (tmp_path / "stray-folder").mkdir()
    with live.lock():
        listed = {status.sweep_id: status for status in list_sweeps(tmp_path)}
    assert set(listed) == {"done-1", "live-2", "dead-3", "gone-4", "bare-5"}
    assert listed["done-1"].state is SweepState.COMPLETE and listed["done-1"].fraction == 1.0
    assert listed["live-2"].state is SweepState.RUNNING
    assert listed["dead-3"].state is SweepState.INTERRUPTED  # says running, but nobody holds its lock
    assert listed["gone-4"].state is SweepState.INTERRUPTED  # queued by a process that no longer exists
    assert listed["bare-5"].state is SweepState.INTERRUPTED and listed["bare-5"].done == 3
    assert list_sweeps(tmp_path / "absent") == []


def test_status_round_trips_through_json(tmp_path):
    folder = SweepFolder(tmp_path, "s-1").create()
    status = SweepStatus("s-1", "name", SweepState.RUNNING, total=10, done=4, rate_per_s=2.0, eta_s=3.0)
    folder.write_status(status)
    again = folder.read_status()
    assert again.state is SweepState.RUNNING and (again.done, again.total, again.eta_s) == (4, 10, 3.0)
    assert again.updated_at is not None
