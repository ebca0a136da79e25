"""The Sweeps tab's "Run on" choice: this machine's queue, or a Ray pool at an explicit address, with clear refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from evaluation.backend_choice import RAY_CLUSTER, THIS_MACHINE, BackendChoiceError, SweepBackends
from evaluation.sweep import SweepFolder, SweepQueue, SweepSpec, SweepState, list_sweeps, run_sweep
from naturelm_core.engine import Engine
from tests.sweep_helpers import item_predictions, spec_dict, write_sweep_data

SWEEP_DEADLINE_S = 120.0


@pytest.fixture
def backends(tiny_model, tmp_path):
    local = SweepQueue(Engine(tiny_model, max_batch_rows=8), tmp_path / "runs")
    choice = SweepBackends(local, source="unused by the demo", demo=True, ray_options={"num_actors": 1})
    yield choice
    choice.stop()
    local.close()


def test_this_machine_is_the_apps_own_queue(backends):
    assert backends.queue_for(THIS_MACHINE, "ignored") is backends.local
    assert backends.queues() == [backends.local]


@pytest.mark.parametrize("address", ["", "   ", None])
def test_ray_without_an_address_is_refused_and_queues_nothing(backends, tmp_path, address):
    with pytest.raises(BackendChoiceError, match=r"Give the Ray cluster's address \(e\.g\. ray://head:10001"):
        backends.queue_for(RAY_CLUSTER, address)
    assert backends.queues() == [backends.local] and backends.ray_address is None
    assert list_sweeps(tmp_path / "runs") == []


def test_an_unknown_choice_is_refused(backends):
    with pytest.raises(BackendChoiceError, match="Run on must be one of this machine, Ray cluster"):
        backends.queue_for("the cloud", "auto")


# -- with Ray (an optional extra) -----------------------------------------------------------------------------

# A failed ray:// connection leaves Ray unable to start a local instance in the same process, so this runs apart.
UNREACHABLE = """
import sys
from evaluation.backend_choice import RAY_CLUSTER, BackendChoiceError, SweepBackends
from evaluation.sweep import SweepQueue
backends = SweepBackends(SweepQueue(None, sys.argv[1]), source="unused by the demo", demo=True)
try:
    backends.queue_for(RAY_CLUSTER, "ray://127.0.0.1:1")
except BackendChoiceError as error:
    print(error)
    sys.exit(0 if backends.queues() == [backends.local] else 3)
sys.exit(4)
"""


@pytest.mark.slow  # Ray's client gives up on an unreachable ray:// address after its 30 s connection timeout
def test_an_unreachable_ray_address_gives_a_clear_error_in_bounded_time(tmp_path):
    pytest.importorskip("ray")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Cannot reach the Ray cluster at ray://127.0.0.1:1:"), done.stdout
    assert time.monotonic() - started < 90


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray of one CPU slot (one actor), no dashboard; the pool joins it through address "auto"."""
    ray = pytest.importorskip("ray")
    from evaluation.sweep.ray_backend import connect

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    connect(None, num_cpus=1, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def _wait_until_finished(runs_dir, sweep_id):
    deadline = time.monotonic() + SWEEP_DEADLINE_S
    while time.monotonic() < deadline:
        status = SweepFolder(runs_dir, sweep_id).read_status()
        if status is not None and status.state not in (SweepState.QUEUED, SweepState.RUNNING):
            return status
        time.sleep(0.2)
    pytest.fail(f"sweep {sweep_id} did not finish in {SWEEP_DEADLINE_S:g} s")


@pytest.mark.slow  # starting Ray and an actor that loads the demo model takes seconds
def test_a_sweep_started_on_ray_completes_with_the_local_predictions(ray_instance, backends, tiny_model, tmp_path):
    data = tmp_path / "data"
    write_sweep_data(data)
    spec = SweepSpec.from_dict(spec_dict(data, prompts=["common"], alphas=[0.0, 1.0], limit=3, max_new_tokens=4))
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        run_sweep(engine, spec, tmp_path / "local")
    finally:
        engine.stop()

    queue = backends.queue_for(RAY_CLUSTER, "auto")
    assert queue is not backends.local and queue.runs_dir == backends.local.runs_dir
    sweep_id = queue.submit(spec)
    status = _wait_until_finished(backends.local.runs_dir, sweep_id)

    assert status.state is SweepState.COMPLETE and (status.total, status.done, status.failed) == (6, 6, 0)
    on_ray = SweepFolder(backends.local.runs_dir, sweep_id).results.read()
    assert item_predictions(on_ray) == item_predictions(SweepFolder(tmp_path / "local", sweep_id).results.read())
    assert backends.queue_for(RAY_CLUSTER, " auto ") is queue  # the pool is started once, then reused
    assert backends.queues() == [backends.local, queue]
    with pytest.raises(BackendChoiceError, match="already runs sweeps on the Ray cluster at auto"):
        backends.queue_for(RAY_CLUSTER, "ray://elsewhere:10001")
