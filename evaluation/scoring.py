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
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from evaluation.datasets import task_of
from evaluation.prompts import PromptKind, detect_prompt_kind
from evaluation.reference import LabelMapping, MappingError
from evaluation.results import GridKey, ResultRow, grid_order

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
HEADLINE_METRICS = ("accuracy", "f1_weighted", "f1_macro")
TIE_ORDERS = 32  # seeded random label orders replayed per group: cheap, and enough to show the usual spread


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


class RawLabelsWarning(UserWarning):
    """Scientific or combined answers scored officially: against the raw labels, as BEANS-Zero never maps."""


# ----------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class TieSensitivity:
    """How far the evaluator's arbitrary choice among equally near labels could move a group's numbers.

    `ranges` maps each metric (the headline ones, and in official mode BEANS-Zero's names too) to its
    (min, max) over the sorted order we report and TIE_ORDERS seeded random label orders: a difference
    between two alphas inside these ranges is within the evaluator's own arbitrariness.
    """

    tied: int  # answers whose nearest label was one of several equally near ones
    ranges: Mapping[str, tuple[float, float]]

    def columns(self) -> dict[str, float]:
        """Flat columns for a metrics table: tied_answers, then <metric>_tie_min and <metric>_tie_max."""
        columns: dict[str, float] = {"tied_answers": self.tied}
        for name, (low, high) in self.ranges.items():
            columns[f"{name}_tie_min"] = low
            columns[f"{name}_tie_max"] = high
        return columns


@dataclass(frozen=True)
class Metrics:
    """Metrics of one (dataset, prompt, alpha) group; rates are fractions of the n scored answers.

    `official` holds BEANS-Zero's own metrics under its own names (official mode only); `ties` the tie
    sensitivity of the modes that snap to the nearest label (official and paper), None for robust.
    """

    n: int
    accuracy: float
    f1_weighted: float
    f1_macro: float
    precision_weighted: float
    recall_weighted: float
    counts: Mapping[Outcome, int]
    per_class: Mapping[str, ClassMetrics]
    extra: Mapping[str, float] = field(default_factory=dict)
    official: Mapping[str, float] = field(default_factory=dict)
    ties: TieSensitivity | None = None

    def rate(self, outcome: Outcome) -> float:
        return self.counts.get(outcome, 0) / self.n if self.n else math.nan

    def summary(self) -> dict[str, float | None]:
        """The six headline numbers of the CLI's --json output (None where no answer could be scored)."""
        values = {
            "accuracy": self.accuracy,
            "f1_weighted": self.f1_weighted,
            "f1_macro": self.f1_macro,
            "out_of_set": self.rate(Outcome.OUT_OF_SET),
            "in_set_confusion": self.rate(Outcome.IN_SET_CONFUSION),
            "abstention": self.rate(Outcome.ABSTENTION),
        }
        return {key: None if math.isnan(value) else value for key, value in values.items()}


def classification_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    outcomes: Sequence[Outcome],
    extra: Mapping[str, float] | None = None,
) -> Metrics:
    """Accuracy, weighted and macro F1, per-class scores and the error breakdown.

    Weighted scores are scikit-learn's (average="weighted", zero_division=0, over the labels in y_true
    or y_pred), computed the way it computes them so that official numbers equal BEANS-Zero's to the bit.
    Macro F1 averages over the real classes only: the out-of-set and abstention placeholders are not
    classes (and, never being true labels, carry no weight in the weighted scores either).
    """
    if not (len(y_true) == len(y_pred) == len(outcomes)):
        raise ScoringError("y_true, y_pred and outcomes must have the same length")
    codes = LabelCodes(y_true, y_pred)
    return codes.metrics(codes.encode(y_pred), outcomes, extra)


class LabelCodes:
    """A group's labels as integer codes, so that its metrics, and those of other tie orders, are array sums."""

    def __init__(self, y_true: Sequence[str], y_pred: Sequence[str], also: Iterable[str] = ()):
        self.names = sorted(set(y_true) | set(y_pred) | set(also))
        self.index = {name: i for i, name in enumerate(self.names)}
        self.truth = self.encode(y_true)
        self.is_class = np.array([name not in SENTINELS for name in self.names], dtype=bool)

    def encode(self, values: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.index[value] for value in values), dtype=np.int64)

    def label_scores(self, pred: np.ndarray) -> dict[str, np.ndarray]:
        """Per label: support, predicted, hits and sklearn's precision, recall and F1 (0 where undefined)."""
        size = len(self.names)
        support = np.bincount(self.truth, minlength=size)
        predicted = np.bincount(pred, minlength=size)
        hits = np.bincount(self.truth[self.truth == pred], minlength=size)
        return {
            "support": support,
            "predicted": predicted,
            "hits": hits,
            "precision": _divide(hits, predicted),
            "recall": _divide(hits, support),
            "f1": _divide(2 * hits, predicted + support),
        }

    def headline(self, pred: np.ndarray) -> dict[str, float]:
        """accuracy, f1_weighted, f1_macro, precision_weighted and recall_weighted of one set of predictions."""
        return self._headline(self.label_scores(pred), len(pred))

    def _headline(self, scores: Mapping[str, np.ndarray], n: int) -> dict[str, float]:
        present = (scores["support"] + scores["predicted"]) > 0
        real = present & self.is_class
        weights = scores["support"][present]

        def weighted(name: str) -> float:
            return float(np.average(scores[name][present], weights=weights)) if n else math.nan

        return {
            "accuracy": float(scores["hits"].sum() / n) if n else math.nan,
            "f1_weighted": weighted("f1"),
            "f1_macro": float(np.mean(scores["f1"][real])) if real.any() else math.nan,
            "precision_weighted": weighted("precision"),
            "recall_weighted": weighted("recall"),
        }

    def metrics(
        self, pred: np.ndarray, outcomes: Sequence[Outcome], extra: Mapping[str, float] | None = None
    ) -> Metrics:
        scores = self.label_scores(pred)
        real = ((scores["support"] + scores["predicted"]) > 0) & self.is_class
        per_class = {
            self.names[i]: ClassMetrics(
                *(float(scores[name][i]) for name in ("precision", "recall", "f1")), int(scores["support"][i])
            )
            for i in np.flatnonzero(real)
        }
        return Metrics(
            n=len(pred),
            counts=outcome_counts(outcomes),
            per_class=per_class,
            extra=dict(extra or {}),
            **self._headline(scores, len(pred)),
        )


def outcome_counts(outcomes: Iterable[Outcome]) -> dict[Outcome, int]:
    counts = {outcome: 0 for outcome in Outcome}
    for outcome in outcomes:
        counts[outcome] += 1
    return counts


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def top1_hits(y_true: Sequence[str], y_pred: Sequence[str]) -> np.ndarray:
    """BEANS-Zero's Top-1 test: the prediction equals one of the true label's comma-separated parts.

    A label that itself holds a comma ("Beluga, White Whale") is thus never right in full, only when the
    answer snapped to another label that equals one of its parts.
    """
    return np.array([guess in _comma_parts(truth) for truth, guess in zip(y_true, y_pred, strict=True)], dtype=bool)


def official_classification(headline: Mapping[str, float], top1: np.ndarray) -> dict[str, float]:
    """BEANS-Zero's classification metrics, named as its evaluator names them (all weighted by support)."""
    return {
        "Accuracy": headline["accuracy"],
        "Precision": headline["precision_weighted"],
        "Recall": headline["recall_weighted"],
        "F1 Score": headline["f1_weighted"],
        "Top-1 Accuracy": float(top1.sum() / len(top1)) if len(top1) else math.nan,
    }


def _comma_parts(label: str) -> list[str]:
    return [part.strip() for part in label.split(",")]


# ----------------------------------------------------------------------------------------------
# Snapping to the nearest label (official and paper modes), and replaying other tie orders


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


def cut_at_end_of_text(text: str) -> str:
    return text.split(END_OF_TEXT)[0]


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


@dataclass(frozen=True)
class GroupScore:
    dataset: str
    prompt_name: str
    alpha: GridKey  # a float alpha, or a merge recipe's name
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
    """Score one group of classification answers; `label_set` holds the raw labels as in the data.

    Official scoring snaps to those raw labels whatever the prompt asked for, as BEANS-Zero never maps:
    `kind` and `mapping` shape the paper and robust modes only.
    """
    if not (len(ids) == len(predictions) == len(labels)):
        raise ScoringError("ids, predictions and labels must have the same length")
    label_set = sorted(set(label_set) | set(labels))
    if mode is ScoringMode.OFFICIAL:
        return _score_snapped(ids, predictions, labels, snap_official(predictions, label_set), official=True)
    if mapping is not None and kind is not PromptKind.COMMON and mapping.missing(label_set):
        raise MappingError(f"{dataset}: the label mapping lacks {mapping.missing(label_set)}")
    if mode is ScoringMode.ROBUST:
        return _score_robust(ids, predictions, labels, kind=kind, label_set=label_set, mapping=mapping)
    targets = [paper_target(label, kind, mapping) for label in labels]
    space = {paper_target(label, kind, mapping) for label in label_set}
    return _score_snapped(ids, predictions, targets, snap_paper(predictions, space, dataset), official=False)


@dataclass(frozen=True)
class _SnappedGroup:
    """A snapped classification group's numbers under any choice among its tied labels."""

    codes: LabelCodes
    targets: Sequence[str]
    chosen: np.ndarray  # label codes of the sorted-order choice
    top1: np.ndarray | None  # BEANS-Zero's Top-1 hits of that choice; official mode only

    def numbers(self, picks: Mapping[int, str] | None = None) -> dict[str, float]:
        """Headline metrics (and, official, BEANS-Zero's), with the tied answers in `picks` relabelled."""
        picks = picks or {}
        rows = list(picks)
        pred = self.chosen.copy()
        pred[rows] = self.codes.encode(picks.values())
        headline = self.codes.headline(pred)
        numbers = {name: headline[name] for name in HEADLINE_METRICS}
        if self.top1 is None:
            return numbers
        top1 = self.top1.copy()
        top1[rows] = [picks[row] in _comma_parts(self.targets[row]) for row in rows]
        return numbers | official_classification(headline, top1)


def _score_snapped(
    ids: Sequence[str], predictions: Sequence[str], targets: Sequence[str], snap: Snap, *, official: bool
) -> tuple[list[ScoredAnswer], Metrics]:
    answers = [
        ScoredAnswer(sample_id, text, target, guess, _outcome(target, guess), snap.ties.get(row, ()))
        for row, (sample_id, text, target, guess) in enumerate(zip(ids, predictions, targets, snap.labels, strict=True))
    ]
    codes = LabelCodes(targets, snap.labels, also=snap.space)
    top1 = top1_hits(targets, snap.labels) if official else None
    group = _SnappedGroup(codes, targets, codes.encode(snap.labels), top1)
    reported = group.numbers()
    metrics = codes.metrics(group.chosen, [answer.outcome for answer in answers])
    return answers, replace(
        metrics,
        official={name: value for name, value in reported.items() if name not in HEADLINE_METRICS},
        ties=tie_sensitivity(snap, len(snap.ties), reported, group.numbers),
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
    return answers, classification_metrics(
        [a.label for a in answers], [a.predicted for a in answers], [a.outcome for a in answers], extra
    )


# ----------------------------------------------------------------------------------------------
# Detection: comma-separated species lists


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


def detection_metrics(
    truth: np.ndarray, guess: np.ndarray, classes: Sequence[str], outcomes: Sequence[Outcome]
) -> Metrics:
    """Metrics of a detection group from its (answers, classes) true and predicted class matrices."""
    per_class = binary_class_metrics(truth, guess)
    values = detection_values(truth, guess)
    return Metrics(
        n=len(truth),
        accuracy=values["accuracy"],
        f1_weighted=values["f1_weighted"],
        f1_macro=values["f1_macro"],
        precision_weighted=_support_weighted([c.precision for c in per_class], truth),
        recall_weighted=_support_weighted([c.recall for c in per_class], truth),
        counts=outcome_counts(outcomes),
        per_class=dict(zip(classes, per_class, strict=True)),
        extra={name: values[name] for name in ("mAP", "precision_macro", "recall_macro")},
    )


def detection_values(truth: np.ndarray, guess: np.ndarray) -> dict[str, float]:
    """Exact-set accuracy and support-weighted F1 (ours), and BEANS-Zero's macro F1, precision, recall and mAP."""
    per_class = binary_class_metrics(truth, guess)
    classes = len(per_class)

    def macro(values: list[float]) -> float:
        return _sequential_sum(values) / classes if classes else math.nan

    return {
        "accuracy": float((truth == guess).all(axis=1).mean()) if len(truth) else math.nan,
        "f1_weighted": _support_weighted([c.f1 for c in per_class], truth),
        "f1_macro": macro([c.f1 for c in per_class]),
        "precision_macro": macro([c.precision for c in per_class]),
        "recall_macro": macro([c.recall for c in per_class]),
        "mAP": mean_average_precision(guess, truth) if classes else math.nan,
    }


def official_detection(values: Mapping[str, float]) -> dict[str, float]:
    """BEANS-Zero's detection metrics, named as its evaluator names them (all macro over the classes)."""
    return {
        "mAP": values["mAP"],
        "F1": values["f1_macro"],
        "Recall": values["recall_macro"],
        "Precision": values["precision_macro"],
    }


def binary_class_metrics(truth: np.ndarray, guess: np.ndarray) -> list[ClassMetrics]:
    """Per class, BEANS-Zero's binary precision, recall and F1 = 2PR/(P+R), 0 where undefined."""
    found = []
    hits, positives, trues = (truth & guess).sum(axis=0), guess.sum(axis=0), truth.sum(axis=0)
    for tp, predicted, support in zip(hits.tolist(), positives.tolist(), trues.tolist(), strict=True):
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0.0 else 0.0
        found.append(ClassMetrics(precision, recall, f1, support))
    return found


def _support_weighted(values: Sequence[float], truth: np.ndarray) -> float:
    support = truth.sum(axis=0)
    return float(np.average(values, weights=support)) if support.sum() else math.nan


def _sequential_sum(values: Iterable[float]) -> float:
    """Left to right, as BEANS-Zero's `+=` loop adds (Python 3.12's sum() compensates: another last bit)."""
    total = 0.0
    for value in values:
        total += value
    return total


def mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """BEANS-Zero's mAP, computed as it computes it: float32 torch tensors, rows ranked by torch.sort.

    With 0/1 predictions nearly every score is tied, and torch's unstable sort, not row order, decides how
    tied rows rank (so how much a true row scores): only the same call reproduces the evaluator's number.
    """
    import torch  # only detection needs it, so classification scoring stays free of torch

    scores_t = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    truth_t = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.int64))
    ranks = torch.arange(1, scores_t.shape[0] + 1).float()
    averages = torch.zeros(scores_t.shape[1])
    for k in range(scores_t.shape[1]):
        hits = truth_t[:, k][torch.sort(scores_t[:, k], 0, True).indices]
        precision = hits.float().cumsum(0).div(ranks)
        averages[k] = precision[hits.bool()].sum() / max(int(hits.sum()), 1)
    return float(averages.mean())


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
    to the same labels everywhere) unless `label_sets` gives it. Captioning groups are skipped. The
    mapping serves paper and robust scoring; official scoring never maps, so it neither needs nor uses one.
    """
    mode = ScoringMode(mode)
    groups: dict[tuple[str, str, GridKey], list[ResultRow]] = defaultdict(list)
    labels_seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        groups[(row.dataset, row.prompt_name, row.alpha)].append(row)
        labels_seen[row.dataset].add(row.label)
    scores = []
    for (dataset, prompt_name, alpha), group in sorted(groups.items(), key=_group_order):
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
            if kind is not PromptKind.COMMON and (mode is ScoringMode.OFFICIAL or mapping is None):
                _warn_unmapped(f"{dataset} prompt {prompt_name!r} asks for {kind} names", mode)
            answers, metrics = score_classification(
                ids,
                predictions,
                labels,
                dataset=dataset,
                kind=kind,
                mode=mode,
                label_set=label_set,
                mapping=mapping if kind is not PromptKind.COMMON else None,
            )
        scores.append(GroupScore(dataset, prompt_name, alpha, kind, mode, task, answers, metrics))
    return scores


def _group_order(item: tuple[tuple[str, str, GridKey], list[ResultRow]]) -> tuple:
    """Groups by dataset, prompt, then grid point: plain alphas by value, then merge recipes by name."""
    (dataset, prompt_name, key), _ = item
    return (dataset, prompt_name, grid_order(key))


def _warn_unmapped(asks: str, mode: ScoringMode) -> None:
    """Say that scientific or combined answers meet the raw labels: by design if official, else for want of a
    mapping (the CLI prints these; a near-zero official score for scientific answers is no bug)."""
    if mode is ScoringMode.OFFICIAL:
        message = "official scoring, as BEANS-Zero, applies no label mapping and compares them with the raw labels"
        warnings.warn(
            f"{asks}: {message} (paper mode scores them against mapped labels)", RawLabelsWarning, stacklevel=3
        )
    else:
        message = "but no label mapping was given: its answers are compared with the labels as they are"
        warnings.warn(f"{asks} {message}", MissingMappingWarning, stacklevel=3)
