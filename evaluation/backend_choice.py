"""Where the Sweeps tab runs a sweep: on this machine's engine, or on a Ray cluster at an address.

The app's own engine holds this machine's GPU, so Ray is only offered at an explicit address: a
Ray instance started here would put its actors on that same GPU. The pool for an address is
started on first use (it blocks while the actors load the model) and kept for the next sweep;
one process joins one Ray cluster at a time, so a second address is refused rather than silently
sent to the first. Every failure to reach or start the pool becomes a BackendChoiceError whose
message the tab shows as is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from evaluation.sweep import ProgressCallback, SweepQueue

THIS_MACHINE = "this machine"
RAY_CLUSTER = "Ray cluster"
RUN_ON_CHOICES = (THIS_MACHINE, RAY_CLUSTER)
RAY_ADDRESS_HINT = "e.g. ray://head:10001 or auto"
# Rows per actor batch: a GPU actor serves sweeps only, so it can take the engine's largest batches.
RAY_BATCH_ROWS = 176


class BackendChoiceError(ValueError):
    """The chosen place to run cannot take the sweep; the message says why and what to do."""


class SweepBackends:
    """The app's local sweep queue plus, once Ray is chosen, one Ray pool and its queue (kept until stop).

    `model` names what every Ray actor loads and must be the model the app serves, so that a sweep's
    answers do not depend on where it ran. `ray_options` go to RayBackend (num_actors, init_options...).
    """

    def __init__(
        self,
        local: SweepQueue,
        *,
        source: str,
        dtype: str | None = None,
        demo: bool = False,
        audio_precision: str | None = None,
        on_progress: ProgressCallback | None = None,
        max_batch_rows: int = RAY_BATCH_ROWS,
        ray_options: dict[str, Any] | None = None,
    ) -> None:
        self.local = local
        self.source, self.dtype, self.demo = source, dtype, demo
        self.audio_precision = audio_precision  # the served model's, so Ray actors encode audio as it does
        self.on_progress = on_progress
        self.max_batch_rows = max_batch_rows
        self.ray_options = ray_options or {}
        self.ray_address: str | None = None
        self._ray_backend: Any = None
        self._ray_queue: SweepQueue | None = None
        self._lock = threading.Lock()

    def queue_for(self, run_on: str, address: str | None) -> SweepQueue:
        """The queue a sweep started with this choice goes to; the Ray pool is started here on first use."""
        if run_on == THIS_MACHINE:
            return self.local
        if run_on != RAY_CLUSTER:
            raise BackendChoiceError(f"Run on must be one of {', '.join(RUN_ON_CHOICES)}, got {run_on!r}.")
        address = (address or "").strip()
        if not address:
            raise BackendChoiceError(
                f"Give the Ray cluster's address ({RAY_ADDRESS_HINT}). A Ray instance started by the app would put "
                "its actors on the GPU the app's own engine holds."
            )
        with self._lock:  # two Starts at once must not start two pools
            if self._ray_queue is None:
                self._ray_queue = self._start_ray(address)
                self.ray_address = address
            elif address != self.ray_address:
                raise BackendChoiceError(
                    f"This app already runs sweeps on the Ray cluster at {self.ray_address}; one process joins one "
                    "Ray cluster, so restart the app to use another address."
                )
            return self._ray_queue

    def queues(self) -> list[SweepQueue]:
        """Every queue a sweep may be running on: cancel looks in all of them."""
        with self._lock:
            return [self.local, *([self._ray_queue] if self._ray_queue is not None else [])]

    def cancel(self, sweep_id: str) -> bool:
        return any(queue.cancel(sweep_id) for queue in self.queues())

    def stop(self) -> None:
        """Close the Ray queue and end its actors (and Ray, if the pool connected); the local queue is the app's."""
        with self._lock:
            queue, backend = self._ray_queue, self._ray_backend
            self._ray_queue = self._ray_backend = self.ray_address = None
        if queue is not None:
            queue.close()
        if backend is not None:
            backend.stop()

    def _start_ray(self, address: str) -> SweepQueue:
        backend = _failures_as_messages(address, lambda: self._ray_pool(address).start())
        self._ray_backend = backend
        return SweepQueue(backend, self.local.runs_dir, on_progress=self.on_progress)

    def _ray_pool(self, address: str) -> Any:
        from evaluation.sweep.ray_backend import ModelSource, RayBackend  # Ray is an optional extra

        model = ModelSource(
            self.source, None, device=None, dtype=self.dtype, demo=self.demo, audio_precision=self.audio_precision
        )
        return RayBackend(model, address=address, max_batch_rows=self.max_batch_rows, **self.ray_options)


def _failures_as_messages(address: str, start: Callable[[], Any]) -> Any:
    """Run `start`, turning the ways a Ray pool fails to start into a sentence for the tab."""
    from naturelm_core.loading import ModelLoadError  # imports torch: evaluation/ stays torch-free when imported

    try:
        from evaluation.sweep.ray_backend import RayBackendError
    except ImportError:
        raise BackendChoiceError(
            "Ray is not installed on this machine: pip install -r requirements-ray.txt, then restart the app."
        ) from None
    try:
        return start()
    except ConnectionError as error:
        raise BackendChoiceError(f"Cannot reach the Ray cluster at {address}: {error}") from None
    except RayBackendError as error:
        raise BackendChoiceError(f"The Ray cluster at {address} cannot run the sweep: {error}") from None
    except ModelLoadError as error:
        raise BackendChoiceError(f"The Ray actors could not load the model: {error}") from None
