"""The Explore tab: one recording and one question, answered at one alpha or scanned across a grid of alphas.

Widgets and wiring only: the answers come from naturelm_core.explore on the app's engine, the
figures from ui.explore_figures, the text from ui.text. `/explore` and `/alpha_scan` are the tab's
public API (gradio_client scripts use them), so their names and inputs stay as they are (`/explore` takes
an optional merge recipe as its last input). The recording panel lives in ui.explore_recording, the
Detect panel (`/detect`) in ui.explore_detect, the recipe scan (`/recipe_scan`) in ui.explore_recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from evaluation.prompts import PAPER_PROMPTS
from naturelm_core.alphas import DEFAULT_ALPHA_TEXT, RECIPE_EXAMPLE, format_alpha, parse_alpha_grid
from naturelm_core.config import WINDOW_SECONDS
from naturelm_core.explore import answer_point, answer_recording, scan_summary
from naturelm_core.requests import GenerationSettings
from ui.errors import user_facing
from ui.explore_detect import detect_section
from ui.explore_figures import alpha_scan_figure
from ui.explore_labels import label_outputs, match_line, scan_chart_handler, score_labels_handler
from ui.explore_recipes import recipe_scan_section
from ui.explore_recording import recording_for_answer, recording_section
from ui.zero_gpu import on_gpu

if TYPE_CHECKING:
    from naturelm_core.engine import Engine

ALPHA_LABEL = "alpha (0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio)"
DEFAULT_PRESET = "common"
DEFAULT_SPECIES = "Humpback Whale, Killer Whale, Bearded Seal, Walrus"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
# The example recordings (assets/README.md) with the paper prompt that fits each.
EXAMPLES = (
    ("yell-YELLAMRO20160506SM3-25.5s.mp3", "common"),  # American Robin
    ("yell-YELLFLBCSACR20075171-4.5s.mp3", "scientific"),  # Sandhill Crane
    ("yell-YELLWolfvCar20160111T22ms2-9.5s.mp3", "common"),  # wolves (and a car)
)


@dataclass(frozen=True)
class Question:
    """The widgets every answer reads: the recording, the prompt, the decoding settings, the candidate labels."""

    audio: gr.Audio
    prompt: gr.Textbox
    num_beams: gr.Slider
    max_new_tokens: gr.Slider
    candidates: gr.Textbox


def build_prompt(preset: str, species: str) -> str:
    """The preset's question; a closed-set preset lists the typed species as a sweep would ask it."""
    names = [name.strip() for name in (species or "").split(",") if name.strip()]
    prompt = PAPER_PROMPTS[preset]
    return prompt.render(labels=names) if prompt.needs_species_list else prompt.render()


def preset_candidates(preset: str, species: str) -> str:
    """A closed-set preset's candidates are its species list; an open question starts with none (no scoring)."""
    return species if PAPER_PROMPTS[preset].needs_species_list else ""


def explore_tab(engine: Engine) -> None:
    """The tab, inside the caller's Blocks; its handlers close over the app's one engine."""
    with gr.Tab("Explore"):
        with gr.Row():
            with gr.Column():
                audio = recording_section()
            with gr.Column():
                question, alpha, recipe = _question_section(audio)
                _answer_section(engine, question, alpha, recipe)
        _examples(question)
        detect_section(engine, question, alpha, recipe, question.candidates)
        _scan_section(engine, question)
        recipe_scan_section(engine, question)


def _examples(question: Question) -> None:
    """The three example recordings of assets/, each loading its audio and a fitting prompt."""
    examples = [[str(ASSETS / name), PAPER_PROMPTS[preset].render()] for name, preset in EXAMPLES]
    gr.Examples(
        examples, [question.audio, question.prompt], label="Example recordings (Yellowstone NP)", elem_id="examples"
    )


def _question_section(audio: gr.Audio) -> tuple[Question, gr.Slider, gr.Textbox]:
    """The prompt (typed, or a paper preset with an editable species list), alpha or a merge recipe, and the
    decoding settings."""
    preset = gr.Dropdown(choices=list(PAPER_PROMPTS), value=DEFAULT_PRESET, label="Prompt preset (from the paper)")
    species = gr.Textbox(value=DEFAULT_SPECIES, label="Species list (closed-set presets)")
    prompt = gr.Textbox(value=PAPER_PROMPTS[DEFAULT_PRESET].template, label="Prompt", lines=3, elem_id="prompt")
    candidates = gr.Textbox(
        value=preset_candidates(DEFAULT_PRESET, DEFAULT_SPECIES),
        label="Candidate labels (comma- or newline-separated; empty = no likelihood scores)",
        lines=2,
        elem_id="candidate-labels",
    )
    alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=ALPHA_LABEL, elem_id="alpha")
    recipe = gr.Textbox(
        value="",
        label="Merge recipe (optional JSON; empty = the alpha slider)",
        placeholder=RECIPE_EXAMPLE,
        elem_id="recipe",
    )
    with gr.Accordion("Generation settings", open=False):
        num_beams = gr.Slider(1, 8, value=2, step=1, label="beams")
        max_new_tokens = gr.Slider(1, 300, value=100, step=1, label="max new tokens")

    fill_prompt = user_facing(build_prompt)
    preset.change(fill_prompt, [preset, species], prompt, api_visibility="private")
    species.submit(fill_prompt, [preset, species], prompt, api_visibility="private")
    fill_candidates = user_facing(preset_candidates)
    preset.change(fill_candidates, [preset, species], candidates, api_visibility="private")
    species.submit(fill_candidates, [preset, species], candidates, api_visibility="private")
    return Question(audio, prompt, num_beams, max_new_tokens, candidates), alpha, recipe


def _answer_section(engine: Engine, question: Question, alpha: gr.Slider, recipe: gr.Textbox) -> None:
    """Run: the answer at the slider's alpha, or by the merge recipe when one is typed (`/explore`)."""
    run = gr.Button("Run", variant="primary", elem_id="run")
    answer = gr.Textbox(
        label=f"Answer (per {WINDOW_SECONDS:g} s window for long recordings)", lines=4, elem_id="answer"
    )
    match, label_table = label_outputs()

    @user_facing
    @on_gpu
    def explore(
        audio_path: str | None,
        prompt: str,
        alpha: float,
        num_beams: int = 2,
        max_new_tokens: int = 100,
        recipe: str = "",
    ) -> str:
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        point = answer_point(alpha, recipe)
        [row] = answer_recording(engine, recording_for_answer(audio_path), prompt, [point], settings)
        return row.text

    inputs = [question.audio, question.prompt, alpha, question.num_beams, question.max_new_tokens, recipe]
    scored = [question.audio, question.prompt, question.candidates, alpha, recipe]
    run.click(explore, inputs, answer, api_name="explore").then(
        score_labels_handler(engine), scored, label_table, api_name="score_labels"
    ).then(match_line, [answer, question.candidates], match, api_visibility="private")


def _scan_section(engine: Engine, question: Question) -> None:
    """The alpha scan: one recording and prompt across a grid of alphas, in one batched call (`/alpha_scan`)."""
    with gr.Accordion("Alpha scan: one recording and prompt across alphas, one batched call", open=True):
        with gr.Row():
            alphas = gr.Textbox(value=DEFAULT_ALPHA_TEXT, label="alphas: values and/or start:stop:step ranges")
            expected = gr.Textbox(label="Expected label (optional, for the similarity curve)")
            scan = gr.Button("Scan alphas", elem_id="scan")
        scan_table = gr.Dataframe(headers=["alpha", "answer"], label="Answers by alpha", wrap=True)
        scan_plot = gr.Plot(label="Answers vs alpha")
        candidate_plot = gr.Plot(label="Candidate probabilities vs alpha (when candidate labels are given)")

    @user_facing
    @on_gpu
    def alpha_scan(
        audio_path: str | None, prompt: str, alphas: str, num_beams: int = 2, max_new_tokens: int = 100
    ) -> pd.DataFrame:
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        rows = answer_recording(engine, recording_for_answer(audio_path), prompt, parse_alpha_grid(alphas), settings)
        return pd.DataFrame({"alpha": [_alpha_cell(r.alpha) for r in rows], "answer": [r.text for r in rows]})

    @user_facing
    def scan_chart(table: pd.DataFrame, expected_label: str) -> Any:
        if table is None or len(table) == 0:
            return None
        summary = scan_summary(
            table["alpha"].astype(float).tolist(), table["answer"].astype(str).tolist(), expected_label
        )
        return alpha_scan_figure(summary)

    inputs = [question.audio, question.prompt, alphas, question.num_beams, question.max_new_tokens]
    scan.click(alpha_scan, inputs, scan_table, api_name="alpha_scan").then(
        scan_chart, [scan_table, expected], scan_plot, api_visibility="private"
    ).then(
        scan_chart_handler(engine),
        [question.audio, question.prompt, alphas, question.candidates],
        candidate_plot,
        api_visibility="private",
    )


def _alpha_cell(point: Any) -> Any:
    """A float stays a number (the scan's chart reads it); a recipe is shown by its short name."""
    return point if isinstance(point, float) else format_alpha(point)
