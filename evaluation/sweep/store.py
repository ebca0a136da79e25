"""The runs folder: one sub-folder per sweep, holding its spec, its append-only results and its status.

    runs/<sweep-id>/spec.json         what to run (evaluation.sweep.spec.SweepSpec)
    runs/<sweep-id>/results.jsonl     one row per (sample, prompt, alpha), appended
    runs/<sweep-id>/status.json       state, counts, rate, ETA
    runs/<sweep-id>/provenance.jsonl  one record per run: model, numerics, device, versions (provenance.py)
    runs/<sweep-id>/cancel            present while a cancel is requested (works across processes)
    runs/<sweep-id>/.lock             flock'ed by the process running the sweep

The files are written through evaluation.sweep.durable, so a kill or a full disk loses at most the
batch in flight. A results row's schema is evaluation.results.ResultRow, which the scorer and the
paper's layout share (it stays outside this package, which imports the scorer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from evaluation.results import ResultRow, row_point
from evaluation.sweep.durable import (
    ResultsCorruptError,
    ResultsLog,
    RunsStorageError,
    atomic_write_json,
    read_json,
    storage_error,
)
from evaluation.sweep.plan import ItemKey, item_key
from evaluation.sweep.spec import PATH_FIELDS, SweepSpec, SweepSpecError

RUNS_DIR_ENV = "NATURELM_RUNS_DIR"
SPACES_DATA_DIR = Path("/data")
SPEC_FILE = "spec.json"
RESULTS_FILE = "results.jsonl"
STATUS_FILE = "status.json"
CANCEL_FILE = "cancel"
LOCK_FILE = ".lock"
SWEEP_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")


class SweepLockedError(RuntimeError):
    """Another runner (this process or another one) is already running this sweep."""


class SweepState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    FAILED = "failed"
    # Derived when listing: the status says running or queued, but the process that wrote it is gone.
    INTERRUPTED = "interrupted"


ACTIVE_STATES = frozenset({SweepState.QUEUED, SweepState.RUNNING})


def default_runs_dir() -> Path:
    """$NATURELM_RUNS_DIR, else /data/runs where /data exists (persistent storage on Spaces), else ./runs."""
    override = os.environ.get(RUNS_DIR_ENV)
    if override:
        return Path(override)
    if SPACES_DATA_DIR.is_dir():
        return SPACES_DATA_DIR / "runs"
    return Path("runs")


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) and check it is writable, or say clearly why it cannot be used."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunsStorageError(
            f"cannot create the runs folder {path}: {error.strerror or error}. "
            f"Choose another with --runs-dir or ${RUNS_DIR_ENV}."
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunsStorageError(
            f"the runs folder {path} is not writable. Choose another with --runs-dir or ${RUNS_DIR_ENV}."
        )
    return path


@dataclass
class SweepStatus:
    """What a progress bar needs, kept on disk so a page reload or another process can show it."""

    sweep_id: str
    name: str
    state: SweepState
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped_samples: int = 0
    rate_per_s: float | None = None
    eta_s: float | None = None
    created_at: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    message: str = ""
    pid: int | None = None
    rows_per_batch: float | None = None  # mean rows of the recent engine batches that carried this sweep's rows
    max_batch_rows: int | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepStatus:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["state"] = SweepState(values.get("state", SweepState.INTERRUPTED))
        return cls(**values)


class SweepFolder:
    """Paths and state files of one sweep under a runs folder."""

    def __init__(self, runs_dir: str | os.PathLike[str], sweep_id: str) -> None:
        if not SWEEP_ID_PATTERN.match(sweep_id):
            raise ValueError(f"{sweep_id!r} is not a sweep id (lower-case letters, digits, '.', '_', '-')")
        self.runs_dir = Path(runs_dir)
        self.sweep_id = sweep_id
        self.path = self.runs_dir / sweep_id
        self.results = ResultsLog(self.path / RESULTS_FILE)

    @property
    def spec_path(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def results_path(self) -> Path:
        return self.results.path

    def create(self) -> SweepFolder:
        ensure_dir(self.runs_dir)
        ensure_dir(self.path)
        return self

    def exists(self) -> bool:
        return self.spec_path.is_file()

    def read_spec(self) -> dict[str, Any]:
        return read_json(self.spec_path)

    def write_spec(self, spec: dict[str, Any]) -> None:
        atomic_write_json(self.spec_path, spec)

    def read_status(self) -> SweepStatus | None:
        try:
            return SweepStatus.from_dict(read_json(self.status_path))
        except (OSError, ValueError, TypeError):
            return None

    def write_status(self, status: SweepStatus) -> None:
        status.updated_at = time.time()
        atomic_write_json(self.status_path, status.to_dict())

    def request_cancel(self) -> None:
        try:
            (self.path / CANCEL_FILE).touch()
        except OSError as error:
            raise storage_error("request cancel of", self.path, error, "Nothing was changed.") from error

    def cancel_requested(self) -> bool:
        return (self.path / CANCEL_FILE).exists()

    def clear_cancel(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / CANCEL_FILE).unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the sweep's flock while running it; the kernel drops it when the holder dies, even by kill -9."""
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise storage_error("lock", self.path, error, "Nothing was changed.") from error
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SweepLockedError(
                    f"sweep {self.sweep_id} is already running (in this or another process)"
                ) from None
            yield
        finally:
            os.close(fd)

    def is_locked(self) -> bool:
        """Whether some runner holds the lock right now (checked without taking it for long)."""
        try:
            with self.lock():
                return False
        except SweepLockedError:
            return True
        except RunsStorageError:
            return False


def list_sweeps(runs_dir: str | os.PathLike[str] | None = None) -> list[SweepStatus]:
    """Every sweep under the runs folder with its state, newest first.

    A status that claims running or queued while no process holds the sweep's lock (or the
    process that queued it is gone) is reported as interrupted: resume it to continue.
    """
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if not root.is_dir():
        return []
    statuses = []
    for child in root.iterdir():
        if not child.is_dir() or not SWEEP_ID_PATTERN.match(child.name) or not (child / SPEC_FILE).is_file():
            continue
        folder = SweepFolder(root, child.name)
        status = folder.read_status() or _status_from_files(folder)
        if status.state in ACTIVE_STATES and not _still_active(folder, status):
            status.state = SweepState.INTERRUPTED
        statuses.append(status)
    return sorted(statuses, key=lambda s: -(s.created_at or s.updated_at or 0.0))


def _status_from_files(folder: SweepFolder) -> SweepStatus:
    """A sweep whose status file is missing or unreadable: count its rows, call it interrupted."""
    try:
        name = str(folder.read_spec().get("name", folder.sweep_id))
    except (OSError, ValueError):
        name = folder.sweep_id
    try:
        done = len(folder.results.read())
    except ResultsCorruptError:
        done = 0
    created = folder.spec_path.stat().st_mtime
    return SweepStatus(folder.sweep_id, name, SweepState.INTERRUPTED, done=done, created_at=created)


def _still_active(folder: SweepFolder, status: SweepStatus) -> bool:
    if status.state is SweepState.RUNNING:
        return folder.is_locked()
    return status.pid is not None and _pid_alive(status.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# A sweep's spec and rows


def prepare_folder(runs_dir: str | os.PathLike[str] | None, spec: SweepSpec) -> SweepFolder:
    """Create runs/<id>/ and write spec.json (refreshing scoring options of an existing one)."""
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), spec.sweep_id).create()
    if folder.exists():
        try:
            saved = folder.read_spec()
        except (OSError, ValueError):
            saved = None
        if saved == spec.to_dict():
            return folder
    folder.write_spec(spec.to_dict())
    return folder


def load_spec(runs_dir: str | os.PathLike[str] | None, sweep_id: str) -> SweepSpec:
    """The spec of the sweep in runs/<sweep_id>/, keeping that id (a resume continues this folder).

    Specs written before paths were stored absolute may hold a path relative to the working folder
    of the app that wrote them (`runs/_uploads/...`): such a path is looked up beside the spec, then
    beside the runs folder, then in the working folder, and the first that exists is taken.
    """
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), sweep_id)
    if not folder.exists():
        raise SweepSpecError(f"no sweep {sweep_id!r} in {folder.runs_dir}")
    try:
        data = json.loads(folder.spec_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SweepSpecError(f"the spec of sweep {sweep_id!r} cannot be read: {error}") from None
    if isinstance(data, dict):
        bases = (folder.spec_path.parent, Path(folder.runs_dir).resolve().parent, Path.cwd())
        for key in PATH_FIELDS:
            value = data.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                found = next((base / value for base in bases if (base / value).exists()), bases[0] / value)
                data[key] = str(found.resolve())
    spec = SweepSpec.from_dict(data, base_dir=folder.spec_path.parent)
    return dataclasses.replace(spec, saved_as=sweep_id)


def load_results(runs_dir: str | os.PathLike[str] | None, sweep_id: str) -> list[ResultRow]:
    """The sweep's rows as written so far (a torn last line is ignored), one per item."""
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), sweep_id)
    return rows_from_records(folder.results.read())


def rows_from_records(records: Iterable[dict[str, Any]]) -> list[ResultRow]:
    """ResultRows, keeping the first row of any item written twice (only possible by hand-editing)."""
    rows: dict[ItemKey, ResultRow] = {}
    for record in records:
        row = ResultRow.from_dict(record)
        rows.setdefault(item_key(row.dataset, row.id, row.prompt_name, row.alpha), row)
    return list(rows.values())


def record_key(record: dict[str, Any]) -> ItemKey:
    """The item a results.jsonl record answers; a record without one means the file was damaged."""
    try:
        return item_key(str(record["dataset"]), str(record["id"]), str(record["prompt_name"]), row_point(record))
    except (KeyError, TypeError, ValueError) as error:
        raise ResultsCorruptError(f"a results row lacks a usable id/dataset/prompt_name/alpha: {record}") from error
