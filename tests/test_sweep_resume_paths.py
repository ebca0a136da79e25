"""A sweep made from uploaded recordings resumes under its own id from the app, the CLI and any working folder.

The app used to store `runs/_uploads/<hash>` relative to its working folder; Resume read it relative to the
sweep's folder, failed with "... is not a folder", and queued a sweep with a new id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.sweep_decoding import write_recordings
from evaluation.sweep import SweepFolder, SweepQueue, SweepSpec, SweepState, load_spec
from evaluation.sweep.cli import main as sweep_cli
from naturelm_core.engine import Engine

SWEEP_ID = "uploaded-recordings-0123456789"


@pytest.fixture
def app_folder(tmp_path, monkeypatch):
    """The app's working folder with `runs/`, an upload, and a half-begun sweep whose spec.json has the old paths."""
    app = tmp_path / "app"
    uploads = write_recordings(app / "runs" / "_uploads" / "abc", 3, 2.0, "wav")
    assert uploads.is_dir()
    folder = app / "runs" / SWEEP_ID
    folder.mkdir(parents=True)
    spec = {
        "name": "uploaded recordings",
        "source": "recordings",
        "path": "runs/_uploads/abc",
        "labels_csv": "runs/_uploads/abc/labels.csv",
        "subsets": ["mine"],
        "prompts": ["common"],
        "alphas": [0.0, 1.0],
        "num_beams": 1,
        "max_new_tokens": 3,
        "scoring_mode": "official",
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    (folder / "status.json").write_text(json.dumps({"sweep_id": SWEEP_ID, "name": spec["name"], "state": "cancelled"}))
    monkeypatch.chdir(app)
    return app


def test_resume_from_the_app_keeps_the_id_and_finds_the_uploads(app_folder, tiny_model):
    engine = Engine(tiny_model, max_batch_rows=8).start()
    queue = SweepQueue(engine, "runs")
    try:
        assert queue.resume(SWEEP_ID) == SWEEP_ID
        assert queue.join(timeout=120)
    finally:
        queue.close()
        engine.stop()
    folder = SweepFolder(app_folder / "runs", SWEEP_ID)
    assert folder.read_status().state is SweepState.COMPLETE
    assert len(folder.results.read()) == 6
    assert Path(json.loads(folder.spec_path.read_text())["path"]).is_absolute()  # rewritten absolute
    assert sorted(p.name for p in (app_folder / "runs").iterdir()) == ["_uploads", SWEEP_ID]  # no new sweep


def test_the_headless_command_resumes_it_from_another_folder(app_folder, tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.chdir(tmp_path)
    spec_file = app_folder / "runs" / SWEEP_ID / "spec.json"
    assert sweep_cli([str(spec_file), "--model", str(tiny_checkpoint), "--device", "cpu"]) == 0
    assert len(SweepFolder(app_folder / "runs", SWEEP_ID).results.read()) == 6
    assert not (tmp_path / "runs").exists()  # resumed in the sweep's own folder, not a new one here


def test_new_specs_store_absolute_paths_whatever_the_working_folder(app_folder):
    spec = SweepSpec.from_dict(json.loads((app_folder / "runs" / SWEEP_ID / "spec.json").read_text()))
    assert Path(spec.path).is_absolute() and Path(spec.labels_csv).is_file()
    direct = SweepSpec(
        name="x", subsets=("mine",), prompts=spec.prompts, alphas=(1.0,), source=spec.source, path="runs"
    )
    assert direct.path == str((app_folder / "runs").resolve())
    assert load_spec(app_folder / "runs", SWEEP_ID).sweep_id == SWEEP_ID
