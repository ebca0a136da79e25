"""One worker owns the model; every caller (app users, alpha scans, sweeps) goes through its queue.

Why a worker and a queue rather than a lock around the model: requests that arrive while the model is
busy are answered in one batched `generate`, each row at its own alpha, so ten users moving sliders cost
about two generations, not ten, and a sweep's rows fill the batches that interactive users leave empty.
Interactive requests always go before sweep work; a full queue answers "busy" at once instead of
letting a browser hang. Label scoring (`submit_labels`, `score_labels`: how likely each row is to answer
each of a closed set of labels, naturelm_core.likelihood) goes through the same queue, priorities and
out-of-memory back-off, in batches of its own.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from naturelm_core.alphas import GridPoint, PointLike, check_grid_point
from naturelm_core.batch_limits import BatchLimits
from naturelm_core.cache import AudioEmbeddingCache, WindowKeys
from naturelm_core.label_scores import DEFAULT_CANDIDATES_PER_PASS, Candidates, LabelScores, LabelsLike
from naturelm_core.requests import EngineBusy, EngineError, GenerationSettings, Priority, RequestTimeout

logger = logging.getLogger(__name__)


GENERATE = "generate"
LABELS = "labels"
GPU_BATCH_ROWS = 176
CPU_BATCH_ROWS = 32
RECENT_BATCHES = 32
# Windows a sweep batch encodes between two chances for waiting users: a few decode steps' time, in one
# call large enough to keep the encoder's products efficient.
ENCODER_CHUNK = 32
# Rows a sweep batch decodes at least on a GPU (padding included): its first and last batches come in whatever size
# the recordings' decoding gives them, and sizes up to this share one static state, one graph capture. (A CPU has no
# graphs to capture, and every padding row would cost it compute.)
SWEEP_MIN_ROWS = 32
_NO_WAIT = {priority: 0.0 for priority in Priority}  # batches taken between others' decode steps gather what is queued
_OUT_OF_MEMORY = {
    GENERATE: "Out of GPU memory even for a single request; try fewer beams or tokens.",
    LABELS: "Out of GPU memory even scoring one label at a time for a single request; try a shorter prompt.",
}


def default_batch_rows(model: object) -> int:
    """Rows per batch: 176 (16 recordings x 11 alphas) keeps a GPU busy (docs/PERFORMANCE.md); CPUs want fewer."""
    return GPU_BATCH_ROWS if _on_gpu(model) else CPU_BATCH_ROWS


def _on_gpu(model: object) -> bool:
    """Whether the model says it runs on CUDA (a model without a `device` counts as a CPU one)."""
    return getattr(getattr(model, "device", None), "type", "cpu") == "cuda"


class GenerativeModel(Protocol):
    """What the engine needs of NatureLM (naturelm_core.model.NatureLM implements it)."""

    def encode_audio(self, windows: torch.Tensor | np.ndarray) -> torch.Tensor: ...

    def generate_from_embeddings(
        self,
        audio_embeds: list[list[torch.Tensor]],
        prompts: Sequence[str],
        alphas: Sequence[GridPoint],
        num_beams: int = 2,
        max_new_tokens: int = 100,
        allow_extrapolation: bool = False,
        between_steps: Callable[[], None] | None = None,
        min_rows: int = 1,
    ) -> list[str]: ...


class LabelScoringModel(GenerativeModel, Protocol):
    """What label scoring requests need of the model besides generation (naturelm_core.model.NatureLM has it)."""

    def label_candidates(self, labels: LabelsLike) -> Candidates: ...

    def score_labels_from_embeddings(
        self,
        audio_embeds: list[list[torch.Tensor]],
        prompts: Sequence[str],
        labels: Sequence[Candidates],
        alphas: Sequence[GridPoint],
        allow_extrapolation: bool = False,
        max_candidates_per_pass: int = DEFAULT_CANDIDATES_PER_PASS,
        between_passes: Callable[[], None] | None = None,
    ) -> list[LabelScores]: ...


class BatchShape(NamedTuple):
    """What a batch's memory depends on besides its row count; rows batch together only within one shape.

    `kind` keeps label scoring rows (LABELS) out of generation batches (GENERATE): they run different
    code. Scoring generates nothing, so its beams and new tokens are 0.
    """

    num_beams: int
    max_new_tokens: int
    windows_per_row: int
    kind: str = GENERATE

    def __str__(self) -> str:
        if self.kind == LABELS:
            return f"label scoring, {self.windows_per_row} windows per row"
        return f"{self.num_beams} beams, {self.max_new_tokens} new tokens, {self.windows_per_row} windows per row"


@dataclass
class Request:
    """One answer to produce: a prompt with one audio window per `<AudioHere>`, at one alpha or merge recipe.

    With `candidates`, the row is scored against them instead (`settings` then plays no part).
    """

    windows: list[np.ndarray]
    window_keys: list[str]  # content keys of `windows`, computed by the submitting thread (see WindowKeys)
    prompt: str
    alpha: GridPoint  # checked and canonical (naturelm_core.alphas): a float, or a MergeRecipe
    settings: GenerationSettings
    priority: Priority
    deadline: float
    allow_extrapolation: bool = False
    future: Future = field(default_factory=Future)
    sequence: int = 0
    group: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    candidates: Candidates | None = None

    @property
    def shape(self) -> BatchShape:
        if self.candidates is not None:
            return BatchShape(0, 0, len(self.windows), LABELS)
        return BatchShape(self.settings.num_beams, self.settings.max_new_tokens, len(self.windows))


@dataclass
class EngineStats:
    """Counters a benchmark or a test can read; windows_encoded proves each recording is encoded once."""

    requests: int = 0
    batches: int = 0
    rows_generated: int = 0
    rows_scored: int = 0
    candidates_scored: int = 0
    windows_encoded: int = 0
    encoder_calls: int = 0
    oom_retries: int = 0
    sweep_pauses: int = 0
    recent_sweep_batches: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES))
    recent_interactive_waits_s: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES))

    def sweep_rows_per_batch(self) -> float | None:
        """Mean rows of the recent batches that carried sweep rows: how well a running sweep is batched."""
        batches = list(self.recent_sweep_batches)
        return sum(batches) / len(batches) if batches else None


def _checked_window(index: int, window: np.ndarray) -> np.ndarray:
    """A window as the model may see it: 16 kHz mono float32, finite, within [-1, 1].

    Checked per request, because one bad window in a batch would fail every other caller's rows with it.
    Every path from a file clamps as it decodes (naturelm_core.audio); an array handed to the API directly
    is clamped the same way, so the same samples give the same answer whichever way they came in.
    """
    dtype = np.asarray(window).dtype
    if not np.issubdtype(dtype, np.floating):  # int16 PCM would be clamped to a square wave
        raise ValueError(
            f"audio window {index} must hold float samples in [-1, 1], got {dtype}; "
            "decode files with naturelm_core.audio.load_audio, which scales integer PCM"
        )
    window = np.ascontiguousarray(window, dtype=np.float32)
    if window.ndim != 1 or window.size == 0:
        raise ValueError(f"audio window {index} must be a non-empty 1-D 16 kHz mono array, got shape {window.shape}")
    peak = max(float(window.max()), -float(window.min()))  # NaN wins both, as it should
    if not np.isfinite(peak):
        raise ValueError(f"audio window {index} holds NaN or infinite samples")
    return np.clip(window, -1.0, 1.0) if peak > 1.0 else window


class _RequestQueue:
    """Two bounded lanes (interactive before sweep) that hand out batches of rows of one shape.

    Within a lane, rows are shared out round-robin between callers (one `answer_many` call, one
    sweep): a long recording's 30 windows must not hold back another user's single window for more
    than about one batch. Within one caller rows keep their order, so a sweep's rows of one recording
    still meet in one batch and its audio is encoded once.
    """

    def __init__(self, capacity: dict[Priority, int]) -> None:
        self._lanes: dict[Priority, deque[Request]] = {p: deque() for p in Priority}
        self._capacity = capacity
        self._changed = threading.Condition()
        self._closed = False

    def put(self, requests: list[Request], block: bool) -> None:
        """Queue `requests` (one lane) all at once, or none of them.

        The worker never sees part of them, so rows submitted together (an alpha scan, a recording's
        windows) meet in one batch without the worker waiting for them. A group larger than the lane's
        capacity is let into an empty lane, so that it can never wait for room that cannot come.
        """
        priority = requests[0].priority
        lane = self._lanes[priority]
        with self._changed:
            while lane and len(lane) + len(requests) > self._capacity[priority]:
                if not block or self._closed:
                    raise EngineBusy("The model is busy (queue full); please try again in a few seconds.")
                self._changed.wait(timeout=0.5)
            if self._closed:
                raise EngineError("The engine has stopped.")
            lane.extend(requests)
            self._changed.notify_all()

    def close(self) -> list[Request]:
        with self._changed:
            self._closed = True
            pending = [r for lane in self._lanes.values() for r in lane]
            for lane in self._lanes.values():
                lane.clear()
            self._changed.notify_all()
            return pending

    def take_batch(
        self,
        rows_for: Callable[[BatchShape], int],
        max_wait_s: dict[Priority, float],
        block: bool = True,
        only: Priority | None = None,
    ) -> list[Request]:
        """Wait for the first request (or return [] at once if not `block`), then gather rows of its shape.

        `rows_for(shape)` is the batch size allowed for that shape (lower after an out-of-memory error);
        `max_wait_s[lane of the first row]` how long to wait for more; `only` restricts the batch to one lane.
        """
        priorities = list(Priority) if only is None else [only]
        with self._changed:
            while not any(self._lanes[p] for p in priorities):
                if self._closed or not block:
                    return []
                self._changed.wait()
            first = next(self._lanes[p] for p in priorities if self._lanes[p]).popleft()
            max_rows = rows_for(first.shape)
            batch = [first]
            deadline = time.monotonic() + max_wait_s[first.priority]
            while len(batch) < max_rows:
                batch.extend(self._pop_same_shape(first, max_rows - len(batch), priorities))
                remaining = deadline - time.monotonic()
                if len(batch) >= max_rows or remaining <= 0 or self._closed:
                    break
                self._changed.wait(timeout=remaining)
            self._changed.notify_all()
            return batch

    def _pop_same_shape(self, first: Request, limit: int, priorities: list[Priority]) -> list[Request]:
        taken: list[Request] = []
        for priority in priorities:
            if len(taken) >= limit:
                break
            lane = self._lanes[priority]
            by_caller: dict[int, deque[Request]] = {}
            for request in lane:
                if request.shape == first.shape:
                    by_caller.setdefault(request.group, deque()).append(request)
            if priority == first.priority and first.group in by_caller:
                by_caller[first.group] = by_caller.pop(first.group)  # its caller had this round's first turn
            callers = list(by_caller.values())
            chosen: set[int] = set()
            while len(taken) < limit and any(callers):
                for rows in callers:
                    if rows and len(taken) < limit:
                        request = rows.popleft()
                        taken.append(request)
                        chosen.add(id(request))
            if chosen:
                keep = [r for r in lane if id(r) not in chosen]
                lane.clear()
                lane.extend(keep)
        return taken


class Engine:
    """Serves generation requests from one model in one worker thread, batching across requests."""

    def __init__(
        self,
        model: GenerativeModel,
        max_batch_rows: int = 32,
        sweep_wait_ms: float = 5.0,
        interactive_capacity: int = 256,
        sweep_capacity: int = 4096,
        cache_bytes: int = 512 * 2**20,
        default_timeout_s: float = 120.0,
        inline: bool = False,
        max_candidates_per_pass: int = DEFAULT_CANDIDATES_PER_PASS,
    ) -> None:
        """`inline=True` runs no worker thread: callers of `answer`/`answer_many` process the queue
        themselves. That is what ZeroGPU hardware needs, where CUDA may only be touched inside a
        `@spaces.GPU` call of the request's own thread. `max_candidates_per_pass`: sequences per forward
        when scoring labels, lowered like the rows of a batch after an out-of-memory error.

        `sweep_wait_ms`: how long a batch that starts with a sweep row waits for more rows (a sweep's decode
        threads queue recordings one by one). A batch that starts with an interactive row waits for none: a
        lone user is answered at once, and rows submitted together (`submit_many`) are queued at once.
        """
        self.model = model
        self.batch_limits = BatchLimits(max_batch_rows)
        self.candidate_limits = BatchLimits(max_candidates_per_pass)
        self.max_wait_s = {Priority.INTERACTIVE: 0.0, Priority.SWEEP: sweep_wait_ms / 1000.0}
        self.default_timeout_s = default_timeout_s
        self.cache = AudioEmbeddingCache(cache_bytes)
        self._window_keys = WindowKeys()
        self.stats = EngineStats()
        self._queue = _RequestQueue({Priority.INTERACTIVE: interactive_capacity, Priority.SWEEP: sweep_capacity})
        self._sequence = itertools.count()
        self._callers = itertools.count(1)
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.inline = inline
        self._inline_lock = threading.Lock()
        self._label_sets: dict[tuple[str, ...], Candidates] = {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def max_batch_rows(self) -> int:
        """Rows per batch where memory allows; out-of-memory errors lower it per shape only (`batch_limits`)."""
        return self.batch_limits.max_rows

    def new_caller(self) -> int:
        """An id for one caller's rows (a sweep): the queue shares batches fairly between callers."""
        return next(self._callers)

    def start(self) -> Engine:
        if self.inline:
            return self
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="naturelm-engine", daemon=True)
                self._worker.start()
        return self

    def stop(self) -> None:
        for request in self._queue.close():
            request.future.set_exception(EngineError("The engine stopped before answering."))
        if self._worker is not None:
            self._worker.join(timeout=30)

    def submit(
        self,
        windows: Sequence[np.ndarray],
        prompt: str,
        alpha: PointLike,
        settings: GenerationSettings | None = None,
        priority: Priority = Priority.INTERACTIVE,
        timeout_s: float | None = None,
        block: bool = False,
        allow_extrapolation: bool = False,
        caller: int | None = None,
    ) -> Future:
        """Queue one row; its Future resolves to the answer text or an EngineError.

        `windows` holds one 16 kHz mono window per `<AudioHere>` in the prompt. Validation happens
        here so a bad alpha fails the caller at once instead of poisoning a batch of other users.
        `alpha` is a float, a `MergeRecipe` or its JSON dict, checked against the model's layers and
        LoRA rank where the model can say (`NatureLM.check_grid_point`).
        Rows of one `caller` (see `new_caller`; by default each row is its own caller) keep their order.
        """
        rows = [(windows, prompt, alpha)]
        return self.submit_many(rows, settings, priority, timeout_s, block, allow_extrapolation, caller)[0]

    def submit_many(
        self,
        rows: Sequence[tuple[Sequence[np.ndarray], str, PointLike]],
        settings: GenerationSettings | None = None,
        priority: Priority = Priority.INTERACTIVE,
        timeout_s: float | None = None,
        block: bool = False,
        allow_extrapolation: bool = False,
        caller: int | None = None,
    ) -> list[Future]:
        """Queue rows (windows, prompt, alpha) as `submit` does, all or none, as one caller (a new one by default).

        Every row is checked before any is queued, and the worker sees them all at once: an alpha scan
        is one batch, and a bad alpha in it leaves nothing half-queued.
        """
        settings = settings or GenerationSettings()
        return self._queue_rows(rows, settings, None, priority, timeout_s, block, allow_extrapolation, caller)

    def label_candidates(self, labels: Sequence[str]) -> Candidates:
        """A label set tokenized once per engine: every row of a likelihood sweep, local or on a Ray actor,
        scores against one of a subset's few sets, and tokenizing it per row would cost more than the row."""
        key = tuple(labels)
        if key not in self._label_sets:  # two threads may both tokenize a new set once; either result serves
            self._label_sets[key] = self.model.label_candidates(key)
        return self._label_sets[key]

    def submit_labels(
        self,
        windows: Sequence[np.ndarray],
        prompt: str,
        labels: LabelsLike,
        alpha: PointLike,
        priority: Priority = Priority.INTERACTIVE,
        timeout_s: float | None = None,
        block: bool = False,
        allow_extrapolation: bool = False,
        caller: int | None = None,
    ) -> Future:
        """Queue one row to score against `labels`; its Future resolves to its `LabelScores` or an EngineError.

        Alpha and labels are checked here, like `submit`'s alpha. Pass `Candidates`
        (`label_candidates(labels)`, cached per engine) when many rows share one closed set, so it is tokenized once.
        Scoring rows batch only with scoring rows, under the same priorities as generation.
        """
        rows = [(windows, prompt, alpha)]
        return self.submit_labels_many(rows, labels, priority, timeout_s, block, allow_extrapolation, caller)[0]

    def submit_labels_many(
        self,
        rows: Sequence[tuple[Sequence[np.ndarray], str, PointLike]],
        labels: LabelsLike,
        priority: Priority = Priority.INTERACTIVE,
        timeout_s: float | None = None,
        block: bool = False,
        allow_extrapolation: bool = False,
        caller: int | None = None,
    ) -> list[Future]:
        """Queue rows to score against one label set, tokenized once; all or none, as `submit_many`."""
        candidates = self.model.label_candidates(labels)
        settings = GenerationSettings()  # plays no part in scoring
        return self._queue_rows(rows, settings, candidates, priority, timeout_s, block, allow_extrapolation, caller)

    def _queue_rows(
        self,
        rows: Sequence[tuple[Sequence[np.ndarray], str, PointLike]],
        settings: GenerationSettings,
        candidates: Candidates | None,
        priority: Priority,
        timeout_s: float | None,
        block: bool,
        allow_extrapolation: bool,
        caller: int | None,
    ) -> list[Future]:
        caller = self.new_caller() if caller is None else caller
        checked: dict[int, np.ndarray] = {}  # by identity: a sweep's rows of one recording share its array
        requests = [
            self._request(w, p, a, settings, candidates, priority, timeout_s, allow_extrapolation, caller, checked)
            for w, p, a in rows
        ]
        if not requests:
            return []
        self.start()
        self._queue.put(requests, block=block)
        self.stats.requests += len(requests)
        return [request.future for request in requests]

    def _request(
        self,
        windows: Sequence[np.ndarray],
        prompt: str,
        alpha: PointLike,
        settings: GenerationSettings,
        candidates: Candidates | None,
        priority: Priority,
        timeout_s: float | None,
        allow_extrapolation: bool,
        caller: int | None,
        checked: dict[int, np.ndarray],
    ) -> Request:
        alpha = self.check_grid_point(alpha, allow_extrapolation)
        if not windows:
            raise ValueError("a request needs at least one audio window")
        for index, window in enumerate(windows):
            if id(window) not in checked:  # the rows (and so the arrays) live until the call returns
                checked[id(window)] = _checked_window(index, window)
        windows = [checked[id(w)] for w in windows]
        return Request(
            windows=windows,
            window_keys=[self._window_keys.key(w) for w in windows],
            prompt=prompt,
            alpha=alpha,
            settings=settings,
            priority=priority,
            deadline=time.monotonic() + (timeout_s or self.default_timeout_s),
            allow_extrapolation=allow_extrapolation,
            sequence=next(self._sequence),
            group=self.new_caller() if caller is None else caller,
            candidates=candidates,
        )

    def check_grid_point(self, value: object, allow_extrapolation: bool = False, name: str = "alpha") -> GridPoint:
        """`value` as a row's alpha or recipe: checked against the model's layers and LoRA rank where the model
        can say (`NatureLM.check_grid_point`), by its ranges alone for a stand-in that cannot.

        Public so that a sweep can refuse its recipes when it starts, not when their first row is queued.
        """
        check = getattr(self.model, "check_grid_point", None)
        if check is None:
            return check_grid_point(value, allow_extrapolation, name=name)
        return check(value, allow_extrapolation, name=name)

    def answer(self, windows: Sequence[np.ndarray], prompt: str, alpha: PointLike, **kwargs: Any) -> str:
        """Blocking convenience for one row."""
        return self.answer_many([(windows, prompt, alpha)], **kwargs)[0]

    def answer_many(
        self,
        rows: Sequence[tuple[Sequence[np.ndarray], str, PointLike]],
        **kwargs: Any,
    ) -> list[str]:
        """Blocking `submit_many`: the rows are batched together (an alpha scan is one call, one caller)."""
        return self._results(self.submit_many(rows, **kwargs), kwargs.get("timeout_s"))

    def score_labels(
        self,
        rows: Sequence[tuple[Sequence[np.ndarray], str, PointLike]],
        labels: LabelsLike,
        **kwargs: Any,
    ) -> list[LabelScores]:
        """Score rows (windows, prompt, alpha) against one candidate set, tokenized once; blocking, one caller.

        Keyword arguments as for `submit_labels`.
        """
        return self._results(self.submit_labels_many(rows, labels, **kwargs), kwargs.get("timeout_s"))

    def _results(self, futures: list[Future], timeout_s: float | None) -> list[Any]:
        if self.inline:
            self._drain_in_caller()
        timeout_s = timeout_s or self.default_timeout_s
        return [f.result(timeout=timeout_s + 5) for f in futures]

    # -- worker -------------------------------------------------------------------------------

    def _drain_in_caller(self) -> None:
        with self._inline_lock:
            while batch := self._queue.take_batch(self.batch_limits.rows_for, _NO_WAIT, block=False):
                live = self._drop_expired(batch)
                if live:
                    self._run_with_oom_backoff(live)

    def _serve(self) -> None:
        while True:
            batch = self._queue.take_batch(self.batch_limits.rows_for, self.max_wait_s)
            if not batch:
                return
            live = self._drop_expired(batch)
            if live:
                self._run_with_oom_backoff(live)

    @staticmethod
    def _drop_expired(batch: list[Request]) -> list[Request]:
        """Claim each future (a caller can no longer cancel it mid-generation) and fail the stale ones."""
        now = time.monotonic()
        live = []
        for request in batch:
            if not request.future.set_running_or_notify_cancel():
                continue
            if now > request.deadline:
                request.future.set_exception(
                    RequestTimeout("The request timed out waiting for the model; try again or use fewer beams.")
                )
            else:
                live.append(request)
        return live

    def _run_with_oom_backoff(self, batch: list[Request]) -> None:
        """Run the batch; on a real out-of-memory error, retry in halves down to single rows.

        The size that fitted is remembered for this batch shape only (`BatchLimits`), so later batches
        of the shape do not run out of memory first, and other shapes keep their full size. A scoring
        batch may lower its candidates per pass instead (`_fewer_candidates`).
        """
        shape = batch[0].shape
        chunk = len(batch)
        start = 0
        while start < len(batch):
            rows = batch[start : start + chunk]
            now = time.monotonic()
            self.stats.recent_interactive_waits_s.extend(
                now - r.submitted_at for r in rows if r.priority == Priority.INTERACTIVE
            )
            per_pass = self._candidates_per_pass(shape, rows) if shape.kind == LABELS else 0
            try:
                answers = self._score(rows, per_pass) if shape.kind == LABELS else self._generate(rows)
            except torch.OutOfMemoryError:
                self._release_memory()
                if shape.kind == LABELS and self._fewer_candidates(shape, per_pass, len(rows)):
                    continue
                if len(rows) == 1:
                    self._fail(rows, _OUT_OF_MEMORY[shape.kind])
                    start += 1
                    continue
                self.stats.oom_retries += 1
                chunk = self.batch_limits.ran_out_of_memory(shape, len(rows))
                logger.warning(
                    "out of GPU memory at %d rows (%s); batches of this shape take at most %d rows until a "
                    "larger size is tried again",
                    len(rows),
                    shape,
                    chunk,
                )
                continue
            except Exception as error:  # every failure must reach the user as a message
                logger.exception("generation failed")
                self._fail(rows, f"The model failed on this request: {type(error).__name__}: {error}")
                start += len(rows)
                continue
            self.batch_limits.fitted(shape, len(rows))
            if shape.kind == LABELS:
                self.candidate_limits.fitted(shape, per_pass)
            if any(r.priority == Priority.SWEEP for r in rows):
                self.stats.recent_sweep_batches.append(len(rows))
            for request, text in zip(rows, answers, strict=True):
                request.future.set_result(text)
            start += len(rows)

    def _candidates_per_pass(self, shape: BatchShape, rows: list[Request]) -> int:
        """What a scoring batch's largest pass will hold: the shape's limit, or all its candidates if fewer."""
        return min(self.candidate_limits.rows_for(shape), sum(len(r.candidates) for r in rows))

    def _fewer_candidates(self, shape: BatchShape, per_pass: int, rows: int) -> bool:
        """After a scoring batch ran out of memory: halve its candidates per pass if a pass holds more
        sequences than the batch has rows (or the batch is one row), and say so; False: halve the rows.

        Why the larger of the two: a candidate (its gathered prompt cache and its logits) costs about
        what a row does (its prompt's cache and prefill), and both are held at once.
        """
        if per_pass == 1 or (rows > 1 and per_pass <= rows):
            return False
        self.stats.oom_retries += 1
        lowered = self.candidate_limits.ran_out_of_memory(shape, per_pass)
        logger.warning("out of GPU memory scoring %d candidates per pass; trying %d", per_pass, lowered)
        return True

    def _answer_waiting_users(self) -> None:
        """Called by the model between decode steps of a sweep batch (or passes of a scoring one): interactive
        requests that arrived meanwhile are answered now, not after the batch (a sweep batch decodes for
        about a second on a GPU).

        Only one level deep: the interactive batch itself is not paused.
        """
        batch = self._queue.take_batch(self.batch_limits.rows_for, _NO_WAIT, block=False, only=Priority.INTERACTIVE)
        live = self._drop_expired(batch)
        if live:
            self.stats.sweep_pauses += 1
            self._run_with_oom_backoff(live)

    def _pause_point(self, rows: list[Request]) -> Callable[[], None] | None:
        """What a batch calls between its steps to answer waiting users: sweep batches only, and never inline,
        where the engine runs in its caller's thread and no one can be waiting behind it."""
        if self.inline or not all(r.priority == Priority.SWEEP for r in rows):
            return None
        return self._answer_waiting_users

    def _generate(self, rows: list[Request]) -> list[str]:
        pause = self._pause_point(rows)
        embeds = self._embed_windows(rows, pause)
        settings = rows[0].settings
        answers = self.model.generate_from_embeddings(
            embeds,
            [r.prompt for r in rows],
            [r.alpha for r in rows],
            num_beams=settings.num_beams,
            max_new_tokens=settings.max_new_tokens,
            allow_extrapolation=any(r.allow_extrapolation for r in rows),
            between_steps=pause,
            min_rows=self._min_rows(rows),
        )
        self.stats.batches += 1
        self.stats.rows_generated += len(rows)
        return answers

    def _min_rows(self, rows: list[Request]) -> int:
        """SWEEP_MIN_ROWS for a sweep batch on a GPU; a user's batch decodes its own rows (Explore's one row keeps
        its one-row kernels)."""
        return SWEEP_MIN_ROWS if _on_gpu(self.model) and all(r.priority == Priority.SWEEP for r in rows) else 1

    def _score(self, rows: list[Request], per_pass: int) -> list[LabelScores]:
        pause = self._pause_point(rows)
        embeds = self._embed_windows(rows, pause)
        scores = self.model.score_labels_from_embeddings(
            embeds,
            [r.prompt for r in rows],
            [r.candidates for r in rows],
            [r.alpha for r in rows],
            allow_extrapolation=any(r.allow_extrapolation for r in rows),
            max_candidates_per_pass=per_pass,
            between_passes=pause,
        )
        self.stats.batches += 1
        self.stats.rows_scored += len(rows)
        self.stats.candidates_scored += sum(len(r.candidates) for r in rows)
        return scores

    def _embed_windows(self, rows: list[Request], pause: Callable[[], None] | None) -> list[list[torch.Tensor]]:
        """Embeddings per row and placeholder, encoding only windows the cache has not seen.

        A pausable (sweep) batch encodes in chunks of ENCODER_CHUNK windows and calls `pause` between them,
        as its decode steps do: a batch with one window per answer has hundreds to encode.
        """
        found: dict[str, torch.Tensor] = {}
        missing: dict[str, np.ndarray] = {}
        for request in rows:
            for key, window in zip(request.window_keys, request.windows, strict=True):
                if key in found or key in missing:
                    continue
                cached = self.cache.get(key)
                if cached is None:
                    missing[key] = window
                else:
                    found[key] = cached
        by_length: dict[int, list[str]] = {}
        for key, window in missing.items():
            by_length.setdefault(len(window), []).append(key)
        chunk = ENCODER_CHUNK if pause is not None else max(map(len, by_length.values()), default=1)
        for same_length in by_length.values():
            for start in range(0, len(same_length), chunk):
                if start and pause is not None:
                    pause()
                keys = same_length[start : start + chunk]
                encoded = self.model.encode_audio(np.stack([missing[k] for k in keys]))
                self.stats.encoder_calls += 1
                self.stats.windows_encoded += len(keys)
                for key, embedding in zip(keys, encoded, strict=True):
                    found[key] = embedding
                    self.cache.put(key, embedding)
        return [[found[k] for k in request.window_keys] for request in rows]

    @staticmethod
    def _fail(rows: list[Request], message: str) -> None:
        for request in rows:
            if not request.future.done():
                request.future.set_exception(EngineError(message))

    def _release_memory(self) -> None:
        """Drop what the model caches per batch shape (its KV caches and graphs), then the allocator's cache."""
        release = getattr(self.model, "release_cached_states", None)
        if release is not None:
            release()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
