"""The headless runner: `python -m evaluation.sweep`, killed with SIGKILL mid-sweep and restarted, loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.sweep import SweepFolder, SweepSpec, SweepState, run_sweep
from evaluation.sweep.cli import EXIT_BAD_INPUT, EXIT_COMPLETE, main
from naturelm_core.engine import Engine
from tests.sweep_helpers import item_predictions, spec_dict, write_sweep_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(folder)
    return folder


def _write_spec(folder: Path, data_dir: Path, **overrides) -> Path:
    path = folder / f"{overrides.get('name', 'spec')}.json"
    path.write_text(json.dumps(spec_dict(data_dir, **overrides)))
    return path


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_kill_9_mid_sweep_then_restart_gives_every_item_once_and_matches_an_uninterrupted_run(
    tiny_checkpoint, tiny_model, data_dir, tmp_path, capsys
):
    # 12 samples x 2 prompts x 6 alphas, 2 rows per batch: long enough to be caught in the middle.
    overrides = {"alphas": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}
    spec_path = _write_spec(tmp_path, data_dir, **overrides)
    spec = SweepSpec.from_json_file(spec_path)
    runs_dir = tmp_path / "runs"
    results = SweepFolder(runs_dir, spec.sweep_id).results_path
    command = [sys.executable, "-m", "evaluation.sweep", str(spec_path), "--runs-dir", str(runs_dir)]
    command += ["--model", str(tiny_checkpoint), "--device", "cpu", "--max-batch-rows", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while _lines(results) < 12 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, output
    killed_at = _lines(results)
    assert 12 <= killed_at < 144, "the sweep should have been killed in the middle"
    status = SweepFolder(runs_dir, spec.sweep_id).read_status()
    assert status.state is SweepState.RUNNING  # as the killed process left it

    capsys.readouterr()
    code = main([str(spec_path), "--runs-dir", str(runs_dir), "--model", str(tiny_checkpoint), "--device", "cpu"])
    progress = capsys.readouterr()
    assert code == EXIT_COMPLETE, progress.err
    assert "144/144" in progress.err  # tqdm's bar reached the end
    assert f"{spec.sweep_id}: complete, 144/144 items" in progress.out

    resumed = item_predictions(SweepFolder(runs_dir, spec.sweep_id).results.read())
    assert len(resumed) == 144

    reference_dir = tmp_path / "uninterrupted"
    engine = Engine(tiny_model).start()
    try:
        run_sweep(engine, spec, reference_dir)
    finally:
        engine.stop()
    assert resumed == item_predictions(SweepFolder(reference_dir, spec.sweep_id).results.read())


def test_bad_spec_exits_2_with_one_line_before_loading_any_model(tmp_path, data_dir, capsys):
    bad = _write_spec(tmp_path, data_dir, alphas=[0.0, 3.0])
    assert main([str(bad), "--model", str(tmp_path / "no-model-here")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "must lie in [0, 1]" in err and err.count("\n") == 1
    missing_data = _write_spec(tmp_path, tmp_path / "no-data", name="nodata")
    assert main([str(missing_data)]) == EXIT_BAD_INPUT
    assert "no-data" in capsys.readouterr().err


def test_several_specs_run_one_after_another_on_the_demo_model(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("NATURELM_DEMO_DIR", str(tmp_path / "demo-model"))
    first = _write_spec(tmp_path, data_dir, name="first", limit=2)
    second = _write_spec(tmp_path, data_dir, name="second", limit=3, alphas=[0.5])
    runs_dir = tmp_path / "runs"
    assert main([str(first), str(second), "--runs-dir", str(runs_dir), "--demo"]) == EXIT_COMPLETE
    out = capsys.readouterr()
    assert "--demo runs the tiny random model" in out.err
    for path, items in ((first, 12), (second, 6)):
        spec = SweepSpec.from_json_file(path)
        assert f"{spec.sweep_id}: complete, {items}/{items} items" in out.out
        assert len(SweepFolder(runs_dir, spec.sweep_id).results.read()) == items
