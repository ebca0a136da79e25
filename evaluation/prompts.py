"""The questions asked of the model in a sweep, and which kind of answer each one expects.

Results are keyed by prompt name, so every prompt is a named template. The closed-set prompt lists
the candidate species in a different order for every sample (the paper's trick against position
bias); the order is derived from a seed and the sample id through hashlib, so a sweep that is
resumed or rerun on another machine asks exactly the same questions.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

SPECIES_LIST_FIELD = "species_list"


class PromptKind(StrEnum):
    """What a prompt asks for, which decides the label space its answers are scored in."""

    COMMON = "common"
    SCIENTIFIC = "scientific"
    COMBINED = "combined"


class PromptTemplateError(ValueError):
    """A custom template uses a placeholder other than {species_list}, or a species list is missing."""


@dataclass(frozen=True)
class Prompt:
    """A named question; `template` may contain `{species_list}` and nothing else in braces."""

    name: str
    template: str

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise PromptTemplateError("a prompt needs a non-empty name: results are keyed by it")
        fields = _template_fields(self.template)
        unknown = fields - {SPECIES_LIST_FIELD}
        if unknown:
            raise PromptTemplateError(
                f"prompt {self.name!r}: unknown placeholder(s) {sorted(unknown)}; only {{{SPECIES_LIST_FIELD}}} "
                "is filled in (write {{ and }} for literal braces)"
            )

    @property
    def needs_species_list(self) -> bool:
        return SPECIES_LIST_FIELD in _template_fields(self.template)

    @property
    def kind(self) -> PromptKind:
        return detect_prompt_kind(self.template)

    def render(
        self,
        sample_id: str = "",
        labels: Sequence[str] | None = None,
        seed: int = 0,
        separator: str = ", ",
    ) -> str:
        """The text for one sample; the species list (if any) is shuffled per (seed, sample_id)."""
        if not self.needs_species_list:
            return self.template.format()
        if not labels:
            raise PromptTemplateError(f"prompt {self.name!r} lists the species, but no labels were given")
        return self.template.format(species_list=separator.join(shuffled_labels(labels, seed, sample_id)))


def _template_fields(template: str) -> set[str]:
    try:
        return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as error:
        raise PromptTemplateError(f"malformed template {template!r}: {error}") from error


def shuffled_labels(labels: Sequence[str], seed: int, sample_id: str) -> list[str]:
    """The labels in an order fixed by (seed, sample_id): independent per sample, identical on every run.

    Sorting first makes the order independent of how the caller happened to list the labels.
    """
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}".encode()).digest()
    order = sorted(labels)
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def detect_prompt_kind(prompt_text: str) -> PromptKind:
    """Which label space a prompt's answers belong to, read from its text.

    The paper's query numbers mean different things per data set, so the text decides. The combined
    prompt mentions both a scientific (or taxonomic) name and a colon, so it is checked first.
    """
    text = prompt_text.lower()
    asks_scientific = "scientific name" in text or "taxonomic name" in text
    if asks_scientific and "colon" in text:
        return PromptKind.COMBINED
    if asks_scientific:
        return PromptKind.SCIENTIFIC
    return PromptKind.COMMON


def custom_prompt(name: str, template: str) -> Prompt:
    """A user's own question; `{species_list}` in it becomes the per-sample shuffled label list."""
    return Prompt(name=name, template=template)


COMMON = Prompt("common", "What is the common name for the focal species in the audio?")
SCIENTIFIC = Prompt("scientific", "What is the scientific name for the focal species in the audio?")
COMBINED = Prompt(
    "combined",
    "Identify the focal species in the audio and provide its scientific name, followed by a colon and its common name.",
)
COMBINED_RELEASED = Prompt(
    "combined_taxonomic",
    "Identify the focal species in the audio and provide its taxonomic name followed by a colon and its common name.",
)
CLOSED_SET = Prompt(
    "closed_set",
    "What is the common name for the focal species in the audio? Output exactly one of: {species_list}",
)
ZF_ONE_OR_MORE = Prompt("zf_one_or_more", "Is there only one bird in the audio, or more? Reply with 'One' or 'More'.")
ZF_MORE_OR_ONE = Prompt(
    "zf_more_or_one", "Is there more than one bird in the audio, or just one? Reply with 'More' or 'One'."
)
ZF_HOW_MANY = Prompt("zf_how_many", "How many birds are there in the audio?")

PAPER_PROMPTS: dict[str, Prompt] = {
    prompt.name: prompt
    for prompt in (
        COMMON,
        SCIENTIFIC,
        COMBINED,
        COMBINED_RELEASED,
        CLOSED_SET,
        ZF_ONE_OR_MORE,
        ZF_MORE_OR_ONE,
        ZF_HOW_MANY,
    )
}
