"""The Explore tab: one recording and one question, answered at one alpha or scanned across a grid of alphas.

Widgets and wiring only: the answers come from naturelm_core.explore on the app's engine, the
figures from ui.explore_figures, the text from ui.text. `/explore` and `/alpha_scan` are the tab's
public API (gradio_client scripts use them), so their names and inputs stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from evaluation.prompts import PAPER_PROMPTS
from naturelm_core.alphas import DEFAULT_ALPHA_TEXT, check_alpha, parse_alpha_grid
from naturelm_core.audio import describe_audio, load_audio
from naturelm_core.config import WINDOW_SECONDS
from naturelm_core.explore import answer_recording, scan_summary
from naturelm_core.requests import GenerationSettings
from ui.errors import user_facing
from ui.explore_figures import alpha_scan_figure, spectrogram_figure
from ui.text import audio_info_markdown
from ui.zero_gpu import on_gpu

if TYPE_CHECKING:
    from naturelm_core.engine import Engine

ALPHA_LABEL = "alpha (0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio)"
DEFAULT_PRESET = "common"
DEFAULT_SPECIES = "Humpback Whale, Killer Whale, Bearded Seal, Walrus"


@dataclass(frozen=True)
class Question:
    """The widgets every answer reads: the recording, the prompt and the decoding settings."""

    audio: gr.Audio
    prompt: gr.Textbox
    num_beams: gr.Slider
    max_new_tokens: gr.Slider


def build_prompt(preset: str, species: str) -> str:
    """The preset's question; a closed-set preset lists the typed species as a sweep would ask it."""
    names = [name.strip() for name in (species or "").split(",") if name.strip()]
    prompt = PAPER_PROMPTS[preset]
    return prompt.render(labels=names) if prompt.needs_species_list else prompt.render()


def _recording(audio_path: str | None) -> Any:
    if not audio_path:
        raise ValueError("No recording: upload a file or record with the microphone first.")
    waveform, _ = load_audio(audio_path)
    return waveform


def explore_tab(engine: Engine) -> None:
    """The tab, inside the caller's Blocks; its handlers close over the app's one engine."""
    with gr.Tab("Explore"):
        with gr.Row():
            with gr.Column():
                audio = _recording_section()
            with gr.Column():
                question, alpha = _question_section(audio)
                _answer_section(engine, question, alpha)
        _scan_section(engine, question)


def _recording_section() -> gr.Audio:
    """The upload, what it is, and its spectrogram (as the model hears it)."""
    audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording", elem_id="audio-input")
    audio_info = gr.Markdown(elem_id="audio-info")
    spectrogram = gr.Plot(label="Spectrogram")

    @user_facing
    def describe(audio_path: str | None) -> tuple[str, Any]:
        if not audio_path:
            return "", None
        info = describe_audio(audio_path)
        waveform, duration_s = load_audio(audio_path)  # decoded length; mp3 headers can overstate it
        return audio_info_markdown(info, duration_s), spectrogram_figure(waveform)

    audio.change(describe, audio, [audio_info, spectrogram], api_visibility="private")
    return audio


def _question_section(audio: gr.Audio) -> tuple[Question, gr.Slider]:
    """The prompt (typed, or a paper preset with an editable species list), alpha and the decoding settings."""
    preset = gr.Dropdown(choices=list(PAPER_PROMPTS), value=DEFAULT_PRESET, label="Prompt preset (from the paper)")
    species = gr.Textbox(value=DEFAULT_SPECIES, label="Species list (closed-set presets)")
    prompt = gr.Textbox(value=PAPER_PROMPTS[DEFAULT_PRESET].template, label="Prompt", lines=3, elem_id="prompt")
    alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=ALPHA_LABEL, elem_id="alpha")
    with gr.Accordion("Generation settings", open=False):
        num_beams = gr.Slider(1, 8, value=2, step=1, label="beams")
        max_new_tokens = gr.Slider(1, 300, value=100, step=1, label="max new tokens")

    fill_prompt = user_facing(build_prompt)
    preset.change(fill_prompt, [preset, species], prompt, api_visibility="private")
    species.submit(fill_prompt, [preset, species], prompt, api_visibility="private")
    return Question(audio, prompt, num_beams, max_new_tokens), alpha


def _answer_section(engine: Engine, question: Question, alpha: gr.Slider) -> None:
    """Run: the answer at the slider's alpha (`/explore`)."""
    run = gr.Button("Run", variant="primary", elem_id="run")
    answer = gr.Textbox(
        label=f"Answer (per {WINDOW_SECONDS:g} s window for long recordings)", lines=4, elem_id="answer"
    )

    @user_facing
    @on_gpu
    def explore(
        audio_path: str | None, prompt: str, alpha: float, num_beams: int = 2, max_new_tokens: int = 100
    ) -> str:
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        [row] = answer_recording(engine, _recording(audio_path), prompt, [check_alpha(alpha)], settings)
        return row.text

    inputs = [question.audio, question.prompt, alpha, question.num_beams, question.max_new_tokens]
    run.click(explore, inputs, answer, api_name="explore")


def _scan_section(engine: Engine, question: Question) -> None:
    """The alpha scan: one recording and prompt across a grid of alphas, in one batched call (`/alpha_scan`)."""
    with gr.Accordion("Alpha scan: one recording and prompt across alphas, one batched call", open=True):
        with gr.Row():
            alphas = gr.Textbox(value=DEFAULT_ALPHA_TEXT, label="alphas: values and/or start:stop:step ranges")
            expected = gr.Textbox(label="Expected label (optional, for the similarity curve)")
            scan = gr.Button("Scan alphas", elem_id="scan")
        scan_table = gr.Dataframe(headers=["alpha", "answer"], label="Answers by alpha", wrap=True)
        scan_plot = gr.Plot(label="Answers vs alpha")

    @user_facing
    @on_gpu
    def alpha_scan(
        audio_path: str | None, prompt: str, alphas: str, num_beams: int = 2, max_new_tokens: int = 100
    ) -> pd.DataFrame:
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        rows = answer_recording(engine, _recording(audio_path), prompt, parse_alpha_grid(alphas), settings)
        return pd.DataFrame({"alpha": [r.alpha for r in rows], "answer": [r.text for r in rows]})

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
    )
