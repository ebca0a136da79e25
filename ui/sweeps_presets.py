"""The Sweeps tab's Paper experiments panel: each experiment of the paper as a ready sweep, and fork YAML configs.

Widgets and wiring only. A preset or a config brings its own questions and runs on New sweep's data
and settings, so its handlers take those widgets by SweepForm field name. `refresh_presets` is this
panel's share of the tab's one timer: the estimates move when the measured rate does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from evaluation.sweep_forms import SweepForm
from ui.errors import user_facing
from ui.sweeps_new import NewSweep
from ui.sweeps_service import MeasuredRate, RunsSnapshot, SweepsService
from ui.tables import presets_table
from ui.text import (
    FORK_CONFIG_INTRO,
    PAPER_EXPERIMENTS_INTRO,
    fork_config_markdown,
    fork_config_problem,
    preset_choices,
    preset_markdown,
    queued_markdown,
    rate_markdown,
)

PRESET_DATA = ("source", "local_path", "limit", "seed", "num_beams", "max_new_tokens", "scoring_mode", "mapping_file")
FORK_CONFIG_DATA = ("source", "local_path", "limit", "seed", "scoring_mode", "mapping_file")  # decoding is its own


@dataclass(frozen=True)
class PaperExperiments:
    rate: gr.Markdown
    table: gr.Dataframe
    choice: gr.Dropdown
    alphas: gr.Textbox
    run_preset: gr.Button
    info: gr.Markdown
    yaml_file: gr.File
    yaml_info: gr.Markdown
    run_yaml: gr.Button
    message: gr.Markdown


def paper_experiments_section(zero_gpu: bool, rate: MeasuredRate | None, limit: float | None) -> PaperExperiments:
    """The presets' table with their cost at the measured `rate`, Run preset, and a fork YAML upload."""
    with gr.Accordion("Paper experiments", open=True, elem_id="sweep-paper"):
        gr.Markdown(PAPER_EXPERIMENTS_INTRO)
        rate_text = gr.Markdown(rate_markdown(rate), elem_id="sweep-preset-rate")
        table = gr.Dataframe(
            value=presets_table(rate, limit),
            label="Paper experiments: answers needed and estimated time",
            interactive=False,
            wrap=True,
            elem_id="sweep-presets-table",
        )
        with gr.Row():
            choice = gr.Dropdown(
                choices=preset_choices(), value=None, label="Experiment", scale=3, elem_id="sweep-preset"
            )
            alphas = gr.Textbox(
                label="alphas (empty = the paper's grid)", placeholder="e.g. 0, 0.5, 1", elem_id="sweep-preset-alphas"
            )
            run_preset = gr.Button(
                "Run preset", variant="primary", interactive=not zero_gpu, elem_id="sweep-run-preset"
            )
        info = gr.Markdown(elem_id="sweep-preset-info")
        gr.Markdown(FORK_CONFIG_INTRO)
        with gr.Row():
            yaml_file = gr.File(
                label="Fork config (.yml or .yaml)",
                file_types=[".yml", ".yaml"],
                type="filepath",
                elem_id="sweep-yaml-file",
            )
            with gr.Column():
                yaml_info = gr.Markdown(elem_id="sweep-yaml-info")
                run_yaml = gr.Button(
                    "Start YAML config", variant="primary", interactive=not zero_gpu, elem_id="sweep-run-yaml"
                )
        message = gr.Markdown(elem_id="sweep-paper-message")
    return PaperExperiments(rate_text, table, choice, alphas, run_preset, info, yaml_file, yaml_info, run_yaml, message)


def wire_paper_experiments(
    service: SweepsService, paper: PaperExperiments, form: NewSweep, selected: gr.Dropdown
) -> list[Any]:
    """`/presets`, `/run_preset`, `/check_yaml`, `/run_yaml`; returns the two run events (the tab refreshes after)."""

    @user_facing
    def list_presets(limit: float | None) -> tuple[Any, str]:
        rate = service.snapshot().rate
        return presets_table(rate, limit), rate_markdown(rate)

    @user_facing
    def describe_preset(key: str | None, limit: float | None) -> str:
        return preset_markdown(key, service.snapshot().rate, limit)

    @user_facing
    def run_preset(key: str | None, preset_alphas: str, **data: Any) -> tuple[str, str]:
        queued = service.run_preset(key, SweepForm.from_widgets(data), preset_alphas)
        return queued.sweep_id, queued_markdown(queued)

    @user_facing
    def check_yaml(upload: str | None, **data: Any) -> str:
        """Shown in place on upload: what the config runs and its notes, or why it cannot run."""
        if not upload:
            return ""
        try:
            return fork_config_markdown(service.preview_fork_config(upload, SweepForm.from_widgets(data)))
        except ValueError as error:
            return fork_config_problem(error)

    @user_facing
    def run_yaml(upload: str | None, **data: Any) -> tuple[str, str]:
        queued = service.run_fork_config(upload, SweepForm.from_widgets(data))
        return queued.sweep_id, queued_markdown(queued)

    limit = form.fields["limit"]
    limit.change(list_presets, limit, [paper.table, paper.rate], api_name="presets")
    paper.choice.change(describe_preset, [paper.choice, limit], paper.info, api_visibility="private")
    preset_inputs = {"key": paper.choice, "preset_alphas": paper.alphas, **form.subset(*PRESET_DATA)}
    started = paper.run_preset.click(
        run_preset, inputs_kwargs=preset_inputs, outputs=[selected, paper.message], api_name="run_preset"
    )
    yaml_inputs = {"upload": paper.yaml_file, **form.subset(*FORK_CONFIG_DATA)}
    paper.yaml_file.change(check_yaml, inputs_kwargs=yaml_inputs, outputs=paper.yaml_info, api_name="check_yaml")
    run = paper.run_yaml.click(
        run_yaml, inputs_kwargs=yaml_inputs, outputs=[selected, paper.message], api_name="run_yaml"
    )
    return [started, run]


def refresh_presets(paper: PaperExperiments, limit: Any, snapshot: RunsSnapshot, values: dict, seen: dict) -> dict:
    """The presets' estimates and the chosen preset's description, when the rate, limit or choice moved."""
    rate, limit_value, preset = snapshot.rate, values[limit], values[paper.choice]
    if (rate, limit_value, preset) == seen.get("estimates"):
        return {}
    try:
        updates = {
            paper.table: presets_table(rate, limit_value),
            paper.rate: rate_markdown(rate),
            paper.info: preset_markdown(preset, rate, limit_value),
        }
    except ValueError:  # a sample limit Start refuses with its own message
        return {}
    seen["estimates"] = (rate, limit_value, preset)
    return updates
