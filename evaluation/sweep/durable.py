"""Files that survive kill -9 and a full disk: JSON replaced atomically, results appended a batch at a time.

Everything a sweep produces lives on disk, never only in memory, so a closed browser tab, a crashed
process or a reboot loses at most the batch in flight. A JSON file is replaced atomically (write a
temporary file, fsync, rename), so a reader never sees half of one; results are appended and fsynced
a batch at a time, and a batch that fails half-way (disk full) is cut back off, so the rows written
before it stay intact and parseable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class RunsStorageError(OSError):
    """The runs folder cannot be created or written (disk full, read-only, not a folder).

    The message says what was being written, why it failed and that earlier results are intact.
    """


class ResultsCorruptError(ValueError):
    """A results file has an unreadable line before its end: not a torn last write, so not repaired silently."""


def storage_error(action: str, path: Path, error: OSError, intact: str) -> RunsStorageError:
    """The error to raise for a failed write: a full disk said in words, and `intact` (what was not lost)."""
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
        raise storage_error("write", path, error, "The previous version of that file is intact.") from error
    _fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


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
                raise storage_error("repair the torn last line of", self.path, error, "No row was lost.") from error
        return records

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append rows and fsync; on failure cut the file back to its previous size and raise RunsStorageError."""
        if not records:
            return
        payload = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise storage_error("open", self.path, error, "Results written before are intact.") from error
        try:
            size_before = os.fstat(fd).st_size
            try:
                _write_all(fd, payload)
                os.fsync(fd)
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size_before)
                raise storage_error(
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
