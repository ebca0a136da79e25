"""Closed-set label scores: the candidates a row is scored against, and what it gets back. No torch here.

Why apart from the mechanism (naturelm_core.likelihood): the UI and the sweeps read, store and plot
these results, and must import them (like naturelm_core.requests) without loading torch.

What is scored: a candidate label is the exact text of an answer. Its tokens are the label tokenized
alone, with no special tokens: the prompt ends with `<|end_header_id|>` and "\\n\\n", after which
Llama-3's pre-tokenizer starts a new word whatever follows, so this is how the label's text would be
tokenized inside prompt + answer too, and the canonical way for the model to write it. After the last
label token comes the END of the answer: generation stops on any of the model's stop ids
(Llama-3.1: <|eot_id|>, <|end_of_text|>, <|eom_id|>), so the end is scored as one event whose
probability is the sum of theirs. Counting the end is what makes "Humpback" and "Humpback Whale"
comparable: without it every prefix of a label would score at least as high as the label itself.
So a log-likelihood is log P(the answer is exactly this label) under the model's canonical
tokenization: the sum of the label tokens' log-probabilities plus the end's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

MAX_LABEL_TOKENS = 64  # tokens of one label, its end not counted: far beyond any species name, and it bounds a pass
DEFAULT_CANDIDATES_PER_PASS = 256  # sequences per forward after the prefill; naturelm_core.likelihood: the memory


class LabelError(ValueError):
    """A candidate set that cannot be scored (empty, duplicated or too long labels); the message says which."""


class Tokenizer(Protocol):
    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...

    def batch_decode(self, ids: Sequence[Sequence[int]], **kwargs: Any) -> list[str]: ...


@dataclass(frozen=True)
class Candidates:
    """A checked candidate set with each label's token ids (and each id's text), tokenized once.

    A sweep over one closed set makes this once (`NatureLM.label_candidates`) and hands it to every row.
    """

    labels: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    pieces: tuple[tuple[str, ...], ...]

    @classmethod
    def tokenize(cls, tokenizer: Tokenizer, labels: Sequence[str]) -> Candidates:
        """Check the labels (at least one; none empty, repeated, or over MAX_LABEL_TOKENS tokens) and tokenize them."""
        if isinstance(labels, str):
            raise TypeError(f"labels must be a list of candidate strings, not one string ({labels!r})")
        labels = tuple(labels)
        if not labels:
            raise LabelError("no candidate labels were given: pass at least one")
        seen: dict[str, int] = {}
        for index, label in enumerate(labels):
            if not isinstance(label, str):
                raise TypeError(f"label {index} must be a string, got {type(label).__name__}")
            if not label.strip():
                raise LabelError(f"label {index} is empty; every candidate must have some text")
            if label in seen:
                raise LabelError(f"label {label!r} is listed twice (positions {seen[label]} and {index})")
            seen[label] = index
        token_ids = tuple(tuple(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
        for label, ids in zip(labels, token_ids, strict=True):
            if len(ids) > MAX_LABEL_TOKENS:
                raise LabelError(f"label {label!r} is {len(ids)} tokens long; at most {MAX_LABEL_TOKENS} are scored")
        singles = [[token] for ids in token_ids for token in ids]
        flat = tokenizer.batch_decode(singles, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        pieces, start = [], 0
        for ids in token_ids:
            pieces.append(tuple(flat[start : start + len(ids)]))
            start += len(ids)
        return cls(labels, token_ids, tuple(pieces))

    def __len__(self) -> int:
        return len(self.labels)


LabelsLike: TypeAlias = Candidates | Sequence[str]


def candidate_sets(tokenizer: Tokenizer, labels: LabelsLike | Sequence[LabelsLike], rows: int) -> list[Candidates]:
    """One candidate set per row: one set for every row (a list of strings, or `Candidates`), or one per row."""
    if isinstance(labels, Candidates):
        return [labels] * rows
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of candidate strings, not one string ({labels!r})")
    labels = list(labels)
    per_row = [isinstance(item, Candidates | Sequence) and not isinstance(item, str) for item in labels]
    if not any(per_row):  # one set for all (or empty, or with a bad item: Candidates.tokenize says which)
        return [Candidates.tokenize(tokenizer, labels)] * rows
    if not all(per_row):
        raise TypeError("labels must be one list of strings for every row, or one list per row, not a mix")
    if len(labels) != rows:
        raise ValueError(f"got {len(labels)} label sets for {rows} rows; pass one per row or one for all")
    tokenized: dict[tuple[str, ...], Candidates] = {}
    sets = []
    for row_labels in labels:
        if isinstance(row_labels, Candidates):
            sets.append(row_labels)
            continue
        key = tuple(row_labels)
        if key not in tokenized:
            tokenized[key] = Candidates.tokenize(tokenizer, key)
        sets.append(tokenized[key])
    return sets


@dataclass(frozen=True)
class TokenLogProbs:
    """One label as the model scored it: each token's log-probability, then the end of the answer's."""

    ids: tuple[int, ...]
    pieces: tuple[str, ...]  # each id's text, for display
    log_probs: tuple[float, ...]  # log P(token | prompt, the label's earlier tokens), one per id
    end_log_prob: float  # log P(the answer ends here | prompt, the whole label): any stop id

    @property
    def log_likelihood(self) -> float:
        return math.fsum(self.log_probs) + self.end_log_prob

    @property
    def mean_log_prob(self) -> float:
        """Per scored event (tokens and the end): what the length-normalised distribution uses."""
        return self.log_likelihood / (len(self.ids) + 1)


@dataclass(frozen=True)
class LabelScores:
    """A row's scores over its candidate set, keyed by label in the order the labels were given.

    `probabilities` is the softmax of the log-likelihoods: the model's distribution over answers
    restricted to the candidates, i.e. P(answer = label | the answer is one of them).
    `normalized_probabilities` is the softmax of each label's mean log-probability per scored event
    (its tokens and the end) instead: it stops favouring labels for being short, at the price of no
    longer being a conditional probability (lm-evaluation-harness reports such a variant as acc_norm).
    """

    log_likelihoods: dict[str, float]
    probabilities: dict[str, float]
    normalized_probabilities: dict[str, float]
    tokens: dict[str, TokenLogProbs]

    @classmethod
    def from_tokens(cls, tokens: dict[str, TokenLogProbs]) -> LabelScores:
        log_likelihoods = {label: scored.log_likelihood for label, scored in tokens.items()}
        means = {label: scored.mean_log_prob for label, scored in tokens.items()}
        return cls(log_likelihoods, _softmax(log_likelihoods), _softmax(means), tokens)

    @property
    def best(self) -> str:
        """The most likely label (the first given among equals); the normalised ranking may differ."""
        return max(self.log_likelihoods, key=self.log_likelihoods.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for results files and the UI."""
        return {
            "log_likelihoods": self.log_likelihoods,
            "probabilities": self.probabilities,
            "normalized_probabilities": self.normalized_probabilities,
            "tokens": {
                label: {
                    "ids": list(scored.ids),
                    "pieces": list(scored.pieces),
                    "log_probs": list(scored.log_probs),
                    "end_log_prob": scored.end_log_prob,
                }
                for label, scored in self.tokens.items()
            },
        }


def _softmax(scores: dict[str, float]) -> dict[str, float]:
    top = max(scores.values())
    weights = {label: math.exp(score - top) for label, score in scores.items()}
    total = math.fsum(weights.values())
    return {label: weight / total for label, weight in weights.items()}
