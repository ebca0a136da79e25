"""The scores of a stored sweep, finished or not, against the labels its finished results will have."""

from __future__ import annotations

import functools
import logging
import os

from evaluation.datasets import DatasetError, cached_subset_path
from evaluation.likelihood_metrics import Distributions, group_distributions
from evaluation.results import GridKey
from evaluation.scoring import GroupScore, ScoringMode, score_rows
from evaluation.sweep.label_sets import read_label_sets
from evaluation.sweep.plan import plan_sweep
from evaluation.sweep.spec import DataSource, SweepSpec
from evaluation.sweep.store import SweepFolder, default_runs_dir, load_results, load_spec

logger = logging.getLogger(__name__)


def score_sweep(
    runs_dir: str | os.PathLike[str] | None, sweep_id: str, mode: ScoringMode | str | None = None
) -> list[GroupScore]:
    """The rows written so far, scored with the spec's mode, label mapping and planned label sets
    (or another `mode`)."""
    spec = load_spec(runs_dir, sweep_id)
    return score_rows(
        load_results(runs_dir, sweep_id),
        mode or spec.scoring_mode,
        mapping=spec.label_mapping(),
        label_sets=planned_label_sets(spec),
    )


@functools.lru_cache(maxsize=64)
def planned_label_sets(spec: SweepSpec) -> dict[str, frozenset[str]] | None:
    """Each subset's labels over the samples the sweep plans to answer: its finished results' label set.

    Scores of a running or cancelled sweep then snap answers to the labels the finished sweep's will,
    not only to those of the rows written so far (where "species 07" would snap to a seen "species 01"
    and count as correct). None where the data cannot be read here without a download (a moved
    folder, a BEANS-Zero subset no longer cached): scoring then uses the labels seen.
    """
    if spec.source is DataSource.BEANS_ZERO and not all(cached_subset_path(name).exists() for name in spec.subsets):
        return None
    try:
        return {plan.name: frozenset(plan.subset.labels_of(plan.sample_ids)) for plan in plan_sweep(spec)}
    except (DatasetError, OSError) as error:
        logger.info("sweep %s: scoring with the labels seen so far (%s)", spec.sweep_id, error)
        return None


def likelihood_groups(
    runs_dir: str | os.PathLike[str] | None, sweep_id: str
) -> dict[tuple[str, str, GridKey], Distributions]:
    """A likelihood sweep's stored distributions per (dataset, prompt, grid point); empty for a generation sweep."""
    folder = SweepFolder(runs_dir if runs_dir is not None else default_runs_dir(), sweep_id)
    label_sets = read_label_sets(folder.path)
    return group_distributions(folder.results.read(), label_sets) if label_sets else {}
