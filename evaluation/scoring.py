"""Turn free-text answers into labels and metrics, three ways (see ../shared/design/BEANS_ZERO.md).

- official: the beans-zero package: exact match, else the nearest label by Levenshtein, no threshold.
- paper: the merging paper's plotting scripts: as official, plus its literal preamble removal, the
  comma cut for watkins/cbi, the zf-indiv digit rule and an out-of-set threshold of 5 edits.
- robust: ours: normalise case, quotes, punctuation and preambles, parse combined answers into their
  scientific and common parts, accept synonyms, and count abstentions apart from wrong species.

The first two reproduce published numbers (with ties broken by sorted order instead of set order,
so they are deterministic); the third shows what the answers actually say. All three are reported
side by side and none replaces another.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from evaluation.datasets import task_of
from evaluation.prompts import PromptKind, detect_prompt_kind
from evaluation.reference import LabelMapping, MappingError
from evaluation.results import ResultRow

END_OF_TEXT = "<|end_of_text|>"
END_TOKENS = (END_OF_TEXT, "<|eot_id|>", "<|end_of_turn|>")
PAPER_OUT_OF_SET = "None"
PAPER_MAX_DISTANCE = 5
PAPER_PHRASES = (
    "The common name for the focal species in the audio is",
    "The scientific name for the focal species in the audio is",
)
PAPER_COMMA_CUT_DATASETS = frozenset({"watkins", "cbi"})
PAPER_DIGIT_DATASETS = frozenset({"zf-indiv"})
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


class MissingMappingWarning(UserWarning):
    """Scientific or combined answers scored against the labels as they are, for want of a mapping."""


# ----------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Metrics:
    """Metrics of one (dataset, prompt, alpha) group; rates are fractions of the n scored answers."""

    n: int
    accuracy: float
    f1_weighted: float
    f1_macro: float
    precision_weighted: float
    recall_weighted: float
    counts: Mapping[Outcome, int]
    per_class: Mapping[str, ClassMetrics]
    extra: Mapping[str, float] = field(default_factory=dict)

    def rate(self, outcome: Outcome) -> float:
        return self.counts.get(outcome, 0) / self.n if self.n else math.nan

    def summary(self) -> dict[str, float | None]:
        """The six numbers of the CLI's --json output (None where no answer could be scored)."""
        values = {
            "accuracy": self.accuracy,
            "f1_weighted": self.f1_weighted,
            "f1_macro": self.f1_macro,
            "out_of_set": self.rate(Outcome.OUT_OF_SET),
            "in_set_confusion": self.rate(Outcome.IN_SET_CONFUSION),
            "abstention": self.rate(Outcome.ABSTENTION),
        }
        return {key: None if math.isnan(value) else value for key, value in values.items()}


def per_class_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, ClassMetrics]:
    """Precision, recall and F1 of every label seen in y_true or y_pred (sklearn, zero_division=0)."""
    labels = sorted(set(y_true) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    true_ids = np.fromiter((index[label] for label in y_true), dtype=np.int64, count=len(y_true))
    pred_ids = np.fromiter((index[label] for label in y_pred), dtype=np.int64, count=len(y_pred))
    support = np.bincount(true_ids, minlength=len(labels))
    predicted = np.bincount(pred_ids, minlength=len(labels))
    hits = np.bincount(true_ids[true_ids == pred_ids], minlength=len(labels))
    precision = np.divide(hits, predicted, out=np.zeros(len(labels)), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(len(labels)), where=support > 0)
    f1 = np.divide(2 * hits, predicted + support, out=np.zeros(len(labels)), where=(predicted + support) > 0)
    return {
        label: ClassMetrics(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for label, i in index.items()
    }


def weighted_average(per_class: Mapping[str, ClassMetrics], attribute: str) -> float:
    """sklearn's average="weighted": per-label values weighted by their support in y_true."""
    total = sum(metrics.support for metrics in per_class.values())
    if total == 0:
        return math.nan
    return sum(getattr(metrics, attribute) * metrics.support for metrics in per_class.values()) / total


def classification_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    outcomes: Sequence[Outcome],
    extra: Mapping[str, float] | None = None,
) -> Metrics:
    """Accuracy, weighted and macro F1, per-class scores and the error breakdown.

    Macro F1 averages over the real classes seen in y_true or y_pred; the out-of-set and abstention
    placeholders are left out of it (they are not classes), and carry no weight in the weighted F1.
    """
    if not (len(y_true) == len(y_pred) == len(outcomes)):
        raise ScoringError("y_true, y_pred and outcomes must have the same length")
    counts = {outcome: 0 for outcome in Outcome}
    for outcome in outcomes:
        counts[outcome] += 1
    n = len(y_true)
    everything = per_class_metrics(y_true, y_pred) if n else {}
    classes = {label: metrics for label, metrics in everything.items() if label not in SENTINELS}
    correct = sum(truth == prediction for truth, prediction in zip(y_true, y_pred, strict=True))
    return Metrics(
        n=n,
        accuracy=correct / n if n else math.nan,
        f1_weighted=weighted_average(everything, "f1"),
        f1_macro=float(np.mean([m.f1 for m in classes.values()])) if classes else math.nan,
        precision_weighted=weighted_average(everything, "precision"),
        recall_weighted=weighted_average(everything, "recall"),
        counts=counts,
        per_class=classes,
        extra=dict(extra or {}),
    )


# ----------------------------------------------------------------------------------------------
# Snapping to the nearest label (official and paper modes)


def cut_at_end_of_text(text: str) -> str:
    return text.split(END_OF_TEXT)[0]


def nearest_labels(texts: Sequence[str], labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The label at the smallest Levenshtein distance from each text, ties to the first in sorted order."""
    ordered = sorted(set(labels))
    if not ordered:
        raise ScoringError("no labels to snap answers to")
    if not texts:
        return [], np.zeros(0, dtype=np.int64)
    distances = process.cdist(list(texts), ordered, scorer=Levenshtein.distance, dtype=np.int32, workers=1)
    best = distances.argmin(axis=1)
    return [ordered[i] for i in best], distances[np.arange(len(texts)), best]


def snap_official(predictions: Sequence[str], label_set: Iterable[str]) -> list[str]:
    """beans-zero classification: cut at <|end_of_text|>, exact match, else nearest label at any distance."""
    labels = set(label_set)
    texts = [cut_at_end_of_text(text) for text in predictions]
    nearest, _ = nearest_labels(texts, labels)
    return [text if text in labels else near for text, near in zip(texts, nearest, strict=True)]


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


def snap_paper(predictions: Sequence[str], label_set: Iterable[str], dataset: str) -> list[str]:
    """The paper's classification scoring: clean, exact match, else nearest label within 5 edits, else "None"."""
    labels = set(label_set)
    texts = [paper_clean(text, dataset) for text in predictions]
    nearest, distances = nearest_labels(texts, labels)
    return [
        text if text in labels else (near if distance <= PAPER_MAX_DISTANCE else PAPER_OUT_OF_SET)
        for text, near, distance in zip(texts, nearest, distances, strict=True)
    ]


# ----------------------------------------------------------------------------------------------
# Robust matching


_DASHES = re.compile(r"[-‐‑–—_]+")
_WHITESPACE = re.compile(r"\s+")
_DROPPED_CHARACTERS = str.maketrans("", "", "\"'`´‘’“”«»*#")
_SEPARATORS = re.compile(r"\s*(?:[:;()\[\]/\n]|,\s|\.\s|\s[-–—]\s|\s(?:also known as|aka|or|and)\s)\s*")
_PREAMBLES = [
    re.compile(pattern)
    for pattern in (
        r"^(?:the |its )?(?:common |scientific |taxonomic |vernacular |species |latin )?name (?:of|for) "
        r"(?:the |this )?(?:focal )?(?:species|animal|bird|mammal|sound|creature|organism)"
        r"(?: (?:in|of|from) (?:the |this )?(?:audio|recording|clip|sound))? (?:is|would be|could be)"
        r"(?: likely| probably| most likely)? ",
        r"^(?:the )?(?:focal )?(?:species|animal|bird)(?: (?:in|of) (?:the |this )?(?:audio|recording|clip))? "
        r"(?:is|appears to be|seems to be|sounds like|could be|might be)(?: likely| probably| most likely)? ",
        r"^(?:i think|i believe|based on the audio|in this audio|from the audio|i hear)(?: that)?(?: its)? ",
        r"^(?:this|it|that|the audio|the recording|the sound)(?: is| sounds like| appears to be| seems to be"
        r"| could be| might be| may be| contains| features)(?: likely| probably| most likely)? ",
        r"^(?:its|thats|sounds like|likely|probably|answer|species) ",
        r"^(?:the )?(?:sound|call|song|calls|songs|vocalization|vocalisation|audio|recording) (?:of|from|made by) ",
        r"^(?:but|so|and|yes|well) ",
        r"^(?:an?|the) ",
    )
]
_TRAILING_WORDS = re.compile(r"\s+(?:calls?|sounds?|songs?|vocali[sz]ations?|whistles?|clicks?|species)$")
_ABSTENTION = re.compile(
    r"^none\b"
    r"|\b(?:i (?:cannot|can not|cant|could not|couldnt|am unable|am not able|dont know|do not know|am not sure)"
    r"|im (?:not sure|unable|not able|sorry)|i am sorry|sorry|unfortunately"
    r"|(?:unable|not possible|impossible|difficult|hard) to (?:determine|identify|tell|say)"
    r"|(?:cannot|cant|could not|couldnt) (?:be )?(?:determined|identified|determine|identify|tell)"
    r"|no (?:audio|sound|species|animal|bird)s?(?: (?:is|are))? (?:present|detected|heard|provided|audible|mentioned)"
    r"|(?:there is|there are) no (?:audio|sound|focal|species|animal|bird|scientific|common)"
    r"|not (?:explicitly )?(?:mentioned|stated|specified|provided|identifiable)"
    r"|(?:doesnt|does not|didnt|did not) (?:provide|contain|mention|include|specify)"
    r"|not enough information|enough information|unknown|unidentified|as an ai|text based|more context)\b"
)
_COUNT_TOKENS = re.compile(
    r"\b(?:\d+|zero|one|two|three|four|five|six|seven|eight|nine|ten|more|multiple|several|many|single)\b"
)
_NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "single": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}


def _cut_at_end_tokens(text: str) -> str:
    for token in END_TOKENS:
        text = text.split(token)[0]
    return text


def normalise(text: str) -> str:
    """Case, quotes, markdown, dashes, underscores and end punctuation removed; the form names are compared in."""
    text = unicodedata.normalize("NFKC", _cut_at_end_tokens(text)).casefold().translate(_DROPPED_CHARACTERS)
    text = _WHITESPACE.sub(" ", _DASHES.sub(" ", text))
    return text.strip(" \t.,;:!?")


def strip_preambles(text: str) -> str:
    """Remove known lead-ins ("The common name ... is", "It sounds like a", "The sound of a") and tails ("calls")."""
    previous = None
    while previous != text:
        previous = text
        for pattern in _PREAMBLES:
            text = pattern.sub("", text)
        text = _TRAILING_WORDS.sub("", text).strip()
    return text


def answer_candidates(answer: str) -> list[str]:
    """Strings an answer might name a class by: the whole answer, then its pieces in order of appearance.

    Pieces are cut at colons, parentheses, slashes, sentence ends, comma-space, " - ", "also known as",
    "or" and "and", so "Balaenoptera physalus: Fin Whale" and "Walrus (Odobenus rosmarus)" both yield
    their two names.
    """
    raw = unicodedata.normalize("NFKC", _cut_at_end_tokens(answer)).casefold().translate(_DROPPED_CHARACTERS)
    candidates: list[str] = []
    for piece in [raw, *_SEPARATORS.split(raw)]:
        cleaned = normalise(piece)
        for form in (cleaned, strip_preambles(cleaned)):
            if form and form not in candidates:
                candidates.append(form)
    return candidates


def is_abstention(answer: str) -> bool:
    """Empty, or a refusal ("I cannot determine", "I'm not sure", "no sound is present")."""
    text = normalise(answer)
    return not text or _ABSTENTION.search(text) is not None


def common_name_tolerance(alias: str) -> int:
    """Typos allowed in a common name: none under 8 characters, one per 8, at most two."""
    return min(2, len(alias) // 8)


def scientific_name_tolerance(alias: str) -> int:
    """Looser for binomials: long, and often written with an older epithet ("melaena" for "melas")."""
    return min(3, len(alias) // 6)


def common_name_aliases(label: str) -> list[str]:
    """A label's normalised forms; "Fin, Finback Whale" also answers to "finback whale", "fin whale", "fin"."""
    full = normalise(label)
    aliases = [full]
    parts = [normalise(part) for part in label.split(",") if normalise(part)]
    if len(parts) > 1:
        aliases.extend(parts)
        head_noun = parts[-1].split()[-1]
        if len(parts[0].split()) == 1 and len(parts[-1].split()) > 1:
            aliases.append(f"{parts[0]} {head_noun}")
    return list(dict.fromkeys(aliases))


class AliasIndex:
    """Names -> class keys. An answer is matched, in this order: exactly; within a small typo tolerance;
    as a shortened name that fits one class only ("short finned pilot whale"); as the earliest class
    named inside a longer answer. Each step looks at the whole answer first, then its pieces.
    """

    def __init__(
        self,
        aliases_by_class: Mapping[str, Sequence[str]],
        tolerance: Callable[[str], int] = common_name_tolerance,
    ):
        owners: dict[str, set[str]] = defaultdict(set)
        for key, aliases in aliases_by_class.items():
            for alias in aliases:
                if alias:
                    owners[alias].add(key)
        full_names = {normalise(key): key for key in aliases_by_class}
        # An alias two classes share names neither, unless it is one class's own full name.
        self.alias_to_class = {
            alias: (next(iter(keys)) if len(keys) == 1 else full_names[alias])
            for alias, keys in owners.items()
            if len(keys) == 1 or alias in full_names
        }
        self.aliases = sorted(self.alias_to_class)
        self.tolerances = np.array([tolerance(alias) for alias in self.aliases], dtype=np.int64)
        self.alias_words = [(set(alias.split()), len(alias.split()), alias) for alias in self.aliases]
        # One alternation, longest names first: a search finds the earliest mention, and the longest at it.
        mentionable = sorted((alias for alias in self.aliases if len(alias) >= 4), key=lambda a: (-len(a), a))
        self.mention_pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, mentionable)) + r")(?!\w)") if mentionable else None
        )
        self.memo: dict[str, str | None] = {}

    def exact(self, candidates: Sequence[str]) -> str | None:
        for candidate in candidates:
            if candidate in self.alias_to_class:
                return self.alias_to_class[candidate]
        return None

    def fuzzy(self, candidates: Sequence[str]) -> str | None:
        """The alias nearest to any candidate within its tolerance; ties to the earlier candidate, then sorted."""
        if not candidates or not self.aliases:
            return None
        distances = process.cdist(list(candidates), self.aliases, scorer=Levenshtein.distance, dtype=np.int64)
        allowed = np.where(distances <= self.tolerances[None, :], distances, np.iinfo(np.int64).max)
        best = allowed.min()
        if best == np.iinfo(np.int64).max:
            return None
        _, column = np.argwhere(allowed == best)[0]
        return self.alias_to_class[self.aliases[column]]

    def shortened(self, candidates: Sequence[str]) -> str | None:
        """A candidate of two or more words, all within one class's name and at least half of it."""
        for candidate in candidates:
            words = set(candidate.split())
            if len(words) < 2:
                continue
            fits = {
                self.alias_to_class[alias]
                for alias_words, size, alias in self.alias_words
                if 2 * len(words) >= size and words <= alias_words
            }
            if len(fits) == 1:
                return fits.pop()
        return None

    def mentioned(self, text: str) -> str | None:
        """The class named earliest in a longer answer (the longest name wins at one position)."""
        match = self.mention_pattern.search(text) if self.mention_pattern else None
        return None if match is None else self.alias_to_class[match.group()]

    def match(self, answer: str) -> str | None:
        if answer not in self.memo:  # answers repeat a lot across alphas and samples
            candidates = answer_candidates(answer)
            self.memo[answer] = (
                self.exact(candidates)
                or self.fuzzy(candidates)
                or self.shortened(candidates)
                or self.mentioned(normalise(answer))
            )
        return self.memo[answer]


def count_class(answer: str, one_label: str, more_label: str) -> str | None:
    """For One/More label sets: the first count word or number decides (0 or 1 -> One, 2+ -> More)."""
    match = _COUNT_TOKENS.search(normalise(answer))
    if match is None:
        return None
    token = match.group()
    if token in {"more", "multiple", "several", "many"}:
        return more_label
    count = int(token) if token.isdigit() else _NUMBER_WORDS[token]
    return one_label if count <= 1 else more_label


# ----------------------------------------------------------------------------------------------
# Scoring groups of answers


@dataclass(frozen=True)
class ScoredAnswer:
    """One answer after scoring: its class in the scoring space (or a placeholder) and where it went."""

    id: str
    prediction: str
    label: str
    predicted: str
    outcome: Outcome


@dataclass(frozen=True)
class GroupScore:
    dataset: str
    prompt_name: str
    alpha: float
    kind: PromptKind
    mode: ScoringMode
    task: str
    answers: list[ScoredAnswer]
    metrics: Metrics


def _outcome(label: str, predicted: str) -> Outcome:
    if predicted == label:
        return Outcome.CORRECT
    if predicted == ROBUST_ABSTENTION:
        return Outcome.ABSTENTION
    if predicted in (PAPER_OUT_OF_SET, ROBUST_OUT_OF_SET):
        return Outcome.OUT_OF_SET
    return Outcome.IN_SET_CONFUSION


def paper_target(label: str, kind: PromptKind, mapping: LabelMapping | None) -> str:
    """The label as the paper scores it: the common name, the mapped scientific name, or "<sci> : <common>"."""
    if mapping is None or kind is PromptKind.COMMON:
        return label
    scientific = mapping.scientific_name(label)
    return scientific if kind is PromptKind.SCIENTIFIC else f"{scientific} : {label}"


def score_classification(
    ids: Sequence[str],
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    dataset: str,
    kind: PromptKind,
    mode: ScoringMode,
    label_set: Iterable[str],
    mapping: LabelMapping | None = None,
) -> tuple[list[ScoredAnswer], Metrics]:
    """Score one group of classification answers; `label_set` holds common-name labels as in the data."""
    if not (len(ids) == len(predictions) == len(labels)):
        raise ScoringError("ids, predictions and labels must have the same length")
    label_set = sorted(set(label_set) | set(labels))
    if mapping is not None and kind is not PromptKind.COMMON and mapping.missing(label_set):
        raise MappingError(f"{dataset}: the label mapping lacks {mapping.missing(label_set)}")
    if mode is ScoringMode.ROBUST:
        return _score_robust(ids, predictions, labels, kind=kind, label_set=label_set, mapping=mapping)
    targets = [paper_target(label, kind, mapping) for label in labels]
    space = {paper_target(label, kind, mapping) for label in label_set}
    if mode is ScoringMode.OFFICIAL:
        predicted = snap_official(predictions, space)
    else:
        predicted = snap_paper(predictions, space, dataset)
    answers = [
        ScoredAnswer(i, text, target, guess, _outcome(target, guess))
        for i, text, target, guess in zip(ids, predictions, targets, predicted, strict=True)
    ]
    return answers, _metrics_of(answers)


def _metrics_of(answers: Sequence[ScoredAnswer], extra: Mapping[str, float] | None = None) -> Metrics:
    return classification_metrics(
        [a.label for a in answers], [a.predicted for a in answers], [a.outcome for a in answers], extra
    )


def _score_robust(
    ids: Sequence[str],
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    kind: PromptKind,
    label_set: Sequence[str],
    mapping: LabelMapping | None,
) -> tuple[list[ScoredAnswer], Metrics]:
    common_index = AliasIndex({label: common_name_aliases(label) for label in label_set})
    scientific_index = None
    if mapping is not None and kind is not PromptKind.COMMON:
        scientific_index = AliasIndex(
            {label: [normalise(name) for name in mapping.accepted_names(label)] for label in label_set},
            tolerance=scientific_name_tolerance,
        )
    count_labels = {normalise(label): label for label in label_set}
    counts_answer = set(count_labels) == {"one", "more"}

    def resolve(text: str) -> str | None:
        if counts_answer:
            return count_class(text, count_labels["one"], count_labels["more"])
        return common_index.match(text)

    def placeholder(text: str) -> str:
        return ROBUST_ABSTENTION if is_abstention(text) else ROBUST_OUT_OF_SET

    answers: list[ScoredAnswer] = []
    scientific_hits: list[bool] = []
    common_hits: list[bool] = []
    unscorable = 0
    for sample_id, text, label in zip(ids, predictions, labels, strict=True):
        if kind is PromptKind.SCIENTIFIC and scientific_index is not None:
            if not mapping.accepted_names(label):
                unscorable += 1  # the mapping has no scientific name: no answer could be right
                continue
            guess = scientific_index.match(text)
        elif kind is PromptKind.COMBINED and scientific_index is not None:
            common_guess = common_index.match(text)
            scientific_guess = scientific_index.match(text)
            common_hits.append(common_guess == label)
            if mapping.accepted_names(label):
                scientific_hits.append(scientific_guess == label)
            guess = common_guess or scientific_guess
        else:
            guess = resolve(text)
        predicted = guess if guess is not None else placeholder(text)
        answers.append(ScoredAnswer(sample_id, text, label, predicted, _outcome(label, predicted)))
    extra = {"unscorable": float(unscorable)}
    if kind is PromptKind.COMBINED and scientific_index is not None:
        extra["common_part_accuracy"] = float(np.mean(common_hits)) if common_hits else math.nan
        extra["scientific_part_accuracy"] = float(np.mean(scientific_hits)) if scientific_hits else math.nan
    return answers, _metrics_of(answers, extra)


# ----------------------------------------------------------------------------------------------
# Detection: comma-separated species lists


def detection_classes(labels: Iterable[str]) -> list[str]:
    """The classes of a detection set: the pieces of the comma-joined labels, "None" excluded."""
    classes = {piece.strip() for label in labels for piece in label.split(",")}
    return sorted(piece for piece in classes if piece and piece.lower() != "none")


def _label_pieces(text: str) -> frozenset[str]:
    return frozenset() if text.strip().lower() == "none" else frozenset(p.strip() for p in text.split(", "))


def score_detection(
    ids: Sequence[str],
    predictions: Sequence[str],
    labels: Sequence[str],
    *,
    mode: ScoringMode,
    label_set: Iterable[str],
) -> tuple[list[ScoredAnswer], Metrics]:
    """beans-zero detection (official and paper alike), or the robust reading of each listed name.

    Accuracy is the share of exact set matches; F1 macro is beans-zero's macro of per-class binary F1;
    mAP (on the 0/1 predictions, ties kept in row order) is an extra.
    """
    label_set = sorted(set(label_set) | set(labels))
    classes = detection_classes(label_set)
    true_sets = [_label_pieces(label) & set(classes) for label in labels]
    predicted_sets: list[frozenset[str]] = []
    outcomes: list[Outcome] = []
    if mode is ScoringMode.ROBUST:
        index = AliasIndex({name: common_name_aliases(name) for name in classes})
        for text, truth in zip(predictions, true_sets, strict=True):
            names, unmatched = _robust_detection(text, index)
            predicted_sets.append(names)
            outcome = Outcome.CORRECT if names == truth else Outcome.IN_SET_CONFUSION
            if outcome is not Outcome.CORRECT and is_abstention(text) and not names:
                outcome = Outcome.ABSTENTION
            elif outcome is not Outcome.CORRECT and unmatched:
                outcome = Outcome.OUT_OF_SET
            outcomes.append(outcome)
    else:
        targets = set(label_set) | {PAPER_OUT_OF_SET}
        for text, truth in zip(predictions, true_sets, strict=True):
            pieces = [piece.strip() for piece in cut_at_end_of_text(text).split(",")]
            nearest, distances = nearest_labels(pieces, targets)
            snapped = [
                piece if piece in targets else (near if distance <= PAPER_MAX_DISTANCE else PAPER_OUT_OF_SET)
                for piece, near, distance in zip(pieces, nearest, distances, strict=True)
            ]
            names = _label_pieces(", ".join(snapped)) & set(classes)
            predicted_sets.append(names)
            dropped = any(s == PAPER_OUT_OF_SET and p != PAPER_OUT_OF_SET for p, s in zip(pieces, snapped, strict=True))
            outcome = Outcome.CORRECT if names == truth else Outcome.IN_SET_CONFUSION
            outcomes.append(Outcome.OUT_OF_SET if outcome is not Outcome.CORRECT and dropped else outcome)
    answers = [
        ScoredAnswer(i, text, label, ", ".join(sorted(names)) or PAPER_OUT_OF_SET, outcome)
        for i, text, label, names, outcome in zip(ids, predictions, labels, predicted_sets, outcomes, strict=True)
    ]
    return answers, detection_metrics(true_sets, predicted_sets, classes, outcomes)


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


def detection_metrics(
    true_sets: Sequence[frozenset[str]],
    predicted_sets: Sequence[frozenset[str]],
    classes: Sequence[str],
    outcomes: Sequence[Outcome],
) -> Metrics:
    n = len(true_sets)
    truth = np.array([[name in row for name in classes] for row in true_sets], dtype=bool).reshape(n, len(classes))
    guess = np.array([[name in row for name in classes] for row in predicted_sets], dtype=bool).reshape(n, len(classes))
    hits = (truth & guess).sum(axis=0)
    support = truth.sum(axis=0)
    predicted = guess.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros(len(classes)), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(len(classes)), where=support > 0)
    f1 = np.divide(2 * hits, predicted + support, out=np.zeros(len(classes)), where=(predicted + support) > 0)
    per_class = {
        name: ClassMetrics(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(classes)
    }
    counts = {outcome: 0 for outcome in Outcome}
    for outcome in outcomes:
        counts[outcome] += 1
    exact = sum(t == p for t, p in zip(true_sets, predicted_sets, strict=True))
    return Metrics(
        n=n,
        accuracy=exact / n if n else math.nan,
        f1_weighted=weighted_average(per_class, "f1"),
        f1_macro=float(f1.mean()) if len(classes) else math.nan,
        precision_weighted=weighted_average(per_class, "precision"),
        recall_weighted=weighted_average(per_class, "recall"),
        counts=counts,
        per_class=per_class,
        extra={
            "mAP": mean_average_precision(guess.astype(float), truth) if len(classes) else math.nan,
            "precision_macro": float(precision.mean()) if len(classes) else math.nan,
            "recall_macro": float(recall.mean()) if len(classes) else math.nan,
        },
    )


def mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """beans-zero's mAP: per class, mean precision at each true row in descending score order (stable)."""
    averages = []
    ranks = np.arange(1, scores.shape[0] + 1)
    for k in range(scores.shape[1]):
        order = np.argsort(-scores[:, k], kind="stable")
        hits = truth[order, k]
        precision = np.cumsum(hits) / ranks
        averages.append(precision[hits].sum() / max(hits.sum(), 1))
    return float(np.mean(averages))


# ----------------------------------------------------------------------------------------------
# Whole results


def score_rows(
    rows: Iterable[ResultRow],
    mode: ScoringMode | str,
    mapping: LabelMapping | None = None,
    label_sets: Mapping[str, Iterable[str]] | None = None,
) -> list[GroupScore]:
    """Score every (dataset, prompt, alpha) group of a results file or a released folder.

    A dataset's label set is the union of its labels over all groups (so a partial sweep still snaps
    to the same labels everywhere) unless `label_sets` gives it. Captioning groups are skipped.
    """
    mode = ScoringMode(mode)
    groups: dict[tuple[str, str, float], list[ResultRow]] = defaultdict(list)
    labels_seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        groups[(row.dataset, row.prompt_name, row.alpha)].append(row)
        labels_seen[row.dataset].add(row.label)
    scores = []
    for (dataset, prompt_name, alpha), group in sorted(groups.items()):
        task = task_of(dataset)
        if task == "captioning":
            continue
        label_set = set(labels_seen[dataset]) | set((label_sets or {}).get(dataset, ()))
        ids = [row.id for row in group]
        predictions = [row.prediction for row in group]
        labels = [row.label for row in group]
        kind = detect_prompt_kind(group[0].prompt)
        if task == "detection":
            answers, metrics = score_detection(ids, predictions, labels, mode=mode, label_set=label_set)
        else:
            if kind is not PromptKind.COMMON and mapping is None:
                warnings.warn(
                    f"{dataset} prompt {prompt_name!r} asks for {kind} names but no label mapping was given: "
                    "its answers are compared with the labels as they are",
                    MissingMappingWarning,
                    stacklevel=2,
                )
            active_mapping = mapping if kind is not PromptKind.COMMON else None
            answers, metrics = score_classification(
                ids,
                predictions,
                labels,
                dataset=dataset,
                kind=kind,
                mode=mode,
                label_set=label_set,
                mapping=active_mapping,
            )
        scores.append(GroupScore(dataset, prompt_name, alpha, kind, mode, task, answers, metrics))
    return scores
