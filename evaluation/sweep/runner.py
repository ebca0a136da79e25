"""The runner: one sweep, from its plan to results.jsonl, resumable after a cancel, a crash or kill -9.

Work goes to the backend sample by sample: all (prompt, alpha) rows of one recording are queued
together, so the worker batches them and encodes the recording once for every prompt and alpha.
Recordings are decoded on prefetch threads a few ahead of submission. Finished rows are appended to
runs/<id>/results.jsonl and fsynced a group at a time; a restart skips every row already there, and
a cancel stops submitting and writes what is in flight.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluation.datasets import SampleRow, UnreadableRowError
from evaluation.icl import AnswerRoom, ContextBudget
from evaluation.prefetch import default_workers, prefetch_map
from evaluation.results import ResultRow
from evaluation.sweep.backends import LabelBackend, Row, SweepBackend, as_backend, check_recipes
from evaluation.sweep.durable import ResultsCorruptError, RunsStorageError
from evaluation.sweep.label_sets import distribution_fields, record_label_sets
from evaluation.sweep.plan import (
    ItemKey,
    SubsetPlan,
    SweepPlan,
    WorkItem,
    item_key,
    load_examples,
    model_window,
    sample_items,
)
from evaluation.sweep.provenance import append_run, read_runs, resume_warning, run_record
from evaluation.sweep.spec import AnswerMode, SweepSpec
from evaluation.sweep.store import SweepFolder, SweepState, SweepStatus, default_runs_dir, prepare_folder, record_key
from naturelm_core.label_scores import LabelScores
from naturelm_core.requests import GenerationSettings

if TYPE_CHECKING:
    from naturelm_core.engine import Engine

logger = logging.getLogger(__name__)

# A group of rows that all failed, this many times in a row, means the model is broken: stop.
MAX_FAILED_GROUPS_IN_A_ROW = 3
# Recordings decoded ahead of the one being submitted, per decode thread: slack for a slow file at the head
# while the other threads go on. Only model windows wait (a file is decoded only as far as its window needs, and a
# parquet row's audio is dropped on the decode thread).
DECODE_AHEAD_PER_WORKER = 4

ProgressCallback = Callable[[SweepStatus], None]


@dataclass
class _InFlight:
    """One sample's rows submitted to the engine, with when each finished; only its label is kept, not its audio."""

    label: str
    items: list[WorkItem]
    futures: list[Future]
    submitted: float
    finished: dict[int, float] = field(default_factory=dict)
    candidates: tuple[str, ...] = ()  # a likelihood sweep's label order for this subset (its rows' distributions)

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def wait(self) -> None:
        for future in self.futures:
            if not future.cancelled():
                future.exception()  # waits without raising; SweepRunner._write_finished reads the outcome


class SweepRunner:
    """Runs (or resumes) one sweep on an Engine or another SweepBackend; `run()` returns the final status.

    At most `max_inflight_rows` rows (default: the backend's `inflight_rows`, at least two samples'
    worth) are queued at once, so every worker always has its next batch ready while a cancel or a
    crash loses at most what is in flight. Recordings are decoded and resampled on `decode_workers`
    threads (default: evaluation.prefetch.default_workers of the answers per recording) a few ahead of
    submission, so one thread's decoding does not starve a fast accelerator when a recording has few rows.

    `plan` is the sweep's plan where it was made already (when the sweep was started); `folder` its
    folder where it was prepared already (SweepQueue.submit does): `run()` makes either only if missing.
    """

    def __init__(
        self,
        engine: Engine | SweepBackend,
        spec: SweepSpec,
        runs_dir: str | os.PathLike[str] | None = None,
        *,
        plan: SweepPlan | None = None,
        folder: SweepFolder | None = None,
        cancel: threading.Event | None = None,
        on_progress: ProgressCallback | None = None,
        max_inflight_rows: int | None = None,
        decode_workers: int | None = None,
    ) -> None:
        if decode_workers is not None and decode_workers < 1:
            raise ValueError(f"decode_workers must be at least 1, got {decode_workers}")
        if plan is not None and plan.spec != spec:
            raise ValueError(f"the plan given is of sweep {plan.spec.sweep_id}, not {spec.sweep_id}")
        self.backend = as_backend(engine)
        self.spec = spec
        self.plan = plan
        self.cancel_event = cancel or threading.Event()
        self.on_progress = on_progress
        self.max_inflight_rows = max_inflight_rows or max(self.backend.inflight_rows, 2 * spec.items_per_sample)
        self.decode_workers = decode_workers or default_workers(spec.items_per_sample)
        if folder is not None and folder.sweep_id != spec.sweep_id:
            raise ValueError(f"the folder given is sweep {folder.sweep_id}'s, not {spec.sweep_id}'s")
        self.folder = folder or SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), spec.sweep_id)
        self._folder_prepared = folder is not None
        self.status = SweepStatus(spec.sweep_id, spec.name, SweepState.RUNNING, created_at=time.time())
        self._inflight: deque[_InFlight] = deque()
        self._done: set[ItemKey] = set()
        self._session_done = 0
        self._session_start = 0.0
        self._failed_groups_in_a_row = 0
        self._first_error = ""
        self._numerics_warning = ""  # this run's numerics differ from an earlier run's: said in every message
        self._budget = self.backend.context_budget(spec.max_context_tokens)
        self._rooms: dict[str, AnswerRoom] = {}  # subset -> the room its answers need after the prompt

    # -- public ------------------------------------------------------------------------------

    def cancelled(self) -> bool:
        return self.cancel_event.is_set() or self.folder.cancel_requested()

    def run(self) -> SweepStatus:
        """Run to the end, a cancel, or an error (recorded in status.json, then raised)."""
        if not self._folder_prepared:
            self.folder = prepare_folder(self.folder.runs_dir, self.spec)
        with self.folder.lock():
            self.folder.clear_cancel()
            previous = self.folder.read_status()
            if previous is not None and previous.created_at:
                self.status.created_at = previous.created_at
            try:
                self._run_locked()
            except Exception as error:
                self._drain_quietly()
                message = str(error) if isinstance(error, RunsStorageError) else f"{type(error).__name__}: {error}"
                self._finish(SweepState.FAILED, best_effort=True, message=message)
                raise
        return self.status

    # -- internals -----------------------------------------------------------------------------

    def _run_locked(self) -> None:
        settings = self.spec.generation_settings()
        check_recipes(self.backend, self.spec)
        plan = self.plan or SweepPlan.of(self.spec)
        if self.spec.answer_mode is AnswerMode.LIKELIHOOD:
            if not isinstance(self.backend, LabelBackend):
                name = type(self.backend).__name__
                raise TypeError(f"{name} does not answer likelihood sweeps; run this sweep on the local engine")
            record_label_sets(self.folder.path, {subset.name: subset.labels for subset in plan.subsets})
        planned = plan.keys()
        try:
            records = self.folder.results.read(repair=True)
        except ResultsCorruptError as error:
            raise ResultsCorruptError(f"{error}; fix or move the file before resuming") from error
        self._done = {key for key in map(record_key, records) if key in planned}
        self.status.total = len(planned)
        self.status.done = len(self._done)
        self.status.pid = os.getpid()
        self.status.started_at = self._session_start = time.time()
        self._record_run(len(records))
        self._publish()
        for subset in plan.subsets:
            if self.cancelled() or self._failing():
                break
            self._submit_subset(subset, settings)
        while self._inflight:
            if self.cancelled():
                self._withdraw_queued()
            self._write_finished()
        if self.status.done == self.status.total:
            skipped = self.status.skipped_samples
            self._finish(SweepState.COMPLETE, message=f"{skipped} unreadable sample(s) skipped" if skipped else "")
        elif self.cancelled():
            self._finish(SweepState.CANCELLED, message="cancelled; resume to continue")
        elif self.status.failed or self._failing():
            self._finish(
                SweepState.FAILED,
                message=f"{self.status.failed} item(s) failed (first error: {self._first_error}); resume to retry them",
            )
        else:
            self._finish(SweepState.FAILED, message=f"{self.status.total - self.status.done} item(s) were not answered")

    def _record_run(self, rows_at_start: int) -> None:
        """Append this run's provenance record; a resume whose numerics differ from an earlier run's goes on,
        but its status and the log say what changed, as the rows it writes will mix numerics."""
        earlier = read_runs(self.folder.path, repair=True)
        record = run_record(self.backend, self._session_start, rows_at_start)
        append_run(self.folder.path, record)
        self._numerics_warning = resume_warning(earlier, record)
        if self._numerics_warning:
            logger.warning("sweep %s: %s", self.spec.sweep_id, self._numerics_warning)
            self.status.message = self._numerics_warning

    def _submit_subset(self, plan: SubsetPlan, settings: GenerationSettings) -> None:
        """Submit the subset's unanswered samples in source order, decoding them on the prefetch threads.

        An id is answered from its first readable row, so an id none of whose rows can be decoded is skipped
        only at the end of the subset; a recording whose model window cannot be made is skipped at once.
        """
        from naturelm_core.audio import AudioError  # naturelm_core.audio imports torch

        load_examples(self.spec, plan)
        seen: set[str] = set()
        unreadable: dict[str, str] = {}

        def decode_window(row: SampleRow) -> np.ndarray:  # on a prefetch thread; a file is read up to its window
            return model_window(plan.subset.decode(row, head_s=plan.subset.window_s))

        decoded = prefetch_map(
            decode_window,
            self._rows_to_decode(plan, seen),
            workers=self.decode_workers,
            ahead=DECODE_AHEAD_PER_WORKER * self.decode_workers,
            one_torch_thread=not getattr(self.backend, "answers_on_this_cpu", True),
        )
        with closing(decoded):
            for fetched in decoded:
                row = fetched.item
                if row.id in seen:
                    continue
                if isinstance(fetched.error, UnreadableRowError):
                    unreadable.setdefault(row.id, str(fetched.error))
                    continue
                seen.add(row.id)
                items = [item for item in sample_items(self.spec, plan, row.id) if item.key not in self._done]
                if not items:
                    continue
                if self.cancelled() or self._failing():
                    return
                if isinstance(fetched.error, AudioError):
                    self._skip_sample(plan.name, row.id, str(fetched.error))
                    continue
                # Any other decoding error is a bug, not a bad recording: result() raises it and the sweep fails.
                self._submit_sample(plan, row.label, items, fetched.result(), settings)
        for sample_id, reason in unreadable.items():
            if sample_id not in seen:
                self._skip_sample(plan.name, sample_id, reason)

    def _rows_to_decode(self, plan: SubsetPlan, seen: set[str]) -> Iterator[SampleRow]:
        """The rows worth decoding: wanted, not yet answered in this sweep (a resume decodes no finished sample)."""
        wanted = set(plan.sample_ids)
        for row in plan.subset.rows():
            if row.id in wanted and row.id not in seen and self._unanswered(plan.name, row.id):
                yield row

    def _submit_sample(
        self, plan: SubsetPlan, label: str, items: list[WorkItem], window: np.ndarray, settings: GenerationSettings
    ) -> None:
        """Queue one recording's rows together, then wait while more than `max_inflight_rows` are queued."""
        rows = self._rows(plan, items, window)
        if self.spec.answer_mode is AnswerMode.LIKELIHOOD:
            assert isinstance(self.backend, LabelBackend)  # checked when the run began
            futures = self.backend.submit_label_group(rows, plan.labels)
            flight = _InFlight(label, items, futures, time.monotonic(), candidates=tuple(plan.labels))
        else:
            futures = self.backend.submit_group(rows, settings)
            flight = _InFlight(label, items, futures, time.monotonic())
        for index, future in enumerate(futures):
            future.add_done_callback(lambda _, i=index, f=flight: f.finished.setdefault(i, time.monotonic()))
        self._inflight.append(flight)
        while sum(len(f.items) for f in self._inflight) > self.max_inflight_rows and not self.cancelled():
            self._write_finished()

    def _rows(self, plan: SubsetPlan, items: list[WorkItem], window: np.ndarray) -> list[Row]:
        """Each item's windows (its examples', then the sample's) and prompt; a prompt too long fails here."""
        rows: list[Row] = []
        checked: set[str] = set()
        for item in items:
            windows = [*(plan.examples.window(i) for i in item.example_ids), window] if item.example_ids else [window]
            if self._budget is not None and item.prompt_text not in checked:
                what = f"prompt {item.prompt_name!r} for {item.dataset}/{item.sample_id}"
                room = self._answer_room(self._budget, plan)
                self._budget.check(item.prompt_text, [len(w) for w in windows], room, what)
                checked.add(item.prompt_text)
            rows.append((windows, item.prompt_text, item.alpha))
        return rows

    def _answer_room(self, budget: ContextBudget, plan: SubsetPlan) -> AnswerRoom:
        """The positions after a prompt: max_new_tokens when generating; when scoring labels nothing is
        generated, and the subset's longest label is what follows the prompt (tokenized once per subset)."""
        if plan.name not in self._rooms:
            likelihood = self.spec.answer_mode is AnswerMode.LIKELIHOOD
            room = budget.label_room(plan.labels) if likelihood else AnswerRoom.generated(self.spec.max_new_tokens)
            self._rooms[plan.name] = room
        return self._rooms[plan.name]

    def _skip_sample(self, dataset: str, sample_id: str, reason: str) -> None:
        """An unusable recording leaves the plan (it could never be answered) instead of failing the sweep."""
        logger.warning("sweep %s: skipping %s/%s: %s", self.spec.sweep_id, dataset, sample_id, reason)
        self.status.total -= self._unanswered(dataset, sample_id)
        self.status.skipped_samples += 1

    def _unanswered(self, dataset: str, sample_id: str) -> int:
        """The sample's items not yet in results.jsonl (by key alone: no prompt is rendered)."""
        return sum(
            item_key(dataset, sample_id, p.name, a) not in self._done for p in self.spec.prompts for a in self.spec.grid
        )

    def _write_finished(self) -> None:
        """Wait for the oldest sample in flight, then write it and every finished one after it, in one fsync."""
        self._inflight[0].wait()
        group: list[_InFlight] = []
        while self._inflight and self._inflight[0].done():
            group.append(self._inflight.popleft())
        records: list[dict[str, Any]] = []
        written: set[ItemKey] = set()
        failed = 0
        for flight in group:
            for index, (item, future) in enumerate(zip(flight.items, flight.futures, strict=True)):
                if item.key in self._done or item.key in written or future.cancelled():
                    continue  # an item answered twice (a backend that retried it) still gets one row
                error = future.exception()
                if error is not None:
                    failed += 1
                    self._first_error = self._first_error or str(error)
                    continue
                records.append(_record(flight, index, item, future.result()))
                written.add(item.key)
        self.folder.results.append(records)
        self._done.update(written)
        self.status.done = len(self._done)
        self.status.failed += failed
        self._session_done += len(records)
        self._failed_groups_in_a_row = self._failed_groups_in_a_row + 1 if failed and not records else 0
        self._publish()

    def _withdraw_queued(self) -> None:
        """On cancel, take back every recording none of whose rows a worker has started: the sweep stops
        after the batch in flight instead of answering (and writing) everything already queued.

        A recording is withdrawn whole or not at all, so results hold whole samples where no race intervenes
        (a row claimed between the check and its cancel is answered and written; resume is by item either way).
        """
        for flight in self._inflight:
            if not any(f.running() or f.done() for f in flight.futures):
                for future in flight.futures:
                    future.cancel()

    def _failing(self) -> bool:
        return self._failed_groups_in_a_row >= MAX_FAILED_GROUPS_IN_A_ROW

    def _drain_quietly(self) -> None:
        """After an error, let rows in flight finish so the engine is not left busy with an abandoned sweep."""
        for flight in self._inflight:
            flight.wait()
        self._inflight.clear()

    def _publish(self) -> None:
        batching = getattr(self.backend, "batching", None)
        if batching is not None:
            self.status.rows_per_batch, self.status.max_batch_rows = batching()
        elapsed = time.time() - self._session_start
        if self._session_done and elapsed > 0:
            self.status.rate_per_s = self._session_done / elapsed
            self.status.eta_s = max(0, self.status.total - self.status.done) / self.status.rate_per_s
        self.folder.write_status(self.status)
        if self.on_progress is not None:
            self.on_progress(self.status)

    def _finish(self, state: SweepState, message: str = "", best_effort: bool = False) -> None:
        self.status.state = state
        self.status.message = "; ".join(part for part in (message, self._numerics_warning) if part)
        self.status.finished_at = time.time()
        if state is SweepState.COMPLETE:
            self.status.eta_s = 0.0
        try:
            self._publish()
        except RunsStorageError:
            if not best_effort:
                raise


def _record(flight: _InFlight, index: int, item: WorkItem, answer: str | LabelScores) -> dict[str, Any]:
    """A results row; a scored answer's prediction is its most likely label, and its distribution is kept."""
    distribution: dict[str, Any] = {}
    if isinstance(answer, LabelScores):
        distribution = distribution_fields(answer, flight.candidates)
        prediction = answer.best
    else:
        prediction = answer
    row = ResultRow.at(
        item.alpha,
        id=item.sample_id,
        dataset=item.dataset,
        prompt_name=item.prompt_name,
        prompt=item.prompt_text,
        prediction=prediction,
        label=flight.label,
    )
    finished = flight.finished.get(index, time.monotonic())
    examples = {"examples": list(item.example_ids)} if item.example_ids else {}
    timing = {"latency_s": round(finished - flight.submitted, 4), "written_at": round(time.time(), 3)}
    return {**row.to_dict(), **examples, **distribution, **timing}


def run_sweep(
    engine: Engine | SweepBackend,
    spec: SweepSpec,
    runs_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> SweepStatus:
    """Run or resume `spec` on `engine` (or a SweepBackend) in the calling thread (see SweepRunner for the options)."""
    return SweepRunner(engine, spec, runs_dir, **options).run()
