"""Folders of recordings already on the server, offered only within the root the operator named (--data-root).

Why a root: the page is reachable by anyone who can open it, so a typed path must never reach the
rest of the server's disk. A choice is a labels CSV given relative to the root; it, its folder and
every recording it names are resolved (symlinks followed) and refused unless they stay inside the root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from evaluation.datasets import DatasetError, load_recordings

MAX_DEPTH = 3  # how deep under the root folders of recordings are looked for
DATA_ROOT_OFF = (
    "Choosing a folder on the server is off: start the app with `--data-root DIR` to choose folders of "
    "recordings with a labels CSV inside DIR."
)


class DataRootError(ValueError):
    """A server folder that cannot be used (outside the root, no CSV, the picker off); the message says why."""


@dataclass(frozen=True)
class ServerRecordings:
    """A folder of recordings and its labels CSV, both absolute and inside the data root."""

    folder: Path
    labels_csv: Path

    @property
    def name(self) -> str:
        return self.folder.name


class DataRoot:
    """The folder the operator allowed (None: the picker is off)."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root).expanduser().resolve() if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise DataRootError(f"--data-root {root} is not a folder")

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def choices(self) -> list[str]:
        """The labels CSVs under the root (relative paths, sorted), at most MAX_DEPTH folders down."""
        if self.root is None:
            return []
        found = []
        for folder, subfolders, files in os.walk(self.root):
            depth = len(Path(folder).relative_to(self.root).parts)
            subfolders[:] = sorted(s for s in subfolders if not s.startswith(".")) if depth < MAX_DEPTH else []
            found += [Path(folder, name) for name in files if name.lower().endswith(".csv")]
        inside = [path for path in found if self._inside(path.resolve())]
        return sorted(str(path.relative_to(self.root)) for path in inside)

    def resolve(self, choice: str | None) -> ServerRecordings:
        """The chosen labels CSV (relative to the root, or absolute within it) and its folder, checked."""
        if self.root is None:
            raise DataRootError(DATA_ROOT_OFF)
        text = (choice or "").strip()
        if not text:
            raise DataRootError("choose a labels CSV in a folder under the data root")
        chosen = (self.root / Path(text).expanduser()).resolve()
        if not self._inside(chosen):
            raise DataRootError(f"{text} is outside the data root {self.root}; only folders inside it can be used")
        if chosen.is_dir():
            chosen = chosen / "labels.csv"
        if not chosen.is_file() or chosen.suffix.lower() != ".csv":
            raise DataRootError(f"{text} is not a labels CSV under {self.root}")
        recordings = ServerRecordings(chosen.parent, chosen)
        self._check_recordings(recordings)
        return recordings

    def _check_recordings(self, recordings: ServerRecordings) -> None:
        """Every file the CSV names must stay inside the root too (a `../` or a symlink out is refused)."""
        try:
            ids = load_recordings(recordings.folder, recordings.labels_csv).ids()
        except (OSError, DatasetError) as error:
            raise DataRootError(f"{recordings.labels_csv.name}: {error}") from error
        outside = [i for i in ids if not self._inside((recordings.folder / i).resolve())]
        if outside:
            raise DataRootError(f"the labels CSV names files outside the data root: {outside[:5]}")

    def _inside(self, path: Path) -> bool:
        return self.root is not None and path.is_relative_to(self.root)
