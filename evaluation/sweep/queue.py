"""Sweeps run one after another in the app's process, and `start_sweep`, how the app starts one.

Starting a sweep checks its data where it is started (bad data fails there, before a Ray pool is
started for it), then queues the sweep with the plan that check made and its folder prepared once;
the runner reuses both instead of planning and preparing again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation.sweep.backends import SweepBackend, check_recipes
from evaluation.sweep.plan import SweepPlan, check_sweep
from evaluation.sweep.runner import ProgressCallback, SweepRunner
from evaluation.sweep.spec import SweepSpec
from evaluation.sweep.store import (
    SweepFolder,
    SweepLockedError,
    SweepState,
    SweepStatus,
    default_runs_dir,
    load_spec,
    prepare_folder,
)

if TYPE_CHECKING:
    from naturelm_core.engine import Engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedSweep:
    """A started sweep: its id, and its items (None where counting them waits for a BEANS-Zero download)."""

    sweep_id: str
    items: int | None


def start_sweep(
    spec: SweepSpec,
    queue: SweepQueue | Callable[[], SweepQueue],
    check: Callable[[SweepPlan], None] | None = None,
) -> QueuedSweep:
    """Check the sweep's data (and the plan, with `check`, a caller's own test), then queue it with that plan.

    `queue` may be a function giving the queue, called only once the data passed, since choosing
    the queue may start a Ray pool.
    """
    plan = check_sweep(spec)
    if plan is not None and check is not None:
        check(plan)
    target = queue if isinstance(queue, SweepQueue) else queue()
    return QueuedSweep(target.submit(spec, plan), None if plan is None else plan.items)


@dataclass(frozen=True)
class _Job:
    """A queued sweep: its folder is prepared; its plan is None where it is made when the sweep runs."""

    spec: SweepSpec
    folder: SweepFolder
    plan: SweepPlan | None


class SweepQueue:
    """Runs submitted sweeps one at a time in a background thread, on the engine the app already serves from.

    One sweep at a time keeps the accelerator's memory and the results' order predictable; the
    engine still interleaves interactive requests between the sweep's batches. `engine` may also be
    another SweepBackend (a Ray pool), which the queue then uses for every sweep it runs.
    """

    def __init__(
        self,
        engine: Engine | SweepBackend,
        runs_dir: str | os.PathLike[str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.engine = engine
        self.runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        self.on_progress = on_progress
        self.errors: dict[str, str] = {}
        self._pending: deque[_Job] = deque()
        self._current: tuple[str, threading.Event] | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None

    @property
    def current(self) -> str | None:
        with self._changed:
            return self._current[0] if self._current else None

    def pending(self) -> list[str]:
        with self._changed:
            return [job.spec.sweep_id for job in self._pending]

    def submit(self, spec: SweepSpec, plan: SweepPlan | None = None) -> str:
        """Queue a sweep (or its resumption); a sweep already queued or running here is not queued twice.

        `plan` is the sweep's plan where it was made already (start_sweep's check): the runner reuses it.
        Merge recipes the queue's model cannot run are refused here, before the folder is written, so the
        caller (the Sweeps tab) says why at once instead of a sweep failing in the background.
        """
        check_recipes(self.engine, spec)
        folder = prepare_folder(self.runs_dir, spec)
        with self._changed:
            if self._closed:
                raise RuntimeError("the sweep queue is closed")
            running_here = self._current is not None and self._current[0] == spec.sweep_id
            if running_here or any(job.spec.sweep_id == spec.sweep_id for job in self._pending):
                return spec.sweep_id
            if folder.is_locked():
                raise SweepLockedError(f"sweep {spec.sweep_id} is already running in another process")
            previous = folder.read_status()
            status = previous or SweepStatus(spec.sweep_id, spec.name, SweepState.QUEUED, created_at=time.time())
            status.state, status.message, status.pid = SweepState.QUEUED, "", os.getpid()
            folder.write_status(status)
            self._pending.append(_Job(spec, folder, plan))
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="sweep-queue", daemon=True)
                self._worker.start()
            self._changed.notify_all()
        return spec.sweep_id

    def resume(self, sweep_id: str) -> str:
        return self.submit(load_spec(self.runs_dir, sweep_id))

    def cancel(self, sweep_id: str) -> bool:
        """Cancel a sweep after its batch in flight, or drop a queued one; False if it is not running anywhere.

        A sweep run by another process (the headless command) is asked to stop through its cancel file.
        """
        with self._changed:
            if self._current and self._current[0] == sweep_id:
                self._current[1].set()
                return True
            for job in list(self._pending):
                if job.spec.sweep_id == sweep_id:
                    self._pending.remove(job)
                    folder = job.folder
                    status = folder.read_status() or SweepStatus(sweep_id, job.spec.name, SweepState.CANCELLED)
                    status.state, status.message = SweepState.CANCELLED, "cancelled before it started"
                    folder.write_status(status)
                    self._changed.notify_all()
                    return True
        folder = SweepFolder(self.runs_dir, sweep_id)
        if folder.exists() and folder.is_locked():
            folder.request_cancel()
            return True
        return False

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._pending or self._current:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self) -> None:
        """Drop queued sweeps, cancel the running one after its batch in flight, and stop the thread."""
        with self._changed:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            if self._current:
                self._current[1].set()
            self._changed.notify_all()
        for job in dropped:
            status = job.folder.read_status() or SweepStatus(job.spec.sweep_id, job.spec.name, SweepState.CANCELLED)
            status.state, status.message = SweepState.CANCELLED, "the app stopped before it started"
            job.folder.write_status(status)
        if self._worker is not None:
            self._worker.join(timeout=60)

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                job = self._pending.popleft()
                cancel = threading.Event()
                self._current = (job.spec.sweep_id, cancel)
            try:
                SweepRunner(
                    self.engine, job.spec, plan=job.plan, folder=job.folder, cancel=cancel, on_progress=self.on_progress
                ).run()
            except Exception as error:  # recorded in status.json by the runner; the queue goes on
                logger.exception("sweep %s failed", job.spec.sweep_id)
                self.errors[job.spec.sweep_id] = f"{type(error).__name__}: {error}"
            finally:
                with self._changed:
                    self._current = None
                    self._changed.notify_all()
