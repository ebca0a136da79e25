"""The command line: run or resume sweeps headless (`python -m evaluation.sweep`, see the package docstring).

Every spec is read and its data planned before a model is loaded, so a bad spec or missing data
exits at once rather than after minutes of loading; once the model is loaded, every spec's merge
recipes are checked against it before the first sweep runs; the plans are then run as made.

Exit codes: 0 every sweep complete, 1 a sweep failed or was cancelled, 2 bad input (spec, data,
model), 3 the runs folder cannot be written.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from evaluation.datasets import DatasetError
from evaluation.fork_config import is_yaml_path, spec_from_yaml
from evaluation.sweep.backends import SweepBackend, check_recipes
from evaluation.sweep.durable import RunsStorageError
from evaluation.sweep.plan import SweepPlan
from evaluation.sweep.runner import run_sweep
from evaluation.sweep.spec import SweepSpec, SweepSpecError
from evaluation.sweep.store import (
    RESULTS_FILE,
    SPEC_FILE,
    STATUS_FILE,
    SweepFolder,
    SweepLockedError,
    SweepState,
    SweepStatus,
    default_runs_dir,
    load_spec,
)
from naturelm_core.startup import add_model_source_arguments

if TYPE_CHECKING:
    from evaluation.sweep.ray_backend import RayBackend
    from naturelm_core.engine import Engine

EXIT_COMPLETE = 0
EXIT_INCOMPLETE = 1
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.sweep",
        description="Run or resume sweeps headless; results land in RUNS_DIR/<sweep-id>/results.jsonl.",
    )
    parser.add_argument(
        "specs",
        nargs="+",
        type=Path,
        metavar="SPEC.json|CONFIG.yml",
        help="sweep specs or the paper's fork YAML configs (model/generate/extended), run one after another",
    )
    parser.add_argument("--data-path", default=None, help="YAML configs: a local BEANS-Zero copy (default: the Hub)")
    parser.add_argument("--limit", type=int, default=None, help="YAML configs: at most N samples per data set")
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: $NATURELM_RUNS_DIR, /data/runs or runs/")
    add_model_source_arguments(parser, "the tiny random model: exercises the pipeline only")
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=None,
        help="rows per batched generate call (default: 176 on a GPU, 32 on CPU)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="answer on a Ray cluster (auto, host:6379, ray://host:10001); alone: start Ray on this machine",
    )
    parser.add_argument(
        "--ray-actors", type=int, default=None, metavar="N", help="Ray actors (default: one per GPU, else per CPU)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plans = [
            (_plan(load_spec_file(path, args.data_path, args.limit)), args.runs_dir or _own_runs_dir(path))
            for path in args.specs
        ]
    except (SweepSpecError, DatasetError, OSError, ValueError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    engine = _start_ray_backend(args) if args.ray is not None else _start_engine(args)
    if isinstance(engine, int):
        return engine
    refused = _refuse_recipes(engine, [plan.spec for plan, _ in plans])
    if refused is not None:
        engine.stop()
        return refused
    cancel = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_handler = signal.signal(signal.SIGINT, lambda *_: _request_stop(cancel, previous_handler))
    exit_code = EXIT_COMPLETE
    try:
        for plan, runs_dir in plans:
            if cancel.is_set():
                exit_code = EXIT_INCOMPLETE
                break
            exit_code = max(exit_code, _run_with_progress(engine, plan, runs_dir, cancel))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        engine.stop()
    return exit_code


def load_spec_file(path: Path, data_path: str | None = None, limit: int | None = None) -> SweepSpec:
    """A JSON spec, or a fork YAML config (.yml/.yaml) read as one, with the data and limit it cannot name."""
    if is_yaml_path(path):
        return spec_from_yaml(path, data_path=data_path, limit=limit)
    if data_path is not None or limit is not None:
        raise SweepSpecError(f"--data-path and --limit apply to YAML configs; the JSON spec {path} names its own")
    runs_dir = _own_runs_dir(path)
    if runs_dir is not None:  # a sweep's own spec: resume that sweep, under its id, wherever the command runs from
        return load_spec(runs_dir, path.parent.name)
    return SweepSpec.from_json_file(path)


def _own_runs_dir(path: Path) -> Path | None:
    """The runs folder of the sweep whose spec.json `path` is (it has begun: a status or results file), else None."""
    if path.name == SPEC_FILE and any((path.parent / f).is_file() for f in (STATUS_FILE, RESULTS_FILE)):
        return path.parent.parent
    return None


def _plan(spec: SweepSpec) -> SweepPlan:
    """The spec's plan, made before any model is loaded: bad settings or data fail before minutes of loading."""
    spec.generation_settings()
    return SweepPlan.of(spec)


def _refuse_recipes(engine: Engine | SweepBackend, specs: Sequence[SweepSpec]) -> int | None:
    """EXIT_BAD_INPUT, said on stderr, if some spec's merge recipe does not fit the loaded model (its layers,
    its LoRA rank); else None. Checked for every spec before the first runs: a bad recipe in the last spec
    must not surface after the others have run for hours."""
    try:
        for spec in specs:
            check_recipes(engine, spec)
    except SweepSpecError as error:
        return _fail(error, EXIT_BAD_INPUT)
    return None


def _start_engine(args: argparse.Namespace) -> Engine | int:
    # The model code imports torch: loaded only once the specs and data have been checked.
    from naturelm_core.engine import Engine, default_batch_rows
    from naturelm_core.loading import ModelLoadError, load_model
    from naturelm_core.startup import load_demo_model

    try:
        model = (
            load_demo_model(reason="--demo").model
            if args.demo
            else load_model(args.model, args.llm, args.device, args.dtype, audio_precision=args.audio_precision)
        )
    except (ModelLoadError, OSError, ValueError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    if args.demo:
        print("warning: --demo runs the tiny random model; its answers are meaningless", file=sys.stderr)
    return Engine(model, max_batch_rows=args.max_batch_rows or default_batch_rows(model)).start()


def _start_ray_backend(args: argparse.Namespace) -> RayBackend | int:
    """A pool of Ray actors, each loading the model the flags name; bad flags or an unloadable model exit 2."""
    # The model code imports torch, and Ray is an optional extra: both are loaded only when asked for.
    from naturelm_core.engine import CPU_BATCH_ROWS, GPU_BATCH_ROWS
    from naturelm_core.loading import ModelLoadError

    rows = args.max_batch_rows or (CPU_BATCH_ROWS if args.device == "cpu" else GPU_BATCH_ROWS)
    try:
        from evaluation.sweep.ray_backend import ModelSource, RayBackend, RayBackendError
    except ImportError as error:
        return _fail(error, EXIT_BAD_INPUT)
    try:
        model = ModelSource(args.model, args.llm, args.device, args.dtype, args.demo, args.audio_precision)
        backend = RayBackend(model, address=args.ray or None, num_actors=args.ray_actors, max_batch_rows=rows).start()
    except (RayBackendError, ModelLoadError, OSError, ValueError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    if args.demo:
        print("warning: --demo runs the tiny random model; its answers are meaningless", file=sys.stderr)
    actors = backend.live_actors()
    print(f"Ray: {len(actors)} actor(s) on {sorted({a.node_ip for a in actors})}", file=sys.stderr)
    return backend


def _request_stop(cancel: threading.Event, previous_handler: Any) -> None:
    """First Ctrl-C: finish the batch in flight and stop cleanly; a second one interrupts at once."""
    print("\ncancelling after the batch in flight (Ctrl-C again to abort)", file=sys.stderr)
    cancel.set()
    signal.signal(signal.SIGINT, previous_handler)


def _run_with_progress(
    engine: Engine | SweepBackend, plan: SweepPlan, runs_dir: Path | None, cancel: threading.Event
) -> int:
    spec = plan.spec
    bar = tqdm(desc=spec.sweep_id, unit="item", dynamic_ncols=True)

    def show(status: SweepStatus) -> None:
        bar.total = status.total
        bar.n = status.done
        bar.refresh()

    try:
        status = run_sweep(engine, spec, runs_dir, plan=plan, cancel=cancel, on_progress=show)
    except RunsStorageError as error:
        return _fail(error, EXIT_STORAGE)
    except (SweepLockedError, DatasetError, ValueError) as error:
        return _fail(error, EXIT_BAD_INPUT)
    finally:
        bar.close()
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), spec.sweep_id)
    print(f"{spec.sweep_id}: {status.state.value}, {status.done}/{status.total} items -> {folder.results_path}")
    if status.message:
        print(f"{spec.sweep_id}: {status.message}")
    return EXIT_COMPLETE if status.state is SweepState.COMPLETE else EXIT_INCOMPLETE


def _fail(error: Exception, code: int) -> int:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return code
