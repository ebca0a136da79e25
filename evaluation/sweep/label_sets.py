"""A likelihood sweep's candidate labels: their order, stored once per subset, and a row's distribution over them.

Why the order lives apart from the rows: a BEANS-Zero subset has up to 264 labels, and every
(sample, prompt, alpha) row scores all of them, so each row stores only its log-likelihoods as a list
(`label_log_likelihoods`) in the order of runs/<sweep-id>/label_sets.json, {subset: [label, ...]}.
The file is written before the first row and never changed: a resume whose plan lists other labels
(the data changed) is refused, since its rows would not line up with those written.
Log-likelihoods are stored to LOG_LIKELIHOOD_DECIMALS places: probabilities then move by < 1e-5
relative, far below any metric's resolution, and a row stays a few bytes per label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.sweep.durable import atomic_write_json, read_json
from naturelm_core.label_scores import LabelScores

LABEL_SETS_FILE = "label_sets.json"
DISTRIBUTION_FIELD = "label_log_likelihoods"
LOG_LIKELIHOOD_DECIMALS = 5


class LabelSetError(ValueError):
    """The stored label order of a sweep disagrees with its plan, or cannot be read."""


def label_sets_path(folder: Path) -> Path:
    return Path(folder) / LABEL_SETS_FILE


def read_label_sets(folder: Path) -> dict[str, list[str]]:
    """{subset: labels in stored order}; empty for a generation sweep (no file)."""
    path = label_sets_path(folder)
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError) as error:
        raise LabelSetError(f"{path} cannot be read: {error}") from error
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise LabelSetError(f"{path} is not {{subset: [labels]}}")
    return {str(name): [str(label) for label in labels] for name, labels in data.items()}


def record_label_sets(folder: Path, planned: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Store each planned subset's label order (adding new subsets), refusing one that changed since."""
    stored = read_label_sets(folder)
    for name, labels in planned.items():
        if name in stored and stored[name] != list(labels):
            raise LabelSetError(
                f"subset {name!r} now has other labels than when this likelihood sweep began "
                f"({len(labels)} vs {len(stored[name])}); its stored rows would not line up: start a new sweep"
            )
    merged = {**stored, **{name: list(labels) for name, labels in planned.items()}}
    if merged != stored:
        atomic_write_json(label_sets_path(folder), merged)
    return merged


def distribution_fields(scores: LabelScores, labels: Sequence[str]) -> dict[str, Any]:
    """What a likelihood row stores beside its prediction: the log-likelihoods in the stored label order."""
    return {
        DISTRIBUTION_FIELD: [round(scores.log_likelihoods[label], LOG_LIKELIHOOD_DECIMALS) for label in labels],
    }
