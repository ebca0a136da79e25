"""The Sweeps tab's list of sweeps and the selected sweep: its progress, figures, answers, Cancel and Resume.

Widgets and wiring only; what is drawn comes from ui.sweep_display, the words from ui.text, the data
from the service. `refresh_runs` is this section's share of the tab's one timer: it redraws only
what changed on disk since the page last looked (kept in the tab's `seen` state).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from evaluation.backend_choice import THIS_MACHINE
from evaluation.scoring import ScoringMode
from ui.errors import user_facing
from ui.sweep_display import ALL, filter_choices, view_figures
from ui.sweep_figures import CORRECT_FILTERS
from ui.sweeps_classes import Classes, classes_section
from ui.sweeps_listen import Listen, listen_section
from ui.sweeps_new import NewSweep
from ui.sweeps_service import SPEC_SCORING, RunsSnapshot, SweepsService, is_import
from ui.tables import sweeps_table
from ui.text import (
    cancel_markdown,
    imported_html,
    problem_html,
    progress_html,
    provenance_html,
    resumed_markdown,
    view_choices,
)

logger = logging.getLogger("naturelm_app")

SCORING_CHOICES = [SPEC_SCORING, *(mode.value for mode in ScoringMode)]
FIGURE_COUNT = 5  # accuracy, F1, trade-off, error breakdown, answers table


@dataclass(frozen=True)
class Runs:
    table: gr.Dataframe
    selected: gr.Dropdown
    view_mode: gr.Dropdown
    cancel: gr.Button
    resume: gr.Button
    refresh: gr.Button
    progress: gr.HTML
    figures: tuple[Any, ...]  # FIGURE_COUNT outputs, in SweepFigures' order
    dataset_filter: gr.Dropdown
    prompt_filter: gr.Dropdown
    correct_filter: gr.Dropdown
    classes: Classes
    listen: Listen

    @property
    def view_inputs(self) -> list[Any]:
        """What the selected sweep's figures depend on (besides what is on disk)."""
        return [self.selected, self.dataset_filter, self.prompt_filter, self.correct_filter, self.view_mode]


def runs_section(zero_gpu: bool) -> Runs:
    """The sweeps table, the chooser with Cancel / Resume / Refresh, the progress bar, figures and answers."""
    gr.Markdown("### Sweeps")
    table = gr.Dataframe(
        value=sweeps_table([]),
        label="Sweeps in the runs folder",
        interactive=False,
        max_height=260,
        elem_id="sweeps-table",
    )
    with gr.Row():
        selected = gr.Dropdown(
            choices=[], value=None, allow_custom_value=True, label="Show sweep", scale=3, elem_id="sweep-selected"
        )
        view_mode = gr.Dropdown(SCORING_CHOICES, value=SPEC_SCORING, label="Score as", elem_id="sweep-view-mode")
        cancel = gr.Button("Cancel", variant="stop", elem_id="sweep-cancel")
        resume = gr.Button("Resume", interactive=not zero_gpu, elem_id="sweep-resume")
        refresh = gr.Button("Refresh", elem_id="sweep-refresh")
    progress = gr.HTML(elem_id="sweep-progress")
    with gr.Tabs(elem_id="sweep-views"):
        with gr.Tab("Figures", elem_id="sweep-figures-tab"):
            accuracy, f1, tradeoff, breakdown = _figures()
        with gr.Tab("Answers", elem_id="sweep-answers-tab"):
            dataset_filter, prompt_filter, correct_filter, answers = _answers()
            listen = listen_section()
        with gr.Tab("Per class", elem_id="sweep-classes-tab"):
            classes = classes_section()
    figures = (accuracy, f1, tradeoff, breakdown, answers)
    return Runs(
        table,
        selected,
        view_mode,
        cancel,
        resume,
        refresh,
        progress,
        figures,
        dataset_filter,
        prompt_filter,
        correct_filter,
        classes,
        listen,
    )


def _figures() -> tuple[gr.Plot, ...]:
    """Accuracy and F1 vs alpha, then the trade-off and the error breakdown, two a row."""
    with gr.Row():
        accuracy = gr.Plot(label="Accuracy vs alpha", elem_id="sweep-accuracy")
        f1 = gr.Plot(label="Weighted F1 vs alpha", elem_id="sweep-f1")
    with gr.Row():
        tradeoff = gr.Plot(label="Trade-off (the paper's Figure 4)", elem_id="sweep-tradeoff")
        breakdown = gr.Plot(label="Error breakdown", elem_id="sweep-breakdown")
    return accuracy, f1, tradeoff, breakdown


def _answers() -> tuple[Any, ...]:
    """The filters, then the answers: short α headers, no wrapping, scrolled inside its own box."""
    with gr.Row():
        dataset_filter = gr.Dropdown(
            [ALL], value=ALL, allow_custom_value=True, label="Data set", elem_id="sweep-filter-dataset"
        )
        prompt_filter = gr.Dropdown(
            [ALL], value=ALL, allow_custom_value=True, label="Prompt", elem_id="sweep-filter-prompt"
        )
        correct_filter = gr.Dropdown(
            [ALL, *CORRECT_FILTERS], value=ALL, label="Answered correctly at", elem_id="sweep-filter-correct"
        )
    answers = gr.Dataframe(
        label="Answers per sample across alphas", wrap=False, max_height=480, elem_id="sweep-answers"
    )
    return dataset_filter, prompt_filter, correct_filter, answers


def _drawn(service: SweepsService, key: str, dataset: str, prompt: str, correct: str, mode: str) -> list[Any]:
    """The selected sweep's figures, then its filters' choices (a filter the sweep lacks falls back to all)."""
    view = service.view(key, mode)
    datasets, prompts = filter_choices(view)
    return [
        *view_figures(view, dataset, prompt, correct, says=service.generation_twin(view, mode)),
        gr.update(choices=datasets, value=dataset if dataset in datasets else ALL),
        gr.update(choices=prompts, value=prompt if prompt in prompts else ALL),
    ]


def wire_runs(service: SweepsService, runs: Runs, form: NewSweep, choosers: list[Any], seen: gr.State) -> None:
    """Cancel, Resume (where New sweep's Run on says), Refresh, the selection and filters, and a page (re)load."""

    @user_facing
    def cancel_sweep(key: str | None) -> str:
        return cancel_markdown(key, service.cancel(key))

    @user_facing
    def resume_sweep(key: str | None, run_on: str = THIS_MACHINE, ray_address: str = "") -> str:
        """Resume where "Run on" says now: a sweep started on a Ray cluster can finish here, and back."""
        return resumed_markdown(service.resume(key, run_on, ray_address))

    @user_facing
    def sweep_status() -> Any:
        return sweeps_table(service.snapshot().statuses)

    @user_facing
    def show_sweep(key: str | None, dataset: str, prompt: str, correct: str, mode: str, seen: dict) -> tuple:
        if not key:
            return (progress_html(None), *[None] * FIGURE_COUNT, gr.skip(), gr.skip(), seen)
        drawn = _drawn(service, key, dataset, prompt, correct, mode)
        progress = (
            imported_html(service.view(key, mode)) if is_import(key) else progress_html(service.snapshot().status(key))
        ) + provenance_html(service.provenance(key))
        signature = (service.signature(key), dataset, prompt, correct, mode)
        return (progress, *drawn, {**seen, "figures": signature, "progress": progress})

    def on_load() -> tuple:
        """A (re)loaded page: the table, and the running or newest sweep selected (its .change draws it)."""
        snapshot = service.snapshot()
        choices = view_choices(snapshot)
        selected = gr.update(choices=choices, value=snapshot.default_selection())
        return sweeps_table(snapshot.statuses), selected, *[gr.update(choices=choices)] * 2, {"choices": choices}

    show_outputs = [runs.progress, *runs.figures, runs.dataset_filter, runs.prompt_filter, seen]
    runs.cancel.click(cancel_sweep, runs.selected, form.message, api_name="cancel_sweep")
    runs.resume.click(
        resume_sweep, [runs.selected, form.run_on, form.ray_address], form.message, api_name="resume_sweep"
    )
    runs.refresh.click(sweep_status, None, runs.table, api_name="sweep_status")
    view_inputs = [*runs.view_inputs, seen]
    runs.selected.change(show_sweep, view_inputs, show_outputs, api_name="sweep_figures", show_progress="minimal")
    for control in (runs.dataset_filter, runs.prompt_filter, runs.correct_filter, runs.view_mode):
        control.input(show_sweep, view_inputs, show_outputs, api_visibility="private", show_progress="minimal")
    gr.on(None, on_load, None, [runs.table, *choosers, seen], api_visibility="private")


def refresh_runs(
    service: SweepsService, runs: Runs, choosers: list[Any], snapshot: RunsSnapshot, values: dict, seen: dict
) -> dict[Any, Any]:
    """The table, the choosers and the selected sweep, where they changed since the page last showed them."""
    updates: dict[Any, Any] = {}
    table = sweeps_table(snapshot.statuses)
    records = table.to_dict("records")
    if records != seen.get("table"):
        updates[runs.table] = table
        seen["table"] = records
    choices = view_choices(snapshot)
    if choices != seen.get("choices"):
        updates |= {chooser: gr.update(choices=choices) for chooser in choosers}
        seen["choices"] = choices
    key, dataset, prompt, correct, mode = (values[control] for control in runs.view_inputs)
    if not key or is_import(key):
        return updates
    status = progress_html(snapshot.status(key))
    try:
        progress = status + provenance_html(service.provenance(key))
        if progress != seen.get("progress"):
            updates[runs.progress] = seen["progress"] = progress
        signature = (service.signature(key), dataset, prompt, correct, mode)
        if signature != seen.get("figures"):
            drawn = _drawn(service, key, dataset, prompt, correct, mode)
            updates |= dict(zip([*runs.figures, runs.dataset_filter, runs.prompt_filter], drawn, strict=True))
            seen["figures"] = signature
    except (ValueError, OSError) as error:  # shown in place: a toast every 2 s would bury the page
        logger.warning("refreshing sweep %s: %s", key, error)
        updates[runs.progress] = seen["progress"] = status + problem_html(f"Cannot draw this sweep: {error}")
    return updates
