"""The Sweeps tab's New sweep form: the data, the questions, the alpha grid, decoding, and where it runs.

Widgets and wiring only. The form's widgets are kept by SweepForm field name and handed to
`/start_sweep` by name (gradio's inputs_kwargs), so a widget cannot reach the wrong field: the
names are checked against SweepForm when the app is built, and the service builds the form by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from evaluation.backend_choice import RAY_ADDRESS_HINT, RUN_ON_CHOICES, THIS_MACHINE
from evaluation.datasets import SUBSETS
from evaluation.prompts import PAPER_PROMPTS
from evaluation.scoring import ScoringMode
from evaluation.sweep import AnswerMode, DataSource
from evaluation.sweep_forms import SweepForm
from naturelm_core.alphas import DEFAULT_ALPHA_TEXT, RECIPE_EXAMPLE
from ui.errors import user_facing
from ui.sweeps_service import SweepsService
from ui.text import ANSWER_MODE_INFO, queued_markdown

SOURCE_CHOICES = [
    ("BEANS-Zero subsets (fetched once, then cached)", DataSource.BEANS_ZERO.value),
    ("A local parquet file or folder (BEANS-Zero columns)", DataSource.PARQUET.value),
    ("Uploaded recordings + labels CSV", DataSource.RECORDINGS.value),
]
UPLOAD_FIELDS = ("labels_csv", "recordings", "recordings_name")  # shown for uploaded recordings only


@dataclass(frozen=True)
class NewSweep:
    """The form's widgets by SweepForm field name, where it runs, Start and the message line below."""

    fields: dict[str, Any]
    run_on: gr.Radio
    ray_address: gr.Textbox
    start: gr.Button
    message: gr.Markdown

    def __post_init__(self) -> None:
        if list(self.fields) != list(SweepForm.field_names()):
            raise TypeError(f"the form's widgets {list(self.fields)} do not match SweepForm's fields")

    def subset(self, *names: str) -> dict[str, Any]:
        """Some of the form's widgets by name (what a paper preset or a fork config runs on)."""
        return {name: self.fields[name] for name in names}


def new_sweep_section(zero_gpu: bool) -> NewSweep:
    """The New sweep accordion: data on the left, questions and scoring in the middle, decoding on the right."""
    fields: dict[str, Any] = {}
    with gr.Accordion("New sweep", open=True):
        with gr.Row():
            with gr.Column():
                fields["name"] = gr.Textbox(value="my sweep", label="Sweep name", elem_id="sweep-name")
                fields["source"] = gr.Radio(
                    SOURCE_CHOICES, value=DataSource.BEANS_ZERO.value, label="Data", elem_id="sweep-source"
                )
                fields["subsets"] = gr.Dropdown(
                    choices=list(SUBSETS),
                    value=["watkins"],
                    multiselect=True,
                    label="BEANS-Zero subset(s)",
                    elem_id="sweep-subsets",
                )
                fields["local_path"] = gr.Textbox(
                    label="Parquet file or folder on the server", visible=False, elem_id="sweep-local-path"
                )
                fields["labels_csv"] = gr.File(
                    label="Labels CSV (columns file,label[,scientific_label])",
                    file_types=[".csv"],
                    type="filepath",
                    visible=False,
                    elem_id="sweep-labels-csv",
                )
                fields["recordings"] = gr.File(
                    label="Recordings named in the CSV",
                    file_count="multiple",
                    type="filepath",
                    visible=False,
                    elem_id="sweep-recordings",
                )
                fields["recordings_name"] = gr.Textbox(
                    value="my-recordings", label="Data set name", visible=False, elem_id="sweep-recordings-name"
                )
            with gr.Column():
                _questions_column(fields)
            with gr.Column():
                run_on, ray_address = _decoding_column(fields)
                start = gr.Button("Start sweep", variant="primary", interactive=not zero_gpu, elem_id="sweep-start")
        message = gr.Markdown(elem_id="sweep-message")
    ordered = {name: fields[name] for name in SweepForm.field_names() if name in fields} | fields
    return NewSweep(ordered, run_on, ray_address, start, message)


def _questions_column(fields: dict[str, Any]) -> None:
    """The prompts, the alpha grid, the scoring mode and the optional label mapping."""
    fields["presets"] = gr.CheckboxGroup(
        choices=list(PAPER_PROMPTS),
        value=["common", "scientific", "combined"],
        label="Prompts from the paper",
        elem_id="sweep-presets",
    )
    fields["custom_prompts"] = gr.Textbox(
        label="Custom prompts, one per line ({species_list} becomes the shuffled labels)",
        lines=2,
        elem_id="sweep-custom-prompts",
    )
    fields["alphas"] = gr.Textbox(
        value=DEFAULT_ALPHA_TEXT, label="alphas: values and/or start:stop:step ranges", elem_id="sweep-alphas"
    )
    fields["recipes"] = gr.Textbox(
        label="merge recipes (JSON list, optional): each one more grid point per prompt",
        placeholder=f"[{RECIPE_EXAMPLE}]",
        lines=2,
        elem_id="sweep-recipes",
    )
    fields["scoring_mode"] = gr.Dropdown(
        choices=[mode.value for mode in ScoringMode],
        value=ScoringMode.PAPER.value,
        label="Scoring mode",
        elem_id="sweep-scoring",
    )
    fields["mapping_file"] = gr.File(
        label="Label mapping for scientific names (jsonl or csv, optional)",
        file_types=[".jsonl", ".csv"],
        type="filepath",
        elem_id="sweep-mapping",
    )


def _decoding_column(fields: dict[str, Any]) -> tuple[gr.Radio, gr.Textbox]:
    """Sample limit, classes, seed, decoding, and where the sweep runs (this machine or a Ray cluster)."""
    fields["limit"] = gr.Number(value=100, precision=0, label="Samples per subset (0 = all)", elem_id="sweep-limit")
    fields["top_k_classes"] = gr.Number(value=0, precision=0, label="Top-k classes (0 = all)", elem_id="sweep-top-k")
    fields["seed"] = gr.Number(value=0, precision=0, label="Seed (sample choice, label order)", elem_id="sweep-seed")
    fields["num_beams"] = gr.Slider(1, 8, value=2, step=1, label="beams", elem_id="sweep-beams")
    fields["max_new_tokens"] = gr.Slider(
        1, 300, value=100, step=1, label="max new tokens", elem_id="sweep-max-new-tokens"
    )
    fields["answer_mode"] = gr.Radio(
        [mode.value for mode in AnswerMode],
        value=AnswerMode.GENERATE.value,
        label="Answer mode",
        info=ANSWER_MODE_INFO,
        elem_id="sweep-answer-mode",
    )
    run_on = gr.Radio(list(RUN_ON_CHOICES), value=THIS_MACHINE, label="Run on", elem_id="sweep-run-on")
    ray_address = gr.Textbox(
        value="",  # a value, so that API clients may leave it out
        label="Ray address (for Ray cluster)",
        placeholder=RAY_ADDRESS_HINT,
        elem_id="sweep-ray-address",
    )
    return run_on, ray_address


def wire_new_sweep(service: SweepsService, form: NewSweep, selected: gr.Dropdown) -> Any:
    """Start (`/start_sweep`, its inputs by SweepForm field name) and the data source's visible fields.

    Returns Start's event, so the tab can refresh its sweep choosers after it.
    """

    @user_facing
    def start_sweep(run_on: str = THIS_MACHINE, ray_address: str = "", **fields: Any) -> tuple[str, str]:
        queued = service.start(SweepForm.from_widgets(fields), run_on, ray_address)
        return queued.sweep_id, queued_markdown(queued)

    def show_source(source: str) -> tuple[Any, ...]:
        local, uploaded = source == DataSource.PARQUET.value, source == DataSource.RECORDINGS.value
        return (
            gr.update(visible=not uploaded),
            gr.update(visible=local),
            *[gr.update(visible=uploaded)] * len(UPLOAD_FIELDS),
        )

    source_dependent = [form.fields[name] for name in ("subsets", "local_path", *UPLOAD_FIELDS)]
    form.fields["source"].change(show_source, form.fields["source"], source_dependent, api_visibility="private")
    inputs = {**form.fields, "run_on": form.run_on, "ray_address": form.ray_address}
    return form.start.click(start_sweep, inputs_kwargs=inputs, outputs=[selected, form.message], api_name="start_sweep")
