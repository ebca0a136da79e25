"""The runs folder: one sub-folder per sweep, holding its spec, its append-only results and its status.

Everything a sweep has produced lives on disk, never only in memory, so a closed browser tab, a
crashed process or a reboot loses at most the batch in flight. Spec and status are replaced
atomically (write a temporary file, fsync, rename), so a reader never sees half of one; results
are appended and fsynced a batch at a time, and a batch that fails half-way (disk full) is cut
back off, so the rows written before it stay intact and parseable.

    runs/<sweep-id>/spec.json      what to run (evaluation.sweep.SweepSpec)
    runs/<sweep-id>/results.jsonl  one row per (sample, prompt, alpha), appended
    runs/<sweep-id>/status.json    state, counts, rate, ETA
    runs/<sweep-id>/cancel         present while a cancel is requested (works across processes)
    runs/<sweep-id>/.lock          flock'ed by the process running the sweep
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

RUNS_DIR_ENV = "NATURELM_RUNS_DIR"
SPACES_DATA_DIR = Path("/data")
SPEC_FILE = "spec.json"
RESULTS_FILE = "results.jsonl"
STATUS_FILE = "status.json"
CANCEL_FILE = "cancel"
LOCK_FILE = ".lock"
SWEEP_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")


class RunsStorageError(OSError):
    """The runs folder cannot be created or written (disk full, read-only, not a folder).

    The message says what was being written, why it failed and that earlier results are intact.
    """


class SweepLockedError(RuntimeError):
    """Another runner (this process or another one) is already running this sweep."""


class ResultsCorruptError(ValueError):
    """A results file has an unreadable line before its end: not a torn last write, so not repaired silently."""


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


def _storage_error(action: str, path: Path, error: OSError, intact: str) -> RunsStorageError:
    reason = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or str(error))
    return RunsStorageError(f"could not {action} {path}: {reason}. {intact}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; some filesystems refuse to open folders, which only costs durability."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON all at once: readers see the old file or the new one, never a mix."""
    payload = (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise _storage_error("write", path, error, "The previous version of that file is intact.") from error
    _fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


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


class ResultsLog:
    """An append-only jsonl file that survives kill -9 and a full disk.

    A kill during a write can leave a torn last line (no newline, or a partial object); it is dropped
    and cut off before the next append, so the file never holds a half row followed by whole ones.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, repair: bool = False) -> list[dict[str, Any]]:
        """Every complete row; with `repair`, a torn tail is also truncated away on disk."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        records, good_end = _parse_lines(data, self.path)
        if repair and good_end < len(data):
            try:
                os.truncate(self.path, good_end)
            except OSError as error:
                raise _storage_error("repair the torn last line of", self.path, error, "No row was lost.") from error
        return records

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append rows and fsync; on failure cut the file back to its previous size and raise RunsStorageError."""
        if not records:
            return
        payload = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise _storage_error("open", self.path, error, "Results written before are intact.") from error
        try:
            size_before = os.fstat(fd).st_size
            try:
                _write_all(fd, payload)
                os.fsync(fd)
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size_before)
                raise _storage_error(
                    f"append {len(records)} rows to",
                    self.path,
                    error,
                    "The rows written before are intact; free some space and resume the sweep.",
                ) from error
        finally:
            os.close(fd)


def _parse_lines(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int]:
    """(rows, byte offset just past the last good line); bad lines after the last good one are a torn tail."""
    records: list[dict[str, Any]] = []
    good_end = 0
    bad_line: int | None = None
    position = 0
    number = 0
    while position < len(data):
        newline = data.find(b"\n", position)
        end = len(data) if newline < 0 else newline + 1
        line = data[position:end]
        number += 1
        record = _parse_record(line) if newline >= 0 else None
        if record is not None:
            if bad_line is not None:
                raise ResultsCorruptError(f"{path}:{bad_line}: unreadable line in the middle of the results")
            records.append(record)
            good_end = end
        elif newline >= 0 and not line.strip():
            if bad_line is None:
                good_end = end  # a blank line: harmless, keep it
        elif bad_line is None:
            bad_line = number
        position = end
    return records, good_end


def _parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


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
            raise _storage_error("request cancel of", self.path, error, "Nothing was changed.") from error

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
            raise _storage_error("lock", self.path, error, "Nothing was changed.") from error
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
