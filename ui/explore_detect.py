"""The Explore tab's Detect panel (issue 20): a recording answered window by window, merged into events.

Widgets and wiring only: `naturelm_core.detection.detect` streams the file (never decoding it whole),
`naturelm_core.annotations.write_exports` writes the files reviewers open, ui.explore_figures draws
the timeline. `/detect` is public: (audio, prompt, alpha, window_s, hop_s[, absent, recipe, candidates])
-> (events table, Raven selection table, Audacity labels). With candidates (the Explore tab's field),
each event's confidence is its label's mean probability over its windows; without, it stays empty.
Stop sets the running detection's cancel event, so its queued rows are withdrawn and the windows
answered so far are kept. The exports are written once per detection, by `/detect`: the step that
then draws the timeline lists the same files (they travel in the `Detected` state).
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from naturelm_core.annotations import write_exports
from naturelm_core.detection import MAX_HOP_S, MAX_WINDOW_S, MIN_HOP_S, MIN_WINDOW_S, detect, plan_detection
from naturelm_core.events import DEFAULT_ABSENT_ANSWERS, DetectionResult, parse_candidates
from naturelm_core.explore import PREVIEW_S, answer_point, parse_absent_answers, preview_waveform
from ui.errors import user_facing
from ui.explore_figures import detection_timeline_figure
from ui.text import detection_intro_markdown, detection_summary_markdown
from ui.zero_gpu import on_gpu

if TYPE_CHECKING:
    from naturelm_core.engine import Engine
    from ui.explore_tab import Question

EVENT_COLUMNS = ["start_s", "end_s", "label", "windows", "alpha", "confidence"]


class RunningDetections:
    """The cancel event of each browser session's running detection, so its Stop button reaches it."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            self._events[session] = threading.Event()
            return self._events[session]

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]

    def stop(self, session: str) -> bool:
        with self._lock:
            event = self._events.get(session)
        if event is not None:
            event.set()
        return event is not None


@dataclass(frozen=True)
class Detected:
    """A detection and its export files by format, kept for the step after `/detect` so it writes none again."""

    result: DetectionResult
    exports: dict[str, Path]


def events_table(result: DetectionResult) -> pd.DataFrame:
    """One row per event, times in seconds: what the table shows and `/detect` returns."""
    rows = [(e.start_s, e.end_s, e.label, e.windows, e.alpha, e.confidence) for e in result.events]
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def export_files(result: DetectionResult) -> dict[str, Path]:
    """The Raven, Audacity, CSV and JSON files of a result, in a fresh temporary folder Gradio serves from."""
    stem = Path(result.source).stem or "recording"
    return write_exports(result, tempfile.mkdtemp(prefix="naturelm-detect-"), stem)


def detect_section(
    engine: Engine, question: Question, alpha: gr.Slider, recipe: gr.Textbox, candidates: gr.Textbox
) -> None:
    """Window and hop controls, Detect / Stop, the timeline, the events table and the exports."""
    with gr.Accordion("Detect: answers per window over a long recording, merged into events", open=True):
        gr.Markdown(detection_intro_markdown(MAX_WINDOW_S, PREVIEW_S))
        with gr.Row():
            # Numbers, not sliders: a value out of range reaches check_detection_settings, whose message says why.
            window_s = gr.Number(MAX_WINDOW_S, step=0.5, label=f"window (s, {MIN_WINDOW_S:g}-{MAX_WINDOW_S:g})")
            hop_s = gr.Number(MAX_HOP_S, step=0.5, label=f"hop (s, {MIN_HOP_S:g}-{MAX_HOP_S:g})")
            absent = gr.Textbox(
                value=", ".join(DEFAULT_ABSENT_ANSWERS), label="Answers meaning nothing (comma-separated)", lines=2
            )
        with gr.Row():
            run = gr.Button("Detect", variant="primary", elem_id="detect")
            stop = gr.Button("Stop", variant="stop", elem_id="detect-stop")
        summary = gr.Markdown(elem_id="detect-summary")
        timeline = gr.Plot(label="Detection timeline", elem_id="detect-timeline")
        table = gr.Dataframe(headers=EVENT_COLUMNS, label="Events", wrap=True, elem_id="detect-events")
        with gr.Row():
            raven = gr.File(label="Raven selection table (.txt)")
            audacity = gr.File(label="Audacity labels (.txt)")
        files = gr.File(label="All exports (Raven, Audacity, CSV, JSON)", file_count="multiple")
        result = gr.State()
    running = RunningDetections()
    handler = _detect_handler(engine, running)
    inputs = [question.audio, question.prompt, alpha, window_s, hop_s, absent, recipe, candidates]
    run.click(handler, inputs, [table, raven, audacity, result], api_name="detect").then(
        _show_result, [question.audio, result], [timeline, summary, files], api_visibility="private"
    )
    stop.click(_stop_handler(running), None, summary, api_visibility="private")


def _detect_handler(engine: Engine, running: RunningDetections) -> Any:
    """`/detect`, closing over the engine and the sessions' cancel events."""

    @user_facing
    @on_gpu
    def detect_events(
        audio_path: str | None,
        prompt: str,
        alpha: float,
        window_s: float = MAX_WINDOW_S,
        hop_s: float = MAX_HOP_S,
        absent: str = "",
        recipe: str = "",
        candidates: str = "",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (Gradio's way of asking for a progress bar)
    ) -> tuple[pd.DataFrame, str, str, Detected]:
        if not audio_path:
            raise ValueError("No recording: upload a file or record with the microphone first.")
        point = answer_point(alpha, recipe)
        plan = plan_detection(audio_path, window_s, hop_s)  # refuses a hop of 0, a window over 10 s, ... first
        progress((0, plan.windows), desc="answering windows", unit="windows")
        session = getattr(request, "session_hash", None) or "api"
        cancel = running.start(session)
        try:
            found = detect(
                engine,
                audio_path,
                prompt,
                [point],
                float(window_s),
                float(hop_s),
                absent=parse_absent_answers(absent),
                progress=lambda done, total: progress((done, total), desc="answering windows", unit="windows"),
                cancel=cancel,
                candidates=parse_candidates(candidates),
            )
        finally:
            running.finish(session, cancel)
        for warning in found.warnings:
            gr.Warning(warning)
        paths = export_files(found)
        return events_table(found), str(paths["raven"]), str(paths["audacity"]), Detected(found, paths)

    return detect_events


def _stop_handler(running: RunningDetections) -> Any:
    def stop_detection(request: gr.Request) -> str:
        stopped = running.stop(getattr(request, "session_hash", None) or "api")
        return "Stopping after the windows in flight..." if stopped else "No detection is running."

    return stop_detection


@user_facing
def _show_result(audio_path: str | None, detected: Detected | None) -> tuple[Any, str, list[str]]:
    """The timeline over the recording's spectrogram (its first minutes when long), the summary, and the export
    files `/detect` wrote (listed, not written again)."""
    if detected is None or not audio_path:
        return None, "", []
    found = detected.result
    waveform, _ = preview_waveform(audio_path)
    figure = detection_timeline_figure(waveform, found.events, found.duration_s, min(PREVIEW_S, found.duration_s))
    return figure, detection_summary_markdown(found), [str(path) for path in detected.exports.values()]
