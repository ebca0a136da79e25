"""Detection results as the files reviewers open: a Raven Pro selection table, an Audacity label track,
CSV and JSON.

Raven Pro selection tables and Audacity label tracks are how bioacoustics reviews detections
(BirdNET-Analyzer writes both), so the layouts follow Raven's and Audacity's own: tab-separated,
one selection or label per line, times in seconds from the start of the file. A selection's
frequency box is the band the model hears (0 to 8000 Hz at 16 kHz) unless the caller narrows it.
The Confidence column stays empty wherever no probability was computed: never a made-up number.
Plain Python (no torch).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from naturelm_core.events import DetectionResult, Event

NYQUIST_HZ = 8000.0  # half of the model's 16 kHz sample rate
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Annotation",
    "Alpha",
    "Confidence",
)
RAVEN_VIEW = "Spectrogram 1"
RAVEN_CHANNEL = 1
CSV_COLUMNS = ("start_s", "end_s", "label", "alpha", "confidence", "windows")
FORMATS = ("raven", "audacity", "csv", "json")
# File name endings per format; the Raven one is the name BirdNET-Analyzer and Raven users expect.
SUFFIXES = {
    "raven": ".NatureLM.selection.table.txt",
    "audacity": ".NatureLM.labels.txt",
    "csv": ".NatureLM.events.csv",
    "json": ".NatureLM.json",
}


class AnnotationError(ValueError):
    """An export setting that cannot be written (a frequency band outside 0-8000 Hz, an unknown format)."""


def to_raven(
    result: DetectionResult, path: str | os.PathLike, low_freq_hz: float = 0.0, high_freq_hz: float = NYQUIST_HZ
) -> Path:
    """A Raven Pro selection table: one selection per event, Annotation, Alpha and Confidence after the
    standard columns; `pandas.read_csv(path, sep="\\t")` reads it back with exactly RAVEN_COLUMNS."""
    low, high = check_band(low_freq_hz, high_freq_hz)
    lines = ["\t".join(RAVEN_COLUMNS)]
    for number, event in enumerate(result.events, start=1):
        cells = (number, RAVEN_VIEW, RAVEN_CHANNEL, _seconds(event.start_s), _seconds(event.end_s), _number(low))
        cells += (_number(high), _cell(event.label), event.alpha, _confidence(event))
        lines.append("\t".join(str(cell) for cell in cells))
    return _write(path, _lines(lines))


def to_audacity(result: DetectionResult, path: str | os.PathLike) -> Path:
    """An Audacity label track (File > Import > Labels): `start<TAB>end<TAB>label` per event. Audacity's
    track has no alpha column, so with several alphas each label names its alpha."""
    several = len(result.alphas) > 1
    lines = [
        f"{_seconds(e.start_s)}\t{_seconds(e.end_s)}\t{_cell(e.label)}{f' (alpha {e.alpha})' if several else ''}"
        for e in result.events
    ]
    return _write(path, _lines(lines))


def to_csv(result: DetectionResult, path: str | os.PathLike) -> Path:
    """The events as CSV (CSV_COLUMNS), quoted where a label holds a comma; empty confidence where none."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in result.events:
        writer.writerow((_seconds(e.start_s), _seconds(e.end_s), e.label, e.alpha, _confidence(e), e.windows))
    return _write(path, buffer.getvalue())


def to_json(result: DetectionResult, path: str | os.PathLike) -> Path:
    """The whole result (settings, every window's answer, the events, the warnings): what a script reloads."""
    return _write(path, json.dumps(dataclasses.asdict(result), indent=2, ensure_ascii=False) + "\n")


def write_exports(
    result: DetectionResult,
    folder: str | os.PathLike,
    stem: str,
    formats: Sequence[str] = FORMATS,
    low_freq_hz: float = 0.0,
    high_freq_hz: float = NYQUIST_HZ,
) -> dict[str, Path]:
    """Each format in `formats` to `folder/stem + SUFFIXES[format]`; returns the paths by format."""
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise AnnotationError(f"unknown export format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    check_band(low_freq_hz, high_freq_hz)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writers = {
        "raven": lambda path: to_raven(result, path, low_freq_hz, high_freq_hz),
        "audacity": lambda path: to_audacity(result, path),
        "csv": lambda path: to_csv(result, path),
        "json": lambda path: to_json(result, path),
    }
    return {name: writers[name](folder / f"{stem}{SUFFIXES[name]}") for name in formats}


def check_band(low_freq_hz: float, high_freq_hz: float) -> tuple[float, float]:
    """The frequency box of every selection: inside what the model hears, low below high."""
    for name, value in (("low", low_freq_hz), ("high", high_freq_hz)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise AnnotationError(f"the {name} frequency must be a number of Hz, got {value!r}")
    if not 0.0 <= low_freq_hz < high_freq_hz <= NYQUIST_HZ:
        raise AnnotationError(
            f"the frequency band {low_freq_hz:g}-{high_freq_hz:g} Hz must lie within 0-{NYQUIST_HZ:g} Hz (what the "
            "model hears at 16 kHz), with low below high"
        )
    return float(low_freq_hz), float(high_freq_hz)


def _write(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def _lines(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _seconds(value: float) -> str:
    """Times to the microsecond (a 16 kHz sample is 62.5 us), without float noise such as 0.30000000000000004."""
    return str(round(value, 6))


def _number(value: float) -> str:
    return str(round(value, 3))


def _confidence(event: Event) -> str:
    return "" if event.confidence is None else str(round(event.confidence, 6))


def _cell(text: str) -> str:
    """A label inside a tab-separated line: tabs and line breaks would split the row."""
    return " ".join(text.split())
