"""Each run of a sweep records its model, numerics, device, versions and commit (provenance.jsonl); a resume with
other numerics completes but says what changed; exports carry the records and an import keeps them; no token."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from evaluation.sweep import SweepFolder, SweepSpec, SweepState, run_sweep
from evaluation.sweep.durable import ResultsCorruptError
from evaluation.sweep.provenance import PROVENANCE_FILE, git_commit, read_runs
from evaluation.sweep_uploads import import_paper_uploads
from evaluation.sweep_views import SweepViews, export_view
from naturelm_core.engine import Engine
from tests.sweep_helpers import ToneBackend, spec_dict, write_sweep_data
from ui.text import provenance_html

ROOT = Path(__file__).resolve().parents[1]
STOP_AFTER = 12  # items: the first run is cancelled part-way, so the second is a real resume


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(folder)
    return folder


def _run(model, spec, runs_dir, stop_after=None):
    """One run of `spec` on a fresh engine over `model`; with `stop_after`, cancelled once that many are done."""
    cancel = threading.Event()

    def on_progress(status):
        if stop_after is not None and status.done >= stop_after:
            cancel.set()

    engine = Engine(model, max_batch_rows=8).start()
    try:
        return run_sweep(engine, spec, runs_dir, cancel=cancel, on_progress=on_progress)
    finally:
        engine.stop()


def _small_spec(data_dir):
    return SweepSpec.from_dict(spec_dict(data_dir, prompts=["common"], alphas=[0.0, 1.0]))  # 24 items


def test_a_run_and_its_resume_each_append_a_record_of_the_tiny_models_numerics(
    tiny_model, tiny_checkpoint, data_dir, tmp_path
):
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    first = _run(tiny_model, spec, tmp_path, stop_after=STOP_AFTER)
    folder = SweepFolder(tmp_path, spec.sweep_id)
    assert first.state is SweepState.CANCELLED and len(read_runs(folder.path)) == 1

    resumed = _run(tiny_model, spec, tmp_path)

    assert resumed.state is SweepState.COMPLETE and resumed.message == ""  # same numerics: nothing to say
    runs = read_runs(folder.path)
    assert len(runs) == 2
    for run in runs:
        assert run["backend"] == "local engine"
        assert (run["llm_dtype"], run["audio_precision"], run["device"]) == ("float32", "float32", "cpu")
        assert run["model_source"] == str(tiny_checkpoint) and run["demo"] is False
        assert run["versions"]["torch"] == str(torch.__version__)
        assert set(run["versions"]) == {"python", "torch", "transformers", "peft"}
    assert [run["rows_at_start"] for run in runs] == [0, first.done]
    assert runs[0]["started_at"] <= runs[1]["started_at"]
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert runs[0]["git_commit"] == head.stdout.strip()


def test_a_resume_with_another_audio_precision_completes_and_says_what_changed(tiny_model, data_dir, tmp_path, caplog):
    spec = SweepSpec.from_dict(spec_dict(data_dir))
    _run(tiny_model, spec, tmp_path, stop_after=STOP_AFTER)
    tiny_model.audio_precision = "bfloat16"  # the shared tiny model: restored below, whatever happens
    try:
        with caplog.at_level(logging.WARNING, logger="evaluation.sweep.runner"):
            resumed = _run(tiny_model, spec, tmp_path)
    finally:
        tiny_model.audio_precision = None

    assert resumed.state is SweepState.COMPLETE and resumed.done == resumed.total
    expected = "resumed with audio precision bfloat16; rows before were audio precision float32"
    assert expected in resumed.message
    assert SweepFolder(tmp_path, spec.sweep_id).read_status().message == resumed.message  # what the tab shows
    assert any(expected in record.getMessage() for record in caplog.records)
    runs = read_runs(tmp_path / spec.sweep_id)
    assert [run["audio_precision"] for run in runs] == ["float32", "bfloat16"]
    line = provenance_html(runs)  # the Sweeps tab's line under the selected sweep
    assert "First run: LLM float32, audio encoder float32, cpu" in line
    assert "Runs differ: audio precision float32 → bfloat16" in line
    assert "Runs differ" not in provenance_html(runs[:1])


def test_json_and_paper_exports_carry_the_records_and_an_import_keeps_them(tiny_model, data_dir, tmp_path):
    spec = _small_spec(data_dir)
    runs_dir = tmp_path / "runs"
    _run(tiny_model, spec, runs_dir)
    runs = read_runs(runs_dir / spec.sweep_id)
    assert len(runs) == 1
    view = SweepViews(runs_dir).load(spec.sweep_id)
    assert list(view.provenance) == runs

    document = json.loads(export_view(view, "json", tmp_path).read_text())
    assert document["provenance"] == runs
    archive = export_view(view, "paper", tmp_path)
    with zipfile.ZipFile(archive) as bundle:
        member = f"{view.short_key}/{PROVENANCE_FILE}"
        assert [json.loads(line) for line in bundle.read(member).decode().splitlines()] == runs

    key = import_paper_uploads([str(archive)], runs_dir, "exported")
    imported = SweepViews(runs_dir).load(key)
    assert list(imported.provenance) == runs and len(imported.rows) == len(view.rows)
    assert "First run: LLM float32" in provenance_html(imported.provenance)


def test_no_token_reaches_the_records_even_when_set(tiny_model, data_dir, tmp_path, monkeypatch):
    token = "hf_FAKEtokenNEVERwritten0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", token)
    spec = _small_spec(data_dir)
    _run(tiny_model, spec, tmp_path)
    text = (tmp_path / spec.sweep_id / PROVENANCE_FILE).read_text()
    assert json.loads(text)["llm_dtype"] == "float32"  # the file was written
    assert token not in text and "HF_TOKEN" not in text


def test_a_backend_without_provenance_and_a_machine_without_git_still_record_what_they_can(
    data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # `git` cannot be found
    spec = _small_spec(data_dir)
    status = run_sweep(ToneBackend(), spec, tmp_path)
    assert status.state is SweepState.COMPLETE and status.message == ""
    (run,) = read_runs(tmp_path / spec.sweep_id)
    assert run["backend"] == "ToneBackend" and run["git_commit"] is None
    assert run["rows_at_start"] == 0 and run["versions"]["python"]
    assert "llm_dtype" not in run
    assert git_commit(tmp_path) is None  # not a checkout: never the commit of a repository around it


def test_a_damaged_record_file_stops_the_resume_with_its_name_and_loses_no_row(tiny_model, data_dir, tmp_path):
    spec = _small_spec(data_dir)
    first = _run(tiny_model, spec, tmp_path, stop_after=STOP_AFTER)
    folder = SweepFolder(tmp_path, spec.sweep_id)
    rows_before = folder.results.path.read_bytes()
    records = folder.path / PROVENANCE_FILE
    records.write_text('{"not json\n' + records.read_text())  # a damaged line before a whole one
    with pytest.raises(ResultsCorruptError, match="run records"):
        _run(tiny_model, spec, tmp_path)
    assert folder.results.path.read_bytes() == rows_before and first.done >= STOP_AFTER
    assert "run records" in folder.read_status().message
