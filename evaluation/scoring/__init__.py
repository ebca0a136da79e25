"""Turn free-text answers into labels and metrics, three ways (see ../shared/design/BEANS_ZERO.md).

- official: BEANS-Zero's own evaluator (the beans-zero package's compute_metrics): every answer cut at
  <|end_of_text|> and snapped to the nearest of the subset's raw labels (the distinct `output` values,
  never mapped to scientific names), with no threshold; it reports every metric that evaluator reports,
  under its names (`Metrics.official`).
- paper: the merging paper's plotting scripts: its literal preamble removal, the comma cut for
  watkins/cbi, the zf-indiv digit rule, an out-of-set threshold of 5 edits, and scientific or
  "<scientific> : <common>" labels from a mapping. This mapped scoring is the paper's, not BEANS-Zero's.
- robust: ours: normalise case, quotes, punctuation and preambles, parse combined answers into their
  scientific and common parts, accept synonyms, and count abstentions apart from wrong species.

Both published evaluators pick the nearest label with min() over a Python set, so equally near labels
are chosen in set order, which changes with the hash seed. We break such ties by sorted label order, so
the numbers are deterministic, and report beside them how many answers were tied and the range of each
metric over random tie orders (`Metrics.ties`). All three modes are reported side by side and none
replaces another.

One job a module, each importing only the ones before it in this list (no cycles):

    modes.py              the scoring modes, an answer's Outcome and ScoredAnswer, the placeholder labels
    metrics.py            a group's Metrics: accuracy, F1, per-class scores, BEANS-Zero's classification names
    detection_metrics.py  a detection group's Metrics from its class matrices, BEANS-Zero's mAP among them
    answer_text.py        reading an answer: where it ends; its normalised form, candidate names, abstention, count
    aliases.py            the robust mode's names -> class index: aliases, typo tolerances, shortened names
    snap.py               snapping to the nearest label (official and paper modes), replaying other tie orders
    classification.py     score_classification: one group of classification answers, in any mode
    detection.py          score_detection: one group of comma-separated species lists, in any mode
    rows.py               score_rows: every (dataset, prompt, alpha) group of a results file, as GroupScores

Importing the package loads no torch: only BEANS-Zero's mAP needs it, and imports it when it runs.
"""

from evaluation.scoring.aliases import AliasIndex, common_name_aliases, common_name_tolerance, scientific_name_tolerance
from evaluation.scoring.answer_text import (
    END_OF_TEXT,
    END_TOKENS,
    answer_candidates,
    count_class,
    cut_at_end_of_text,
    is_abstention,
    normalise,
    strip_preambles,
)
from evaluation.scoring.classification import paper_target, score_classification
from evaluation.scoring.detection import DetectionSnap, class_matrix, detection_classes, listed_classes, score_detection
from evaluation.scoring.detection_metrics import (
    binary_class_metrics,
    detection_metrics,
    detection_values,
    mean_average_precision,
    official_detection,
)
from evaluation.scoring.metrics import (
    HEADLINE_METRICS,
    ClassMetrics,
    LabelCodes,
    Metrics,
    TieSensitivity,
    classification_metrics,
    official_classification,
    outcome_counts,
    top1_hits,
)
from evaluation.scoring.modes import (
    PAPER_OUT_OF_SET,
    ROBUST_ABSTENTION,
    ROBUST_OUT_OF_SET,
    SENTINELS,
    Outcome,
    ScoredAnswer,
    ScoringError,
    ScoringMode,
)
from evaluation.scoring.rows import GroupScore, MissingMappingWarning, RawLabelsWarning, score_rows
from evaluation.scoring.snap import (
    PAPER_COMMA_CUT_DATASETS,
    PAPER_DIGIT_DATASETS,
    PAPER_MAX_DISTANCE,
    PAPER_PHRASES,
    TIE_ORDERS,
    Snap,
    paper_clean,
    snap_official,
    snap_paper,
    snap_to_labels,
    tie_sensitivity,
)

__all__ = [
    "END_OF_TEXT",
    "END_TOKENS",
    "HEADLINE_METRICS",
    "PAPER_COMMA_CUT_DATASETS",
    "PAPER_DIGIT_DATASETS",
    "PAPER_MAX_DISTANCE",
    "PAPER_OUT_OF_SET",
    "PAPER_PHRASES",
    "ROBUST_ABSTENTION",
    "ROBUST_OUT_OF_SET",
    "SENTINELS",
    "TIE_ORDERS",
    "AliasIndex",
    "ClassMetrics",
    "DetectionSnap",
    "GroupScore",
    "LabelCodes",
    "Metrics",
    "MissingMappingWarning",
    "Outcome",
    "RawLabelsWarning",
    "ScoredAnswer",
    "ScoringError",
    "ScoringMode",
    "Snap",
    "TieSensitivity",
    "answer_candidates",
    "binary_class_metrics",
    "class_matrix",
    "classification_metrics",
    "common_name_aliases",
    "common_name_tolerance",
    "count_class",
    "cut_at_end_of_text",
    "detection_classes",
    "detection_metrics",
    "detection_values",
    "is_abstention",
    "listed_classes",
    "mean_average_precision",
    "normalise",
    "official_classification",
    "official_detection",
    "outcome_counts",
    "paper_clean",
    "paper_target",
    "scientific_name_tolerance",
    "score_classification",
    "score_detection",
    "score_rows",
    "snap_official",
    "snap_paper",
    "snap_to_labels",
    "strip_preambles",
    "tie_sensitivity",
    "top1_hits",
]
