"""Detection over a long recording: its windows, answered at each alpha by the engine, merged into events.

Why streamed and pipelined: a field recording runs for hours, so windows are read one at a time
(`audio_stream`) while the engine answers earlier ones, and at most `ahead_rows` rows (by default
two engine batches, as sweeps keep) wait in the queue: the model always has its next batch, and
memory holds those windows, not the recording. Rows go in at sweep priority by default, so a long
detection never fills the interactive lane that Explore clicks need (they still go first), and
with a long timeout, since waiting behind users is not a failure.

`check_detection_settings` and `plan_detection` refuse bad input with a sentence a user can act on
before any audio is decoded or any model is loaded; `detect` applies the same checks.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from naturelm_core.alphas import check_alpha
from naturelm_core.audio import QUIET_PEAK_DBFS, Window, window_count
from naturelm_core.audio_stream import MAX_STREAM_DURATION_S, StreamSource, WindowStream, open_windows
from naturelm_core.config import AUDIO_PLACEHOLDER, SAMPLE_RATE, WINDOW_SECONDS
from naturelm_core.events import (
    DEFAULT_ABSENT_ANSWERS,
    DetectionResult,
    WindowAnswer,
    alpha_text,
    merge_events,
)
from naturelm_core.requests import GenerationSettings, Priority

MIN_WINDOW_S = 1.0
MAX_WINDOW_S = WINDOW_SECONDS  # the model hears 10 s; a longer window would be cut short
MIN_HOP_S = 1.0
MAX_HOP_S = WINDOW_SECONDS
# Rows (windows x alphas) one detection may ask for: 24 h at a 1 s hop at one alpha is 86,400.
# At the sweep rate of one H100 (264 rows/s, docs/PERFORMANCE.md) 100,000 rows take about 6 minutes.
MAX_DETECTION_ROWS = 100_000
MAX_PROMPT_CHARS = 4000
# Rows may wait behind interactive users and sweeps for a long time; that is not a failure.
DETECTION_REQUEST_TIMEOUT_S = 24 * 3600.0
CANCEL_POLL_S = 0.1

ProgressCallback = Callable[[int, int], None]


class DetectionEngine(Protocol):
    """What detection needs of naturelm_core.engine.Engine (whose signatures these are)."""

    inline: bool

    @property
    def max_batch_rows(self) -> int: ...

    def new_caller(self) -> int: ...

    def submit_many(self, rows: Sequence[tuple[Sequence[np.ndarray], str, Any]], **options: Any) -> list[Future]: ...

    def answer_many(self, rows: Sequence[tuple[Sequence[np.ndarray], str, Any]], **options: Any) -> list[str]: ...

    def submit_labels_many(
        self, rows: Sequence[tuple[Sequence[np.ndarray], str, Any]], labels: Any, **options: Any
    ) -> list[Future]: ...

    def score_labels(self, rows: Sequence[tuple[Sequence[np.ndarray], str, Any]], labels: Any, **opts: Any) -> Any: ...


class DetectionSettingsError(ValueError):
    """A window, hop, prompt or alpha list a detection cannot run with; the message says what to change."""


@dataclass(frozen=True)
class DetectionPlan:
    """What a detection would do, known from the header alone: for a UI to show before it starts."""

    source: str
    duration_s: float
    windows: int
    rows: int


def check_detection_settings(
    window_s: float,
    hop_s: float,
    duration_s: float | None = None,
    alphas: int = 1,
    max_rows: int = MAX_DETECTION_ROWS,
) -> int | None:
    """Refuse a window or hop outside [1, 10] s, a recording over MAX_STREAM_DURATION_S, or more than
    `max_rows` rows (windows x alphas); return the window count when `duration_s` is given."""
    window_s = _seconds(
        "window length",
        window_s,
        (MIN_WINDOW_S, "gives the model too little to hear"),
        (MAX_WINDOW_S, "is more than the model hears at a time"),
    )
    hop_s = _seconds(
        "hop",
        hop_s,
        (MIN_HOP_S, "multiplies the answers for little new audio, and a hop of 0 never moves on"),
        (MAX_HOP_S, "leaves audio that no window hears"),
    )
    if duration_s is None:
        return None
    if duration_s > MAX_STREAM_DURATION_S:
        raise DetectionSettingsError(
            f"the recording is {duration_s / 3600:.1f} h long; detection reads at most "
            f"{MAX_STREAM_DURATION_S / 3600:g} h: split it"
        )
    windows = _window_count(duration_s, window_s, hop_s)
    if windows * alphas > max_rows:
        per_alpha = f" x {alphas} alphas" if alphas > 1 else ""
        raise DetectionSettingsError(
            f"{windows} windows{per_alpha} is {windows * alphas} answers, over the limit of {max_rows}; "
            "use a longer hop, fewer alphas or a shorter recording"
        )
    return windows


def check_prompt(prompt: str) -> str:
    """The prompt, stripped; refused when empty, too long, or asking for more than the one window it gets."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise DetectionSettingsError("the prompt is empty: type a question, e.g. 'What animals are calling?'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DetectionSettingsError(f"the prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    if prompt.count(AUDIO_PLACEHOLDER) > 1:
        raise DetectionSettingsError(
            f"the prompt has {prompt.count(AUDIO_PLACEHOLDER)} {AUDIO_PLACEHOLDER} placeholders; detection "
            "hands the model one window at a time, so write one or none"
        )
    return prompt


def check_alphas(alphas: Sequence[object]) -> list[object]:
    """A non-empty list, no alpha twice; numbers in [0, 1] (checked here, before any model loads),
    anything else (a merge recipe) passed on for the engine to judge."""
    if not isinstance(alphas, list | tuple):
        raise DetectionSettingsError(f"alphas must be a list (one entry per alpha), got {type(alphas).__name__}")
    if not alphas:
        raise DetectionSettingsError("no alpha given: pass at least one, e.g. [1.0] for NatureLM-audio")
    for alpha in alphas:
        if isinstance(alpha, numbers.Real | str):  # a string is a mistyped number, not a recipe
            check_alpha(alpha)
    texts = [alpha_text(alpha) for alpha in alphas]
    repeated = sorted({text for text in texts if texts.count(text) > 1})
    if repeated:
        raise DetectionSettingsError(f"alpha {', '.join(repeated)} is listed twice")
    return list(alphas)


def plan_detection(
    source: StreamSource,
    window_s: float = WINDOW_SECONDS,
    hop_s: float = WINDOW_SECONDS,
    alphas: int = 1,
    max_rows: int = MAX_DETECTION_ROWS,
) -> DetectionPlan:
    """Every check `detect` makes before answering, from the file's header: raises AudioError or
    DetectionSettingsError with a user-facing message, else says how many windows and answers it takes."""
    check_detection_settings(window_s, hop_s)
    with open_windows(source, window_s, hop_s) as stream:
        windows = check_detection_settings(window_s, hop_s, stream.duration_s, alphas, max_rows)
        return DetectionPlan(_source_name(source), stream.duration_s, windows, windows * alphas)


def detect(
    engine: DetectionEngine,
    source: StreamSource,
    prompt: str,
    alphas: Sequence[object],
    window_s: float = WINDOW_SECONDS,
    hop_s: float = WINDOW_SECONDS,
    *,
    settings: GenerationSettings | None = None,
    absent: Collection[str] = DEFAULT_ABSENT_ANSWERS,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    priority: Priority = Priority.SWEEP,
    max_rows: int = MAX_DETECTION_ROWS,
    ahead_rows: int | None = None,
    candidates: Sequence[str] = (),
) -> DetectionResult:
    """Answer every window of `source` at every alpha and merge the answers into events.

    `engine` is a naturelm_core.engine.Engine (`DetectionEngine` says what of it is used). `alphas`
    is a list with one entry per alpha, each a float or a merge recipe, handed to the engine
    unchanged. `progress(done, total)` is called as windows finish (`total` is exact once the end
    of the file has been read). Setting `cancel` stops the run within about CANCEL_POLL_S: queued
    rows are withdrawn and the result holds the windows answered so far, with `complete=False`.
    Raises DetectionSettingsError / AlphaError / AudioError (ValueErrors with a user-facing message)
    before anything is answered, and EngineError after withdrawing the rows still queued.
    `ahead_rows` bounds the rows whose windows are held at once (default two engine batches), and
    so memory: about ahead_rows / len(alphas) x 640 KB of windows.
    `candidates` (a closed set of labels): each window is also scored over them at each alpha, batched
    like its answers, and each event's `confidence` is the mean P(its label) over its windows when its
    label is one of them (naturelm_core.events.event_confidence); without candidates it stays None.
    """
    prompt = check_prompt(prompt)
    alphas = check_alphas(alphas)
    check_detection_settings(window_s, hop_s)
    texts = tuple(alpha_text(alpha) for alpha in alphas)
    labels = _label_set(engine, candidates)  # LabelError before any audio is read
    with open_windows(source, window_s, hop_s) as stream:
        check_detection_settings(window_s, hop_s, stream.duration_s, len(alphas), max_rows)
        generation = settings or GenerationSettings()
        answerer = _Answerer(engine, prompt, alphas, texts, generation, priority, ahead_rows, labels)
        windows, complete = answerer.run(stream, progress or _no_progress, cancel or threading.Event())
        duration_s = stream.duration_s
        warnings = [*stream.warnings, *_loudness_warnings(stream, complete)]
    return DetectionResult(
        source=_source_name(source),
        duration_s=duration_s,
        window_s=float(window_s),
        hop_s=float(hop_s),
        prompt=prompt,
        alphas=texts,
        windows=tuple(windows),
        events=merge_events(windows, absent, alpha_order=texts),
        complete=complete,
        warnings=tuple(warnings),
    )


def _label_set(engine: DetectionEngine, candidates: Sequence[str]) -> Any:
    """The candidates checked and tokenized once (LabelError names a bad one), or None without a list."""
    if not candidates:
        return None
    model = getattr(engine, "model", None)
    return model.label_candidates(list(candidates)) if model is not None else list(candidates)


class _Cancelled(Exception):
    """Raised inside the answering loop when the caller's cancel event is set."""


class _Answerer:
    """Submits windows in groups of one engine batch, holding at most `ahead_rows` rows' windows at a time
    (those queued or running, and the group being read)."""

    def __init__(
        self,
        engine: DetectionEngine,
        prompt: str,
        alphas: list[object],
        texts: tuple[str, ...],
        settings: GenerationSettings,
        priority: Priority,
        ahead_rows: int | None,
        labels: Any = None,
    ) -> None:
        self.engine = engine
        self.prompt = prompt
        self.alphas = alphas
        self.texts = texts
        self.submit_options = {
            "settings": settings,
            "priority": priority,
            "timeout_s": DETECTION_REQUEST_TIMEOUT_S,
            "caller": engine.new_caller(),  # one caller: its rows keep their order and share batches fairly
        }
        batch_rows = max(1, engine.max_batch_rows)
        self.ahead_windows = max(1, (ahead_rows or 2 * batch_rows) // len(alphas))
        self.group_windows = max(1, min(batch_rows // len(alphas), self.ahead_windows))
        self.labels = labels  # Candidates to score every window over, or None

    def run(
        self, stream: WindowStream, progress: ProgressCallback, cancel: threading.Event
    ) -> tuple[list[WindowAnswer], bool]:
        """Each window's answers (alphas in order), in time order, and whether every window was answered.

        Only the spans and texts of answered windows are kept: their audio goes as soon as they are answered.
        """
        answered: list[WindowAnswer] = []
        pending: deque[tuple[Window, list[Future], list[Future]]] = deque()
        group: list[Window] = []
        progress(0, stream.window_count)
        try:
            for window in stream:
                if cancel.is_set():
                    raise _Cancelled
                group.append(window)
                if len(group) == self.group_windows:
                    # Windows held (queued + this group) never exceed ahead_windows.
                    keep = self.ahead_windows - len(group)
                    self._collect(pending, answered, keep, stream.window_count, progress, cancel)
                    pending.extend(self._submit(group))
                    group = []
            pending.extend(self._submit(group))
            self._collect(pending, answered, 0, stream.window_count, progress, cancel)
        except _Cancelled:
            return answered, False
        finally:
            for _, futures, scores in pending:
                for future in [*futures, *scores]:
                    future.cancel()
        return answered, True

    def _submit(self, windows: list[Window]) -> list[tuple[Window, list[Future], list[Future]]]:
        """Every window at every alpha (answers, then label scores when candidates were given); one array
        per window, shared by its rows (the engine encodes it once)."""
        if not windows:
            return []
        rows = [([window.samples], self.prompt, alpha) for window in windows for alpha in self.alphas]
        if self.engine.inline:  # no worker thread: only answer_many, in this thread, runs the model
            futures = [_done(answer) for answer in self.engine.answer_many(rows, **self.submit_options)]
        else:
            futures = self.engine.submit_many(rows, block=True, **self.submit_options)
        scores = self._submit_scores(rows) if self.labels is not None else [_done(None)] * len(rows)
        n = len(self.alphas)
        return [(window, futures[i * n : (i + 1) * n], scores[i * n : (i + 1) * n]) for i, window in enumerate(windows)]

    def _submit_scores(self, rows: list[tuple[list[np.ndarray], str, object]]) -> list[Future]:
        """The same rows scored over the candidates, at the same priority and as the same caller."""
        options = {key: value for key, value in self.submit_options.items() if key != "settings"}
        if self.engine.inline:
            return [_done(scores) for scores in self.engine.score_labels(rows, self.labels, **options)]
        return self.engine.submit_labels_many(rows, self.labels, block=True, **options)

    def _collect(
        self,
        pending: deque[tuple[Window, list[Future], list[Future]]],
        answered: list[WindowAnswer],
        keep: int,
        total: int,
        progress: ProgressCallback,
        cancel: threading.Event,
    ) -> None:
        """Wait for the oldest windows until at most `keep` remain queued, in order."""
        while len(pending) > keep:
            window, futures, score_futures = pending[0]
            answers = [_result(future, cancel) for future in futures]
            scores = [_result(future, cancel) for future in score_futures]
            pending.popleft()
            answered.extend(
                WindowAnswer(window.start_s, window.end_s, text, answer, _probabilities(score))
                for text, answer, score in zip(self.texts, answers, scores, strict=True)
            )
            done = len(answered) // len(self.texts)
            progress(done, max(total, done))


def _probabilities(scores: Any) -> dict[str, float] | None:
    """A window's P(label) per candidate (LabelScores.probabilities), or None where nothing was scored."""
    return None if scores is None else dict(scores.probabilities)


def _result(future: Future, cancel: threading.Event) -> Any:
    while True:
        if cancel.is_set():
            raise _Cancelled
        try:
            return future.result(timeout=CANCEL_POLL_S)
        except TimeoutError:
            continue


def _done(answer: object) -> Future:
    future: Future = Future()
    future.set_result(answer)
    return future


def _no_progress(done: int, total: int) -> None:
    """The default progress callback: reports nowhere."""


def _loudness_warnings(stream: WindowStream, complete: bool) -> list[str]:
    """A silent recording is still answered (refusing after hours of reading helps no one), but said to be."""
    if not complete:
        return []
    if stream.peak == 0.0:
        return [f"{stream.label} is silent (every sample is zero): every answer is about nothing"]
    peak_dbfs = 20.0 * math.log10(stream.peak)
    if peak_dbfs < QUIET_PEAK_DBFS:
        return [
            f"{stream.label} is nearly silent (loudest sample {peak_dbfs:.0f} dBFS, under {QUIET_PEAK_DBFS:.0f} "
            "dBFS): the answers may be invented"
        ]
    return []


def _seconds(name: str, value: object, low: tuple[float, str], high: tuple[float, str]) -> float:
    """`value` as seconds inside [low, high]; each bound comes with why it is there, for the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DetectionSettingsError(f"the {name} must be a number of seconds, got {value!r}")
    (lowest, below), (highest, above) = low, high
    if not lowest <= value <= highest:
        why = f"under {lowest:g} s {below}" if value < lowest else f"over {highest:g} s {above}"
        raise DetectionSettingsError(
            f"the {name} is {value:g} s; it must be between {lowest:g} and {highest:g} s (a {name} {why})"
        )
    return float(value)


def _window_count(duration_s: float, window_s: float, hop_s: float) -> int:
    """`audio.window_count` from seconds, for a duration known only from a header."""
    samples = max(1, round(duration_s * SAMPLE_RATE))
    return window_count(samples, round(window_s * SAMPLE_RATE), round(hop_s * SAMPLE_RATE))


def _source_name(source: StreamSource) -> str:
    return "audio array" if isinstance(source, np.ndarray) else Path(os.fspath(source)).name
