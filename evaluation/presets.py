"""The paper's experiments as ready sweeps: one click each, with what they cost and the figures they make.

Each preset is our own SweepSpec for one experiment of "Model Merging Improves Zero-Shot
Generalization in Bioacoustic Foundation Models", asking the questions exactly as the paper's
released configs worded them (so the numbers can be compared), and naming the paper's figures
(same axes, same series) as data: a PresetFigure says what a figure shows, and ui.paper_figures
draws it from the sweep's scores in whichever scoring mode the user picks (no plotly here):

- watkins-cbi       common / scientific / combined prompts over alpha 0..1      Figures 2, 4, 6
- closed-set-2      unseen-family-cmn, its 2 most frequent classes              Figures 5, 7
- closed-set-all    unseen-family-cmn, all of its classes                       Figures 1, 5, 8
- zf-indiv          one bird or more: original, reversed and no-options prompts Figure 9
- icl               in-context examples, k = 0, 1, 5, on the 2-class set        Figure 10

The paper's k = 0 curve of Figure 10 is its 2-class closed-set run, so the icl preset asks that
closed-set question for k = 0 and the fork's in-context query for k = 1 and 5.

Three more presets are grids of merge recipes (issue 18; naturelm_core.recipes) rather than paper
experiments; they bring only their grid and ask the New sweep form's prompts of its data:

- lines-ramp        layers "linear:a0:a1", a0 in {0, 0.25, 0.5} x a1 in {0.5, 0.75, 1} (LiNeS-style)
- module-ablation   alpha 1 with one of q/k/v/o at 0, beside plain alpha 1 and 0.5
- rank-truncation   the top 1, 2, 4, 8, 16, 32 singular directions at alpha 1 and 0.5
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evaluation.datasets import SUBSETS
from evaluation.icl import ExtendedPrompt
from evaluation.prompts import COMBINED_RELEASED, COMMON, SCIENTIFIC, Prompt
from evaluation.scoring import ScoringMode
from evaluation.sweep import DataSource, SweepSpec
from naturelm_core.alphas import DEFAULT_ALPHA_GRID, MERGE_MODULES, MergeRecipe

MERGED_ALPHA = 0.4  # the merged model the paper singles out (Figure 1)
NATURELM_ALPHA = 1.0
CLOSED_SET_DATASET = "unseen-family-cmn"
# BEANS-Zero rows of the 2 most frequent unseen-family-cmn classes: 73 + 52, as the paper's own ICL script counts them.
TOP_2_ROWS = 125

# The queries as the paper's configs wrote them (closed_set_classification_*, in_context_learning_*, zf_indiv).
CLOSED_SET_QUERY = (
    "What is the common name for the focal species in the audio?{randomize}\nOutput exactly one of: {species_list}"
)
ICL_QUERY = (
    "Identify the common name for the focal species in the audio.\nOutput exactly one of: {species_list}\n\n"
    "{audio_examples}\n\nAudio: <Audio><AudioHere></Audio>\nLabel:{randomize}"
)
ZF_PROMPTS = (
    Prompt("original", 'Is there only one bird in the audio, or more?\nReply with "One" or "More".'),
    Prompt("reversed", 'Is there more than one bird in the audio, or just one?\nReply with "More" or "One".'),
    Prompt("no classes", "How many birds are there in the audio?"),
)
WATKINS_CBI_PROMPTS = (COMMON, SCIENTIFIC, Prompt("combined", COMBINED_RELEASED.template))
CLOSED_SET_PROMPT = ExtendedPrompt("closed set", CLOSED_SET_QUERY)
ICL_PROMPTS = (
    ExtendedPrompt("k=0", CLOSED_SET_QUERY),
    ExtendedPrompt("k=1", ICL_QUERY, examples_per_class=1),
    ExtendedPrompt("k=5", ICL_QUERY, examples_per_class=5),
)

# What a PresetFigure can show (ui.paper_figures draws each kind):
CURVES = "curves"  # metric vs alpha, one line per (data set, prompt); merge recipes beside the alpha axis
PANELS = "panels"  # metric vs alpha, a panel per data set, one line per prompt (Figure 2)
TRADEOFF = "tradeoff"  # combined prompt vs the mean of the individual prompts, a point per alpha (Figure 4)
BREAKDOWN = "breakdown"  # where the answers of one (data set, prompt) go, per alpha
BARS = "bars"  # bars per (data set, prompt), one colour per alpha (Figures 1 and 9)
FIGURE_KINDS = (CURVES, PANELS, TRADEOFF, BREAKDOWN, BARS)
# The closed-set baselines a figure can draw (evaluation.sweep_metrics.class_baselines names them so).
MAJORITY_BASELINE = "majority class"
RANDOM_BASELINE = "random"
BASELINES = (MAJORITY_BASELINE, RANDOM_BASELINE)


class PresetError(ValueError):
    """No preset of that name."""


@dataclass(frozen=True)
class PresetFigure:
    """One figure a preset draws, as data: its caption, its kind (FIGURE_KINDS) and what the kind needs.

    - dataset, prompt: the (data set, prompt) a breakdown shows; `dataset` is also whose classes the
      baselines are computed from
    - alphas, prompts: the bars' grid points and their prompt order (None: all, by name)
    - baselines: which of BASELINES to draw (in that order), from `dataset`'s label counts

    ui.paper_figures draws it from the sweep's scores in the metric the user picked.
    """

    caption: str
    kind: str
    dataset: str | None = None
    prompt: str | None = None
    alphas: tuple[float, ...] | None = None
    prompts: tuple[str, ...] | None = None
    baselines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in FIGURE_KINDS:
            raise ValueError(f"unknown figure kind {self.kind!r}; kinds: {FIGURE_KINDS}")
        if self.kind == BREAKDOWN and (self.dataset is None or self.prompt is None):
            raise ValueError("a breakdown names its data set and prompt")
        if unknown := set(self.baselines) - set(BASELINES):
            raise ValueError(f"unknown baselines {sorted(unknown)}; baselines: {BASELINES}")
        if self.baselines and self.dataset is None:
            raise ValueError("baselines need the data set whose classes they count")


@dataclass(frozen=True)
class Preset:
    """One experiment of the paper: what it asks, how many answers it needs, and which figures it draws.

    `rows` is how many samples each data set contributes in BEANS-Zero (after the class filter),
    which is what the answer count is computed from before any data is at hand.
    """

    key: str
    title: str
    description: str
    paper_figures: tuple[int, ...]
    subsets: tuple[str, ...]
    prompts: tuple[Prompt, ...]
    rows: Mapping[str, int]
    figures: tuple[PresetFigure, ...]
    default_metric: str = "accuracy"
    alphas: tuple[float, ...] = DEFAULT_ALPHA_GRID  # the paper's 0, 0.1, ..., 1
    top_k_classes: int | None = None
    needs_mapping: bool = False
    notes: tuple[str, ...] = ()
    recipes: tuple[MergeRecipe, ...] = ()

    @property
    def on_form_data(self) -> bool:
        """A merge-recipe preset names no data and no prompts: it runs on the form's (evaluation.sweep_forms)."""
        return not self.subsets

    @property
    def sweep_name(self) -> str:
        return f"{'recipes' if self.on_form_data else 'paper'} {self.key}"

    def grid(self) -> dict[str, tuple]:
        """The preset's own grid as a spec's fields."""
        return {"alphas": self.alphas, "recipes": self.recipes}

    def spec(
        self,
        *,
        source: DataSource | str = DataSource.BEANS_ZERO,
        path: str | os.PathLike[str] | None = None,
        limit: int | None = None,
        seed: int = 0,
        num_beams: int = 2,
        max_new_tokens: int = 100,
        scoring_mode: ScoringMode | str = ScoringMode.PAPER,
        mapping_file: str | os.PathLike[str] | None = None,
        alphas: Sequence[float] | None = None,
        recipes: Sequence[MergeRecipe] | None = None,
    ) -> SweepSpec:
        """The sweep to run: BEANS-Zero from the Hub by default, or a local copy (`source`, `path`).

        `alphas` and `recipes` replace the preset's grid where either is given.
        """
        replaced = alphas is not None or recipes is not None
        return SweepSpec(
            name=self.sweep_name,
            subsets=self.subsets,
            prompts=self.prompts,
            alphas=tuple(alphas or ()) if replaced else self.alphas,
            recipes=tuple(recipes or ()) if replaced else self.recipes,
            source=DataSource(source),
            path=None if path is None else os.fspath(path),
            limit=limit,
            top_k_classes=self.top_k_classes,
            seed=seed,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            scoring_mode=ScoringMode(scoring_mode),
            mapping_file=None if mapping_file is None else os.fspath(mapping_file),
        )

    def answers_needed(self, limit: int | None = None, alphas: Sequence[float] | None = None) -> int | None:
        """Model answers of the full experiment on BEANS-Zero (or with at most `limit` samples per data set);
        None for a preset on the form's data, whose size is not known here."""
        if self.on_form_data:
            return None
        samples = sum(self.rows[s] if limit is None else min(limit, self.rows[s]) for s in self.subsets)
        points = len(self.alphas) + len(self.recipes) if alphas is None else len(alphas)
        return samples * len(self.prompts) * points

    def estimated_seconds(self, rate_per_s: float | None, limit: int | None = None) -> float | None:
        """How long the answers take at a measured rate (answers per second); None without a rate."""
        answers = self.answers_needed(limit)
        if rate_per_s is None or rate_per_s <= 0 or answers is None:
            return None
        return answers / rate_per_s

    @property
    def figures_label(self) -> str:
        """'Figure 9' or 'Figures 2, 4, 6' ('merge recipes' for a recipe grid, which is no paper figure)."""
        if not self.paper_figures:
            return "merge recipes"
        plural = "s" if len(self.paper_figures) > 1 else ""
        return f"Figure{plural} " + ", ".join(map(str, self.paper_figures))

    def summary(self, rate_per_s: float | None = None, limit: int | None = None) -> dict[str, Any]:
        """What the Sweeps tab lists for a preset."""
        return {
            "key": self.key,
            "title": self.title,
            "description": self.description,
            "figures": self.figures_label,
            "subsets": list(self.subsets) or ["the New sweep form's data"],
            "prompts": [prompt.name for prompt in self.prompts] or ["the New sweep form's prompts"],
            "alphas": [*self.alphas, *(recipe.to_dict() for recipe in self.recipes)],
            "answers": self.answers_needed(limit),
            "duration_s": self.estimated_seconds(rate_per_s, limit),
            "needs_mapping": self.needs_mapping,
            "default_metric": self.default_metric,
            "notes": list(self.notes),
        }


def _recipe_preset(
    key: str, title: str, description: str, recipes: Sequence[MergeRecipe], alphas: Sequence[float] = ()
) -> Preset:
    """A grid of merge recipes on the form's data and prompts, drawn as metric vs alpha with the recipes beside."""
    return Preset(
        key=key,
        title=title,
        description=description,
        paper_figures=(),
        subsets=(),
        prompts=(),
        rows={},
        figures=(PresetFigure("metric vs alpha, and per merge recipe", CURVES),),
        alphas=tuple(alphas),
        recipes=tuple(recipes),
        notes=("Runs the New sweep form's prompts on its data; its answers depend on that data's size.",),
    )


# The closed-set presets' first two figures (Figures 5, 7 and 8): curves over the baselines, and where the errors go.
CLOSED_SET_CURVES = PresetFigure(
    "metric vs alpha with the majority-class and random baselines", CURVES, CLOSED_SET_DATASET, baselines=BASELINES
)
CLOSED_SET_BREAKDOWN = PresetFigure("error breakdown per alpha", BREAKDOWN, CLOSED_SET_DATASET, CLOSED_SET_PROMPT.name)

RAMP_STARTS = (0.0, 0.25, 0.5)
RAMP_STOPS = (0.5, 0.75, 1.0)
TRUNCATION_RANKS = (1, 2, 4, 8, 16, 32)
RECIPE_PRESETS = (
    _recipe_preset(
        "lines-ramp",
        "LiNeS-style layer ramp",
        "The LoRA scaled by layer depth, from a0 at the first decoder layer to a1 at the last (layers "
        '"linear:a0:a1"), for a0 in 0, 0.25, 0.5 and a1 in 0.5, 0.75, 1: does keeping the early layers closer '
        "to Llama keep its general skills while the late layers keep NatureLM-audio's?",
        [MergeRecipe(layers=f"linear:{a0}:{a1}") for a0 in RAMP_STARTS for a1 in RAMP_STOPS],
    ),
    _recipe_preset(
        "module-ablation",
        "Attention-module ablation",
        "NatureLM-audio (alpha 1) with the LoRA of one attention projection (q, k, v or o) left out at a time, "
        "beside plain alpha 1 and 0.5: which projection carries what the fine-tuning taught.",
        [MergeRecipe(modules={module: 0.0}) for module in MERGE_MODULES],
        alphas=(1.0, 0.5),
    ),
    _recipe_preset(
        "rank-truncation",
        "LoRA rank truncation",
        "Only the top k singular directions of each LoRA update (k = 1, 2, 4, 8, 16, 32), at alpha 1 and 0.5: how "
        "much of the fine-tuning lives in its first few directions.",
        [MergeRecipe(alpha=alpha, rank=rank) for alpha in (1.0, 0.5) for rank in TRUNCATION_RANKS],
    ),
)


PRESETS: dict[str, Preset] = {
    preset.key: preset
    for preset in (
        Preset(
            key="watkins-cbi",
            title="Watkins and CBI: common, scientific and combined names",
            description=(
                "Watkins (marine mammals) and CBI (birds), asked for the common name, the scientific name, and both "
                "at once, at alpha 0, 0.1, ..., 1: how merging brings back the combined task the fine-tuned model "
                "lost, and what it costs the two it was trained on."
            ),
            paper_figures=(2, 4, 6),
            subsets=("watkins", "cbi"),
            prompts=WATKINS_CBI_PROMPTS,
            rows={"watkins": SUBSETS["watkins"].rows, "cbi": SUBSETS["cbi"].rows},
            figures=(
                PresetFigure("metric vs alpha per data set, one line per prompt", PANELS),
                PresetFigure("trade-off: combined prompt vs the mean of the individual prompts", TRADEOFF),
                PresetFigure("where the combined prompt's answers go: Watkins", BREAKDOWN, "watkins", "combined"),
                PresetFigure("where the combined prompt's answers go: CBI", BREAKDOWN, "cbi", "combined"),
            ),
            needs_mapping=True,
            notes=(
                "Scientific and combined answers are scored against a common -> scientific name mapping "
                "(the paper's *_vernacular_scientific_mapping.jsonl); without one they are compared with the "
                "common names.",
            ),
        ),
        Preset(
            key="closed-set-2",
            title="Closed set, 2 classes (unseen-family-cmn)",
            description=(
                "The 2 most frequent species of unseen-family-cmn, families NatureLM-audio never saw, with both names "
                "offered in the question (shuffled per sample): F1 and accuracy against alpha beside the "
                "majority-class and random baselines, and where the errors go."
            ),
            paper_figures=(5, 7),
            subsets=(CLOSED_SET_DATASET,),
            prompts=(CLOSED_SET_PROMPT,),
            rows={CLOSED_SET_DATASET: TOP_2_ROWS},
            top_k_classes=2,
            default_metric="f1_weighted",
            figures=(
                CLOSED_SET_CURVES,
                CLOSED_SET_BREAKDOWN,
            ),
        ),
        Preset(
            key="closed-set-all",
            title="Closed set, all classes (unseen-family-cmn)",
            description=(
                "Every species of unseen-family-cmn offered in the question (shuffled per sample): F1 and accuracy "
                "against alpha beside the baselines, where the errors go, and the merged model (alpha 0.4) against "
                "NatureLM-audio (alpha 1)."
            ),
            paper_figures=(1, 5, 8),
            subsets=(CLOSED_SET_DATASET,),
            prompts=(CLOSED_SET_PROMPT,),
            rows={CLOSED_SET_DATASET: SUBSETS[CLOSED_SET_DATASET].rows},
            default_metric="f1_weighted",
            figures=(
                CLOSED_SET_CURVES,
                CLOSED_SET_BREAKDOWN,
                PresetFigure(
                    "merged (alpha 0.4) vs NatureLM-audio (alpha 1)",
                    BARS,
                    CLOSED_SET_DATASET,
                    alphas=(MERGED_ALPHA, NATURELM_ALPHA),
                    baselines=BASELINES,
                ),
            ),
        ),
        Preset(
            key="zf-indiv",
            title="Zebra finch: one bird or more",
            description=(
                "zf-indiv asked as in the paper, with the two options in reversed order, and without options (a "
                "number: 0 or 1 -> One, 2 or more -> More), to NatureLM-audio (alpha 1), as the paper's Figure 9. "
                "Add alphas to see the merged models too."
            ),
            paper_figures=(9,),
            subsets=("zf-indiv",),
            prompts=ZF_PROMPTS,
            rows={"zf-indiv": SUBSETS["zf-indiv"].rows},
            alphas=(NATURELM_ALPHA,),
            figures=(
                PresetFigure(  # Figure 9 draws only the random baseline (1 / 2 for One or More)
                    "accuracy per prompt at alpha 1, with the random baseline",
                    BARS,
                    "zf-indiv",
                    alphas=(NATURELM_ALPHA,),
                    prompts=tuple(prompt.name for prompt in ZF_PROMPTS),
                    baselines=(RANDOM_BASELINE,),
                ),
            ),
        ),
        Preset(
            key="icl",
            title="In-context learning, k = 0, 1, 5 (2 classes)",
            description=(
                "The 2-class set with k labelled example recordings of each species before the one to classify "
                "(k = 0: the closed-set question alone). Every example is really heard, none is the recording under "
                "test, and the same seed gives the same examples. A k = 5 prompt carries 11 recordings, so its "
                "answers take longer than the estimate, which assumes one recording per answer."
            ),
            paper_figures=(10,),
            subsets=(CLOSED_SET_DATASET,),
            prompts=ICL_PROMPTS,
            rows={CLOSED_SET_DATASET: TOP_2_ROWS},
            top_k_classes=2,
            default_metric="f1_weighted",
            figures=(
                PresetFigure(
                    "metric vs alpha per k, with the baselines", CURVES, CLOSED_SET_DATASET, baselines=BASELINES
                ),
            ),
        ),
        *RECIPE_PRESETS,
    )
}


def get_preset(key: str) -> Preset:
    if key not in PRESETS:
        raise PresetError(f"no preset {key!r}; presets: {sorted(PRESETS)}")
    return PRESETS[key]


def preset_of(spec: SweepSpec) -> Preset | None:
    """The preset a sweep was started from (same data sets, classes and prompts), so its figures can be drawn."""
    for preset in PRESETS.values():
        if preset.on_form_data:
            continue
        same_questions = spec.subsets == preset.subsets and spec.prompts == preset.prompts
        if same_questions and spec.top_k_classes == preset.top_k_classes and not spec.species:
            return preset
    return None


def list_presets(rate_per_s: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Every preset's summary: key, title, description, figures, answers, duration_s (None without a rate), ..."""
    return [preset.summary(rate_per_s, limit) for preset in PRESETS.values()]
