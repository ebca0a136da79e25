"""Which model, numerics and code each run of a sweep used: runs/<id>/provenance.jsonl, one record per run.

Why: a sweep can be resumed later, by another process, on another machine or after an upgrade, and
its rows carry no trace of the numerics that produced them (the LLM's dtype, the audio encoder's
precision, the checkpoint). Each run, the first and every resume, appends one record before it
answers anything; a resume whose numerics differ from an earlier run's goes on, but says so, since
its rows then mix numerics. Records name the model by its Hub id or folder and the code by its git
commit and library versions; nothing is read from the environment, so no token can land in a file.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from evaluation.sweep.durable import ResultsCorruptError, ResultsLog

PROVENANCE_FILE = "provenance.jsonl"
VERSIONED_PACKAGES = ("torch", "transformers", "peft")
# The fields that decide a row's numbers, with how a warning names them; the rest (device, versions) is context.
NUMERICS_FIELDS = {
    "model_source": "model source",
    "demo": "demo model",
    "llm_dtype": "LLM dtype",
    "audio_precision": "audio precision",
}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
GIT_TIMEOUT_S = 5.0


def model_provenance(model: Any) -> dict[str, Any]:
    """What the model that answers says of itself (run where it lives: this process, or a Ray actor).

    A stand-in without these attributes (a test's) leaves them None, which no comparison counts as a change.
    The demo's checkpoint lies in a temporary folder that says nothing, so its source is left out.
    """
    demo = getattr(model, "demo", None)
    dtype = getattr(model, "dtype", None)
    return {
        "model_source": None if demo else getattr(model, "source", None),
        "llm_source": None if demo else getattr(model, "llm_source", None),
        "demo": demo,
        "llm_dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "audio_precision": getattr(model, "audio_precision", None),
        "device": describe_device(getattr(model, "device", None)),
    }


def describe_device(device: Any) -> str | None:
    """ "cpu", or a GPU with its index and name ("cuda:0 NVIDIA H100 80GB HBM3"): results differ across GPU kinds."""
    if device is None:
        return None
    if getattr(device, "type", None) != "cuda":
        return str(device)
    import torch  # only where a model runs on a GPU, so torch is imported already

    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def library_versions() -> dict[str, str | None]:
    """Python's and the model libraries' versions in this process (None: not installed), importing nothing.

    A library already imported gives its own `__version__`, which keeps the build ("2.4.1+cu121", the CUDA
    it was built for); the installed distribution's metadata is the fallback.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        loaded = getattr(sys.modules.get(package), "__version__", None)
        try:
            versions[package] = str(loaded) if loaded else metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """The commit of the checkout the code runs from; None outside a checkout, without git, or if git fails."""
    if not (root / ".git").exists():  # never the commit of some repository the project happens to sit in
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def run_record(backend: Any, started_at: float, rows_at_start: int) -> dict[str, Any]:
    """This run's record: when it began, how many rows were there before it, and what the backend tells.

    A backend's `provenance()` (EngineBackend, RayBackend) gives its kind and its model's facts and
    versions; one without it (a stand-in) is named by its class, with this process's versions.
    """
    describe = getattr(backend, "provenance", None)
    facts = describe() if describe is not None else {"backend": type(backend).__name__}
    record = {"started_at": round(started_at, 3), "rows_at_start": rows_at_start, **facts}
    record.setdefault("versions", library_versions())
    record["git_commit"] = git_commit()
    return record


def read_runs(folder: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The sweep's run records, oldest first (none for a sweep begun before they were kept).

    With `repair`, a torn last record (a kill during its append) is cut off, as results.jsonl's is.
    """
    log = ResultsLog(folder / PROVENANCE_FILE)
    try:
        return log.read(repair=repair)
    except ResultsCorruptError as error:
        raise ResultsCorruptError(f"{error} (the sweep's run records); fix or move the file") from None


def append_run(folder: Path, record: Mapping[str, Any]) -> None:
    """Append one record, fsynced (a full disk raises RunsStorageError and leaves earlier records intact)."""
    ResultsLog(folder / PROVENANCE_FILE).append([dict(record)])


def write_runs(path: Path, runs: Sequence[Mapping[str, Any]]) -> None:
    """Write records to a new file (an export's copy), in the sweep folder's format."""
    ResultsLog(path).append([dict(run) for run in runs])


@dataclass(frozen=True)
class NumericsChange:
    """A numerics field whose value in some run differs from another's: the values in the order runs met them."""

    field: str
    values: tuple[Any, ...]

    @property
    def label(self) -> str:
        return NUMERICS_FIELDS[self.field]


def numerics_changes(runs: Sequence[Mapping[str, Any]]) -> list[NumericsChange]:
    """The numerics fields on which the runs disagree; an unknown value (None) disagrees with nothing."""
    changes = []
    for name in NUMERICS_FIELDS:
        values: list[Any] = []
        for run in runs:
            value = run.get(name)
            if value is not None and value not in values:
                values.append(value)
        if len(values) > 1:
            changes.append(NumericsChange(name, tuple(values)))
    return changes


def resume_warning(earlier: Sequence[Mapping[str, Any]], current: Mapping[str, Any]) -> str:
    """What a resume must say when its numerics differ from earlier runs' ("" when they agree, or on a first run).

    e.g. "warning: resumed with audio precision bfloat16; rows before were float32 (...)".
    """
    changed = []
    for name, label in NUMERICS_FIELDS.items():
        now = current.get(name)
        before = [run.get(name) for run in earlier]
        others = list(dict.fromkeys(value for value in before if value is not None and value != now))
        if now is not None and others:
            changed.append((label, now, others))
    if not changed:
        return ""
    resumed = ", ".join(f"{label} {shown(now)}" for label, now, _ in changed)
    before = ", ".join(f"{label} {' / '.join(map(shown, others))}" for label, _, others in changed)
    return f"warning: resumed with {resumed}; rows before were {before} (see {PROVENANCE_FILE}): they mix numerics"


def shown(value: Any) -> str:
    """A recorded value in a sentence: the demo flag as yes/no, the rest as written."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
