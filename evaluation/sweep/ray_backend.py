"""Sweeps on a Ray cluster: a pool of actors, one model each, answering the rows a local sweep would.

Only answering moves: generating, or scoring a likelihood sweep's rows against their subset's
labels, each through the actor's Engine (`submit`, `submit_labels`) as the local EngineBackend does.
The driver (evaluation.sweep.runner.SweepRunner) still reads the data, decides what is left to do,
checks each prompt against the context of the actors' model and each merge recipe against its
decoder layers and LoRA rank (one actor reports both when the pool starts; before start() a
recipe's ranges alone can be checked), and alone writes results.jsonl, so the file, resume,
metrics and refusals are those of a local sweep, and a restarted driver resumes like one. Work is
handed out a recording at a time (all its prompt x alpha rows in one call), so each recording is
encoded once, by one actor, whose own Engine keeps the embedding cached and batches rows across
the recordings it holds.

An actor that dies (node lost, out of memory, killed) is replaced and its recordings go to the
actors still alive; a recording that kills MAX_SHARD_ATTEMPTS actors fails its rows instead of
taking the pool down, and the runner records them as failed so that a resume retries them.

    backend = RayBackend(ModelSource("EarthSpeciesProject/NatureLM-audio"), address="auto").start()
    run_sweep(backend, spec, runs_dir)      # or SweepQueue(backend, runs_dir)
    backend.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import evaluation
import naturelm_core
from evaluation.icl import ContextBudget
from evaluation.sweep.backends import SWEEP_REQUEST_TIMEOUT_S, Row
from evaluation.sweep.provenance import library_versions, model_provenance
from naturelm_core.alphas import GridPoint, MergeRecipe, check_grid_point
from naturelm_core.config import PUBLISHED_REPO_ID
from naturelm_core.label_scores import LabelScores
from naturelm_core.requests import EngineError, GenerationSettings, Priority

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
except ImportError as error:  # an optional extra: say how to get it instead of a bare ModuleNotFoundError
    raise ImportError("the Ray backend needs Ray: pip install -r requirements-ray.txt") from error

logger = logging.getLogger(__name__)

# A recording whose rows were on this many actors that all died fails instead of killing every actor in turn.
MAX_SHARD_ATTEMPTS = 3
# Loading Llama-3.1-8B onto a GPU takes minutes; an actor that is not ready after this has no GPU or is stuck.
DEFAULT_START_TIMEOUT_S = 1800.0
# How often the watcher looks for actors that take too long to start; results are picked up as they arrive.
WATCH_INTERVAL_S = 0.2


class RayBackendError(RuntimeError):
    """The Ray pool cannot run as asked: too few GPUs or CPUs, actors that never start or that all died."""


@dataclass(frozen=True)
class ModelSource:
    """Which model every actor loads: the command line's --model, --llm, --device, --dtype, --audio-precision
    and --demo.

    `device` may be "cpu" or "cuda" but not "cuda:1": Ray gives each actor its own GPU, which the
    actor sees as cuda:0. The demo is the same tiny checkpoint as `--demo` locally (seed 0), written
    by each actor into a folder of its own, so actors on one machine never race on one folder and
    actors on other machines need no shared disk.
    """

    source: str = PUBLISHED_REPO_ID
    llm: str | None = None
    device: str | None = None
    dtype: str | None = None
    demo: bool = False
    audio_precision: str | None = None

    def __post_init__(self) -> None:
        if self.device is not None and ":" in str(self.device):
            raise RayBackendError(
                f"device {self.device!r} names one GPU, but Ray gives each actor its own: use 'cuda' or 'cpu'"
            )

    def load(self) -> Any:
        # The model code imports torch: it is loaded in the actors only, never on the driver.
        from naturelm_core.loading import load_model

        if not self.demo:
            return load_model(self.source, self.llm, self.device, self.dtype, audio_precision=self.audio_precision)
        from naturelm_core.tiny import write_tiny_checkpoint

        with tempfile.TemporaryDirectory(prefix="naturelm-demo-") as folder:
            write_tiny_checkpoint(folder, seed=0)
            model = load_model(folder, device="cpu")
        model.demo = True
        return model


@dataclass(frozen=True)
class MergeShape:
    """What a merge recipe must fit (naturelm_core.recipes): one `layers` multiplier per decoder layer, a
    `rank` or `spectrum` within the LoRA rank. None of either: not known (a pool not started), not checked."""

    num_layers: int | None = None
    lora_rank: int | None = None


class SweepActor:
    """Runs inside one Ray actor: loads the model once and answers recordings through its own Engine.

    Calls are async so that many recordings can wait in the Engine's queue at once and be batched
    together, as the app's users are; the Engine's worker thread does the model work.
    """

    def __init__(self, model: ModelSource, max_batch_rows: int) -> None:
        self.model_source = model
        self.max_batch_rows = max_batch_rows
        self.engine = None

    def ready(self) -> dict[str, Any]:
        """Load the model (a load error reaches the driver as itself) and say where this actor runs."""
        from naturelm_core.engine import Engine  # imports torch: where a model runs, not on the driver

        if self.engine is None:
            self.engine = Engine(self.model_source.load(), max_batch_rows=self.max_batch_rows).start()
        device = getattr(self.engine.model, "device", "cpu")
        return {"pid": os.getpid(), "node_ip": ray.util.get_node_ip_address(), "device": str(device)}

    async def answer(
        self, windows: list[np.ndarray], rows: list[WireRow], settings: GenerationSettings
    ) -> list[Outcome]:
        """(True, answer) or (False, why) per row; rows name their windows by index, so a recording travels once."""

        def submit(row_windows: list[np.ndarray], prompt: str, alpha: GridPoint) -> Future:
            return self.engine.submit(
                row_windows,
                prompt,
                alpha,
                settings=settings,
                priority=Priority.SWEEP,
                timeout_s=SWEEP_REQUEST_TIMEOUT_S,
            )

        return await self._gather(windows, rows, submit)

    async def score_labels(
        self, windows: list[np.ndarray], rows: list[WireRow], labels: tuple[str, ...]
    ) -> list[Outcome]:
        """(True, LabelScores) or (False, why) per row, through `Engine.submit_labels` as a local likelihood sweep.

        The label set is tokenized once per actor, not once per row; a set that cannot be scored fails each
        row with the reason, as a bad alpha does.
        """

        def submit(row_windows: list[np.ndarray], prompt: str, alpha: GridPoint) -> Future:
            return self.engine.submit_labels(
                row_windows,
                prompt,
                self.engine.label_candidates(labels),
                alpha,
                priority=Priority.SWEEP,
                timeout_s=SWEEP_REQUEST_TIMEOUT_S,
            )

        return await self._gather(windows, rows, submit)

    async def _gather(
        self,
        windows: list[np.ndarray],
        rows: list[WireRow],
        submit: Callable[[list[np.ndarray], str, GridPoint], Future],
    ) -> list[Outcome]:
        """Queue every row before awaiting any, so the Engine can batch them; failures stay per row."""
        outcomes: list[Outcome | asyncio.Future] = []
        for indices, prompt, alpha in rows:
            try:
                future = submit([windows[i] for i in indices], prompt, from_wire(alpha))
            except (EngineError, ValueError) as error:
                outcomes.append((False, str(error)))
            else:
                outcomes.append(asyncio.wrap_future(future))
        results: list[Outcome] = []
        for outcome in outcomes:
            if isinstance(outcome, tuple):
                results.append(outcome)
                continue
            try:
                results.append((True, await outcome))
            except Exception as error:  # the Engine's failures are per row and meant for the user
                results.append((False, str(error)))
        return results

    def stats(self) -> dict[str, int]:
        return asdict(self.engine.stats) if self.engine is not None else {}

    def context_budget(self) -> ContextBudget | None:
        """The model's own context (its tokenizer and limit), for the driver to check prompts against."""
        return ContextBudget.of_model(self.engine.model)

    def merge_shape(self) -> MergeShape:
        """The model's decoder layers and LoRA rank, for the driver to check a sweep's recipes against."""
        model = self.engine.model
        return MergeShape(model.num_layers, model.config.lora_rank)

    def provenance(self) -> dict[str, Any]:
        """The model's facts and the libraries of this actor's process (a cluster's may differ from the driver's)."""
        return {**model_provenance(self.engine.model), "versions": library_versions()}


@dataclass
class PoolStats:
    """What the pool did, for tests and logs: a retry count above zero means an actor died holding work."""

    actors_started: int = 0
    actors_lost: int = 0
    shards_submitted: int = 0
    shards_retried: int = 0
    rows_answered: int = 0
    rows_failed: int = 0


@dataclass(frozen=True)
class ActorInfo:
    """A live actor: its handle (to kill it in a test, or to ask it for `stats`), process and node."""

    handle: Any
    pid: int
    node_ip: str
    device: str


@dataclass(eq=False)
class _Worker:
    handle: Any
    info: ActorInfo | None = None
    outstanding_rows: int = 0
    started_at: float = field(default_factory=time.monotonic)


WirePoint = float | dict[str, Any]  # a grid point as it crosses to an actor: a float, or a recipe's JSON object
WireRow = tuple[list[int], str, WirePoint]  # a row as it crosses: indices into its recording's windows, prompt, point
Outcome = tuple[bool, str | LabelScores]  # (True, the answer or the label scores) or (False, why the row failed)


def to_wire(point: GridPoint) -> WirePoint:
    """Plain data for Ray's pickling: a recipe travels as its canonical JSON object, not as our class."""
    return point.to_dict() if isinstance(point, MergeRecipe) else float(point)


def from_wire(point: WirePoint) -> GridPoint:
    return MergeRecipe.from_dict(point) if isinstance(point, dict) else point


@dataclass(eq=False)
class _Shard:
    """One recording's rows: the windows once, the rows by window index, one driver-side Future per row.

    `task` says how they are answered: generated with these settings, or scored against this label set.
    """

    windows: list[np.ndarray]
    rows: list[WireRow]
    task: GenerationSettings | tuple[str, ...]
    futures: list[Future]
    attempts: int = 0

    def send(self, actor: Any) -> Any:
        """Ask `actor` (a handle) for this recording's answers; the ref resolves to one Outcome per row."""
        if isinstance(self.task, GenerationSettings):
            return actor.answer.remote(self.windows, self.rows, self.task)
        return actor.score_labels.remote(self.windows, self.rows, self.task)


def connect(address: str | None = None, **init_options: Any) -> bool:
    """Join the Ray cluster at `address` ("auto", "host:6379", "ray://host:10001"); None starts a new one here.

    None means "local" to Ray, never "whatever cluster runs here", so a plain `--ray` cannot land a
    sweep on a cluster someone else started; give "auto" for that. The packages `evaluation` and
    `naturelm_core` travel from this driver to every worker, so a cluster needs the Python
    requirements installed but no checkout of this repository. Returns whether this call
    connected, so that whoever connected also disconnects.
    """
    if ray.is_initialized():
        return False
    packages = [str(Path(package.__file__).parent) for package in (evaluation, naturelm_core)]
    runtime_env = {"py_modules": packages, **init_options.pop("runtime_env", {})}
    ray.init(address=address or "local", runtime_env=runtime_env, **init_options)
    return True


def plan_actors(
    resources: dict[str, float], num_actors: int | None = None, cpus_per_actor: int = 1
) -> tuple[int, dict[str, float]]:
    """(number of actors, Ray resources of each): one per GPU when the cluster has GPUs, else one per CPU slot."""
    if num_actors is not None and num_actors < 1:
        raise RayBackendError(f"the pool needs at least one actor, got {num_actors}")
    if cpus_per_actor < 1:
        raise RayBackendError(f"cpus_per_actor must be at least 1, got {cpus_per_actor}")
    gpus = int(resources.get("GPU", 0))
    if gpus:
        slots, kind, options = gpus, "GPU(s)", {"num_gpus": 1, "num_cpus": 1}
    else:
        slots = int(resources.get("CPU", 0)) // cpus_per_actor
        kind, options = f"slot(s) of {cpus_per_actor} CPU(s) and no GPU", {"num_cpus": cpus_per_actor}
    wanted = num_actors or slots
    if wanted < 1 or wanted > slots:
        raise RayBackendError(f"{wanted} actor(s) asked for, but the Ray cluster has {slots} {kind}")
    return wanted, options


class RayBackend:
    """A SweepBackend whose rows are answered by a pool of Ray actors (see the module docstring).

    `num_actors` defaults to every GPU of the cluster (every CPU slot of `cpus_per_actor` when it has
    none); `max_replacements` (default: as many as actors) bounds how many dead actors are replaced.
    `init_options` go to `ray.init` when this backend starts Ray itself (e.g. num_cpus for a local
    instance); a process already connected to Ray keeps its connection.
    """

    def __init__(
        self,
        model: ModelSource,
        *,
        address: str | None = None,
        num_actors: int | None = None,
        cpus_per_actor: int = 1,
        max_batch_rows: int = 32,
        max_replacements: int | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if max_batch_rows < 1:
            raise RayBackendError(f"max_batch_rows must be at least 1, got {max_batch_rows}")
        self.model = model
        self.address = address
        self.num_actors = num_actors
        self.cpus_per_actor = cpus_per_actor
        self.max_batch_rows = max_batch_rows
        self.max_replacements = max_replacements
        self.start_timeout_s = start_timeout_s
        self.init_options = init_options or {}
        self.stats = PoolStats()
        self._budget: ContextBudget | None = None
        self._shape = MergeShape()
        self._model_facts: dict[str, Any] = {}  # one actor's provenance(), asked when the pool starts
        self._actor_class: Any = None
        self._connected_here = False
        self._live: list[_Worker] = []
        self._starting: dict[Any, _Worker] = {}  # ready() ref -> replacement actor
        self._running: dict[Any, tuple[_Shard, _Worker]] = {}  # answer() ref -> what it answers, on which actor
        self._waiting: list[_Shard] = []  # no live actor for now; a replacement is starting
        self._replacements_left = 0
        self._changed = threading.Condition()
        self._stopped = False
        self._watcher: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> RayBackend:
        """Connect, start the actors and wait until each has loaded the model; a load error is raised as itself."""
        self._connected_here = connect(self.address, **self.init_options)
        try:
            count, resources = plan_actors(ray.cluster_resources(), self.num_actors, self.cpus_per_actor)
            self.num_actors = count
            self._replacements_left = count if self.max_replacements is None else self.max_replacements
            self._actor_class = ray.remote(SweepActor).options(max_restarts=0, max_task_retries=0, **resources)
            self._live = [self._spawn() for _ in range(count)]
            infos = ray.get([worker.handle.ready.remote() for worker in self._live], timeout=self.start_timeout_s)
            # Every actor loads the same model, so one actor's context, merge shape and provenance are the pool's.
            first = self._live[0].handle
            self._budget, self._shape, self._model_facts = ray.get(
                [first.context_budget.remote(), first.merge_shape.remote(), first.provenance.remote()],
                timeout=self.start_timeout_s,
            )
        except GetTimeoutError:
            self.stop()
            raise RayBackendError(
                f"the Ray actors did not load the model within {self.start_timeout_s:g} s "
                "(does the cluster have the free GPUs or CPUs they ask for?)"
            ) from None
        except RayTaskError as error:
            self.stop()
            raise error.cause from None  # e.g. CheckpointNotFoundError, as a local load would raise it
        except RayActorError as error:
            self.stop()
            raise RayBackendError(f"a Ray actor died while loading the model: {_last_line(error)}") from None
        except BaseException:
            self.stop()
            raise
        for worker, info in zip(self._live, infos, strict=True):
            worker.info = ActorInfo(worker.handle, **info)
        logger.info("Ray pool of %d actor(s): %s", count, self.live_actors())
        self._watcher = threading.Thread(target=self._watch, name="ray-sweep-pool", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        """Fail what is unanswered, end the actors, and disconnect from Ray if this backend connected."""
        with self._changed:
            self._stopped = True
            unanswered = [shard for shard, _ in self._running.values()] + self._waiting
            workers = self._live + list(self._starting.values())
            self._running.clear()
            self._waiting.clear()
            self._starting.clear()
            self._live = []
            self._changed.notify_all()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        for shard in unanswered:
            self._fail(shard, "the Ray pool stopped before answering")
        for worker in workers:
            _kill(worker)
        if self._connected_here:
            ray.shutdown()
            self._connected_here = False

    # -- SweepBackend -----------------------------------------------------------------------------

    answers_on_this_cpu = False  # the actors are processes of their own: decoding here may keep to one torch thread

    @property
    def inflight_rows(self) -> int:
        """Two batches per actor, so each has its next batch queued while it generates."""
        return 2 * self.max_batch_rows * max(1, self.num_actors or 1)

    def context_budget(self, max_context_tokens: int | None) -> ContextBudget | None:
        """The actors' model's context, reported when the pool started; None before start()."""
        return None if self._budget is None else self._budget.with_limit(max_context_tokens)

    def check_grid_point(self, value: object, allow_extrapolation: bool = False, name: str = "alpha") -> GridPoint:
        """`value` checked as the actors' model checks a row's alpha or recipe, with the layers and LoRA rank
        one actor reported when the pool started; before start(), by its ranges alone."""
        shape = self._shape
        return check_grid_point(value, allow_extrapolation, shape.num_layers, shape.lora_rank, name)

    def provenance(self) -> dict[str, Any]:
        """For the sweep's run record: the pool, and what one actor said of its model and libraries at start
        (before start(), only what the command line asked for)."""
        asked = {"model_source": None if self.model.demo else self.model.source, "demo": self.model.demo}
        return {"backend": "ray", "ray_actors": self.num_actors, **asked, **self._model_facts}

    def submit_group(self, rows: Sequence[Row], settings: GenerationSettings) -> list[Future]:
        return self._submit(rows, settings)

    def submit_label_group(self, rows: Sequence[Row], labels: Sequence[str]) -> list[Future]:
        """A likelihood sweep's recording: each Future resolves to the row's LabelScores over `labels`.

        Scored by an actor's Engine.submit_labels, the entry point of the local EngineBackend, so the
        log-likelihoods and the predicted label are those of a local sweep; a dead actor's rows are
        re-sent like generation's.
        """
        return self._submit(rows, tuple(labels))

    def _submit(self, rows: Sequence[Row], task: GenerationSettings | tuple[str, ...]) -> list[Future]:
        """Send one recording's rows to an actor as one shard: each distinct window travels once."""
        windows: list[np.ndarray] = []
        index_of: dict[int, int] = {}
        indexed_rows: list[WireRow] = []
        for row_windows, prompt, alpha in rows:
            indices = []
            for window in row_windows:
                if id(window) not in index_of:
                    index_of[id(window)] = len(windows)
                    windows.append(np.ascontiguousarray(window, dtype=np.float32))
                indices.append(index_of[id(window)])
            indexed_rows.append((indices, prompt, to_wire(alpha)))
        shard = _Shard(windows, indexed_rows, task, [Future() for _ in rows])
        with self._changed:
            if self._stopped:
                raise EngineError("the Ray pool has stopped")
            self.stats.shards_submitted += 1
            self._dispatch(shard)
        return shard.futures

    # -- what a test or a status line may look at -------------------------------------------------

    def live_actors(self) -> list[ActorInfo]:
        with self._changed:
            return [worker.info for worker in self._live if worker.info is not None]

    def busy_actors(self) -> list[ActorInfo]:
        """Live actors holding unanswered rows right now."""
        with self._changed:
            return [w.info for w in self._live if w.info is not None and w.outstanding_rows]

    def actor_stats(self) -> list[dict[str, int]]:
        """Each live actor's Engine counters (windows_encoded, rows_generated, ...)."""
        return ray.get([info.handle.stats.remote() for info in self.live_actors()])

    # -- internals (the lock is held where a name says "locked") ---------------------------------

    def _spawn(self) -> _Worker:
        self.stats.actors_started += 1
        return _Worker(self._actor_class.remote(self.model, self.max_batch_rows))

    def _dispatch(self, shard: _Shard) -> None:
        """Send a recording to the least busy live actor, or park it until a replacement is ready (locked)."""
        if not self._live:
            if self._starting:
                self._waiting.append(shard)
            else:
                self._fail(shard, "every Ray actor of the pool has died and none could be replaced")
            return
        worker = min(self._live, key=lambda w: w.outstanding_rows)
        ref = shard.send(worker.handle)
        worker.outstanding_rows += len(shard.rows)
        self._running[ref] = (shard, worker)
        self._changed.notify_all()

    def _watch(self) -> None:
        """Hand results to the runner's Futures as they arrive; retry what a dead actor held."""
        while True:
            with self._changed:
                while not self._stopped and not self._running and not self._starting:
                    self._changed.wait()
                if self._stopped:
                    return
                refs = [*self._running, *self._starting]
            ready, _ = ray.wait(refs, num_returns=1, timeout=WATCH_INTERVAL_S)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._settle(ref)
            self._give_up_on_slow_starts()

    def _settle(self, ref: Any) -> None:
        try:
            outcome, error = ray.get(ref), None
        except RayError as raised:
            outcome, error = None, raised
        with self._changed:
            if ref in self._starting:
                self._started(self._starting.pop(ref), outcome, error)
                return
            if ref not in self._running:  # stop() already failed it
                return
            shard, worker = self._running.pop(ref)
            worker.outstanding_rows -= len(shard.rows)
            if isinstance(error, RayActorError):
                self._lose(worker, error)
                self._retry(shard)
            elif error is not None:
                self._fail(shard, f"the Ray actor failed on this recording: {_last_line(error)}")
            else:
                self._resolve(shard, outcome)

    def _resolve(self, shard: _Shard, outcome: list[Outcome]) -> None:
        for future, (ok, answer) in zip(shard.futures, outcome, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(answer)
                self.stats.rows_answered += 1
            else:
                future.set_exception(EngineError(str(answer)))
                self.stats.rows_failed += 1

    def _fail(self, shard: _Shard, message: str) -> None:
        for future in shard.futures:
            if not future.done():
                future.set_exception(EngineError(message))
                self.stats.rows_failed += 1

    def _retry(self, shard: _Shard) -> None:
        """Send a dead actor's recording elsewhere, unless it has already taken down MAX_SHARD_ATTEMPTS (locked)."""
        shard.attempts += 1
        if shard.attempts >= MAX_SHARD_ATTEMPTS:
            self._fail(shard, f"{shard.attempts} Ray actors died answering this recording (out of memory?)")
            return
        self.stats.shards_retried += 1
        self._dispatch(shard)

    def _lose(self, worker: _Worker, error: BaseException) -> None:
        """Drop a dead actor (once, however many of its calls fail) and start a replacement if allowed (locked)."""
        if worker not in self._live:
            return
        self._live.remove(worker)
        self.stats.actors_lost += 1
        logger.warning("Ray actor %s died (%s)", worker.info, _last_line(error))
        _kill(worker)
        self._replace()

    def _replace(self) -> None:
        if self._replacements_left <= 0:
            return
        self._replacements_left -= 1
        worker = self._spawn()
        self._starting[worker.handle.ready.remote()] = worker
        self._changed.notify_all()

    def _started(self, worker: _Worker, info: dict[str, Any] | None, error: BaseException | None) -> None:
        """A replacement loaded its model (it joins the pool and takes the parked work) or failed to (locked)."""
        if error is not None:
            logger.warning("a replacement Ray actor could not start: %s", _last_line(error))
            _kill(worker)
            self._replace()
        else:
            worker.info = ActorInfo(worker.handle, **info)
            self._live.append(worker)
            logger.info("replacement Ray actor ready: %s", worker.info)
        parked, self._waiting = self._waiting, []
        for shard in parked:
            self._dispatch(shard)

    def _give_up_on_slow_starts(self) -> None:
        """A replacement that cannot be scheduled (no free GPU left) must not hold parked work forever."""
        now = time.monotonic()
        with self._changed:
            for ref, worker in list(self._starting.items()):
                if now - worker.started_at > self.start_timeout_s:
                    del self._starting[ref]
                    error = RayBackendError(f"not ready after {self.start_timeout_s:g} s")
                    self._started(worker, None, error)


def _kill(worker: _Worker) -> None:
    with contextlib.suppress(RayError, ValueError):  # already gone
        ray.kill(worker.handle, no_restart=True)


def _last_line(error: BaseException) -> str:
    """Ray's messages carry a remote traceback; the last line says what happened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
