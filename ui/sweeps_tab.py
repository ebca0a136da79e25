"""The Sweeps tab: its sections laid out in page order, wired once every widget exists, and one refresh timer.

Everything the tab shows is read back from the runs folder, so a reloaded page (or a sweep run
headless) shows the same table, progress and figures. Every ~2 s one handler looks at the runs
folder once (`SweepsService.snapshot`) and each section redraws only what changed since the page
last showed it (the `seen` state).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from evaluation.prompts import PAPER_PROMPTS
from evaluation.sweep_forms import SweepForm
from ui.errors import user_facing
from ui.sweeps_classes import wire_classes
from ui.sweeps_compare import compare_section, wire_compare
from ui.sweeps_files import files_section, wire_files
from ui.sweeps_listen import wire_listen
from ui.sweeps_new import NewSweep, new_sweep_section, wire_new_sweep
from ui.sweeps_paper_figures import PaperFigures, paper_figures_section, refresh_paper_figures, wire_paper_figures
from ui.sweeps_presets import (
    FORK_CONFIG_DATA,
    PaperExperiments,
    paper_experiments_section,
    refresh_presets,
    wire_paper_experiments,
)
from ui.sweeps_runs import Runs, refresh_runs, runs_section, wire_runs
from ui.sweeps_server_folder import server_folder_section, wire_server_folder
from ui.sweeps_service import SweepsService
from ui.text import (
    ZERO_GPU_SWEEPS,
    fork_config_problem,
    not_started_html,
    prompt_choice_label,
    sweeps_intro,
    view_choices,
)

SWEEP_REFRESH_S = 2.0
RESULTS = "results"  # the sub-tab a start or an import switches to


def sweeps_tab(service: SweepsService) -> None:
    """The tab, inside the caller's Blocks. Sweeps run on the app's own queue unless New sweep's Run on picks
    a Ray cluster (evaluation.backend_choice).

    Why sub-tabs: the sweeps and the selected sweep's figures are what a researcher comes back for, so
    they lead; the forms (a page of their own) wait in their sub-tabs instead of pushing the results down.
    """
    with gr.Tab("Sweeps", elem_id="sweeps-tab"):
        gr.Markdown(sweeps_intro(service.runs_dir))
        if service.zero_gpu:
            gr.Markdown(f"⚠️ **{ZERO_GPU_SWEEPS}**", elem_id="sweeps-zero-gpu")
        with gr.Tabs(elem_id="sweeps-sections") as sections:
            with gr.Tab("Sweeps and results", id=RESULTS, elem_id="sweeps-results"):
                runs = runs_section(service.zero_gpu)
                figures = paper_figures_section()
            with gr.Tab("New sweep", id="new", elem_id="sweeps-new"):
                form = new_sweep_section(service.zero_gpu)
                server_folder = server_folder_section(service.data_root, service.zero_gpu)
            with gr.Tab("Paper experiments", id="paper", elem_id="sweeps-paper"):
                paper = paper_experiments_section(service.zero_gpu, service.snapshot().rate, form.fields["limit"].value)
            with gr.Tab("Compare", id="compare"):
                compare = compare_section()
            with gr.Tab("Export and import", id="files"):
                files = files_section()
        seen = gr.State({})
        timer = gr.Timer(SWEEP_REFRESH_S)
    _name_prompt_choices(form.fields["presets"])

    choosers = [runs.selected, compare.a, compare.b]
    started = [
        wire_new_sweep(service, form, runs.selected),
        *wire_paper_experiments(service, paper, form, runs.selected),
        wire_files(service, files, runs, form.message),
    ]
    wire_runs(service, runs, form, choosers, seen)
    wire_paper_figures(service, figures, runs)
    wire_compare(service, compare, runs)
    wire_classes(service, runs.classes, runs)
    wire_listen(service, runs.listen, runs.selected, runs.figures[-1])
    _wire_failures(service, started, form, paper)
    started.append(wire_server_folder(service, server_folder, form, runs.selected))

    def refresh_choices() -> list[Any]:
        """After a start or an import: the new sweep in every chooser."""
        return [gr.update(choices=view_choices(service.snapshot()))] * len(choosers)

    for event in started:
        event.then(refresh_choices, None, choosers, api_visibility="private")
        event.success(lambda: gr.Tabs(selected=RESULTS), None, sections, api_visibility="private")

    _wire_refresh(service, timer, seen, choosers, runs, paper, figures, form.fields["limit"])


def _name_prompt_choices(presets: gr.CheckboxGroup) -> None:
    """The paper's prompts shown as "name — question" (the value stays the name the spec and results use)."""
    presets.choices = [(prompt_choice_label(name, PAPER_PROMPTS[name].template), name) for _, name in presets.choices]


def _wire_failures(service: SweepsService, started: list[Any], form: NewSweep, paper: PaperExperiments) -> None:
    """A start that fails replaces its message box, which would otherwise show "Error" over the last "Queued".

    The error notice says why; a fork config's own problem (an unknown key, named) is shown in place too,
    worded as /check_yaml words it, so the page says what the command line says.
    """
    form_start, preset_start, yaml_start, imported = started

    @user_facing
    def yaml_problem(upload: str | None, **data: Any) -> str:
        try:
            service.preview_fork_config(upload, SweepForm.from_widgets(data))
        except ValueError as error:
            return fork_config_problem(error)
        return not_started_html()

    for event, box in ((form_start, form.message), (preset_start, paper.message), (imported, form.message)):
        event.failure(not_started_html, None, box, api_visibility="private")
    yaml_inputs = {"upload": paper.yaml_file, **form.subset(*FORK_CONFIG_DATA)}
    yaml_start.failure(yaml_problem, inputs_kwargs=yaml_inputs, outputs=paper.message, api_visibility="private")


def _wire_refresh(
    service: SweepsService,
    timer: gr.Timer,
    seen: gr.State,
    choosers: list[Any],
    runs: Runs,
    paper: PaperExperiments,
    figures: PaperFigures,
    limit: gr.Number,
) -> None:
    """The tab's one timer: one look at the runs folder, then each section's changes (a dict of updates)."""

    @user_facing
    def refresh(values: dict[Any, Any]) -> dict[Any, Any]:
        """Every ~2 s: only what changed on disk since the page last showed it is sent (no redraws)."""
        seen_now = dict(values[seen] or {})
        snapshot = service.snapshot()
        updates = refresh_runs(service, runs, choosers, snapshot, values, seen_now)
        updates |= refresh_presets(paper, limit, snapshot, values, seen_now)
        updates |= refresh_paper_figures(service, figures, runs, values, seen_now)
        return {**updates, seen: seen_now}

    inputs = {*runs.view_inputs, limit, paper.choice, figures.metric, seen}
    outputs = [runs.table, *choosers, runs.progress, *runs.figures, runs.dataset_filter, runs.prompt_filter]
    outputs += [paper.table, paper.rate, paper.info, *figures.outputs, seen]
    timer.tick(refresh, inputs=inputs, outputs=outputs, api_visibility="private", show_progress="hidden")
