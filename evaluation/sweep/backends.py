"""Where a sweep's rows are answered: the SweepBackend protocol, and EngineBackend on this process's Engine.

The runner alone reads the data, checks every prompt against the backend's context and writes
results.jsonl, whatever the backend, so the file, resume, metrics and refusals do not depend on where
the answers were computed (evaluation.sweep.ray_backend computes them on a Ray cluster). A sweep's
merge recipes are checked against the backend's model (`check_recipes`) before anything is queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from evaluation.icl import ContextBudget
from evaluation.sweep.provenance import library_versions, model_provenance
from evaluation.sweep.spec import SweepSpec, SweepSpecError
from naturelm_core.alphas import AlphaError, GridPoint
from naturelm_core.requests import GenerationSettings, Priority

if TYPE_CHECKING:
    from naturelm_core.engine import Engine

# Sweep rows may wait behind interactive users for a long time; that is not a failure.
SWEEP_REQUEST_TIMEOUT_S = 24 * 3600.0

# One row to answer: an audio window per `<AudioHere>` of the prompt, the prompt, the alpha or merge recipe.
Row = tuple[list[np.ndarray], str, GridPoint]


@runtime_checkable
class SweepBackend(Protocol):
    """Answers a sweep's rows: this process's Engine, or workers elsewhere (evaluation.sweep.ray_backend)."""

    @property
    def inflight_rows(self) -> int:
        """Rows to keep queued so that every worker has its next batch ready."""
        ...

    def context_budget(self, max_context_tokens: int | None) -> ContextBudget | None:
        """The context of the model that answers (`max_context_tokens` in place of its own limit, if given).

        The runner checks each prompt against it before submitting, so a prompt too long is refused
        the same way wherever it would run. None only where no NatureLM stands behind the backend
        (a stand-in in tests): there is nothing to check against.
        """
        ...

    def submit_group(self, rows: Sequence[Row], settings: GenerationSettings) -> list[Future]:
        """Queue the rows of one recording together (one worker, one encode); each Future resolves to the answer."""
        ...


@runtime_checkable
class LabelBackend(Protocol):
    """A backend that also answers likelihood sweeps (EngineBackend, RayBackend): rows scored against one label set."""

    def submit_label_group(self, rows: Sequence[Row], labels: Sequence[str]) -> list[Future]:
        """Queue one recording's rows to score against `labels`; each Future resolves to a LabelScores."""
        ...


@runtime_checkable
class GridChecker(Protocol):
    """What knows the shape of the model that answers (Engine, EngineBackend, RayBackend): a recipe's `layers`
    list must have one multiplier per decoder layer, its `rank` or `spectrum` fit the LoRA rank."""

    def check_grid_point(self, value: object, allow_extrapolation: bool = False, name: str = "alpha") -> GridPoint:
        """`value` checked as one row's alpha or recipe against that model; a refusal's message starts with `name`."""
        ...


def check_recipes(answerer: Engine | SweepBackend, spec: SweepSpec) -> None:
    """Refuse a sweep whose merge recipes the model cannot run, before any of its rows is queued or written.

    The spec checked every recipe's ranges when it was read; only the model knows its decoder layers
    and LoRA rank, and a recipe refused by them would otherwise fail at its first row, mid-sweep. An
    answerer that cannot say (a test's stand-in) leaves that to its rows, as before.
    """
    if not isinstance(answerer, GridChecker):
        return
    for index, recipe in enumerate(spec.recipes):
        try:
            answerer.check_grid_point(recipe, name=f"the spec's recipes[{index}]")
        except AlphaError as error:
            raise SweepSpecError(f"sweep {spec.sweep_id} cannot start on this model: {error}") from None


class EngineBackend:
    """The local backend: rows go to the shared Engine at sweep priority, behind interactive users."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.caller = engine.new_caller()  # one sweep is one caller: the engine shares batches fairly between callers

    @property
    def inflight_rows(self) -> int:
        return 2 * self.engine.max_batch_rows

    @property
    def answers_on_this_cpu(self) -> bool:
        """Whether the model computes on this process's CPU (the runner's decode threads then leave torch its
        threads; see evaluation.prefetch._pool). A stand-in model without a device counts as one."""
        device = getattr(self.engine.model, "device", None)
        return getattr(device, "type", "cpu") == "cpu"

    def context_budget(self, max_context_tokens: int | None) -> ContextBudget | None:
        return ContextBudget.of_model(self.engine.model, max_context_tokens)

    def check_grid_point(self, value: object, allow_extrapolation: bool = False, name: str = "alpha") -> GridPoint:
        return self.engine.check_grid_point(value, allow_extrapolation, name)

    def provenance(self) -> dict[str, Any]:
        """The engine's model and this process's libraries, for the sweep's run record (evaluation.sweep.provenance)."""
        return {"backend": "local engine", **model_provenance(self.engine.model), "versions": library_versions()}

    def batching(self) -> tuple[float | None, int]:
        """(mean rows of the recent batches that carried sweep rows, the most a batch may take): a sweep shows
        both, so a user sees when batching degrades. Optional for a backend; the runner asks with getattr."""
        return self.engine.stats.sweep_rows_per_batch(), self.engine.max_batch_rows

    def submit_group(self, rows: Sequence[Row], settings: GenerationSettings) -> list[Future]:
        return self.engine.submit_many(
            rows, settings, Priority.SWEEP, SWEEP_REQUEST_TIMEOUT_S, block=True, caller=self.caller
        )

    def submit_label_group(self, rows: Sequence[Row], labels: Sequence[str]) -> list[Future]:
        """Score each row against the subset's whole label set, tokenized once per set (not once per row)."""
        candidates = self.engine.label_candidates(labels)
        return self.engine.submit_labels_many(
            rows, candidates, Priority.SWEEP, SWEEP_REQUEST_TIMEOUT_S, block=True, caller=self.caller
        )


def as_backend(engine: Engine | SweepBackend) -> SweepBackend:
    return engine if isinstance(engine, SweepBackend) else EngineBackend(engine)
