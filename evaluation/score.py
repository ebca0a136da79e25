"""Score a folder of the paper's released predictions, or one of our results files, from the command line.

    python -m evaluation.score PATH --mode {official,paper,robust} [--mapping FILE] [--json]

PATH is a folder of beans_zero_eval_{dataset}_query{q}_lora{NNN}.jsonl files or a results.jsonl
written by a sweep. In paper and robust modes, scientific and combined prompts need a
common->scientific mapping: --mapping (repeatable), or the paper's
`{dataset}_vernacular_scientific_mapping.jsonl` found beside PATH. Official mode never maps.

Each group also reports BEANS-Zero's own metrics under its names (official mode) and how many answers
had equally near labels, with each metric's range over random tie orders (official and paper modes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation.reference import LabelMapping, find_mapping_beside, load_label_mapping, read_reference_folder
from evaluation.results import ResultRow, read_results
from evaluation.scoring import TIE_ORDERS, GroupScore, Metrics, ScoringMode, TieSensitivity, score_rows


def read_any(path: Path) -> list[ResultRow]:
    """Rows of a released folder or of a results.jsonl."""
    if path.is_dir():
        return read_reference_folder(path)
    if path.is_file():
        return list(read_results(path))
    raise FileNotFoundError(f"{path} does not exist")


def alpha_key(alpha: float | str) -> str:
    """The alpha as the paper's expected-results files key it: "0.5", "1.0"; a merge recipe by its name."""
    return alpha if isinstance(alpha, str) else str(round(alpha, 6))


def _alpha_cell(alpha: float | str) -> str:
    return alpha if isinstance(alpha, str) else f"{alpha:.2f}"


def summary_json(scores: Sequence[GroupScore]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{dataset: {prompt: {alpha: group_json(metrics)}}}."""
    result: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for score in scores:
        prompts = result.setdefault(score.dataset, {})
        prompts.setdefault(score.prompt_name, {})[alpha_key(score.alpha)] = group_json(score.metrics)
    return result


def group_json(metrics: Metrics) -> dict[str, Any]:
    """The six headline numbers, then "official" (BEANS-Zero's metrics under its names; null unless official
    mode) and "ties" (null in robust mode): {"tied_answers", "orders", "ranges": {metric: [min, max]}}.
    """
    return {
        **metrics.summary(),
        "official": {name: _number(value) for name, value in metrics.official.items()} or None,
        "ties": ties_json(metrics.ties),
    }


def ties_json(ties: TieSensitivity | None) -> dict[str, Any] | None:
    if ties is None:
        return None
    ranges = {name: [_number(low), _number(high)] for name, (low, high) in ties.ranges.items()}
    return {"tied_answers": ties.tied, "orders": TIE_ORDERS + 1, "ranges": ranges}


def _number(value: float) -> float | None:
    """JSON has no NaN: a metric no answer could give is null."""
    return None if math.isnan(value) else value


def format_table(scores: Sequence[GroupScore]) -> str:
    header = f"{'dataset':<14} {'prompt':<14} {'kind':<10} {'alpha':>5} {'n':>5} {'acc':>6} {'F1w':>6} {'F1m':>6} "
    header += f"{'in-set':>6} {'oos':>6} {'abst':>6} {'tied':>5}  extra"
    lines = [header, "-" * len(header)]
    for score in scores:
        m = score.metrics
        summary = m.summary()
        cells = [summary[key] for key in ("accuracy", "f1_weighted", "f1_macro", "in_set_confusion", "out_of_set")]
        cells.append(summary["abstention"])
        numbers = " ".join(f"{'-' if value is None else f'{value:.3f}':>6}" for value in cells)
        tied = "-" if m.ties is None else str(m.ties.tied)
        lines.append(
            f"{score.dataset:<14} {score.prompt_name:<14} {score.kind.value:<10} {_alpha_cell(score.alpha):>5} "
            f"{m.n:>5} "
            f"{numbers} {tied:>5}  {', '.join(_extra_cells(m))}"
        )
    return "\n".join(lines)


def _extra_cells(metrics: Metrics) -> list[str]:
    """BEANS-Zero's metrics with their tie ranges, the ranges of headline metrics that ties can move, extras."""
    ranges: Mapping[str, tuple[float, float]] = metrics.ties.ranges if metrics.ties else {}
    cells = [_with_range(name, value, ranges.get(name)) for name, value in metrics.official.items()]
    if not metrics.official:
        cells += [f"{name} ties {_span(span)}" for name, span in ranges.items() if span[0] != span[1]]
    cells += [f"{key}={value:.3f}" for key, value in metrics.extra.items() if not math.isnan(value)]
    return cells


def _with_range(name: str, value: float, span: tuple[float, float] | None) -> str:
    return f"{name}={value:.3f}" + (f" {_span(span)}" if span and span[0] != span[1] else "")


def _span(span: tuple[float, float]) -> str:
    return f"[{span[0]:.3f}, {span[1]:.3f}]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="folder of released jsonl files, or a results.jsonl")
    parser.add_argument("--mode", choices=[mode.value for mode in ScoringMode], default=ScoringMode.PAPER.value)
    parser.add_argument(
        "--mapping", type=Path, action="append", default=[], help="common->scientific mapping (jsonl or CSV)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = read_any(args.path)
        mapping: LabelMapping | None = None
        for path in args.mapping:
            loaded = load_label_mapping(path)
            mapping = loaded if mapping is None else mapping.merged(loaded)
        if mapping is None:
            mapping = find_mapping_beside(args.path, {row.dataset for row in rows})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = score_rows(rows, args.mode, mapping=mapping)
        for warning in {str(w.message) for w in caught}:
            print(f"warning: {warning}", file=sys.stderr)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary_json(scores), indent=1, sort_keys=False))
    else:
        print(format_table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
