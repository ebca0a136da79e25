"""NatureLM-audio merging explorer: the Gradio UI. It builds the tabs and wires events, nothing more.

Model work goes through naturelm_core.engine (one worker owns the model; alpha travels with each
request); explore logic lives in naturelm_core.explore, figures in evaluation.plots; sweeps run in
evaluation.sweep's queue on that same engine, and the Sweeps tab's form and view logic lives in
evaluation.sweep_forms. Run `python app.py --help` for the flags.
"""

from __future__ import annotations

import argparse
import functools
import html
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # analytics must be off before gradio is imported
import pandas as pd

from evaluation.backend_choice import RAY_ADDRESS_HINT, RUN_ON_CHOICES, THIS_MACHINE, SweepBackends
from evaluation.datasets import SUBSETS
from evaluation.plots import alpha_scan_figure, spectrogram_figure
from evaluation.presets import PRESETS
from evaluation.prompts import PAPER_PROMPTS, SPECIES_LIST_FIELD
from evaluation.runs import RunsStorageError, SweepLockedError, list_sweeps
from evaluation.scoring import ScoringMode
from evaluation.sweep import DataSource, SweepQueue, SweepSpec
from evaluation.sweep_forms import (
    ALL,
    DEFAULT_ALPHA_TEXT,
    IMPORT_PREFIX,
    PAPER_METRIC,
    SPEC_SCORING,
    SweepForm,
    SweepViews,
    check_spec_data,
    default_selection,
    export_view,
    filter_choices,
    fork_config_from_upload,
    fork_config_markdown,
    import_paper_uploads,
    imported_html,
    measured_rate,
    overlay,
    preset_choices,
    preset_figures,
    preset_markdown,
    preset_run_notes,
    presets_table,
    problem_html,
    progress_html,
    rate_markdown,
    spec_from_fork_upload,
    spec_from_form,
    spec_from_preset,
    sweep_status,
    sweeps_table,
    view_choices,
    view_figures,
)
from evaluation.sweep_plots import CORRECT_FILTERS, METRIC_LABELS
from naturelm_core.audio import AudioError, describe_audio, load_audio
from naturelm_core.config import PUBLISHED_REPO_ID
from naturelm_core.engine import Engine, EngineError, GenerationSettings, default_batch_rows
from naturelm_core.explore import (
    DEFAULT_ALPHA_GRID,
    ScanRow,
    WindowAnswer,
    answer_recording,
    format_answers,
    parse_alpha_grid,
    scan_summary,
)
from naturelm_core.startup import DEMO_BANNER, ServedModel, load_served_model

logger = logging.getLogger("naturelm_app")

ALPHA_LABEL = "alpha (0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio)"
DEFAULT_SPECIES = "Humpback Whale, Killer Whale, Bearded Seal, Walrus"
MAX_UPLOAD = "200mb"
SWEEP_REFRESH_S = 2.0
ZERO_GPU_SWEEPS = (
    "Sweeps need dedicated GPU hardware: on ZeroGPU a GPU is lent for one short call at a time, not for the hours "
    "a sweep runs. Run the app (or `python -m evaluation.sweep`) on a dedicated GPU; here you can still import a "
    "folder in the paper's layout and look at its figures."
)


def _user_facing(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every expected failure into a gr.Error with its message: the user sees a sentence, not a trace."""

    @functools.wraps(handler)
    def wrapped(*args: Any) -> Any:
        try:
            return handler(*args)
        except (
            AudioError,
            EngineError,
            ValueError,
            TypeError,
            RunsStorageError,
            SweepLockedError,
            FileNotFoundError,
        ) as error:
            raise gr.Error(str(error)) from None
        except TimeoutError:
            raise gr.Error("The model took too long to answer; try again or lower max new tokens.") from None
        except Exception as error:
            logger.exception("unexpected failure in %s", handler.__name__)
            raise gr.Error(f"Unexpected error ({type(error).__name__}); the app is still running.") from None

    return wrapped


def _zero_gpu() -> Any:
    """The `spaces` package on Hugging Face ZeroGPU hardware, else None."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces


def _on_gpu(handler: Callable[..., Any]) -> Callable[..., Any]:
    """On ZeroGPU, model work must run inside a @spaces.GPU call of the request's own thread."""
    spaces = _zero_gpu()
    return spaces.GPU(handler) if spaces is not None else handler


def _recording(audio_path: str | None) -> Any:
    if not audio_path:
        raise ValueError("No recording: upload a file or record with the microphone first.")
    waveform, _ = load_audio(audio_path)
    return waveform


def build_prompt(preset: str, species: str) -> str:
    """The preset's text, with an editable species list filled into closed-set presets."""
    template = PAPER_PROMPTS[preset].template
    if "{" + SPECIES_LIST_FIELD + "}" in template:
        names = [s.strip() for s in species.split(",") if s.strip()]
        return template.replace("{" + SPECIES_LIST_FIELD + "}", ", ".join(names))
    return template


def create_engine(model: Any) -> Engine:
    """The process's one engine; on ZeroGPU it runs in the callers' (GPU-decorated) threads."""
    return Engine(model, max_batch_rows=default_batch_rows(model), inline=_zero_gpu() is not None)


def build_app(served: ServedModel, engine: Engine, sweeps: SweepQueue | None = None) -> gr.Blocks:
    """The Blocks app; handlers close over this process's one engine, and sweeps queue on that same engine."""
    sweeps = sweeps if sweeps is not None else SweepQueue(engine)

    @_user_facing
    def describe(audio_path: str | None) -> tuple[str, Any]:
        if not audio_path:
            return "", None
        info = describe_audio(audio_path)
        waveform, duration_s = load_audio(audio_path)  # decoded length; mp3 headers can overstate it
        text = (
            f"**{info['format']}**, {duration_s:.2f} s, {info['sample_rate']} Hz, "
            f"{info['channels']} channel(s); the model hears it as 16 kHz mono"
        )
        return text, spectrogram_figure(waveform)

    @_user_facing
    @_on_gpu
    def explore(
        audio_path: str | None, prompt: str, alpha: float, num_beams: int = 2, max_new_tokens: int = 100
    ) -> str:
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        [row] = answer_recording(engine, _recording(audio_path), prompt, [float(alpha)], settings)
        return row.text

    @_user_facing
    @_on_gpu
    def alpha_scan(
        audio_path: str | None, prompt: str, alphas: str, num_beams: int = 2, max_new_tokens: int = 100
    ) -> pd.DataFrame:
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        rows = answer_recording(engine, _recording(audio_path), prompt, parse_alpha_grid(alphas), settings)
        return pd.DataFrame({"alpha": [r.alpha for r in rows], "answer": [format_answers(r.answers) for r in rows]})

    @_user_facing
    def scan_chart(table: pd.DataFrame, expected_label: str) -> Any:
        if table is None or len(table) == 0:
            return None
        rows = [
            ScanRow(float(a), (WindowAnswer(0.0, 0.0, str(t)),))
            for a, t in zip(table["alpha"], table["answer"], strict=True)
        ]
        return alpha_scan_figure(scan_summary(rows, expected_label or None))

    with gr.Blocks(title="NatureLM-audio merging explorer") as app:
        gr.Markdown(f"# NatureLM-audio merging explorer\n**Model:** {served.header}", elem_id="model-header")
        if served.demo:
            reason = f"\n\n_Why: {served.fallback_reason}_" if served.fallback_reason else ""
            gr.Markdown(f"⚠️ **{DEMO_BANNER}**{reason}", elem_id="demo-banner")
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column():
                    audio = gr.Audio(
                        sources=["upload", "microphone"], type="filepath", label="Recording", elem_id="audio-input"
                    )
                    audio_info = gr.Markdown(elem_id="audio-info")
                    spectrogram = gr.Plot(label="Spectrogram")
                with gr.Column():
                    preset = gr.Dropdown(
                        choices=list(PAPER_PROMPTS), value="common", label="Prompt preset (from the paper)"
                    )
                    species = gr.Textbox(value=DEFAULT_SPECIES, label="Species list (closed-set presets)")
                    prompt = gr.Textbox(
                        value=PAPER_PROMPTS["common"].template, label="Prompt", lines=3, elem_id="prompt"
                    )
                    alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=ALPHA_LABEL, elem_id="alpha")
                    with gr.Accordion("Generation settings", open=False):
                        num_beams = gr.Slider(1, 8, value=2, step=1, label="beams")
                        max_new_tokens = gr.Slider(1, 300, value=100, step=1, label="max new tokens")
                    run = gr.Button("Run", variant="primary", elem_id="run")
                    answer = gr.Textbox(label="Answer (per 10 s window for long recordings)", lines=4, elem_id="answer")
            with gr.Accordion("Alpha scan: one recording and prompt across alphas, one batched call", open=True):
                with gr.Row():
                    alphas = gr.Textbox(value=", ".join(f"{a:g}" for a in DEFAULT_ALPHA_GRID), label="alphas")
                    expected = gr.Textbox(label="Expected label (optional, for the similarity curve)")
                    scan = gr.Button("Scan alphas", elem_id="scan")
                scan_table = gr.Dataframe(headers=["alpha", "answer"], label="Answers by alpha", wrap=True)
                scan_plot = gr.Plot(label="Answers vs alpha")

        audio.change(describe, audio, [audio_info, spectrogram], api_visibility="private")
        preset.change(build_prompt, [preset, species], prompt, api_visibility="private")
        species.submit(build_prompt, [preset, species], prompt, api_visibility="private")
        run.click(explore, [audio, prompt, alpha, num_beams, max_new_tokens], answer, api_name="explore")
        scan.click(
            alpha_scan, [audio, prompt, alphas, num_beams, max_new_tokens], scan_table, api_name="alpha_scan"
        ).then(scan_chart, [scan_table, expected], scan_plot, api_visibility="private")
        backends = SweepBackends(
            sweeps, source=served.source, dtype=served.dtype, demo=served.demo, on_progress=sweeps.on_progress
        )
        build_sweeps_tab(backends, sweeps.runs_dir)
    app.sweep_backends = backends  # main() ends a Ray pool the Sweeps tab started
    return app


SOURCE_CHOICES = [
    ("BEANS-Zero subsets (fetched once, then cached)", DataSource.BEANS_ZERO.value),
    ("A local parquet file or folder (BEANS-Zero columns)", DataSource.PARQUET.value),
    ("Uploaded recordings + labels CSV", DataSource.RECORDINGS.value),
]
SCORING_CHOICES = [SPEC_SCORING, *(mode.value for mode in ScoringMode)]
FIGURE_COUNT = 5  # accuracy, F1, trade-off, error breakdown, answers table
PAPER_FIGURE_COUNT = max(len(preset.figures) for preset in PRESETS.values())


def build_sweeps_tab(backends: SweepBackends, runs_dir: str | os.PathLike[str]) -> None:
    """The Sweeps tab, inside the caller's Blocks. Everything it shows is read back from the runs folder,
    so a reloaded page (or a sweep run headless) shows the same table, progress and figures. Sweeps run on
    the app's own queue unless New sweep's Run on picks a Ray cluster (evaluation.backend_choice)."""
    queue = backends.local
    views = SweepViews(runs_dir)
    zero_gpu = _zero_gpu() is not None

    def refuse_on_zero_gpu() -> None:
        if zero_gpu:
            raise ValueError(ZERO_GPU_SWEEPS)

    def filter_updates(key: str, dataset: str, prompt: str, mode: str) -> tuple[Any, Any]:
        datasets, prompts = filter_choices(views.load(key, mode))
        return (
            gr.update(choices=datasets, value=dataset if dataset in datasets else ALL),
            gr.update(choices=prompts, value=prompt if prompt in prompts else ALL),
        )

    def figures_of(key: str, dataset: str, prompt: str, correct: str, mode: str) -> list[Any]:
        return list(view_figures(views.load(key, mode), dataset, prompt, correct))

    def figures_signature(key: str, *filters: str) -> tuple:
        return (views.signature(key), *filters)

    @_user_facing
    def start_sweep(
        name: str,
        source: str,
        subsets: list[str],
        local_path: str,
        labels_csv: str | None,
        recordings: list[str] | None,
        recordings_name: str,
        presets: list[str],
        custom_prompts: str,
        alphas: str,
        limit: float | None,
        top_k_classes: float | None,
        seed: float | None,
        num_beams: float,
        max_new_tokens: float,
        scoring_mode: str,
        mapping_file: str | None,
        run_on: str = THIS_MACHINE,
        ray_address: str = "",
    ) -> tuple[str, str]:
        refuse_on_zero_gpu()
        form = SweepForm(
            name=name,
            source=source,
            subsets=subsets or (),
            local_path=local_path,
            labels_csv=labels_csv,
            recordings=recordings or (),
            recordings_name=recordings_name,
            presets=presets or (),
            custom_prompts=custom_prompts,
            alphas=alphas,
            limit=limit,
            top_k_classes=top_k_classes,
            seed=seed,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            scoring_mode=scoring_mode,
            mapping_file=mapping_file,
        )
        spec = spec_from_form(form, runs_dir)
        return queue_spec(spec, target=lambda: backends.queue_for(run_on, ray_address))

    def queue_spec(
        spec: SweepSpec, notes: Sequence[str] = (), target: Callable[[], SweepQueue] = lambda: queue
    ) -> tuple[str, str]:
        """Check the data (bad data fails here, at Start, before a Ray pool is started for it), queue the
        sweep where `target` says, and say how big it is."""
        items = check_spec_data(spec)
        sweep_id = target().submit(spec)
        size = f"{items} items" if items is not None else "size known once the subsets are fetched"
        message = f"Queued **{sweep_id}** ({size}); items already in its results are skipped."
        return sweep_id, "\n".join([message, *(f"- {note}" for note in notes)])

    def data_form(
        source: str,
        local_path: str,
        limit: float | None,
        seed: float | None,
        num_beams: float,
        max_new_tokens: float,
        scoring_mode: str,
        mapping_file: str | None,
    ) -> SweepForm:
        """The form fields a paper experiment or a fork config runs on (it brings its own questions)."""
        return SweepForm(
            name="",
            source=source,
            local_path=local_path or "",
            limit=limit,
            seed=seed,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            scoring_mode=scoring_mode,
            mapping_file=mapping_file,
        )

    @_user_facing
    def list_paper_presets(limit: float | None) -> tuple[pd.DataFrame, str]:
        rate = measured_rate(list_sweeps(runs_dir))
        return presets_table(rate, limit), rate_markdown(rate)

    @_user_facing
    def describe_preset(key: str | None, limit: float | None) -> str:
        return preset_markdown(key, measured_rate(list_sweeps(runs_dir)), limit)

    @_user_facing
    def run_preset(
        key: str | None,
        preset_alphas: str,
        source: str,
        local_path: str,
        limit: float | None,
        seed: float | None,
        num_beams: float,
        max_new_tokens: float,
        scoring_mode: str,
        mapping_file: str | None,
    ) -> tuple[str, str]:
        refuse_on_zero_gpu()
        form = data_form(source, local_path, limit, seed, num_beams, max_new_tokens, scoring_mode, mapping_file)
        spec = spec_from_preset(key, form, runs_dir, preset_alphas)
        return queue_spec(spec, preset_run_notes(spec))

    def yaml_form(
        source: str, local_path: str, limit: float | None, seed: float | None, scoring_mode: str, mapping: str | None
    ) -> SweepForm:
        """A fork config brings its own decoding (generate:), so the form's beams and max new tokens stay out."""
        return SweepForm(
            name="",
            source=source,
            local_path=local_path or "",
            limit=limit,
            seed=seed,
            scoring_mode=scoring_mode,
            mapping_file=mapping,
        )

    def check_yaml(
        upload: str | None,
        source: str,
        local_path: str,
        limit: float | None,
        seed: float | None,
        scoring_mode: str,
        mapping_file: str | None,
    ) -> str:
        """Shown in place on upload: what the config runs and its notes, or why it cannot run."""
        if not upload:
            return ""
        try:
            form = yaml_form(source, local_path, limit, seed, scoring_mode, mapping_file)
            return fork_config_markdown(fork_config_from_upload(upload, form, mapping_file))
        except ValueError as error:
            return problem_html(f"This config cannot run: {error}")

    @_user_facing
    def run_yaml(
        upload: str | None,
        source: str,
        local_path: str,
        limit: float | None,
        seed: float | None,
        scoring_mode: str,
        mapping_file: str | None,
    ) -> tuple[str, str]:
        refuse_on_zero_gpu()
        form = yaml_form(source, local_path, limit, seed, scoring_mode, mapping_file)
        config = spec_from_fork_upload(upload, form, runs_dir)
        return queue_spec(config.spec, config.notes)

    def paper_figure_updates(key: str | None, mode: str, metric: str) -> list[Any]:
        """The caption and figure of each of the preset's figures; the unused plots hidden."""
        preset, figures = preset_figures(views.load(key, mode), metric) if key else (None, [])
        if not key:
            text = "No sweep selected."
        elif preset is None:
            text = "This sweep was not started from a paper experiment: its figures are the ones above."
        else:
            text = f"**{html.escape(preset.title)}**: the paper's {preset.figures_label}."
        plots = [gr.update(value=figure, label=caption, visible=True) for caption, figure in figures]
        plots += [gr.update(value=None, visible=False)] * (PAPER_FIGURE_COUNT - len(figures))
        return [text, *plots]

    @_user_facing
    def paper_figures(key: str | None, mode: str, metric: str) -> list[Any]:
        return paper_figure_updates(key, mode, metric)

    def paper_tick(
        key: str | None, mode: str, metric: str, limit: float | None, preset: str | None, seen: dict
    ) -> tuple:
        """Every ~2 s: the presets' estimates when the measured rate moves, the paper figures when results do."""
        seen = dict(seen or {})
        rate = measured_rate(list_sweeps(runs_dir))
        estimate_updates = [gr.skip()] * 3
        if (rate, limit, preset) != seen.get("estimates"):
            try:
                estimate_updates = [
                    presets_table(rate, limit),
                    rate_markdown(rate),
                    preset_markdown(preset, rate, limit),
                ]
                seen["estimates"] = (rate, limit, preset)
            except ValueError:  # a sample limit Start refuses with its own message
                pass
        figure_updates = [gr.skip()] * (1 + PAPER_FIGURE_COUNT)
        try:
            signature = (views.signature(key), mode, metric) if key else None
            if signature != seen.get("figures"):
                figure_updates = paper_figure_updates(key, mode, metric)
                seen["figures"] = signature
        except (ValueError, OSError) as error:  # the tab's own tick shows the problem in place
            logger.warning("refreshing the paper figures of %s: %s", key, error)
        return (*estimate_updates, *figure_updates, seen)

    @_user_facing
    def cancel_sweep(key: str | None) -> str:
        if not key or key.startswith(IMPORT_PREFIX):
            raise ValueError("Select a sweep to cancel.")
        if backends.cancel(key):
            return f"Cancelling **{key}** after the batch in flight; Resume continues where it stopped."
        return f"**{key}** is not running or queued."

    @_user_facing
    def resume_sweep(key: str | None, run_on: str = THIS_MACHINE, ray_address: str = "") -> str:
        """Resume where "Run on" says now: a sweep started on a Ray cluster can finish here, and back."""
        refuse_on_zero_gpu()
        if not key or key.startswith(IMPORT_PREFIX):
            raise ValueError("Select a sweep to resume.")
        target = backends.queue_for(run_on, ray_address)
        return f"Queued **{target.resume(key)}**; items already in its results are skipped."

    @_user_facing
    def list_table() -> Any:
        return sweeps_table(list_sweeps(runs_dir))

    @_user_facing
    def show_sweep(key: str | None, dataset: str, prompt: str, correct: str, mode: str, seen: dict) -> tuple:
        if not key:
            return (progress_html(None), *[None] * FIGURE_COUNT, gr.skip(), gr.skip(), seen)
        dataset_update, prompt_update = filter_updates(key, dataset, prompt, mode)
        if key.startswith(IMPORT_PREFIX):
            progress = imported_html(views.load(key, mode))
        else:
            progress = progress_html(sweep_status(runs_dir, key))
        figures = figures_of(key, dataset, prompt, correct, mode)
        seen = {**seen, "figures": figures_signature(key, dataset, prompt, correct, mode), "progress": progress}
        return (progress, *figures, dataset_update, prompt_update, seen)

    def on_load() -> tuple:
        """A (re)loaded page: the table, and the running or newest sweep selected (its .change draws it)."""
        statuses = list_sweeps(runs_dir)
        choices = view_choices(runs_dir, statuses)
        table = sweeps_table(statuses)
        selected = gr.update(choices=choices, value=default_selection(runs_dir))
        return table, selected, gr.update(choices=choices), gr.update(choices=choices), {"choices": choices}

    def tick(key: str | None, dataset: str, prompt: str, correct: str, mode: str, seen: dict) -> tuple:
        """Every ~2 s: whatever changed on disk since the last look, and gr.skip() for the rest (no redraws)."""
        seen = dict(seen or {})
        statuses = list_sweeps(runs_dir)
        table = sweeps_table(statuses)
        records = table.to_dict("records")
        table_update = gr.skip() if records == seen.get("table") else table
        seen["table"] = records
        choices = view_choices(runs_dir, statuses)
        choice_updates = [gr.skip()] * 3
        if choices != seen.get("choices"):
            choice_updates = [gr.update(choices=choices)] * 3
            seen["choices"] = choices
        progress: Any = gr.skip()
        figure_updates = [gr.skip()] * FIGURE_COUNT
        filters = [gr.skip()] * 2
        if key and not key.startswith(IMPORT_PREFIX):
            progress_now = progress_html(sweep_status(runs_dir, key, statuses))
            if progress_now != seen.get("progress"):
                progress = seen["progress"] = progress_now
            try:
                signature = figures_signature(key, dataset, prompt, correct, mode)
                if signature != seen.get("figures"):
                    figure_updates = figures_of(key, dataset, prompt, correct, mode)
                    filters = list(filter_updates(key, dataset, prompt, mode))
                    seen["figures"] = signature
            except (ValueError, OSError) as error:  # shown in place: a toast every 2 s would bury the page
                logger.warning("refreshing sweep %s: %s", key, error)
                progress = seen["progress"] = progress_now + problem_html(f"Cannot draw this sweep: {error}")
        return (table_update, *choice_updates, progress, *figure_updates, *filters, seen)

    @_user_facing
    def compare(key_a: str | None, key_b: str | None, metric: str, mode: str) -> Any:
        if not key_a or not key_b:
            raise ValueError("Choose two sweeps to compare.")
        return overlay([views.load(key_a, mode), views.load(key_b, mode)], metric)

    def exporter(fmt: str) -> Callable[[str | None, str], str]:
        @_user_facing
        def export(key: str | None, mode: str) -> str:
            if not key:
                raise ValueError("Select a sweep to export.")
            return str(export_view(views.load(key, mode), fmt))

        export.__name__ = f"export_{fmt}"
        return export

    @_user_facing
    def import_folder(files: list[str] | None, name: str) -> tuple[str, str]:
        key = import_paper_uploads(files or [], runs_dir, name or "imported")
        return key, f"Imported as **{key.removeprefix(IMPORT_PREFIX)}**; its figures are shown below."

    def refresh_choices() -> tuple[Any, Any, Any]:
        return (gr.update(choices=view_choices(runs_dir)),) * 3

    def show_source(source: str) -> tuple[Any, ...]:
        local, uploaded = source == DataSource.PARQUET.value, source == DataSource.RECORDINGS.value
        return (
            gr.update(visible=not uploaded),
            gr.update(visible=local),
            gr.update(visible=uploaded),
            gr.update(visible=uploaded),
            gr.update(visible=uploaded),
        )

    with gr.Tab("Sweeps", elem_id="sweeps-tab"):
        gr.Markdown(
            "Answer a grid of (sample, prompt, alpha) with the model this app serves; interactive requests still "
            f"go first. Results are kept in `{Path(runs_dir).resolve()}`: close the page and come back, "
            "or resume a sweep after a crash, without losing answers."
        )
        if zero_gpu:
            gr.Markdown(f"⚠️ **{ZERO_GPU_SWEEPS}**", elem_id="sweeps-zero-gpu")
        with gr.Accordion("New sweep", open=True):
            with gr.Row():
                with gr.Column():
                    sweep_name = gr.Textbox(value="my sweep", label="Sweep name", elem_id="sweep-name")
                    source = gr.Radio(
                        SOURCE_CHOICES, value=DataSource.BEANS_ZERO.value, label="Data", elem_id="sweep-source"
                    )
                    subsets = gr.Dropdown(
                        choices=list(SUBSETS),
                        value=["watkins"],
                        multiselect=True,
                        label="BEANS-Zero subset(s)",
                        elem_id="sweep-subsets",
                    )
                    local_path = gr.Textbox(
                        label="Parquet file or folder on the server", visible=False, elem_id="sweep-local-path"
                    )
                    labels_csv = gr.File(
                        label="Labels CSV (columns file,label[,scientific_label])",
                        file_types=[".csv"],
                        type="filepath",
                        visible=False,
                        elem_id="sweep-labels-csv",
                    )
                    recordings = gr.File(
                        label="Recordings named in the CSV",
                        file_count="multiple",
                        type="filepath",
                        visible=False,
                        elem_id="sweep-recordings",
                    )
                    recordings_name = gr.Textbox(
                        value="my-recordings", label="Data set name", visible=False, elem_id="sweep-recordings-name"
                    )
                with gr.Column():
                    presets = gr.CheckboxGroup(
                        choices=list(PAPER_PROMPTS),
                        value=["common", "scientific", "combined"],
                        label="Prompts from the paper",
                        elem_id="sweep-presets",
                    )
                    custom_prompts = gr.Textbox(
                        label="Custom prompts, one per line ({species_list} becomes the shuffled labels)",
                        lines=2,
                        elem_id="sweep-custom-prompts",
                    )
                    alphas = gr.Textbox(
                        value=DEFAULT_ALPHA_TEXT,
                        label="alphas: values and/or start:stop:step ranges",
                        elem_id="sweep-alphas",
                    )
                    scoring_mode = gr.Dropdown(
                        choices=[mode.value for mode in ScoringMode],
                        value=ScoringMode.PAPER.value,
                        label="Scoring mode",
                        elem_id="sweep-scoring",
                    )
                    mapping_file = gr.File(
                        label="Label mapping for scientific names (jsonl or csv, optional)",
                        file_types=[".jsonl", ".csv"],
                        type="filepath",
                        elem_id="sweep-mapping",
                    )
                with gr.Column():
                    limit = gr.Number(
                        value=100, precision=0, label="Samples per subset (0 = all)", elem_id="sweep-limit"
                    )
                    top_k = gr.Number(value=0, precision=0, label="Top-k classes (0 = all)", elem_id="sweep-top-k")
                    seed = gr.Number(
                        value=0, precision=0, label="Seed (sample choice, label order)", elem_id="sweep-seed"
                    )
                    num_beams = gr.Slider(1, 8, value=2, step=1, label="beams", elem_id="sweep-beams")
                    max_new_tokens = gr.Slider(
                        1, 300, value=100, step=1, label="max new tokens", elem_id="sweep-max-new-tokens"
                    )
                    run_on = gr.Radio(list(RUN_ON_CHOICES), value=THIS_MACHINE, label="Run on", elem_id="sweep-run-on")
                    ray_address = gr.Textbox(
                        value="",  # a value, so that API clients may leave it out
                        label="Ray address (for Ray cluster)",
                        placeholder=RAY_ADDRESS_HINT,
                        elem_id="sweep-ray-address",
                    )
                    start = gr.Button("Start sweep", variant="primary", interactive=not zero_gpu, elem_id="sweep-start")
            message = gr.Markdown(elem_id="sweep-message")
        with gr.Accordion("Paper experiments", open=True, elem_id="sweep-paper"):
            gr.Markdown(
                "Each experiment of the paper as a ready sweep, with the paper's questions and alpha grid. It runs "
                "on the data, sample limit, seed, beams, max new tokens, scoring mode and label mapping set under "
                "New sweep (0 samples = the whole experiment)."
            )
            rate = measured_rate(list_sweeps(runs_dir))
            preset_rate = gr.Markdown(rate_markdown(rate), elem_id="sweep-preset-rate")
            preset_table = gr.Dataframe(
                value=presets_table(rate, limit.value),
                label="Paper experiments: answers needed and estimated time",
                interactive=False,
                wrap=True,
                elem_id="sweep-presets-table",
            )
            with gr.Row():
                preset_choice = gr.Dropdown(
                    choices=preset_choices(), value=None, label="Experiment", scale=3, elem_id="sweep-preset"
                )
                preset_alphas = gr.Textbox(
                    label="alphas (empty = the paper's grid)",
                    placeholder="e.g. 0, 0.5, 1",
                    elem_id="sweep-preset-alphas",
                )
                run_preset_button = gr.Button(
                    "Run preset", variant="primary", interactive=not zero_gpu, elem_id="sweep-run-preset"
                )
            preset_info = gr.Markdown(elem_id="sweep-preset-info")
            gr.Markdown(
                "**YAML config** in the paper fork's format (`model:`, `generate:`, `extended:`): its data sets, "
                "alphas, species and queries, with its beams and max new tokens; data, sample limit, seed, scoring "
                "mode and mapping from New sweep."
            )
            with gr.Row():
                yaml_file = gr.File(
                    label="Fork config (.yml or .yaml)",
                    file_types=[".yml", ".yaml"],
                    type="filepath",
                    elem_id="sweep-yaml-file",
                )
                with gr.Column():
                    yaml_info = gr.Markdown(elem_id="sweep-yaml-info")
                    run_yaml_button = gr.Button(
                        "Start YAML config", variant="primary", interactive=not zero_gpu, elem_id="sweep-run-yaml"
                    )
            paper_message = gr.Markdown(elem_id="sweep-paper-message")
        gr.Markdown("### Sweeps")
        table = gr.Dataframe(
            value=sweeps_table([]), label="Sweeps in the runs folder", interactive=False, elem_id="sweeps-table"
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
        with gr.Row():
            accuracy_plot = gr.Plot(label="Accuracy vs alpha", elem_id="sweep-accuracy")
            f1_plot = gr.Plot(label="Weighted F1 vs alpha", elem_id="sweep-f1")
        with gr.Row():
            tradeoff_plot = gr.Plot(label="Trade-off (the paper's Figure 4)", elem_id="sweep-tradeoff")
            breakdown_plot = gr.Plot(label="Error breakdown", elem_id="sweep-breakdown")
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
        answers = gr.Dataframe(label="Answers per sample across alphas", wrap=True, elem_id="sweep-answers")
        with gr.Accordion("The paper's figures of the selected sweep", open=True, elem_id="sweep-paper-figures"):
            with gr.Row():
                paper_text = gr.Markdown(elem_id="sweep-paper-figures-text")
                paper_metric = gr.Dropdown(
                    [PAPER_METRIC, *METRIC_LABELS], value=PAPER_METRIC, label="Metric", elem_id="sweep-paper-metric"
                )
            paper_plots = []
            for first in range(0, PAPER_FIGURE_COUNT, 2):  # two figures a row, as the tab's own
                with gr.Row():
                    paper_plots += [
                        gr.Plot(visible=False, elem_id=f"sweep-paper-figure-{index}")
                        for index in range(first, min(first + 2, PAPER_FIGURE_COUNT))
                    ]
        with gr.Accordion("Compare two sweeps", open=False):
            with gr.Row():
                compare_a = gr.Dropdown(choices=[], allow_custom_value=True, label="Sweep A", elem_id="sweep-compare-a")
                compare_b = gr.Dropdown(choices=[], allow_custom_value=True, label="Sweep B", elem_id="sweep-compare-b")
                compare_metric = gr.Radio(
                    ["accuracy", "f1_weighted", "f1_macro"],
                    value="accuracy",
                    label="Metric",
                    elem_id="sweep-compare-metric",
                )
                compare_button = gr.Button("Overlay", elem_id="sweep-compare")
            overlay_plot = gr.Plot(label="Overlay", elem_id="sweep-overlay")
        with gr.Accordion("Export and import", open=False):
            with gr.Row():
                export_buttons = {
                    fmt: gr.Button(label, elem_id=f"sweep-export-{fmt}")
                    for fmt, label in (
                        ("csv", "Export CSV"),
                        ("json", "Export JSON"),
                        ("paper", "Export paper layout (zip)"),
                    )
                }
            export_file = gr.File(label="Download", interactive=False, elem_id="sweep-export-file")
            with gr.Row():
                import_files = gr.File(
                    label="Paper-layout files: beans_zero_eval_*.jsonl (+ prompt_names.json, mappings) or a zip",
                    file_count="multiple",
                    type="filepath",
                    elem_id="sweep-import-files",
                )
                import_name = gr.Textbox(value="imported", label="Name", elem_id="sweep-import-name")
                import_button = gr.Button("Import", elem_id="sweep-import")
        seen = gr.State({})
        paper_seen = gr.State({})
        timer = gr.Timer(SWEEP_REFRESH_S)

    figure_outputs = [accuracy_plot, f1_plot, tradeoff_plot, breakdown_plot, answers]
    view_inputs = [selected, dataset_filter, prompt_filter, correct_filter, view_mode, seen]
    show_outputs = [progress, *figure_outputs, dataset_filter, prompt_filter, seen]
    form = [
        sweep_name,
        source,
        subsets,
        local_path,
        labels_csv,
        recordings,
        recordings_name,
        presets,
        custom_prompts,
        alphas,
        limit,
        top_k,
        seed,
        num_beams,
        max_new_tokens,
        scoring_mode,
        mapping_file,
    ]
    source.change(
        show_source, source, [subsets, local_path, labels_csv, recordings, recordings_name], api_visibility="private"
    )
    choosers = [selected, compare_a, compare_b]
    start.click(start_sweep, [*form, run_on, ray_address], [selected, message], api_name="start_sweep").then(
        refresh_choices, None, choosers, api_visibility="private"
    )
    cancel.click(cancel_sweep, selected, message, api_name="cancel_sweep")
    resume.click(resume_sweep, [selected, run_on, ray_address], message, api_name="resume_sweep")
    refresh.click(list_table, None, table, api_name="sweep_status")
    selected.change(show_sweep, view_inputs, show_outputs, api_name="sweep_figures", show_progress="minimal")
    for control in (dataset_filter, prompt_filter, correct_filter, view_mode):
        control.input(show_sweep, view_inputs, show_outputs, api_visibility="private", show_progress="minimal")
    gr.on(None, on_load, None, [table, selected, compare_a, compare_b, seen], api_visibility="private")
    timer.tick(
        tick,
        view_inputs,
        [table, selected, compare_a, compare_b, *show_outputs],
        api_visibility="private",
        show_progress="hidden",
    )
    compare_button.click(compare, [compare_a, compare_b, compare_metric, view_mode], overlay_plot, api_name="overlay")
    for fmt, button in export_buttons.items():
        button.click(exporter(fmt), [selected, view_mode], export_file, api_name=f"export_{fmt}")
    import_button.click(import_folder, [import_files, import_name], [selected, message], api_name="import_paper").then(
        refresh_choices, None, choosers, api_visibility="private"
    )

    limit.change(list_paper_presets, limit, [preset_table, preset_rate], api_name="presets")
    preset_choice.change(describe_preset, [preset_choice, limit], preset_info, api_visibility="private")
    data_fields = [source, local_path, limit, seed, num_beams, max_new_tokens, scoring_mode, mapping_file]
    run_preset_button.click(
        run_preset, [preset_choice, preset_alphas, *data_fields], [selected, paper_message], api_name="run_preset"
    ).then(refresh_choices, None, choosers, api_visibility="private")
    yaml_inputs = [yaml_file, source, local_path, limit, seed, scoring_mode, mapping_file]
    yaml_file.change(check_yaml, yaml_inputs, yaml_info, api_name="check_yaml")
    run_yaml_button.click(run_yaml, yaml_inputs, [selected, paper_message], api_name="run_yaml").then(
        refresh_choices, None, choosers, api_visibility="private"
    )
    paper_inputs = [selected, view_mode, paper_metric]
    paper_outputs = [paper_text, *paper_plots]
    selected.change(paper_figures, paper_inputs, paper_outputs, api_name="preset_figures", show_progress="minimal")
    for control in (view_mode, paper_metric):
        control.input(paper_figures, paper_inputs, paper_outputs, api_visibility="private", show_progress="minimal")
    timer.tick(
        paper_tick,
        [*paper_inputs, limit, preset_choice, paper_seen],
        [preset_table, preset_rate, preset_info, *paper_outputs, paper_seen],
        api_visibility="private",
        show_progress="hidden",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=PUBLISHED_REPO_ID, help="Hub repo id or folder with config.json")
    parser.add_argument("--llm", default=None, help="Llama override: Hub id or folder (default: from config)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bf16 on GPU")
    parser.add_argument("--demo", action="store_true", help="serve the tiny random model (offline demo)")
    parser.add_argument("--host", default=None, help="default: Gradio's (GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="default: Gradio's (GRADIO_SERVER_PORT or 7860)")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="where sweeps are kept (default: $NATURELM_RUNS_DIR, /data/runs or runs/)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    served = load_served_model(args.model, llm=args.llm, device=args.device, dtype=args.dtype, demo=args.demo)
    if served.demo:
        logger.warning("%s (reason: %s)", DEMO_BANNER, served.fallback_reason)
    engine = create_engine(served.model)
    sweeps = SweepQueue(engine, args.runs_dir)
    app = build_app(served, engine, sweeps)
    try:
        app.queue(default_concurrency_limit=16).launch(
            server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True
        )
    finally:
        app.sweep_backends.stop()  # a Ray sweep stops after its batch in flight, and the pool's actors end
        sweeps.close()  # the running sweep stops after its batch in flight; resume it on the next start


if __name__ == "__main__":
    main()
