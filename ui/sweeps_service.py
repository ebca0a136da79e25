"""What the Sweeps tab asks of evaluation, one call per user action, so its handlers only translate widgets.

Why a layer: starting a sweep is several steps that must happen in order (refuse on ZeroGPU, build
the spec, check the data, then pick the queue, which may start a Ray pool) and the tab starts
sweeps four ways (form, paper preset, fork YAML, resume). Here they are plain calls on plain data,
testable without gradio; the tab words the results (ui.text) and draws them (ui.sweep_display).
A page refresh reads the runs folder once (`snapshot`), and every part of the page is drawn from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evaluation.backend_choice import THIS_MACHINE, SweepBackends
from evaluation.fork_config import ForkConfig
from evaluation.scoring import ScoringMode
from evaluation.server_data import DataRoot
from evaluation.sweep import (
    DataSource,
    SweepQueue,
    SweepSpec,
    SweepState,
    SweepStatus,
    list_sweeps,
    load_spec,
)
from evaluation.sweep_audio import SampleAudio, SampleAudioError, sample_audio
from evaluation.sweep_forms import (
    SweepForm,
    check_spec_data,
    fork_config_from_upload,
    preset_run_notes,
    spec_from_fork_upload,
    spec_from_form,
    spec_from_preset,
)
from evaluation.sweep_uploads import IMPORT_PREFIX, import_paper_uploads, imported_folders
from evaluation.sweep_views import SweepView, SweepViews, export_view
from ui.text import ZERO_GPU_SWEEPS

SPEC_SCORING = "as in the spec"  # the scoring choice that means: the sweep's own mode (the paper's for imports)


class SweepsUnavailable(ValueError):
    """Sweeps cannot run on this hardware (ZeroGPU); the message says where they can."""


@dataclass(frozen=True)
class MeasuredRate:
    """Answers per second as a sweep on this runs folder measured them, and which sweep that was."""

    answers_per_s: float
    sweep_id: str


def measured_rate(statuses: Sequence[SweepStatus]) -> MeasuredRate | None:
    """The rate of the sweep that ran last (the running one updates its status most recently).

    The engine counts rows but not the time it spent on them, while every sweep's status records
    its answers per second over its session: the best estimate of what a preset costs on this model,
    hardware and decoding settings. None until some sweep has answered something.
    """
    measured = [s for s in statuses if s.rate_per_s and s.rate_per_s > 0 and s.done > 0]
    if not measured:
        return None
    latest = max(measured, key=lambda s: s.updated_at or s.finished_at or s.created_at or 0.0)
    return MeasuredRate(float(latest.rate_per_s), latest.sweep_id)


@dataclass(frozen=True)
class RunsSnapshot:
    """One look at the runs folder: every sweep's status (newest first) and the imported folders."""

    statuses: tuple[SweepStatus, ...]
    imports: tuple[str, ...]

    @property
    def rate(self) -> MeasuredRate | None:
        return measured_rate(self.statuses)

    def status(self, sweep_id: str) -> SweepStatus | None:
        """The sweep's status as list_sweeps reports it (so a dead process shows as interrupted)."""
        return next((s for s in self.statuses if s.sweep_id == sweep_id), None)

    def default_selection(self) -> str | None:
        """What a freshly loaded page shows: the running sweep, else the newest one."""
        running = next((s for s in self.statuses if s.state is SweepState.RUNNING), None)
        chosen = running or (self.statuses[0] if self.statuses else None)
        return chosen.sweep_id if chosen else None


def read_snapshot(runs_dir: str | os.PathLike[str]) -> RunsSnapshot:
    """Every sweep's status (one list_sweeps) and the imported folders under `runs_dir`."""
    return RunsSnapshot(tuple(list_sweeps(runs_dir)), tuple(imported_folders(runs_dir)))


@dataclass(frozen=True)
class Queued:
    """A sweep handed to a queue: its id, its size (None until BEANS-Zero is fetched) and notes for the user."""

    sweep_id: str
    items: int | None
    notes: tuple[str, ...] = ()


def is_import(key: str | None) -> bool:
    return bool(key) and key.startswith(IMPORT_PREFIX)


def scoring_of(choice: str) -> ScoringMode | None:
    """The tab's "Score as" choice as a scoring mode; None is the sweep's own."""
    return None if choice == SPEC_SCORING else ScoringMode(choice)


class SweepsService:
    """The runs folder, the sweep queues (this machine's, or a Ray pool's) and the scored views of sweeps."""

    def __init__(self, backends: SweepBackends, zero_gpu: bool = False, data_root: DataRoot | None = None) -> None:
        self.backends = backends
        self.runs_dir: Path = backends.local.runs_dir
        self.views = SweepViews(self.runs_dir)
        self.zero_gpu = zero_gpu
        self.data_root = data_root or DataRoot(None)

    # --- what is on disk

    def snapshot(self) -> RunsSnapshot:
        """The runs folder, listed once: a refresh of the page draws every part from this."""
        return read_snapshot(self.runs_dir)

    def view(self, key: str, mode: str = SPEC_SCORING) -> SweepView:
        return self.views.load(key, scoring_of(mode))

    def provenance(self, key: str) -> tuple[dict[str, Any], ...]:
        """The sweep's run records (model, numerics, device, versions), or those an imported export carried."""
        return self.views.provenance(key)

    def generation_twin(self, view: SweepView, mode: str = SPEC_SCORING) -> SweepView | None:
        """A likelihood sweep's generation twin in the runs folder (its "says"), scored in `mode`; else None."""
        twin = self.views.generation_twin(view.key) if view.is_likelihood else None
        return self.view(twin, mode) if twin else None

    def signature(self, key: str) -> tuple:
        """Changes whenever what `view(key)` shows would (its results or its spec)."""
        return self.views.signature(key)

    def export(self, key: str | None, mode: str, fmt: str) -> Path:
        if not key:
            raise ValueError("Select a sweep to export.")
        return export_view(self.view(key, mode), fmt)

    def sample_audio(self, key: str | None, dataset: str, sample_id: str) -> SampleAudio:
        """One answered sample's audio, read from the sweep's own data (an import keeps answers, not audio)."""
        if not key:
            raise SampleAudioError("Select a sweep first.")
        if is_import(key):
            raise SampleAudioError("An imported folder holds answers only, not their recordings.")
        return sample_audio(load_spec(self.runs_dir, key), dataset, sample_id)

    def import_uploads(self, files: Sequence[str] | None, name: str) -> str:
        """Keep a paper-layout upload under the runs folder; its key shows it like a sweep."""
        return import_paper_uploads(list(files or []), self.runs_dir, name or "imported")

    # --- starting, stopping, resuming

    def start(self, form: SweepForm, run_on: str = THIS_MACHINE, ray_address: str = "") -> Queued:
        """The form's sweep, checked and queued where "Run on" says (a Ray pool starts only for good data)."""
        self._refuse_on_zero_gpu()
        spec = spec_from_form(form, self.runs_dir)
        return self._queue(spec, lambda: self.backends.queue_for(run_on, ray_address))

    def start_server_folder(
        self, form: SweepForm, choice: str | None, run_on: str = THIS_MACHINE, ray_address: str = ""
    ) -> Queued:
        """The form's sweep on a folder under --data-root: the spec a headless run of that folder would have.

        The form's own reader checks the questions, grid and decoding (its data fields are not read); the
        data is then the folder, in place: source "recordings", its absolute path and labels CSV.
        """
        self._refuse_on_zero_gpu()
        recordings = self.data_root.resolve(choice)
        questions = replace(form, source=DataSource.BEANS_ZERO.value, subsets=(recordings.name,))
        spec = replace(
            spec_from_form(questions, self.runs_dir),
            source=DataSource.RECORDINGS,
            path=str(recordings.folder),
            labels_csv=str(recordings.labels_csv),
        )
        return self._queue(spec, lambda: self.backends.queue_for(run_on, ray_address))

    def run_preset(self, key: str | None, form: SweepForm, alphas: str = "") -> Queued:
        """A paper experiment on the form's data and settings, on this machine."""
        self._refuse_on_zero_gpu()
        spec = spec_from_preset(key, form, self.runs_dir, alphas)
        return self._queue(spec, lambda: self.backends.local, preset_run_notes(spec))

    def preview_fork_config(self, upload: str | None, form: SweepForm) -> ForkConfig:
        """What an uploaded fork YAML would run on the form's data (nothing is copied or queued)."""
        return fork_config_from_upload(upload, form, form.mapping_file)

    def run_fork_config(self, upload: str | None, form: SweepForm) -> Queued:
        self._refuse_on_zero_gpu()
        config = spec_from_fork_upload(upload, form, self.runs_dir)
        return self._queue(config.spec, lambda: self.backends.local, config.notes)

    def resume(self, key: str | None, run_on: str = THIS_MACHINE, ray_address: str = "") -> str:
        """Resume where "Run on" says now: a sweep started on a Ray cluster can finish here, and back."""
        self._refuse_on_zero_gpu()
        if not key or is_import(key):
            raise ValueError("Select a sweep to resume.")
        return self.backends.queue_for(run_on, ray_address).resume(key)

    def cancel(self, key: str | None) -> bool:
        """Whether the sweep was running or queued here (it then stops after the batch in flight)."""
        if not key or is_import(key):
            raise ValueError("Select a sweep to cancel.")
        return self.backends.cancel(key)

    def _queue(self, spec: SweepSpec, target: Callable[[], SweepQueue], notes: Sequence[str] = ()) -> Queued:
        """Check the data (bad data fails here, before a Ray pool is started for it), then queue the sweep."""
        items = check_spec_data(spec)
        return Queued(target().submit(spec), items, tuple(notes))

    def _refuse_on_zero_gpu(self) -> None:
        if self.zero_gpu:
            raise SweepsUnavailable(ZERO_GPU_SWEEPS)
