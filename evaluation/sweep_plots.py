"""Figures and tables of a sweep, recomputed from its results rows and their scores.

Everything here is a pure function of (rows, scores): the Sweeps tab refreshes them while a sweep
runs, a finished sweep, an imported folder in the paper's layout and an exported copy all give the
same figures, and tests read the traces back to check their values.

- metric vs alpha, one line per (dataset, prompt): accuracy, weighted or macro F1
- the trade-off curve (the paper's Figure 4): combined-prompt accuracy against the mean accuracy
  of the individual (common- and scientific-name) prompts, one point per alpha, labelled with it
- the error breakdown vs alpha: stacked shares of correct / in-set confusion / out of set / abstention
- the per-sample table: each sample's answers across alphas, filterable by dataset, prompt, correctness
- an overlay of several sweeps' metric-vs-alpha curves
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from evaluation.prompts import PromptKind
from evaluation.scoring import GroupScore, Outcome

METRIC_LABELS = {"accuracy": "accuracy", "f1_weighted": "weighted F1", "f1_macro": "macro F1"}
OUTCOME_LABELS = {
    Outcome.CORRECT: "correct",
    Outcome.IN_SET_CONFUSION: "in-set confusion",
    Outcome.OUT_OF_SET: "out of set",
    Outcome.ABSTENTION: "abstention",
}
OUTCOME_COLOURS = {
    Outcome.CORRECT: "#2ca02c",
    Outcome.IN_SET_CONFUSION: "#ff7f0e",
    Outcome.OUT_OF_SET: "#d62728",
    Outcome.ABSTENTION: "#7f7f7f",
}
INDIVIDUAL_KINDS = (PromptKind.COMMON, PromptKind.SCIENTIFIC)
CORRECT_FILTERS = ("always", "never", "sometimes")
ALPHA_AXIS_TITLE = "alpha (0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio)"
FRAME_COLUMNS = ["dataset", "prompt", "kind", "alpha", "n", *METRIC_LABELS, *(o.value for o in Outcome)]
SWEEP_DASHES = ("solid", "dash", "dot", "dashdot")


class PlotInputError(ValueError):
    """A figure was asked for something the scores do not hold (an unknown metric, prompt or filter)."""


def metrics_frame(scores: Sequence[GroupScore]) -> pd.DataFrame:
    """One row per (dataset, prompt, alpha): n, accuracy, F1s and the share of each outcome."""
    records = []
    for score in scores:
        metrics = score.metrics
        record = {
            "dataset": score.dataset,
            "prompt": score.prompt_name,
            "kind": score.kind.value,
            "alpha": score.alpha,
            "n": metrics.n,
            "accuracy": metrics.accuracy,
            "f1_weighted": metrics.f1_weighted,
            "f1_macro": metrics.f1_macro,
        }
        record.update({outcome.value: metrics.rate(outcome) for outcome in Outcome})
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=FRAME_COLUMNS)
    return frame.sort_values(["dataset", "prompt", "alpha"], ignore_index=True)


def _check_metric(metric: str) -> str:
    if metric not in METRIC_LABELS:
        raise PlotInputError(f"unknown metric {metric!r}; choose one of {sorted(METRIC_LABELS)}")
    return METRIC_LABELS[metric]


def _prompt_colours(frames: Sequence[pd.DataFrame]) -> dict[str, str]:
    """The same colour for a prompt in every figure and every overlaid sweep."""
    prompts = sorted({prompt for frame in frames for prompt in frame["prompt"]})
    palette = qualitative.Plotly
    return {prompt: palette[i % len(palette)] for i, prompt in enumerate(prompts)}


def _curve_name(dataset: str, prompt: str, several_datasets: bool) -> str:
    return f"{dataset} · {prompt}" if several_datasets else prompt


def _add_metric_curves(
    figure: go.Figure,
    frame: pd.DataFrame,
    metric: str,
    colours: Mapping[str, str],
    prefix: str = "",
    dash: str = "solid",
) -> None:
    several = frame["dataset"].nunique() > 1
    for (dataset, prompt), group in frame.groupby(["dataset", "prompt"], sort=True):
        group = group.sort_values("alpha")
        figure.add_trace(
            go.Scatter(
                x=group["alpha"].tolist(),
                y=group[metric].tolist(),
                customdata=group["n"].tolist(),
                mode="lines+markers",
                name=prefix + _curve_name(dataset, prompt, several),
                line={"color": colours[prompt], "dash": dash},
                meta={"dataset": dataset, "prompt": prompt},
                hovertemplate="alpha %{x}<br>" + METRIC_LABELS[metric] + " %{y:.3f}<br>n=%{customdata}<extra></extra>",
            )
        )


def _alpha_layout(figure: go.Figure, title: str, yaxis_title: str) -> go.Figure:
    figure.update_layout(
        title=title,
        xaxis_title=ALPHA_AXIS_TITLE,
        yaxis_title=yaxis_title,
        yaxis_range=[0, 1.02],
        legend={"orientation": "h", "y": -0.25},
        height=380,
    )
    return figure


def metric_vs_alpha_figure(frame: pd.DataFrame, metric: str = "accuracy") -> go.Figure:
    """One line per (dataset, prompt) of `metric` (accuracy, f1_weighted or f1_macro) against alpha."""
    label = _check_metric(metric)
    figure = go.Figure()
    _add_metric_curves(figure, frame, metric, _prompt_colours([frame]))
    return _alpha_layout(figure, f"{label} vs alpha", label)


def overlay_figure(frames: Mapping[str, pd.DataFrame], metric: str = "accuracy") -> go.Figure:
    """Several sweeps' curves in one figure: colour = prompt, dash = sweep; trace names start with the sweep."""
    label = _check_metric(metric)
    colours = _prompt_colours(list(frames.values()))
    figure = go.Figure()
    for index, (sweep, frame) in enumerate(frames.items()):
        _add_metric_curves(figure, frame, metric, colours, f"{sweep} · ", SWEEP_DASHES[index % len(SWEEP_DASHES)])
    return _alpha_layout(figure, f"{label} vs alpha: {' vs '.join(frames)}", label)


def tradeoff_points(
    frame: pd.DataFrame,
    metric: str = "accuracy",
    combined: str | None = None,
    individual: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per dataset and alpha: the mean `metric` of the individual prompts and the combined prompt's.

    By default the combined prompt is the one whose text asks for "scientific name ... colon ...
    common name" and the individual ones are the common- and scientific-name prompts (as in the
    paper); name them explicitly for custom prompts. Alphas missing from any of them are left out.
    """
    _check_metric(metric)
    rows = []
    for dataset, group in frame.groupby("dataset", sort=True):
        combined_name, individual_names = _tradeoff_prompts(group, combined, individual)
        if combined_name is None or not individual_names:
            continue
        table = group.pivot_table(index="alpha", columns="prompt", values=metric, aggfunc="first")
        needed = [combined_name, *individual_names]
        if not set(needed) <= set(table.columns):
            continue
        table = table[needed].dropna()
        for alpha, values in table.iterrows():
            rows.append(
                {
                    "dataset": dataset,
                    "alpha": float(alpha),
                    "individual_mean": float(values[individual_names].mean()),
                    "combined": float(values[combined_name]),
                }
            )
    return pd.DataFrame.from_records(rows, columns=["dataset", "alpha", "individual_mean", "combined"])


def _tradeoff_prompts(
    group: pd.DataFrame, combined: str | None, individual: Sequence[str] | None
) -> tuple[str | None, list[str]]:
    kinds = dict(zip(group["prompt"], group["kind"], strict=False))
    if combined is None:
        combined = next((p for p in sorted(kinds) if kinds[p] == PromptKind.COMBINED.value), None)
    if individual is None:
        individual = [p for p in sorted(kinds) if kinds[p] in {k.value for k in INDIVIDUAL_KINDS}]
    unknown = [p for p in [combined, *individual] if p is not None and p not in kinds]
    if unknown:
        raise PlotInputError(f"no scores for prompt(s) {unknown}; the sweep has {sorted(kinds)}")
    return combined, [p for p in individual if p != combined]


def tradeoff_figure(
    frame: pd.DataFrame,
    metric: str = "accuracy",
    combined: str | None = None,
    individual: Sequence[str] | None = None,
) -> go.Figure:
    """The paper's Figure 4: x = mean of the individual prompts, y = the combined prompt, points labelled by alpha.

    The dashed diagonal marks where asking both names at once costs nothing.
    """
    label = _check_metric(metric)
    points = tradeoff_points(frame, metric, combined, individual)
    figure = go.Figure()
    for dataset, group in points.groupby("dataset", sort=True):
        group = group.sort_values("alpha")
        figure.add_trace(
            go.Scatter(
                x=group["individual_mean"].tolist(),
                y=group["combined"].tolist(),
                text=[f"{alpha:g}" for alpha in group["alpha"]],
                customdata=group["alpha"].tolist(),
                mode="lines+markers+text",
                textposition="top center",
                name=str(dataset),
                hovertemplate="alpha %{customdata}<br>individual %{x:.3f}<br>combined %{y:.3f}<extra></extra>",
            )
        )
    figure.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dash", "color": "#999999"})
    if points.empty:
        figure.add_annotation(
            text="needs a combined prompt and at least one common- or scientific-name prompt",
            showarrow=False,
            x=0.5,
            y=0.5,
        )
    figure.update_layout(
        title=f"Trade-off: combined prompt vs individual prompts ({label}), labelled by alpha",
        xaxis_title=f"mean {label} of the individual prompts",
        yaxis_title=f"{label} of the combined prompt",
        xaxis_range=[0, 1.02],
        yaxis_range=[0, 1.02],
        height=420,
    )
    return figure


def error_breakdown_figure(frame: pd.DataFrame, dataset: str | None = None, prompt: str | None = None) -> go.Figure:
    """Stacked bars per alpha: the share of correct, in-set confusion, out-of-set and abstention answers.

    For one (dataset, prompt); by default the first of each in sorted order.
    """
    dataset = dataset if dataset is not None else _first(frame, "dataset")
    selected = frame[frame["dataset"] == dataset]
    prompt = prompt if prompt is not None else _first(selected, "prompt")
    selected = selected[selected["prompt"] == prompt].sort_values("alpha")
    if selected.empty and not frame.empty:
        raise PlotInputError(f"no scores for dataset {dataset!r} and prompt {prompt!r}")
    figure = go.Figure()
    for outcome in Outcome:
        figure.add_trace(
            go.Bar(
                x=[f"{alpha:g}" for alpha in selected["alpha"]],
                y=selected[outcome.value].tolist(),
                name=OUTCOME_LABELS[outcome],
                marker_color=OUTCOME_COLOURS[outcome],
                meta={"outcome": outcome.value},
                hovertemplate="alpha %{x}<br>%{y:.1%}<extra>" + OUTCOME_LABELS[outcome] + "</extra>",
            )
        )
    figure.update_layout(
        barmode="stack",
        title=f"Where the answers go: {dataset} · {prompt}"
        if dataset is not None
        else "Where the answers go (no answers yet)",
        xaxis_title=ALPHA_AXIS_TITLE,
        yaxis_title="share of answers",
        yaxis_range=[0, 1],
        yaxis_tickformat=".0%",
        height=380,
    )
    return figure


def _first(frame: pd.DataFrame, column: str) -> str | None:
    values = sorted(frame[column].unique())
    return values[0] if values else None


def answers_table(
    scores: Sequence[GroupScore],
    dataset: str | None = None,
    prompt: str | None = None,
    correct: str | None = None,
) -> pd.DataFrame:
    """One row per (dataset, sample, prompt): its label, how many alphas got it right, and the answer at each alpha.

    Answer cells read "✓ text" or "✗ text". `correct` keeps samples answered correctly at
    "always" every alpha, "never" any, or "sometimes" some but not all (where merging changes the outcome).
    """
    if correct is not None and correct not in CORRECT_FILTERS:
        raise PlotInputError(f"correct must be one of {CORRECT_FILTERS} or None, got {correct!r}")
    alphas = sorted({score.alpha for score in scores})
    cells: dict[tuple[str, str, str], dict[str, object]] = defaultdict(dict)
    for score in scores:
        if (dataset is not None and score.dataset != dataset) or (prompt is not None and score.prompt_name != prompt):
            continue
        for answer in score.answers:
            row = cells[(score.dataset, answer.id, score.prompt_name)]
            row.setdefault("label", answer.label)
            hit = answer.outcome is Outcome.CORRECT
            row[alpha_column(score.alpha)] = f"{'✓' if hit else '✗'} {answer.prediction}"
            row["n_correct"] = int(row.get("n_correct", 0)) + hit
            row["n_alphas"] = int(row.get("n_alphas", 0)) + 1
    records = [{"dataset": d, "id": i, "prompt": p, **values} for (d, i, p), values in cells.items()]
    columns = ["dataset", "id", "prompt", "label", "n_correct", "n_alphas", *map(alpha_column, alphas)]
    table = pd.DataFrame.from_records(records, columns=columns)
    if correct == "always":
        table = table[table["n_correct"] == table["n_alphas"]]
    elif correct == "never":
        table = table[table["n_correct"] == 0]
    elif correct == "sometimes":
        table = table[(table["n_correct"] > 0) & (table["n_correct"] < table["n_alphas"])]
    return table.sort_values(["dataset", "prompt", "id"], ignore_index=True)


def alpha_column(alpha: float) -> str:
    return f"alpha={alpha:g}"
