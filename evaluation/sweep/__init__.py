"""Sweeps: a grid of (sample, prompt, alpha) answers from the model that also serves the app, kept on disk.

    python -m evaluation.sweep SPEC.json [SPEC.json ...] [--runs-dir DIR] [--model SRC] [--demo]
    python -m evaluation.sweep CONFIG.yml [--data-path BEANS_ZERO_COPY] [--limit N]   (the paper fork's configs)
    python -m evaluation.sweep SPEC.json --ray [ADDRESS] [--ray-actors N]   (on a Ray cluster: ray_backend.py)

A SweepSpec names the data, the prompts, the alpha grid and the generation settings; its id is
derived from what decides the answers, so running the same spec again resumes it. The runner
submits work to the shared Engine at sweep priority (interactive users still go first), sample by
sample, and appends finished rows to runs/<id>/results.jsonl; a restart skips every row already
there. Metrics and figures are recomputed from the file, so nothing lives only in memory.

One job a module, each importing only the ones before it in this list (no cycles):

    spec.py         SweepSpec: the schema, its validation, its JSON form, the sweep id
    plan.py         what a spec asks: subsets, samples, work items and their keys; the check at start
    durable.py      files that survive kill -9 and a full disk (atomic JSON, append-only jsonl)
    label_sets.py   a likelihood sweep's label order per subset (label_sets.json) and a row's distribution
    provenance.py   each run's model, numerics, device, versions and commit (provenance.jsonl)
    store.py        the runs folder: each sweep's spec.json, results.jsonl, status.json, cancel file, lock
    scores.py       a stored sweep's scores, against the labels its finished results will have
    backends.py     where rows are answered: the SweepBackend protocol, EngineBackend (this process)
    runner.py       SweepRunner: one sweep from its plan to its results, resumable
    queue.py        SweepQueue (sweeps one after another in the app) and start_sweep
    ray_backend.py  RayBackend, a pool of Ray actors; Ray is an optional extra, imported only where used
    cli.py          the command line (__main__.py runs it); not imported here, as it reads fork configs

Nothing here imports torch when imported: the model code is imported where audio is decoded or a
model is loaded, so the UI and the scorer import sweeps cheaply.
"""

from evaluation.sweep.backends import (
    SWEEP_REQUEST_TIMEOUT_S,
    EngineBackend,
    LabelBackend,
    Row,
    SweepBackend,
    as_backend,
    check_recipes,
)
from evaluation.sweep.durable import ResultsCorruptError, RunsStorageError
from evaluation.sweep.label_sets import DISTRIBUTION_FIELD, LabelSetError, read_label_sets
from evaluation.sweep.plan import (
    ItemKey,
    SubsetPlan,
    SweepPlan,
    WorkItem,
    check_sweep,
    item_key,
    load_examples,
    model_window,
    open_subset,
    plan_sweep,
    sample_items,
    select_sample_ids,
)
from evaluation.sweep.queue import QueuedSweep, SweepQueue, start_sweep
from evaluation.sweep.runner import DECODE_AHEAD_PER_WORKER, ProgressCallback, SweepRunner, run_sweep
from evaluation.sweep.scores import likelihood_groups, planned_label_sets, score_sweep
from evaluation.sweep.spec import ANSWER_FIELDS, AnswerMode, DataSource, SweepSpec, SweepSpecError
from evaluation.sweep.store import (
    SweepFolder,
    SweepLockedError,
    SweepState,
    SweepStatus,
    default_runs_dir,
    list_sweeps,
    load_results,
    load_spec,
    prepare_folder,
    rows_from_records,
)

__all__ = [
    "ANSWER_FIELDS",
    "DECODE_AHEAD_PER_WORKER",
    "DISTRIBUTION_FIELD",
    "SWEEP_REQUEST_TIMEOUT_S",
    "AnswerMode",
    "DataSource",
    "EngineBackend",
    "ItemKey",
    "LabelBackend",
    "LabelSetError",
    "ProgressCallback",
    "QueuedSweep",
    "ResultsCorruptError",
    "Row",
    "RunsStorageError",
    "SubsetPlan",
    "SweepBackend",
    "SweepFolder",
    "SweepLockedError",
    "SweepPlan",
    "SweepQueue",
    "SweepRunner",
    "SweepSpec",
    "SweepSpecError",
    "SweepState",
    "SweepStatus",
    "WorkItem",
    "as_backend",
    "check_recipes",
    "check_sweep",
    "default_runs_dir",
    "item_key",
    "likelihood_groups",
    "list_sweeps",
    "load_examples",
    "load_results",
    "load_spec",
    "model_window",
    "open_subset",
    "plan_sweep",
    "planned_label_sets",
    "prepare_folder",
    "read_label_sets",
    "rows_from_records",
    "run_sweep",
    "sample_items",
    "score_sweep",
    "select_sample_ids",
    "start_sweep",
]
