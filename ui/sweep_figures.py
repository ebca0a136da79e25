"""The Sweeps tab's figures and answers table, drawn from a sweep's scores (numbers: evaluation.sweep_metrics).

Everything here is a pure function of the scores: the tab refreshes them while a sweep runs, and a
finished sweep, an imported folder in the paper's layout and an exported copy give the same figures;
tests read the traces back to check their values. Plotly only, no gradio; ui.paper_figures draws the
paper's figures of each preset with them.

- metric vs alpha, one line per (dataset, prompt): accuracy, weighted or macro F1; merge recipes, which
  lie on no alpha axis, as points on a categorical axis beside it (labelled by recipe name); in official
  mode the tie range (evaluation.scoring.TieSensitivity) as a shaded band (a layout shape named
  "<curve> tie range") behind each line, whiskers on recipes
- the trade-off curve (the paper's Figure 4): combined-prompt accuracy against the mean accuracy
  of the individual (common- and scientific-name) prompts, one point per alpha, labelled with it
- the error breakdown vs alpha: stacked shares of correct / in-set confusion / out of set / abstention
- the per-sample table: each sample's answers across alphas, filterable by dataset, prompt, correctness
- an overlay of several sweeps' metric-vs-alpha curves
- for the paper's presets: one panel per data set, bars per prompt at chosen alphas, and the
  majority-class and random baselines of a closed set
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from evaluation.results import grid_order
from evaluation.scoring import GroupScore, Outcome
from evaluation.sweep_metrics import METRIC_LABELS, PlotInputError, check_metric, plain_alphas, tradeoff_points
from naturelm_core.alphas import format_alpha, format_grid, grid_key

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
CORRECT_FILTERS = ("always", "never", "sometimes")
ALPHA_AXIS_TITLE = "alpha (0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio)"
SWEEP_DASHES = ("solid", "dash", "dot", "dashdot")
BASELINE_DASHES = {"majority class": "dash", "random": "dashdot"}
BAR_COLOURS = qualitative.Set2


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
    for (dataset, prompt), group in plain_alphas(frame).groupby(["dataset", "prompt"], sort=True):
        group = group.sort_values("alpha")
        name = prefix + _curve_name(dataset, prompt, several)
        line = {"color": colours[prompt], "dash": dash}
        figure.add_trace(_metric_trace(group, metric, dataset, prompt, name=name, line=line))
        _add_tie_band(figure, group, metric, name, colours[prompt])


def _metric_trace(group: pd.DataFrame, metric: str, dataset: str, prompt: str, **style: Any) -> go.Scatter:
    """One prompt's metric over its plain alphas, n in the hover; `meta` names its data set and prompt, which
    the figure tests read back."""
    return go.Scatter(
        x=group["alpha"].tolist(),
        y=group[metric].tolist(),
        customdata=group["n"].tolist(),
        mode="lines+markers",
        meta={"dataset": dataset, "prompt": prompt},
        hovertemplate="alpha %{x}<br>" + METRIC_LABELS[metric] + " %{y:.3f}<br>n=%{customdata}<extra></extra>",
        **style,
    )


def _tie_ends(group: pd.DataFrame, metric: str) -> tuple[list[float], list[float]] | None:
    """The tie range's (lows, highs) of the group's rows; None where the scoring mode has none (robust)."""
    low, high = group.get(f"{metric}_tie_min"), group.get(f"{metric}_tie_max")
    if low is None or high is None or low.isna().any() or high.isna().any():
        return None
    return low.astype(float).tolist(), high.astype(float).tolist()


def _add_tie_band(figure: go.Figure, group: pd.DataFrame, metric: str, name: str, colour: str) -> None:
    """The official tie range as a shaded band behind one curve: differences inside it are the evaluator's own
    arbitrariness, not the merge's effect. A shape, not a trace, so curves and legends stay one per prompt."""
    ends = _tie_ends(group, metric)
    if ends is None:
        return
    lows, highs = ends
    xs = group["alpha"].astype(float).tolist()
    corners = [*zip(xs, highs, strict=True), *reversed(list(zip(xs, lows, strict=True)))]
    path = "M " + " L ".join(f"{x},{y}" for x, y in corners) + " Z"
    figure.add_shape(
        type="path",
        path=path,
        xref="x",
        yref="y",
        fillcolor=colour,
        opacity=0.2,
        line={"width": 0},
        layer="below",
        name=f"{name} tie range",
    )


def _add_recipe_points(figure: go.Figure, frame: pd.DataFrame, metric: str, colours: Mapping[str, str]) -> None:
    """Each merge recipe as a point on the second (categorical) x axis, labelled by its name, with the tie
    range as whiskers where the scoring mode has one."""
    several = frame["dataset"].nunique() > 1
    recipes = frame[frame["recipe"].astype(bool)]
    for (dataset, prompt), group in recipes.groupby(["dataset", "prompt"], sort=True):
        ends = _tie_ends(group, metric)
        values = group[metric].astype(float).tolist()
        whiskers = (
            {}
            if ends is None
            else {
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": [high - value for high, value in zip(ends[1], values, strict=True)],
                    "arrayminus": [value - low for low, value in zip(ends[0], values, strict=True)],
                }
            }
        )
        figure.add_trace(
            go.Scatter(
                x=group["alpha"].tolist(),
                y=values,
                customdata=group["n"].tolist(),
                mode="markers",
                marker={"color": colours[prompt], "size": 9, "symbol": "diamond"},
                name=f"{_curve_name(dataset, prompt, several)} · recipes",
                xaxis="x2",
                meta={"dataset": dataset, "prompt": prompt, "recipes": True},
                hovertemplate="%{x}<br>" + METRIC_LABELS[metric] + " %{y:.3f}<br>n=%{customdata}<extra></extra>",
                **whiskers,
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
    label = check_metric(metric)
    figure = go.Figure()
    colours = _prompt_colours([frame])
    _add_metric_curves(figure, frame, metric, colours)
    _alpha_layout(figure, f"{label} vs alpha", label)
    if frame["recipe"].astype(bool).any():
        _add_recipe_points(figure, frame, metric, colours)
        has_alphas = not plain_alphas(frame).empty
        split = 0.55 if has_alphas else 0.0
        figure.update_layout(
            xaxis={"domain": [0, split - 0.05] if has_alphas else [0, 0.001], "visible": has_alphas},
            xaxis2={"domain": [split, 1], "type": "category", "title": "merge recipe", "anchor": "y"},
        )
    return figure


def overlay_figure(frames: Mapping[str, pd.DataFrame], metric: str = "accuracy") -> go.Figure:
    """Several sweeps' curves in one figure: colour = prompt, dash = sweep; trace names start with the sweep."""
    label = check_metric(metric)
    colours = _prompt_colours(list(frames.values()))
    figure = go.Figure()
    for index, (sweep, frame) in enumerate(frames.items()):
        _add_metric_curves(figure, frame, metric, colours, f"{sweep} · ", SWEEP_DASHES[index % len(SWEEP_DASHES)])
    return _alpha_layout(figure, f"{label} vs alpha: {' vs '.join(frames)}", label)


def tradeoff_figure(
    frame: pd.DataFrame,
    metric: str = "accuracy",
    combined: str | None = None,
    individual: Sequence[str] | None = None,
) -> go.Figure:
    """The paper's Figure 4: x = mean of the individual prompts, y = the combined prompt, points labelled by alpha.

    The dashed diagonal marks where asking both names at once costs nothing.
    """
    label = check_metric(metric)
    points = tradeoff_points(frame, metric, combined, individual)
    figure = go.Figure()
    for dataset, group in points.groupby("dataset", sort=True):
        group = group.sort_values("alpha")
        figure.add_trace(
            go.Scatter(
                x=group["individual_mean"].tolist(),
                y=group["combined"].tolist(),
                text=[format_alpha(alpha) for alpha in group["alpha"]],
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
    selected = selected[selected["prompt"] == prompt].sort_values("alpha", key=_grid_order)
    if selected.empty and not frame.empty:
        raise PlotInputError(f"no scores for dataset {dataset!r} and prompt {prompt!r}")
    figure = go.Figure()
    for outcome in Outcome:
        figure.add_trace(
            go.Bar(
                x=[format_alpha(alpha) for alpha in selected["alpha"]],
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
    alphas = sorted({score.alpha for score in scores}, key=grid_order)
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


def _grid_order(keys: pd.Series) -> pd.Series:
    """A sort key for an `alpha` column holding floats and recipe names (plain alphas first)."""
    return keys.map(grid_order)


def alpha_column(alpha: float | str) -> str:
    """The answers table's column of one grid point ('alpha=0.3')."""
    return f"alpha={format_alpha(alpha)}"


def metric_vs_alpha_panels(frame: pd.DataFrame, metric: str = "accuracy") -> go.Figure:
    """One panel per data set, one line per prompt (the paper's Figure 2 layout); a prompt keeps its colour."""
    label = check_metric(metric)
    datasets = sorted(frame["dataset"].unique()) or [""]
    figure = make_subplots(rows=1, cols=len(datasets), subplot_titles=datasets, shared_yaxes=True)
    colours = _prompt_colours([frame])
    in_legend: set[str] = set()
    for column, dataset in enumerate(datasets, start=1):
        for prompt, group in plain_alphas(frame[frame["dataset"] == dataset]).groupby("prompt", sort=True):
            group = group.sort_values("alpha")
            trace = _metric_trace(
                group,
                metric,
                dataset,
                prompt,
                name=prompt,
                line={"color": colours[prompt]},
                legendgroup=prompt,
                showlegend=prompt not in in_legend,
            )
            figure.add_trace(trace, row=1, col=column)
            in_legend.add(prompt)
        figure.update_xaxes(title_text="alpha", row=1, col=column)
    figure.update_yaxes(range=[0, 1.02], title_text=label, row=1, col=1)
    figure.update_layout(title=f"{label} vs alpha", legend={"orientation": "h", "y": -0.25}, height=380)
    return figure


def alpha_bars_figure(
    frame: pd.DataFrame,
    metric: str = "accuracy",
    alphas: Sequence[float] | None = None,
    prompts: Sequence[str] | None = None,
) -> go.Figure:
    """Bars of `metric` per (dataset, prompt), one colour per alpha (the paper's Figures 1 and 9).

    `alphas` picks the grid points to show (default: all); points the sweep lacks are left out.
    `prompts` orders the bars as the paper does (default: by name); prompts not listed come last.
    """
    label = check_metric(metric)
    wanted = list(dict.fromkeys(frame["alpha"])) if alphas is None else [_key(a) for a in alphas]
    selected = frame[frame["alpha"].map(_key).isin([_key(a) for a in wanted])]
    several = selected["dataset"].nunique() > 1
    rank = {name: position for position, name in enumerate(prompts or ())}
    figure = go.Figure()
    ordered = sorted(dict.fromkeys(selected["alpha"]), key=grid_order)
    for index, alpha in enumerate(ordered):
        group = selected[selected["alpha"] == alpha]
        group = group.assign(rank=group["prompt"].map(rank).fillna(len(rank)))
        group = group.sort_values(["dataset", "rank", "prompt"])
        figure.add_trace(
            go.Bar(
                x=[_curve_name(d, p, several) for d, p in zip(group["dataset"], group["prompt"], strict=True)],
                y=group[metric].tolist(),
                text=[f"{value:.2f}" for value in group[metric]],
                textposition="outside",
                name=f"alpha={format_alpha(alpha)}",
                marker_color=BAR_COLOURS[index % len(BAR_COLOURS)],
                meta={"alpha": alpha if isinstance(alpha, str) else float(alpha)},
                hovertemplate="%{x}<br>" + label + " %{y:.3f}<extra>alpha " + f"{format_alpha(alpha)}</extra>",
            )
        )
    if selected.empty:
        shown = format_grid(wanted)
        figure.add_annotation(text=f"no answers yet at alpha {shown}", showarrow=False, x=0.5, y=0.5)
    figure.update_layout(
        barmode="group",
        title=f"{label} per prompt",
        yaxis_title=label,
        yaxis_range=[0, 1.1],
        legend={"orientation": "h", "y": -0.25},
        height=380,
    )
    return figure


def _key(point: float | str) -> float | str:
    """A frame's `alpha` value as a grid key: a recipe's name is one already."""
    return point if isinstance(point, str) else grid_key(point)


def add_baselines(figure: go.Figure, baselines: Mapping[str, float]) -> go.Figure:
    """Grey horizontal lines across the figure's x values (alphas or bar categories), named in the legend.

    Only the first x axis is spanned: merge recipes drawn beside the alpha axis are categories of their own.
    """
    on_first_axis = [trace for trace in figure.data if trace.x is not None and trace.xaxis in (None, "x")]
    xs = [x for trace in on_first_axis for x in trace.x]
    if not xs:
        return figure
    numeric = all(isinstance(x, int | float) for x in xs)
    ends = [min(xs), max(xs)] if numeric else [next(iter(dict.fromkeys(xs))), list(dict.fromkeys(xs))[-1]]
    for name, value in baselines.items():
        figure.add_trace(
            go.Scatter(
                x=ends,
                y=[value, value],
                mode="lines",
                name=f"{name} baseline",
                line={"color": "#888888", "dash": BASELINE_DASHES.get(name, "dot")},
                meta={"baseline": name},
                hovertemplate=f"{name} baseline {value:.3f}<extra></extra>",
            )
        )
    return figure


# -- likelihood sweeps: what the model knows (its label distribution) vs what it says (its generated answer) --

KNOWS_DASH, SAYS_DASH = "solid", "dash"


def knows_vs_says_figure(knows: pd.DataFrame, says: pd.DataFrame | None = None, metric: str = "accuracy") -> go.Figure:
    """`metric` against alpha of a likelihood sweep (solid: the most likely label, what the model *knows*) and,
    where given, of a generation sweep (dashed: its answer text, what it *says*); colour = prompt.

    `knows` is evaluation.likelihood_metrics' frame, `says` evaluation.sweep_metrics' (both have the metric
    columns accuracy / f1_macro / f1_weighted, and recipes are left out: they lie on no alpha axis).
    """
    label = check_metric(metric)
    frames = {"knows": plain_alphas(knows), **({"says": plain_alphas(says)} if says is not None else {})}
    colours = _prompt_colours(list(frames.values()))
    figure = go.Figure()
    for which, frame in frames.items():
        for (dataset, prompt), group in frame.groupby(["dataset", "prompt"], sort=True):
            figure.add_trace(
                go.Scatter(
                    x=group["alpha"].astype(float),
                    y=group[metric],
                    mode="lines+markers",
                    name=f"{which} · {_curve_name(dataset, prompt, frame['dataset'].nunique() > 1)}",
                    line={"color": colours.get(prompt), "dash": KNOWS_DASH if which == "knows" else SAYS_DASH},
                )
            )
    title = f"{label} vs alpha: knows (likelihood){' vs says (generation)' if says is not None else ''}"
    return _alpha_layout(figure, title, label)


def reliability_figure(bins: pd.DataFrame, dataset: str | None = None, prompt: str | None = None) -> go.Figure:
    """The reliability diagram, one line per grid point: each confidence bin's accuracy against its mean
    confidence (evaluation.likelihood_metrics.reliability_frame), over the diagonal of perfect calibration.
    One (dataset, prompt): the given one, else the first."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated", line={"dash": "dot"}))
    if not bins.empty:
        dataset = dataset or str(bins["dataset"].iloc[0])
        chosen = bins[bins["dataset"] == dataset]
        prompt = prompt or str(chosen["prompt"].iloc[0])
        chosen = chosen[(chosen["prompt"] == prompt) & (chosen["count"] > 0)]
        for alpha in sorted(chosen["alpha"].unique(), key=grid_order):
            group = chosen[chosen["alpha"] == alpha]
            figure.add_trace(
                go.Scatter(
                    x=group["confidence"],
                    y=group["accuracy"],
                    mode="lines+markers",
                    name=alpha if isinstance(alpha, str) else f"alpha {format_alpha(float(alpha))}",
                    customdata=group["count"],
                    hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} rows",
                )
            )
    figure.update_layout(
        title=f"reliability: {dataset} · {prompt}" if dataset else "reliability",
        xaxis_title="confidence (probability of the most likely label)",
        yaxis_title="accuracy",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
        height=380,
    )
    return figure
