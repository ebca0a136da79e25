"""The scoring modes, and where they send an answer: its Outcome, its ScoredAnswer record, a placeholder label.

The bottom of evaluation.scoring: every other scoring module may import these names, and this one imports
none of them (nor numpy), so a score's vocabulary reads without any scoring code. The placeholders stand
where an answer names no class: the paper's "None" (past its edit threshold), and the robust mode's own for
out-of-set answers and abstentions; SENTINELS keeps them out of the classes a metric averages over.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

PAPER_OUT_OF_SET = "None"
ROBUST_OUT_OF_SET = "<out of set>"
ROBUST_ABSTENTION = "<abstention>"
SENTINELS = frozenset({PAPER_OUT_OF_SET, ROBUST_OUT_OF_SET, ROBUST_ABSTENTION})


class ScoringMode(StrEnum):
    OFFICIAL = "official"
    PAPER = "paper"
    ROBUST = "robust"


class Outcome(StrEnum):
    """Where an answer went: the error breakdown of a (dataset, prompt, alpha) group."""

    CORRECT = "correct"
    IN_SET_CONFUSION = "in_set_confusion"
    OUT_OF_SET = "out_of_set"
    ABSTENTION = "abstention"


class ScoringError(ValueError):
    """Answers and labels that cannot be scored as asked (empty group, mismatched lengths, ...)."""


@dataclass(frozen=True)
class ScoredAnswer:
    """One answer after scoring: its class in the scoring space (or a placeholder) and where it went.

    `tied` holds the equally near labels its class was chosen among by sorted order (empty when one label
    was nearest): the answers a different tie order would score differently.
    """

    id: str
    prediction: str
    label: str
    predicted: str
    outcome: Outcome
    tied: tuple[str, ...] = ()
