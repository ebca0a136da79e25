"""Per-window answers -> detection events: what a reviewer opens in Raven or Audacity.

Plain Python (no torch), so the UI, the exporters and their tests use it without the model.

Two windows belong to one event when they are consecutive at the same alpha, their normalised
answers are equal, and they touch or overlap: with a hop longer than the window the gap between
two windows was never heard, so no event spans it. Answers that mean "nothing here" ("None",
"no animal", configurable) are absences: they end an event and start none.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from numbers import Real

from naturelm_core.alphas import format_alpha

# Compared after `normalise_answer`; an empty answer is always an absence.
DEFAULT_ABSENT_ANSWERS: tuple[str, ...] = (
    "none",
    "nothing",
    "no",
    "no animal",
    "no animals",
    "no species",
    "no sound",
    "no sounds",
    "silence",
)

_DROPPED_CHARACTERS = str.maketrans("", "", "\"'`´‘’“”«»*#")
_DASHES = re.compile(r"[-‐‑‒–—_]+")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class WindowAnswer:
    """One window's answer at one alpha; `alpha` is its text (`alpha_text`), as every export writes it."""

    start_s: float
    end_s: float
    alpha: str
    answer: str
    # P(label) per candidate where a candidate list was scored (LabelScores.probabilities), else None.
    probabilities: dict[str, float] | None = None


@dataclass(frozen=True)
class Event:
    """A run of windows with one answer. `confidence` is the label's probability where a candidate list
    gave one, and None otherwise: the exports leave it empty rather than invent a number."""

    start_s: float
    end_s: float
    alpha: str
    label: str
    windows: int
    confidence: float | None = None


@dataclass(frozen=True)
class DetectionResult:
    """Everything one detection run produced: its settings, every window's answers, the merged events.

    `windows` are in time order, each window's alphas in the order given. `complete` is False when
    the run was cancelled: `windows` and `events` then cover the audio up to the last window answered
    at every alpha, and `duration_s` may be the header's estimate (exact once the end was read).
    `warnings` are sentences for the reviewer (a file damaged part-way, a silent recording).
    """

    source: str
    duration_s: float
    window_s: float
    hop_s: float
    prompt: str
    alphas: tuple[str, ...]
    windows: tuple[WindowAnswer, ...]
    events: tuple[Event, ...]
    complete: bool = True
    warnings: tuple[str, ...] = ()


def alpha_text(alpha: object) -> str:
    """How an alpha is stored and shown: '0.5' for a number, `str()` of anything else (a merge recipe)."""
    if isinstance(alpha, Real) and not isinstance(alpha, bool):
        return format_alpha(float(alpha))
    return str(alpha)


def normalise_answer(text: str) -> str:
    """The form answers are compared in: case, quotes, markdown, dashes and end punctuation do not count,
    so "Common loon." and "common loon" are one event (as evaluation.scoring's robust mode compares)."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_DROPPED_CHARACTERS)
    text = _WHITESPACE.sub(" ", _DASHES.sub(" ", text))
    return text.strip(" \t.,;:!?")


def display_label(answer: str) -> str:
    """An answer on one line (runs of whitespace, newlines and tabs too, become one space): a table cell."""
    return " ".join(answer.split())


def parse_candidates(text: str | None) -> list[str]:
    """Candidate labels typed comma- or newline-separated, stripped, blanks between separators dropped.

    Why duplicates are kept: `Candidates.tokenize` refuses them with a LabelError naming both
    positions, which tells the user more than a silent de-duplication would. Empty text = no list.
    """
    return [part.strip() for line in (text or "").splitlines() for part in line.split(",") if part.strip()]


def matching_candidate(answer: str, candidates: Sequence[str]) -> str | None:
    """The candidate an answer names once normalised (case, whitespace, quotes, end punctuation), else None."""
    form = normalise_answer(answer)
    return next((label for label in candidates if normalise_answer(label) == form), None)


def event_confidence(windows: Sequence[WindowAnswer], label: str) -> float | None:
    """Mean over the event's windows of P(its label) when the label is a scored candidate, else None.

    Why None rather than 0 or a guess: an answer outside the candidate list has no probability here.
    """
    scored = [window.probabilities for window in windows if window.probabilities is not None]
    if len(scored) != len(windows) or not scored:
        return None
    candidate = matching_candidate(label, list(scored[0]))
    if candidate is None:
        return None
    return sum(probabilities[candidate] for probabilities in scored) / len(scored)


def merge_events(
    windows: Iterable[WindowAnswer],
    absent: Collection[str] = DEFAULT_ABSENT_ANSWERS,
    alpha_order: Sequence[str] = (),
) -> tuple[Event, ...]:
    """Events from window answers (any order), sorted by start time, then by `alpha_order`.

    Within one alpha the windows are taken in time order. An event's label is the first window's
    answer on one line; its span runs from its first window's start to its last window's end.
    """
    absent_forms = {normalise_answer(text) for text in absent} | {""}
    by_alpha: dict[str, list[WindowAnswer]] = {}
    for window in windows:
        by_alpha.setdefault(window.alpha, []).append(window)
    events: list[Event] = []
    for alpha, answers in by_alpha.items():
        current: Event | None = None
        current_form = ""
        members: list[WindowAnswer] = []
        for window in sorted(answers, key=lambda w: w.start_s):
            form = normalise_answer(window.answer)
            if current is not None and form == current_form and window.start_s <= current.end_s:
                current = replace(current, end_s=max(current.end_s, window.end_s), windows=current.windows + 1)
                members.append(window)
                continue
            if current is not None:
                events.append(replace(current, confidence=event_confidence(members, current.label)))
            current, current_form, members = None, form, [window]
            if form not in absent_forms:
                current = Event(window.start_s, window.end_s, alpha, display_label(window.answer), 1)
        if current is not None:
            events.append(replace(current, confidence=event_confidence(members, current.label)))
    rank = {alpha: index for index, alpha in enumerate(alpha_order)}
    return tuple(sorted(events, key=lambda e: (e.start_s, rank.get(e.alpha, len(rank)), e.alpha)))
