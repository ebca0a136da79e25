"""What a spec asks: the subsets, the samples chosen from each, one work item per (sample, prompt, grid point).

Planning reads ids and labels only (no audio), so it is cheap enough to run when a sweep is started,
where bad data should fail at once; the SweepPlan made there is handed to the runner instead of
being made again. Items are identified by keys whose grid point goes through naturelm_core.alphas'
`grid_key`, so 0.3 and 0.30000000000000004 are one item, and a merge recipe is keyed by its name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluation.datasets import DatasetError, Sample, Subset, cached_subset_path, load_recordings, load_subset
from evaluation.icl import ExampleBank, ExtendedPrompt, examples_needed
from evaluation.sweep.spec import DataSource, SweepSpec
from naturelm_core.alphas import GridPoint, grid_key
from naturelm_core.config import SAMPLE_RATE, WINDOW_SECONDS

ItemKey = tuple[str, str, str, float | str]


def item_key(dataset: str, sample_id: str, prompt_name: str, point: GridPoint | str) -> ItemKey:
    """The item's identity; `point` may already be a recipe's name (a results row's `alpha`)."""
    return (dataset, sample_id, prompt_name, point if isinstance(point, str) else grid_key(point))


@dataclass(frozen=True)
class WorkItem:
    """One answer to produce: a sample, a prompt (rendered for that sample) and a grid point (an alpha or a recipe).

    `example_ids` are the in-context example recordings of the prompt's placeholders, in order; the
    sample itself fills the last placeholder.
    """

    dataset: str
    sample_id: str
    prompt_name: str
    prompt_text: str
    alpha: GridPoint
    example_ids: tuple[str, ...] = ()

    @property
    def key(self) -> ItemKey:
        return item_key(self.dataset, self.sample_id, self.prompt_name, self.alpha)


@dataclass
class SubsetPlan:
    """The samples of one subset a sweep asks about, in source order, and the labels closed-set prompts list.

    `examples` holds the in-context example recordings once the runner has read them (load_examples).
    """

    subset: Subset
    sample_ids: list[str]
    labels: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)
    examples: ExampleBank | None = None

    @property
    def name(self) -> str:
        return self.subset.name


@dataclass(frozen=True)
class SweepPlan:
    """A spec's subsets, planned once: by `check_sweep` when the sweep is started, else by the runner."""

    spec: SweepSpec
    subsets: tuple[SubsetPlan, ...]

    @classmethod
    def of(cls, spec: SweepSpec) -> SweepPlan:
        return cls(spec, tuple(plan_sweep(spec)))

    @property
    def items(self) -> int:
        return sum(len(plan.sample_ids) for plan in self.subsets) * self.spec.items_per_sample

    def keys(self) -> set[ItemKey]:
        """Every item's key, from names alone (no prompt is rendered)."""
        return {
            item_key(plan.name, sample_id, prompt.name, alpha)
            for plan in self.subsets
            for sample_id in plan.sample_ids
            for prompt in self.spec.prompts
            for alpha in self.spec.grid
        }


def check_sweep(spec: SweepSpec) -> SweepPlan | None:
    """The plan a sweep starts with, made where it is started so that bad data and mappings fail there.

    None where reading the ids would mean a long BEANS-Zero download: the sweep's own thread plans
    then. Data without a single sample is refused.
    """
    spec.label_mapping()
    if spec.source is DataSource.BEANS_ZERO and not all(cached_subset_path(s).is_file() for s in spec.subsets):
        return None
    plan = SweepPlan.of(spec)
    if plan.items == 0:
        raise DatasetError("the chosen data has no samples")
    return plan


def select_sample_ids(ids: Sequence[str], limit: int | None, seed: int) -> list[str]:
    """`limit` ids chosen by a seeded hash (reproducible anywhere, independent of row order), kept in source order."""
    unique = list(dict.fromkeys(ids))
    if limit is None or limit >= len(unique):
        return unique
    ranked = sorted(unique, key=lambda i: hashlib.sha256(f"{seed}\x1f{i}".encode()).digest())
    chosen = set(ranked[:limit])
    return [i for i in unique if i in chosen]


def open_subset(spec: SweepSpec, name: str) -> Subset:
    if spec.source is DataSource.RECORDINGS:
        window = spec.window_s if spec.window_s is not None else WINDOW_SECONDS
        return load_recordings(spec.path, spec.labels_csv, name=name, window_s=window)
    return load_subset(name, spec.path, window_s=spec.window_s)


def plan_sweep(spec: SweepSpec) -> list[SubsetPlan]:
    """Open every subset and choose its samples (reads ids and labels only, no audio)."""
    plans = []
    for name in spec.subsets:
        subset = open_subset(spec, name)
        # The species in the order prompts list them without {randomize}: as given, or the most frequent first.
        labels = None
        if spec.species:
            labels = [s.name for s in spec.species]
            subset = subset.with_classes(labels)
        elif spec.top_k_classes is not None:
            subset = subset.top_k_classes(spec.top_k_classes)
            labels = list(subset.label_counts())
        ids = select_sample_ids(subset.ids(), spec.limit, spec.seed)
        descriptions = {s.name: s.description for s in spec.species}
        plans.append(SubsetPlan(subset, ids, labels or subset.labels(), descriptions))
    return plans


def load_examples(spec: SweepSpec, plan: SubsetPlan) -> None:
    """Read the subset's in-context example recordings into the plan (one pass), if any prompt uses them.

    Only each recording's head is decoded: an example is heard as its first model window, nothing more.
    """
    from naturelm_core.audio import AudioError  # naturelm_core.audio imports torch

    k = examples_needed(spec.prompts)
    if k and plan.examples is None:
        plan.examples = ExampleBank.collect(
            plan.subset.samples(head_s=plan.subset.window_s),
            plan.labels,
            k,
            spec.seed,
            model_window,
            unusable=(AudioError,),
            dataset=plan.name,
        )


def sample_items(spec: SweepSpec, plan: SubsetPlan, sample_id: str) -> list[WorkItem]:
    """A sample's rows, prompt-major; closed-set prompts list the labels in this sample's own seeded order."""
    items = []
    for prompt in spec.prompts:
        if isinstance(prompt, ExtendedPrompt):
            rendered = prompt.render_for_sample(sample_id, plan.labels, spec.seed, plan.descriptions, plan.examples)
            text, example_ids = rendered.text, rendered.example_ids
        else:
            text, example_ids = prompt.render(sample_id, plan.labels, spec.seed), ()
        items.extend(WorkItem(plan.name, sample_id, prompt.name, text, a, example_ids) for a in spec.grid)
    return items


def model_window(sample: Sample) -> np.ndarray:
    """The sample's first model window at 16 kHz mono (zero-padded), as the paper's evaluation truncates clips.

    Only the head of the clip is resampled: a long recording costs no more than a short one. The head is the
    source samples the window's resampling reaches (naturelm_core.audio.head_source_frames), so the window is
    the one resampling the whole clip would give, bit for bit. A sample decoded with `Subset.decode(row,
    head_s=window_s)` holds no more than that already.
    """
    from naturelm_core.audio import head_source_frames, iter_windows, load_audio  # naturelm_core.audio imports torch

    waveform = sample.audio  # a decoded file's head: checked and clamped already, so only cut and padded here
    if not sample.model_ready:
        keep = head_source_frames(round(sample.window_s * SAMPLE_RATE), sample.sample_rate)
        waveform, _ = load_audio(sample.audio[:keep], sample_rate=sample.sample_rate)
    return next(iter_windows(waveform, window_s=sample.window_s, hop_s=sample.window_s)).samples
