"""Scoring one group of detection answers: comma-separated species lists, read as BEANS-Zero reads them.

Official and paper modes are both BEANS-Zero's evaluator (the paper used it): each piece of an answer is
snapped (snap) within 5 edits, and the answer lists the union of its pieces' classes. The robust mode
matches names through AliasIndex (aliases). Numbers come from detection_metrics; imports no
classification code.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from evaluation.scoring.aliases import AliasIndex, common_name_aliases
from evaluation.scoring.answer_text import _cut_at_end_tokens, cut_at_end_of_text, is_abstention, normalise
from evaluation.scoring.detection_metrics import detection_metrics, detection_values, official_detection
from evaluation.scoring.metrics import HEADLINE_METRICS, Metrics, _comma_parts
from evaluation.scoring.modes import PAPER_OUT_OF_SET, Outcome, ScoredAnswer, ScoringMode
from evaluation.scoring.snap import PAPER_MAX_DISTANCE, Snap, snap_to_labels, tie_sensitivity


def detection_classes(labels: Iterable[str]) -> list[str]:
    """BEANS-Zero's detection classes: the comma-separated parts of every label but "None", sorted."""
    return sorted({part for label in labels if label.lower() != "none" for part in _comma_parts(label)})


def listed_classes(text: str, classes: Collection[str]) -> frozenset[str]:
    """The classes a label or a snapped answer lists, read as BEANS-Zero reads them: "None" lists none,
    otherwise the parts between ", " that are classes (so "A,B", without the space, lists neither).
    """
    if text.lower() == "none":
        return frozenset()
    return frozenset(part for part in text.split(", ") if part in classes)


def score_detection(
    ids: Sequence[str],
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    mode: ScoringMode,
    label_set: Iterable[str],
) -> tuple[list[ScoredAnswer], Metrics]:
    """BEANS-Zero detection (official and paper alike: the paper used its evaluator), or the robust reading.

    Accuracy is the share of exact set matches (ours); macro F1, precision, recall and mAP are BEANS-Zero's.
    """
    label_set = sorted(set(label_set) | set(labels))
    classes = detection_classes(label_set)
    truth = class_matrix([listed_classes(label, classes) for label in labels], classes)
    if mode is not ScoringMode.ROBUST:
        snapped = DetectionSnap.of(predictions, label_set)
        return _score_snapped_detection(ids, predictions, labels, truth, snapped, classes, mode is ScoringMode.OFFICIAL)
    index = AliasIndex({name: common_name_aliases(name) for name in classes})
    predicted_sets: list[frozenset[str]] = []
    outcomes: list[Outcome] = []
    for text, true_row in zip(predictions, truth, strict=True):
        names, unmatched = _robust_detection(text, index)
        predicted_sets.append(names)
        correct = names == {name for name, listed in zip(classes, true_row.tolist(), strict=True) if listed}
        outcomes.append(_robust_detection_outcome(text, names, correct, unmatched))
    answers = [
        ScoredAnswer(i, text, label, ", ".join(sorted(names)) or PAPER_OUT_OF_SET, outcome)
        for i, text, label, names, outcome in zip(ids, predictions, labels, predicted_sets, outcomes, strict=True)
    ]
    return answers, detection_metrics(truth, class_matrix(predicted_sets, classes), classes, outcomes)


@dataclass(frozen=True)
class DetectionSnap:
    """beans-zero's reading of detection answers: each comma-separated piece, stripped and cut at
    <|end_of_text|>, snapped to the nearest raw label (or "None") within 5 edits, else "None"; the answer
    then lists the classes named in its pieces' labels joined by ", " (none when that is just "None").
    """

    pieces: list[str]
    snap: Snap  # of all pieces of all answers; an answer's pieces are consecutive
    starts: np.ndarray  # each answer's first piece

    @classmethod
    def of(cls, predictions: Sequence[str], label_set: Iterable[str]) -> DetectionSnap:
        pieces: list[str] = []
        starts: list[int] = []
        for text in predictions:
            starts.append(len(pieces))
            pieces.extend(cut_at_end_of_text(piece.strip()) for piece in text.split(","))
        snap = snap_to_labels(pieces, {*label_set, PAPER_OUT_OF_SET}, PAPER_MAX_DISTANCE)
        return cls(pieces, snap, np.array(starts, dtype=np.int64))

    def tied_answers(self) -> dict[int, tuple[str, ...]]:
        """The answers with a tied piece, and all the labels their pieces were tied between."""
        owners = np.searchsorted(self.starts, list(self.snap.ties), side="right") - 1
        tied: dict[int, set[str]] = defaultdict(set)
        for row, labels in zip(owners.tolist(), self.snap.ties.values(), strict=True):
            tied[row].update(labels)
        return {row: tuple(sorted(labels)) for row, labels in tied.items()}

    def dropped(self) -> np.ndarray:
        """Per answer: whether some piece, not itself "None", was too far from every label."""
        far = [label == PAPER_OUT_OF_SET != piece for piece, label in zip(self.pieces, self.snap.labels, strict=True)]
        return _per_answer(np.array(far, dtype=bool), self.starts)


class _DetectionGroup:
    """A snapped detection group's class matrix, and its numbers, under any choice among its tied labels.

    Each label's classes are a row of `lists`, so an answer's are the OR of its pieces' rows: a tie order
    relabels only the tied pieces, and every answer is re-read with a few array operations.
    """

    def __init__(self, snapped: DetectionSnap, classes: Sequence[str], truth: np.ndarray, official: bool):
        space = snapped.snap.space
        self.snapped, self.truth, self.official = snapped, truth, official
        self.index = {label: i for i, label in enumerate(space)}
        self.lists = class_matrix([frozenset(label.split(", ")) for label in space], classes)
        self.is_none = np.array([label.lower() == "none" for label in space], dtype=bool)
        self.single = np.diff(np.append(snapped.starts, len(snapped.pieces))) == 1
        self.codes = np.fromiter((self.index[label] for label in snapped.snap.labels), dtype=np.int64)

    def guess(self, picks: Mapping[int, str] | None = None) -> np.ndarray:
        """(answers, classes) bool: the classes each answer lists, with the tied pieces in `picks` relabelled."""
        picks = picks or {}
        codes = self.codes.copy()
        codes[list(picks)] = [self.index[label] for label in picks.values()]
        guess = _per_answer(self.lists[codes], self.snapped.starts)
        guess[self.single & self.is_none[codes[self.snapped.starts]]] = False
        return guess

    def numbers(self, picks: Mapping[int, str] | None = None) -> dict[str, float]:
        """Headline metrics (and, official, BEANS-Zero's), with the tied pieces in `picks` relabelled."""
        values = detection_values(self.truth, self.guess(picks))
        numbers = {name: values[name] for name in HEADLINE_METRICS}
        return numbers | official_detection(values) if self.official else numbers


def _per_answer(piece_rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """OR of the rows of each answer's consecutive pieces."""
    if not len(starts):
        return np.zeros((0, *piece_rows.shape[1:]), dtype=bool)
    return np.logical_or.reduceat(piece_rows, starts, axis=0)


def _score_snapped_detection(
    ids: Sequence[str],
    predictions: Sequence[str],
    labels: Sequence[str],
    truth: np.ndarray,
    snapped: DetectionSnap,
    classes: list[str],
    official: bool,
) -> tuple[list[ScoredAnswer], Metrics]:
    group = _DetectionGroup(snapped, classes, truth, official)
    guess = group.guess()
    tied = snapped.tied_answers()
    correct, dropped = (guess == truth).all(axis=1).tolist(), snapped.dropped().tolist()
    answers = []
    for row, (sample_id, text, label) in enumerate(zip(ids, predictions, labels, strict=True)):
        outcome = Outcome.CORRECT if correct[row] else Outcome.IN_SET_CONFUSION
        if dropped[row] and not correct[row]:
            outcome = Outcome.OUT_OF_SET
        answers.append(ScoredAnswer(sample_id, text, label, _listing(guess[row], classes), outcome, tied.get(row, ())))
    metrics = detection_metrics(truth, guess, classes, [answer.outcome for answer in answers])
    reported = group.numbers()
    return answers, replace(
        metrics,
        official={name: value for name, value in reported.items() if name not in HEADLINE_METRICS},
        ties=tie_sensitivity(snapped.snap, len(tied), reported, group.numbers),
    )


def _listing(row: np.ndarray, classes: Sequence[str]) -> str:
    """An answer's classes as the scored label: sorted and joined by ", ", or "None"."""
    return ", ".join(name for name, listed in zip(classes, row.tolist(), strict=True) if listed) or PAPER_OUT_OF_SET


def _robust_detection(text: str, index: AliasIndex) -> tuple[frozenset[str], bool]:
    """The classes an answer lists, and whether some listed name matched none."""
    body = normalise(text)
    if body in {"none", "no species", "nothing", "no"}:
        return frozenset(), False
    names: set[str] = set()
    unmatched = False
    for piece in re.split(r",\s*|\s+and\s+|;\s*|\n", _cut_at_end_tokens(text)):
        if not normalise(piece) or normalise(piece) == "none":
            continue
        found = index.match(piece)
        if found is None:
            unmatched = True
        else:
            names.add(found)
    return frozenset(names), unmatched


def _robust_detection_outcome(text: str, names: frozenset[str], correct: bool, unmatched: bool) -> Outcome:
    if correct:
        return Outcome.CORRECT
    if is_abstention(text) and not names:
        return Outcome.ABSTENTION
    return Outcome.OUT_OF_SET if unmatched else Outcome.IN_SET_CONFUSION


def class_matrix(sets: Sequence[frozenset[str]], classes: Sequence[str]) -> np.ndarray:
    """(answers, classes) bool: which classes each answer lists."""
    return np.array([[name in row for name in classes] for row in sets], dtype=bool).reshape(len(sets), len(classes))
