"""Every sentence, Markdown and HTML snippet the page shows that is built from data.

Why in one place: the wording of the page is reviewed and changed together, and keeping it out of
the tab modules leaves those to widgets and wiring. Everything here is a pure function of plain
data (statuses, presets, configs), and user text is escaped before it is put into HTML.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.presets import PRESETS, Preset, get_preset
from evaluation.sweep import SweepState, SweepStatus
from evaluation.sweep.provenance import numerics_changes, shown
from evaluation.sweep_forms import optional_count
from evaluation.sweep_uploads import IMPORT_PREFIX
from naturelm_core.alphas import format_grid
from naturelm_core.startup import DEMO_BANNER, ServedModel

if TYPE_CHECKING:
    from evaluation.fork_config import ForkConfig
    from evaluation.sweep_views import SweepView
    from naturelm_core.events import DetectionResult
    from ui.sweeps_service import MeasuredRate, Queued, RunsSnapshot

RATE_UNKNOWN = "rate unknown until a sweep has run"
SMALL_BATCH_SHARE = 0.5  # a running sweep whose batches average under this share of the maximum says so
ZERO_GPU_SWEEPS = (
    "Sweeps need dedicated GPU hardware: on ZeroGPU a GPU is lent for one short call at a time, not for the hours "
    "a sweep runs. Run the app (or `python -m evaluation.sweep`) on a dedicated GPU; here you can still import a "
    "folder in the paper's layout and look at its figures."
)
ANSWER_MODE_INFO = (
    "generate: the model writes its answer (the paper's way). likelihood: every label of the subset's closed set "
    "is scored and the most likely is the answer; the whole distribution is kept (calibration, top-k, AUROC)."
)
PAPER_EXPERIMENTS_INTRO = (
    "Each experiment of the paper as a ready sweep, with the paper's questions and alpha grid. It runs "
    "on the data, sample limit, seed, beams, max new tokens, scoring mode and label mapping set under "
    "New sweep (0 samples = the whole experiment)."
)
FORK_CONFIG_INTRO = (
    "**YAML config** in the paper fork's format (`model:`, `generate:`, `extended:`): its data sets, "
    "alphas, species and queries, with its beams and max new tokens; data, sample limit, seed, scoring "
    "mode and mapping from New sweep."
)


# --- the page header and the Explore tab


def header_markdown(served: ServedModel) -> str:
    return f"# NatureLM-audio merging explorer\n**Model:** {served.header}"


def demo_banner_markdown(served: ServedModel) -> str:
    reason = f"\n\n_Why: {served.fallback_reason}_" if served.fallback_reason else ""
    return f"⚠️ **{DEMO_BANNER}**{reason}"


def audio_info_markdown(info: dict[str, Any], duration_s: float) -> str:
    """What was uploaded, with its decoded length (mp3 headers can overstate it)."""
    return (
        f"**{info['format']}**, {duration_s:.2f} s, {info['sample_rate']} Hz, "
        f"{info['channels']} channel(s); the model hears it as 16 kHz mono"
    )


# --- the Sweeps tab: the runs folder and the selected sweep


def sweeps_intro(runs_dir: Path) -> str:
    return (
        "Answer a grid of (sample, prompt, alpha) with the model this app serves; interactive requests still "
        f"go first. Results are kept in `{runs_dir.resolve()}`: close the page and come back, "
        "or resume a sweep after a crash, without losing answers."
    )


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def view_choices(snapshot: RunsSnapshot) -> list[tuple[str, str]]:
    """(label, key) for every sweep (newest first) and every imported folder: what the tab can show."""
    sweeps = [(f"{s.name} · {s.state.value} · {s.sweep_id}", s.sweep_id) for s in snapshot.statuses]
    return sweeps + [(f"imported · {name}", IMPORT_PREFIX + name) for name in snapshot.imports]


def progress_html(status: SweepStatus | None) -> str:
    """A progress bar with counts, rate and ETA for the selected sweep (read from its status file)."""
    if status is None:
        return "<p>No sweep selected.</p>"
    detail = f"{status.done}/{status.total} items"
    if status.state is SweepState.RUNNING:
        rate = f"{status.rate_per_s:.2f} items/s" if status.rate_per_s else "measuring the rate"
        detail += f", {rate}, ETA {format_duration(status.eta_s)}"
        if status.rows_per_batch is not None and status.max_batch_rows:
            detail += f", {status.rows_per_batch:.0f} of at most {status.max_batch_rows} rows per batch"
            if status.rows_per_batch < SMALL_BATCH_SHARE * status.max_batch_rows:
                detail += " (small batches: reading the data cannot keep up, or GPU memory limits them)"
    if status.failed or status.skipped_samples:
        detail += f", {status.failed} failed, {status.skipped_samples} sample(s) skipped"
    message = f"<br><small>{html.escape(status.message)}</small>" if status.message else ""
    return (
        f'<div class="sweep-progress"><b>{html.escape(status.name)}</b> ({html.escape(status.sweep_id)}): '
        f"<b>{status.state.value}</b><br>"
        f'<progress value="{status.done}" max="{max(status.total, 1)}" style="width:100%"></progress>'
        f"{html.escape(detail)}{message}</div>"
    )


def provenance_html(runs: Sequence[Mapping[str, Any]]) -> str:
    """One line under the selected sweep: its first run's numerics and device, and a warning where runs differ
    (rows written by runs with other numerics are mixed in its results). Empty where no run was recorded."""
    if not runs:
        return ""
    first = runs[0]
    source = "demo model" if first.get("demo") else first.get("model_source")
    parts = [
        f"LLM {first.get('llm_dtype') or 'dtype unknown'}",
        f"audio encoder {first.get('audio_precision') or 'precision unknown'}",
        first.get("device") or "device unknown",
        *([str(source)] if source else []),
    ]
    line = f"First run: {', '.join(parts)}; {len(runs)} run(s) in all."
    changes = numerics_changes(runs)
    if not changes:
        return f'<p class="sweep-provenance"><small>{html.escape(line)}</small></p>'
    differ = "; ".join(f"{change.label} {' → '.join(map(shown, change.values))}" for change in changes)
    warning = f"⚠ Runs differ: {differ}. Its rows mix numerics (see provenance.jsonl)."
    return f'<p class="sweep-provenance"><small>{html.escape(line)}</small> <b>{html.escape(warning)}</b></p>'


def problem_html(message: str) -> str:
    return f"<p><b>{html.escape(message)}</b></p>"


def imported_html(view: SweepView) -> str:
    datasets = sorted({row.dataset for row in view.rows})
    return (
        f"<p>Imported folder <b>{html.escape(view.short_key)}</b>: "
        f"{len(view.rows)} answers from {html.escape(', '.join(datasets))}</p>"
    )


def queued_markdown(queued: Queued) -> str:
    size = f"{queued.items} items" if queued.items is not None else "size known once the subsets are fetched"
    message = f"Queued **{queued.sweep_id}** ({size}); items already in its results are skipped."
    return "\n".join([message, *(f"- {note}" for note in queued.notes)])


def resumed_markdown(sweep_id: str) -> str:
    return f"Queued **{sweep_id}**; items already in its results are skipped."


def cancel_markdown(sweep_id: str, cancelled: bool) -> str:
    if cancelled:
        return f"Cancelling **{sweep_id}** after the batch in flight; Resume continues where it stopped."
    return f"**{sweep_id}** is not running or queued."


def imported_markdown(key: str) -> str:
    return f"Imported as **{key.removeprefix(IMPORT_PREFIX)}**; its figures are shown below."


# --- the paper's experiments and the fork's YAML configs


def rate_markdown(rate: MeasuredRate | None) -> str:
    if rate is None:
        return f"Estimated times: {RATE_UNKNOWN}."
    return (
        f"Estimated times at **{rate.answers_per_s:.2f} answers/s**, the rate sweep `{rate.sweep_id}` measured "
        "(beams, answer length and in-context recordings change it)."
    )


def preset_choices() -> list[tuple[str, str]]:
    return [(f"{preset.title} ({preset.figures_label})", key) for key, preset in PRESETS.items()]


def preset_markdown(key: str | None, rate: MeasuredRate | None, limit: float | None = None) -> str:
    """What the chosen preset asks and costs, with its caveats (a mapping it needs, answers that take longer)."""
    if not key:
        return ""
    cap = optional_count(limit, "sample limit")
    entry = get_preset(key).summary(rate.answers_per_s if rate is not None else None, cap)
    samples = "all of BEANS-Zero" if cap is None else f"at most {cap} samples per data set"
    duration = RATE_UNKNOWN if rate is None else f"about {format_duration(entry['duration_s'])}"
    lines = [
        f"**{html.escape(entry['title'])}** ({entry['figures']}): {html.escape(entry['description'])}",
        f"- data sets: {', '.join(entry['subsets'])}; prompts: {', '.join(entry['prompts'])}; "
        f"alphas: {format_grid(entry['alphas'])}",
        f"- {entry['answers']} answers ({samples}): {duration}",
        *(f"- {html.escape(note)}" for note in entry["notes"]),
    ]
    return "\n".join(lines)


def fork_config_markdown(config: ForkConfig) -> str:
    """What the config will run, and what it says that changes nothing (its notes)."""
    spec = config.spec
    classes = (
        f"species {', '.join(s.name for s in spec.species)}"
        if spec.species
        else f"the {spec.top_k_classes} most frequent classes"
        if spec.top_k_classes
        else "all classes"
    )
    samples = "all samples" if spec.limit is None else f"at most {spec.limit} samples"
    lines = [
        f"**{html.escape(spec.name)}**: {', '.join(spec.subsets)} ({classes}, {samples} per data set)",
        f"- {len(spec.prompts)} quer{'y' if len(spec.prompts) == 1 else 'ies'} "
        f"({', '.join(p.name for p in spec.prompts)}) at alpha {format_grid(spec.alphas)}",
        f"- {spec.num_beams} beam(s), at most {spec.max_new_tokens} new tokens; scored as {spec.scoring_mode.value}",
        *(f"- note: {html.escape(note)}" for note in config.notes),
    ]
    return "\n".join(lines)


def fork_config_problem(error: Exception) -> str:
    return problem_html(f"This config cannot run: {error}")


def paper_figures_caption(key: str | None, preset: Preset | None) -> str:
    """Above the paper's figures of the selected sweep: which experiment they are, or why there are none."""
    if not key:
        return "No sweep selected."
    if preset is None:
        return "This sweep was not started from a paper experiment: its figures are the ones above."
    return f"**{html.escape(preset.title)}**: the paper's {preset.figures_label}."


# --- the Explore tab: recording warnings, long recordings, detection


def recording_warnings_markdown(warnings: Sequence[str]) -> str:
    """Each warning about the recording (truncated, nearly silent) as a line under its description."""
    return "".join(f"\n\n⚠️ {html.escape(warning)}" for warning in warnings)


def long_recording_markdown(duration_s: float, preview_s: float) -> str:
    """Why a long recording's spectrogram is partial and how to answer it: Detect streams the whole file."""
    return (
        f"\n\nThis recording is {format_duration(duration_s)} long: the spectrogram shows its first "
        f"{preview_s / 60:g} minutes only, and **Run** answers up to {preview_s / 60:g} minutes. "
        "Use **Detect** below: it reads the whole file window by window."
    )


def detection_intro_markdown(window_s: float, preview_s: float) -> str:
    return (
        f"Answers every window (the model hears {window_s:g} s at a time) at the alpha above, and merges "
        "consecutive equal answers into events. Long files are read window by window, never whole; the "
        f"timeline's spectrogram shows at most the first {preview_s / 60:g} minutes."
    )


def detection_summary_markdown(result: DetectionResult) -> str:
    """How many windows and events a detection gave, whether it was stopped, and its warnings."""
    answered = len(result.windows) // max(len(result.alphas), 1)
    state = "complete" if result.complete else "**stopped**: the events cover the windows answered so far"
    lines = [
        f"{answered} window(s) of {result.window_s:g} s every {result.hop_s:g} s over "
        f"{format_duration(result.duration_s)}: {len(result.events)} event(s), {state}.",
        *(f"- ⚠️ {html.escape(warning)}" for warning in result.warnings),
    ]
    return "\n".join(lines)


NOT_STARTED = "Not started: the reason is in the error notice (top right)."


def not_started_html() -> str:
    """Replaces an earlier "Queued ..." in a message box when a start fails, so the two are never read together."""
    return problem_html(NOT_STARTED)


def prompt_choice_label(name: str, question: str) -> str:
    """A prompt checkbox's label: its id and the question it asks ("common — What is the common name ...")."""
    first = " ".join(question.split())
    return f"{name} — {first[:90]}{'…' if len(first) > 90 else ''}"


# --- the Explore tab's candidate labels (issue 19)


def candidate_match_markdown(answer: str, match: str | None, candidates: Sequence[str]) -> str:
    """Whether the generated answer is one of the candidates (compared case-, space- and punctuation-blind)."""
    if not candidates:
        return ""
    if not answer.strip():
        return ""
    if match is not None:
        return f"✅ The answer is one of the {len(candidates)} candidates: **{html.escape(match)}**."
    return f"⚠️ The answer is none of the {len(candidates)} candidates: the table says how the model ranks them."
