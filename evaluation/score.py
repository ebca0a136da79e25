"""Score a folder of the paper's released predictions, or one of our results files, from the command line.

    python -m evaluation.score PATH --mode {official,paper,robust} [--mapping FILE] [--json]

PATH is a folder of beans_zero_eval_{dataset}_query{q}_lora{NNN}.jsonl files or a results.jsonl
written by a sweep. Scientific and combined prompts need a common->scientific mapping: --mapping
(repeatable), or the paper's `{dataset}_vernacular_scientific_mapping.jsonl` found beside PATH.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from evaluation.reference import LabelMapping, find_mapping_beside, load_label_mapping, read_reference_folder
from evaluation.results import ResultRow, read_results
from evaluation.scoring import GroupScore, ScoringMode, score_rows


def read_any(path: Path) -> list[ResultRow]:
    """Rows of a released folder or of a results.jsonl."""
    if path.is_dir():
        return read_reference_folder(path)
    if path.is_file():
        return list(read_results(path))
    raise FileNotFoundError(f"{path} does not exist")


def alpha_key(alpha: float) -> str:
    """The alpha as the paper's expected-results files key it: "0.5", "1.0"."""
    return str(round(alpha, 6))


def summary_json(scores: Sequence[GroupScore]) -> dict[str, dict[str, dict[str, dict[str, float | None]]]]:
    """{dataset: {prompt: {alpha: {accuracy, f1_weighted, f1_macro, out_of_set, in_set_confusion, abstention}}}}."""
    result: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for score in scores:
        prompts = result.setdefault(score.dataset, {})
        prompts.setdefault(score.prompt_name, {})[alpha_key(score.alpha)] = score.metrics.summary()
    return result


def format_table(scores: Sequence[GroupScore]) -> str:
    header = f"{'dataset':<14} {'prompt':<14} {'kind':<10} {'alpha':>5} {'n':>5} {'acc':>6} {'F1w':>6} {'F1m':>6} "
    header += f"{'in-set':>6} {'oos':>6} {'abst':>6}  extra"
    lines = [header, "-" * len(header)]
    for score in scores:
        m = score.metrics
        summary = m.summary()
        cells = [summary[key] for key in ("accuracy", "f1_weighted", "f1_macro", "in_set_confusion", "out_of_set")]
        cells.append(summary["abstention"])
        numbers = " ".join(f"{'-' if value is None else f'{value:.3f}':>6}" for value in cells)
        extra = ", ".join(f"{key}={value:.3f}" for key, value in m.extra.items() if not math.isnan(value))
        lines.append(
            f"{score.dataset:<14} {score.prompt_name:<14} {score.kind.value:<10} {score.alpha:>5.2f} {m.n:>5} "
            f"{numbers}  {extra}"
        )
    return "\n".join(lines)


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
