"""Interleaved A/B rounds of benchmarks/gpu.py over several git trees: how each "kept?" in docs/PERFORMANCE.md is
decided.

    python benchmarks/ab.py prepare main my-branch        # here: one git worktree per ref under .ab/, main first
    python3 benchmarks/ab.py run --rounds 2 -- --sections sweep,breakdown --sweep-ours-only   # on the GPU machine

Why: the host under the same H100 changes speed between calls (eager paths up to 1.9x slower 35 minutes later,
2026-12-07), and a one-batch sweep moves with it, so a candidate is compared with main only on one warm machine,
in rounds that alternate the trees (round 1: A, B; round 2: A, B). The GPU machine receives the working tree
without .git, so the worktrees are made here and travel with it (the device tool's carry: [".whl", ".ab"]).
`run` prints the chosen figures of every tree and round side by side and writes them to $OUT/ab.json, and every
run's whole results (flattened) to $OUT/runs.json: two files, whatever the trees and rounds, since the device returns
at most 8 files from $OUT and a whole gpu.py run in the same call needs room for its own (2026-12-07, session 16: a
whole run's results.json was left behind by an A/B's per-run folders). gpu.py's other outputs of an A/B run (its
Markdown table, a profile) are not kept: run gpu.py alone for those.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TREES = ROOT / ".ab"
ORDER_FILE = "trees.txt"  # the trees in the order `prepare` was given them: the first is the baseline
DEFAULT_KEYS = r"^(sweep\.ours[a-z_]*\.answers_per_s|breakdown\.[a-z_]+\.[a-z_]+_ms|targets\..*|kernels_in_use\..*)$"


def tree_name(ref: str) -> str:
    """A folder name for a git ref (branch names may hold slashes)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", ref).strip("-") or "tree"


def prepare(refs: Sequence[str], trees: Path = TREES, repository: Path = ROOT) -> list[Path]:
    """One detached worktree per ref under `trees` (an old one of the same name is replaced), and their order."""
    if len({tree_name(ref) for ref in refs}) != len(refs):
        raise ValueError(f"two refs map to one folder name: {list(refs)}")
    trees.mkdir(parents=True, exist_ok=True)
    (trees / ORDER_FILE).unlink(missing_ok=True)  # a prepare that fails half-way leaves no list of old trees
    folders = []
    for ref in refs:
        folder = trees / tree_name(ref)
        if folder.exists():
            _git(repository, "worktree", "remove", "--force", str(folder))
        _git(repository, "worktree", "add", "--detach", str(folder), ref)
        folders.append(folder)
    (trees / ORDER_FILE).write_text("".join(f"{folder.name}\n" for folder in folders))
    return folders


def _git(repository: Path, *arguments: str) -> None:
    done = subprocess.run(["git", "-C", str(repository), *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(arguments)} failed: {done.stderr.strip()}")


def run(
    gpu_arguments: Sequence[str], rounds: int, out: Path, keys: str = DEFAULT_KEYS, trees: Path = TREES
) -> dict[str, list[dict[str, Any]]]:
    """Every tree's benchmarks/gpu.py, in `rounds` rounds that alternate the trees; the figures matching `keys`
    (a regular expression over gpu.py's flattened result names), per tree and round (and every figure in
    runs.json). A run that fails is reported with its exit status and the end of its output; the others go on."""
    try:
        pattern = re.compile(keys)
    except re.error as error:
        raise ValueError(f"--keys {keys!r} is not a regular expression: {error}") from None
    order = trees / ORDER_FILE
    if not order.is_file():
        raise ValueError(f"no trees to run in {trees}: `python benchmarks/ab.py prepare REF...` makes them first")
    names = order.read_text().split()
    missing = [name for name in names if not (trees / name / "benchmarks" / "gpu.py").is_file()]
    if missing:
        raise ValueError(f"trees listed in {order} but not there (carried?): {missing}; prepare them again")
    out = out.resolve()
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    whole: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="ab-runs-") as scratch:
        for round_number in range(1, rounds + 1):
            for name in names:
                folder = Path(scratch) / f"{name}-{round_number}"
                command = [sys.executable, "benchmarks/gpu.py", "--out", str(folder), *gpu_arguments]
                done = subprocess.run(command, cwd=trees / name, capture_output=True, text=True)
                results = folder / "results.json"
                if done.returncode != 0 or not results.exists():
                    failure = {"exit_status": done.returncode, "output_end": (done.stdout + done.stderr)[-2000:]}
                    figures[name].append(failure)
                    whole[name].append(failure)
                    continue
                flat = dict(_flatten(json.loads(results.read_text())))
                figures[name].append({key: value for key, value in flat.items() if pattern.search(key)})
                whole[name].append(flat)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.json").write_text(json.dumps(figures, indent=1))
    (out / "runs.json").write_text(json.dumps(whole, indent=1))
    return figures


def _flatten(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(values, dict):
        return [item for key, value in values.items() for item in _flatten(value, f"{prefix}{key}.")]
    return [(prefix[:-1], values)]


def table(figures: dict[str, list[dict[str, Any]]]) -> str:
    """A Markdown table: one row per figure, one column per tree and round, in run order."""
    rounds = max(map(len, figures.values()), default=0)
    columns = [(name, index) for index in range(rounds) for name in figures if index < len(figures[name])]
    keys = list(dict.fromkeys(key for rounds in figures.values() for each in rounds for key in each))
    lines = [
        "| figure | " + " | ".join(f"{name} #{index + 1}" for name, index in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for key in keys:
        cells = [_cell(figures[name][index].get(key)) for name, index in columns]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("\n", " ")[-200:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    making = commands.add_parser("prepare", help="here: one git worktree per ref under .ab/ (the first: baseline)")
    making.add_argument("refs", nargs="+")
    running = commands.add_parser("run", help="on the GPU machine: interleaved rounds of gpu.py in every tree")
    running.add_argument("--rounds", type=int, default=2)
    running.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "ab-results")))
    running.add_argument("--keys", default=DEFAULT_KEYS, help="a regular expression over gpu.py's result names")
    running.add_argument("gpu_arguments", nargs="*", help="after --: gpu.py's own arguments")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            for folder in prepare(args.refs):
                print(folder)
            return 0
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        figures = run(args.gpu_arguments, args.rounds, args.out, args.keys)
    except (RuntimeError, ValueError) as error:  # a ref git does not know, no trees, a bad --keys
        parser.error(str(error))
    print(table(figures))
    return 0 if all("exit_status" not in each for rounds in figures.values() for each in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
