"""The robust mode's match of an answer to a class: each class's aliases, typo tolerances, and AliasIndex.

Reads answers through answer_text (normalise, answer_candidates) and knows nothing of modes, labels or
metrics beyond the names it is given, so classification (common and scientific names) and detection
(species lists) match through the same index.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from evaluation.scoring.answer_text import answer_candidates, normalise


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
