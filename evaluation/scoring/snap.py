"""Snapping answers to the nearest label by edit distance (official and paper modes), and replaying tie orders.

Both published evaluators pick the nearest label with min() over a Python set, so a tie goes to whichever
label the hash seed puts first. A Snap holds the sorted-order choice and, for each tied answer, all its
equally near labels, so that tie_sensitivity can replay TIE_ORDERS other orders. The paper's clean-up
(paper_clean) is here as the first step of its snapping. Imports answer_text, metrics (TieSensitivity)
and modes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from evaluation.scoring.answer_text import cut_at_end_of_text
from evaluation.scoring.metrics import TieSensitivity
from evaluation.scoring.modes import PAPER_OUT_OF_SET, ScoringError

PAPER_MAX_DISTANCE = 5
PAPER_PHRASES = (
    "The common name for the focal species in the audio is",
    "The scientific name for the focal species in the audio is",
)
PAPER_COMMA_CUT_DATASETS = frozenset({"watkins", "cbi"})
PAPER_DIGIT_DATASETS = frozenset({"zf-indiv"})
TIE_ORDERS = 32  # seeded random label orders replayed per group: cheap, and enough to show the usual spread


@dataclass(frozen=True)
class Snap:
    """Texts snapped to labels, and what is needed to replay the evaluators' arbitrary tie-breaking.

    `labels[i]` is text i's label (of equally near labels, the first in sorted order); `ties` maps each
    text whose label was so chosen to all of its equally near labels; `space` is the sorted label set.
    """

    labels: list[str]
    ties: Mapping[int, tuple[str, ...]]
    space: tuple[str, ...]

    def redraw(self, seed: int) -> dict[int, str]:
        """The labels the tied texts take when min() runs over the label set in one seeded random order.

        One order serves every text, as one set does in one run of the evaluator; only tied texts change.
        """
        order = np.random.default_rng(seed).permutation(len(self.space)).tolist()
        rank = dict(zip(self.space, order, strict=True))
        return {i: min(labels, key=rank.__getitem__) for i, labels in self.ties.items()}


def snap_to_labels(
    texts: Sequence[str],
    labels: Iterable[str],
    max_distance: int | None = None,
    fallback: str = PAPER_OUT_OF_SET,
) -> Snap:
    """Each text's label: itself if it is one, else the nearest by Levenshtein distance, else (beyond
    `max_distance`) `fallback`. An exact match is the only label at distance 0, so it needs no own step.
    """
    space = tuple(sorted(set(labels)))
    if not space:
        raise ScoringError("no labels to snap answers to")
    distances = _distance_matrix(texts, space)
    best = distances.min(axis=1)
    within = best <= max_distance if max_distance is not None else np.ones(len(best), dtype=bool)
    nearest = distances.argmin(axis=1)
    chosen = [space[j] if ok else fallback for j, ok in zip(nearest.tolist(), within.tolist(), strict=True)]
    equal = distances == best[:, None]
    tied_rows = np.flatnonzero(within & (equal.sum(axis=1) > 1))
    ties = {int(i): tuple(space[j] for j in np.flatnonzero(equal[i])) for i in tied_rows}
    return Snap(chosen, ties, space)


def _distance_matrix(texts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Levenshtein distances, texts x labels; each distinct text is measured once (answers repeat a lot)."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return np.zeros((0, len(labels)), dtype=np.int32)
    distances = process.cdist(distinct, list(labels), scorer=Levenshtein.distance, dtype=np.int32, workers=1)
    row_of = {text: i for i, text in enumerate(distinct)}
    return distances[[row_of[text] for text in texts]]


def snap_official(predictions: Sequence[str], label_set: Iterable[str]) -> Snap:
    """beans-zero classification: cut at <|end_of_text|>, exact match, else nearest label at any distance."""
    return snap_to_labels([cut_at_end_of_text(text) for text in predictions], label_set)


def paper_clean(prediction: str, dataset: str) -> str:
    """The paper's only clean-up: its two literal preambles, the comma cut, and the zf-indiv digit rule."""
    text = cut_at_end_of_text(prediction)
    for phrase in PAPER_PHRASES:
        text = text.replace(phrase, "")
    if dataset in PAPER_COMMA_CUT_DATASETS:
        text = text.split(",")[0]
    # The paper tests str.isdigit(); isdecimal() differs only on characters like "²" that int() refuses.
    if dataset in PAPER_DIGIT_DATASETS and text.isdecimal():
        text = "One" if int(text) <= 1 else "More"
    return text


def snap_paper(predictions: Sequence[str], label_set: Iterable[str], dataset: str) -> Snap:
    """The paper's classification scoring: clean, exact match, else nearest label within 5 edits, else "None"."""
    return snap_to_labels([paper_clean(text, dataset) for text in predictions], label_set, PAPER_MAX_DISTANCE)


def tie_sensitivity(
    snap: Snap, tied: int, reported: Mapping[str, float], replay: Callable[[Mapping[int, str]], Mapping[str, float]]
) -> TieSensitivity:
    """Each metric's range over the reported (sorted-order) value and TIE_ORDERS seeded random tie orders.

    `replay` recomputes the metrics with the tied texts' labels replaced; without ties there is nothing to replay.
    """
    values = {name: [value] for name, value in reported.items()}
    for seed in range(TIE_ORDERS if snap.ties else 0):
        for name, value in replay(snap.redraw(seed)).items():
            values[name].append(value)
    return TieSensitivity(tied, {name: (min(found), max(found)) for name, found in values.items()})
