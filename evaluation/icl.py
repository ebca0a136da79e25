"""In-context audio examples done right, and the fork's other query placeholders.

The paper's fork writes `{audio_examples}` as one "Audio: <AudioHere> / Label: NAME" block per
example but hands the model only the first recording, so every other placeholder silently gets
nothing; it draws examples with replacement (the same recording twice, or the very sample under
test) from an unseeded generator. Here every placeholder receives its own recording's window, in
prompt order with the recording under test last; examples come from the same data set, never the
sample under test, drawn without replacement by a seed, so a sweep resumed anywhere asks exactly the
same questions. A prompt that would not fit the model's context is refused before it is queued.

Template language (the fork's): `{species_list}` the retained species, comma-separated;
`{examples}` "Audio: DESCRIPTION / Label: NAME" per species; `{audio_examples}` k recordings per
species; `{randomize}` (removed from the text) shuffles the species order per sample, seeded.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from evaluation.datasets import Sample
from evaluation.prompts import Prompt, PromptTemplateError, shuffled_labels
from naturelm_core.config import AUDIO_PLACEHOLDER, AUDIO_PROMPT_PREFIX, NatureLMConfig
from naturelm_core.label_scores import Candidates

TEMPLATE_FIELDS = frozenset({"species_list", "examples", "audio_examples", "randomize"})
# Fields only the extended language has; a template using one of them cannot be a plain Prompt.
EXTENDED_ONLY_FIELDS = TEMPLATE_FIELDS - {"species_list"}
AUDIO_TAG = AUDIO_PROMPT_PREFIX.strip()
# Appended when a template with audio examples has no placeholder of its own: the test recording goes last.
TEST_BLOCK = f"\n\nAudio: {AUDIO_TAG}\nLabel:"
# A tag not followed by a space: the model layer (upstream's rule) would prepend one more placeholder.
DEFAULT_EXAMPLES_PER_CLASS = 1
# Each class's examples come from a seeded pool of at least this many recordings (more for larger k):
# enough variety between test samples, while only the pool's windows are held in memory.
MIN_POOL_PER_CLASS = 8

PROMPT_CACHE_SIZE = 4096  # distinct prompt texts whose token counts a budget keeps


class InContextError(ValueError):
    """In-context examples that cannot be provided: too few recordings of a class, or none loaded."""


class ContextLengthError(InContextError):
    """A prompt, with its recordings and the answer's tokens, would not fit the model's context."""


@dataclass(frozen=True)
class Species:
    """A class a closed-set or in-context prompt names, with the fork's free-text description of its sound."""

    name: str
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InContextError(f"a species needs a non-empty name, got {self.name!r}")
        if not isinstance(self.description, str):
            raise InContextError(f"species {self.name!r}: the description must be text, got {self.description!r}")

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "description": self.description}


def parse_species(values: Any, where: str = "species") -> tuple[Species, ...]:
    """A list of names or of {name, description} objects; names must be unique."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InContextError(f"{where} must be a list, got {values!r}")
    species = []
    for index, value in enumerate(values):
        if isinstance(value, str):
            species.append(Species(value))
            continue
        if not isinstance(value, Mapping):
            raise InContextError(f"{where}[{index}] must be a name or {{name, description}}, got {value!r}")
        unknown = sorted(set(value) - {"name", "description"})
        if unknown:
            raise InContextError(f"{where}[{index}] has unknown key(s) {unknown}; known: ['description', 'name']")
        if "name" not in value:
            raise InContextError(f"{where}[{index}] has no 'name'")
        species.append(Species(value["name"], value.get("description") or ""))
    names = [s.name for s in species]
    if len(set(names)) != len(names):
        raise InContextError(f"{where} lists a name twice: {names}")
    return tuple(species)


def template_fields(template: str) -> list[str]:
    """The `{field}` names of a template, in order, repeats kept."""
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise PromptTemplateError(f"malformed template {template!r}: {error}") from error


def uses_extended_language(template: str) -> bool:
    """True when a template needs ExtendedPrompt ({examples}, {audio_examples} or {randomize})."""
    return bool(EXTENDED_ONLY_FIELDS & set(template_fields(template)))


@dataclass(frozen=True)
class RenderedPrompt:
    """One sample's prompt text and the recordings of its placeholders, in order; the sample itself is last."""

    text: str
    example_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExtendedPrompt(Prompt):
    """A query in the fork's template language; `examples_per_class` is k for `{audio_examples}`.

    Unlike Prompt, the species are listed in the configured order unless the template asks for
    `{randomize}` (as the fork does). The recording under test must come after the examples: its
    own `<AudioHere>`, if the template has one, follows `{audio_examples}`; without one it is
    appended as a last "Audio: ... Label:" block.
    """

    examples_per_class: int = DEFAULT_EXAMPLES_PER_CLASS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise PromptTemplateError("a prompt needs a non-empty name: results are keyed by it")
        fields = template_fields(self.template)
        unknown = sorted(set(fields) - TEMPLATE_FIELDS)
        if unknown:
            raise PromptTemplateError(
                f"prompt {self.name!r}: unknown placeholder(s) {unknown}; the template may use "
                f"{sorted('{' + f + '}' for f in TEMPLATE_FIELDS)} (write {{{{ and }}}} for literal braces)"
            )
        if fields.count("audio_examples") > 1:
            raise PromptTemplateError(f"prompt {self.name!r}: {{audio_examples}} may appear only once")
        k = self.examples_per_class
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise PromptTemplateError(f"prompt {self.name!r}: examples_per_class must be an integer >= 0, got {k!r}")
        if self.template.count(AUDIO_PLACEHOLDER) != self.template.count(AUDIO_TAG):
            raise PromptTemplateError(f"prompt {self.name!r}: write the recording's placeholder as {AUDIO_TAG}")
        before, after = self._split_at_audio_examples()
        own = before.count(AUDIO_PLACEHOLDER) + after.count(AUDIO_PLACEHOLDER)
        if own > 1:
            raise PromptTemplateError(
                f"prompt {self.name!r} has {own} {AUDIO_PLACEHOLDER} placeholders of its own; a sweep asks about one "
                "recording per prompt (use {audio_examples} for example recordings)"
            )
        if self.uses_audio_examples and AUDIO_PLACEHOLDER in before:
            raise PromptTemplateError(
                f"prompt {self.name!r}: the recording under test must come after the examples; move {{audio_examples}} "
                f"before its {AUDIO_PLACEHOLDER}, or leave the placeholder out and it is added at the end"
            )

    def _split_at_audio_examples(self) -> tuple[str, str]:
        """The template's literal text before and after `{audio_examples}` (all of it 'before' if absent)."""
        before: list[str] = []
        after: list[str] = []
        seen = False
        for literal, name, _, _ in string.Formatter().parse(self.template):
            (after if seen else before).append(literal)
            seen = seen or name == "audio_examples"
        return "".join(before), "".join(after)

    @property
    def uses_audio_examples(self) -> bool:
        return "audio_examples" in template_fields(self.template) and self.examples_per_class > 0

    @property
    def randomizes(self) -> bool:
        return "randomize" in template_fields(self.template)

    def render(
        self, sample_id: str = "", labels: Sequence[str] | None = None, seed: int = 0, separator: str = ", "
    ) -> str:
        """The text for one sample when no example recordings are involved (see render_for_sample)."""
        return self.render_for_sample(sample_id, labels or (), seed, separator=separator).text

    def render_for_sample(
        self,
        sample_id: str,
        labels: Sequence[str],
        seed: int,
        descriptions: Mapping[str, str] | None = None,
        bank: ExampleBank | None = None,
        separator: str = ", ",
    ) -> RenderedPrompt:
        """The text for one sample and the example recordings of its placeholders, in order."""
        fields = set(template_fields(self.template))
        if fields & {"species_list", "examples", "audio_examples"} and not labels:
            raise PromptTemplateError(f"prompt {self.name!r} lists the species, but no labels were given")
        order = shuffled_labels(labels, seed, sample_id) if self.randomizes else list(labels)
        values = {
            "species_list": separator.join(order),
            "examples": "\n\n".join(f"Audio: {(descriptions or {}).get(name, '')}\nLabel: {name}" for name in order),
            "randomize": "",
            "audio_examples": "",
        }
        if not self.uses_audio_examples:
            return RenderedPrompt(self.template.format(**values))
        if bank is None:
            raise InContextError(f"prompt {self.name!r} needs example recordings, but none were loaded")
        examples = bank.draw(sample_id, order, self.examples_per_class)
        values["audio_examples"] = "\n\n".join(f"Audio: {AUDIO_TAG}\nLabel: {label}" for _, label in examples)
        text = self.template.format(**values)
        if AUDIO_PLACEHOLDER not in self._split_at_audio_examples()[1]:
            text = text.rstrip() + TEST_BLOCK
        return RenderedPrompt(text, tuple(example_id for example_id, _ in examples))


def examples_needed(prompts: Iterable[Prompt]) -> int:
    """The largest k of the prompts that use audio examples (0: no example recordings needed)."""
    return max(
        (p.examples_per_class for p in prompts if isinstance(p, ExtendedPrompt) and p.uses_audio_examples), default=0
    )


def pool_size(examples_per_class: int) -> int:
    return max(MIN_POOL_PER_CLASS, 2 * examples_per_class + 1)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


class ExampleBank:
    """The recordings in-context examples are drawn from: per class, a seeded pool of usable model windows.

    The pool of a class is its first `pool_size(k)` usable recordings in an order fixed by the seed
    (independent of the data's row order). For each sample under test, k of its class-mates and k
    of every other class are drawn from the pools without replacement, never the sample itself, by a
    generator seeded with (seed, sample id); the blocks are then shuffled by the same generator.
    """

    def __init__(self, pools: Mapping[str, Sequence[str]], windows: Mapping[str, np.ndarray], seed: int) -> None:
        self.pools = {label: list(ids) for label, ids in pools.items()}
        self.windows = dict(windows)
        self.seed = seed

    @classmethod
    def collect(
        cls,
        samples: Iterable[Sample],
        labels: Sequence[str],
        examples_per_class: int,
        seed: int,
        window: Callable[[Sample], np.ndarray],
        unusable: tuple[type[Exception], ...] = (),
        dataset: str = "",
    ) -> ExampleBank:
        """Read each class's pool from `samples` (one pass); `window` turns a sample into its model window.

        A recording whose window cannot be made (`unusable` errors) is passed over for the next one.
        Every class needs at least k + 1 usable recordings: k examples besides the sample under test.
        """
        size = pool_size(examples_per_class)
        wanted = set(labels)
        best: dict[str, list[tuple[bytes, str, np.ndarray]]] = {label: [] for label in labels}
        for sample in samples:
            if sample.label not in wanted:
                continue
            rank = _digest(seed, "example", sample.id)
            pool = best[sample.label]  # sorted by rank, at most `size` long
            if len(pool) >= size and rank >= pool[-1][0]:
                continue
            try:
                entry = (rank, sample.id, window(sample))
            except unusable:
                continue
            bisect.insort(pool, entry, key=lambda item: item[0])
            del pool[size:]
        short = {label: len(entries) for label, entries in best.items() if len(entries) < examples_per_class + 1}
        if short:
            where = f" in {dataset}" if dataset else ""
            raise InContextError(
                f"too few usable recordings{where} for {examples_per_class} in-context example(s) per class "
                f"(k examples besides the recording under test need k + 1): {short}"
            )
        pools = {label: [sample_id for _, sample_id, _ in entries] for label, entries in best.items()}
        windows = {sample_id: w for entries in best.values() for _, sample_id, w in entries}
        return cls(pools, windows, seed)

    def draw(self, sample_id: str, labels: Sequence[str], k: int) -> list[tuple[str, str]]:
        """(recording id, label) of k examples per label for `sample_id`, in a shuffled order; never `sample_id`."""
        rng = random.Random(_digest(self.seed, "draw", sample_id))
        chosen = []
        for label in sorted(labels):
            if label not in self.pools:
                raise InContextError(f"no example recordings were loaded for class {label!r}")
            candidates = [i for i in self.pools[label] if i != sample_id]
            if len(candidates) < k:
                raise InContextError(f"class {label!r} has {len(candidates)} example recordings, {k} are needed")
            chosen.extend((example_id, label) for example_id in rng.sample(candidates, k))
        rng.shuffle(chosen)
        return chosen

    def window(self, example_id: str) -> np.ndarray:
        return self.windows[example_id]


# ----------------------------------------------------------------------------------------------
# The model's context


@dataclass(frozen=True)
class AnswerRoom:
    """The positions an answer takes after its prompt, and what sets that number (a refusal names it)."""

    tokens: int
    source: str

    @classmethod
    def generated(cls, max_new_tokens: int) -> AnswerRoom:
        """A generated answer: up to max_new_tokens."""
        return cls(max_new_tokens, f"max_new_tokens {max_new_tokens}")


@dataclass(frozen=True)
class ContextBudget:
    """How many positions a prompt takes in the LLM, and how many the model can hold.

    Positions = BOS + the templated text's tokens + each window's audio embeddings (29 for 10 s) +
    the answer's room (`AnswerRoom`: max_new_tokens when generating, the longest label when scoring
    labels); the limit is the LLM's max_position_embeddings unless a smaller one is configured
    (memory, not the model, is then what runs out).
    """

    tokenizer: Any
    template: str
    config: NatureLMConfig
    limit: int
    limit_source: str
    # prompt text -> (placeholders, text tokens with BOS): a sweep checks every row, and its rows repeat a few prompts
    _text_tokens: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of_model(cls, model: Any, limit: int | None = None) -> ContextBudget | None:
        """The budget of a NatureLM (`limit` in place of its own, if given); None for a model that exposes no
        tokenizer (a test's stand-in)."""
        tokenizer, config = getattr(model, "tokenizer", None), getattr(model, "config", None)
        if tokenizer is None or not isinstance(config, NatureLMConfig):
            return None
        positions = model.llm.config.max_position_embeddings
        own = cls(tokenizer, config.prompt_template, config, positions, "the LLM's max_position_embeddings")
        return own.with_limit(limit)

    def with_limit(self, limit: int | None) -> ContextBudget:
        """This budget with a configured limit (a spec's max_context_tokens) in place of the model's, if given.

        A Ray pool fetches its model's budget once and applies each sweep's limit on the driver.
        """
        if limit is None:
            return self
        return replace(self, limit=limit, limit_source="the configured max_context_tokens")

    def positions(self, prompt_text: str, window_samples: Sequence[int]) -> tuple[int, int]:
        """(text tokens including BOS, audio embeddings) of a prompt with windows of these lengths."""
        from naturelm_core.encoder import audio_token_count  # both import torch
        from naturelm_core.prompting import tokenize_prompt

        if prompt_text not in self._text_tokens:
            if len(self._text_tokens) >= PROMPT_CACHE_SIZE:
                self._text_tokens.clear()
            pieces = tokenize_prompt(self.tokenizer, prompt_text, self.template)
            self._text_tokens[prompt_text] = (len(pieces) - 1, 1 + sum(len(piece) for piece in pieces))
        placeholders, text = self._text_tokens[prompt_text]
        if placeholders != len(window_samples):
            raise InContextError(
                f"the prompt has {placeholders} {AUDIO_PLACEHOLDER} placeholder(s) but {len(window_samples)} "
                "recording(s) were given"
            )
        audio = sum(audio_token_count(n, self.config) for n in window_samples)
        return text, audio

    def label_room(self, labels: Sequence[str]) -> AnswerRoom:
        """The room a likelihood row needs: its longest label's tokens, tokenized as they are scored.

        Nothing is generated: naturelm_core.likelihood feeds each label's tokens after the prompt, and
        reads the end of the answer off the last label token's logits, so the end takes no position.
        """
        candidates = Candidates.tokenize(self.tokenizer, labels)
        lengths = [len(ids) for ids in candidates.token_ids]
        tokens = max(lengths)
        return AnswerRoom(tokens, f"{tokens} tokens of the longest label {candidates.labels[lengths.index(tokens)]!r}")

    def check(self, prompt_text: str, window_samples: Sequence[int], answer: AnswerRoom, what: str) -> None:
        """Refuse a prompt that would not fit, naming what makes it long."""
        text, audio = self.positions(prompt_text, window_samples)
        needed = text + audio + answer.tokens
        if needed > self.limit:
            raise ContextLengthError(
                f"{what} needs {needed} positions ({text} text tokens + {audio} audio embeddings for "
                f"{len(window_samples)} recording(s) + {answer.source}) but {self.limit_source} is "
                f"{self.limit}; use fewer in-context examples per class, fewer species, or a shorter prompt"
            )
