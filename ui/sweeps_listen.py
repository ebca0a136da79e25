"""Listening to an answered sample: a row picked in the selected sweep's answers table plays and shows it.

Widgets and wiring only; the audio is found by evaluation.sweep_audio through the service, and the
spectrogram is the Explore tab's (the model's 16 kHz mono view). A sample that cannot be read (a
moved recording, an uncached subset, an import) is said in place, since a toast vanishes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from evaluation.sweep_audio import SampleAudioError
from ui.explore_figures import spectrogram_figure
from ui.sweeps_service import SweepsService
from ui.text import problem_html

LISTEN_HINT = "Select a row of the answers to hear that recording and see its spectrogram."


@dataclass(frozen=True)
class Listen:
    audio: gr.Audio
    spectrogram: gr.Plot
    message: gr.HTML
    by_id: tuple[gr.Textbox, gr.Textbox, gr.Button]  # hidden: data set, sample id, play (for API clients)

    @property
    def outputs(self) -> list[Any]:
        return [self.audio, self.spectrogram, self.message]


def listen_section() -> Listen:
    """The player, the spectrogram and a line saying which sample (or why it cannot be played)."""
    message = gr.HTML(f"<p>{LISTEN_HINT}</p>", elem_id="sweep-listen-message")
    with gr.Row():
        audio = gr.Audio(label="Recording (16 kHz mono)", interactive=False, elem_id="sweep-listen-audio", scale=1)
        spectrogram = gr.Plot(label="Spectrogram", elem_id="sweep-listen-spectrogram", scale=2)
    by_id = (gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Button(visible=False))
    return Listen(audio, spectrogram, message, by_id)


def row_sample(columns: Sequence[str], row: Sequence[Any] | None) -> tuple[str, str]:
    """(data set, sample id) of an answers-table row, found by header (the α columns vary per sweep)."""
    names = list(columns)
    if not row or "dataset" not in names or "id" not in names:
        raise SampleAudioError("Select a row of the answers table.")
    return str(row[names.index("dataset")]), str(row[names.index("id")])


def listen_to(service: SweepsService, key: str | None, dataset: str, sample_id: str) -> tuple[Any, Any, str]:
    """(audio for gr.Audio, spectrogram, message); a sample that cannot be read gives the reason, not a traceback."""
    try:
        sample = service.sample_audio(key, dataset, sample_id)
    except (SampleAudioError, ValueError, OSError) as error:
        return None, None, problem_html(f"Cannot play {sample_id or 'this sample'}: {error}")
    seconds = len(sample.waveform) / sample.sample_rate
    message = f"<p>{html.escape(dataset)} · {html.escape(sample_id)} · {seconds:.1f} s</p>"
    return (sample.sample_rate, sample.waveform), spectrogram_figure(sample.waveform), message


def wire_listen(service: SweepsService, listen: Listen, selected: gr.Dropdown, answers: gr.Dataframe) -> None:
    """A row selected in the answers plays its recording; `/sweep_sample_audio` does the same for API clients."""

    def on_select(key: str | None, table: pd.DataFrame | None, event: gr.SelectData) -> tuple[Any, Any, str]:
        try:
            dataset, sample_id = row_sample(list(table.columns) if table is not None else [], event.row_value)
        except SampleAudioError as error:
            return None, None, problem_html(str(error))
        return listen_to(service, key, dataset, sample_id)

    def by_id(key: str | None, dataset: str, sample_id: str) -> tuple[Any, Any, str]:
        return listen_to(service, key, dataset, sample_id)

    answers.select(on_select, [selected, answers], listen.outputs, api_visibility="private")
    dataset, sample_id, play = listen.by_id
    play.click(by_id, [selected, dataset, sample_id], listen.outputs, api_name="sweep_sample_audio")
