"""Sweeps written before evaluation.sweep became a package load, show and resume: spec.json, results.jsonl and
status.json below are what the code of commit ff63e15 wrote for a 24-item sweep killed after its first group."""

from __future__ import annotations

import json

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from evaluation.datasets import SAMPLE_COLUMNS, cached_subset_path, open_local_source
from evaluation.sweep import (
    SweepFolder,
    SweepSpec,
    SweepState,
    list_sweeps,
    load_results,
    load_spec,
    run_sweep,
    score_sweep,
)
from naturelm_core.engine import Engine
from tests.sweep_helpers import item_predictions, write_sweep_data

OLD_ID = "old-watkins-v1-058086906b"
# As the old code wrote it (json.dumps(indent=1)); the alphas 0 and 1 are ints, as a hand-written spec has them.
OLD_SPEC = """\
{
 "name": "Old watkins (v1)",
 "source": "beans-zero",
 "path": null,
 "labels_csv": null,
 "subsets": [
  "watkins"
 ],
 "limit": 4,
 "top_k_classes": null,
 "prompts": [
  {
   "name": "common",
   "template": "What is the common name for the focal species in the audio?"
  },
  {
   "name": "who",
   "template": "Which animal is this?"
  }
 ],
 "alphas": [
  0,
  0.5,
  1
 ],
 "seed": 0,
 "num_beams": 1,
 "max_new_tokens": 6,
 "window_s": null,
 "scoring_mode": "official",
 "mapping_file": null
}
"""
# The first sample's 6 rows (the tiny random model's answers), one group fsynced before the kill.
OLD_RESULTS = r"""
{"id": "f7c1bd87-4da5-4709-9471-3d60c8a70639", "dataset": "watkins", "prompt_name": "common", "prompt": "What is the common name for the focal species in the audio?", "alpha": 0.0, "prediction": "oll/dy_dyhor", "label": "Whale species 01", "latency_s": 0.0339, "written_at": 1796554893.041}
{"id": "f7c1bd87-4da5-4709-9471-3d60c8a70639", "dataset": "watkins", "prompt_name": "common", "prompt": "What is the common name for the focal species in the audio?", "alpha": 0.5, "prediction": "\ufffdaeifesioMos", "label": "Whale species 01", "latency_s": 0.0339, "written_at": 1796554893.041}
{"id": "f7c1bd87-4da5-4709-9471-3d60c8a70639", "dataset": "watkins", "prompt_name": "common", "prompt": "What is the common name for the focal species in the audio?", "alpha": 1.0, "prediction": "ifif\u0001as\ufffdo", "label": "Whale species 01", "latency_s": 0.0339, "written_at": 1796554893.041}
{"id": "f7c1bd87-4da5-4709-9471-3d60c8a70639", "dataset": "watkins", "prompt_name": "who", "prompt": "Which animal is this?", "alpha": 0.0, "prediction": "\ufffdlse\ufffdif$eep", "label": "Whale species 01", "latency_s": 0.0339, "written_at": 1796554893.041}
{"id": "f7c1bd87-4da5-4709-9471-3d60c8a70639", "dataset": "watkins", "prompt_name": "who", "prompt": "Which animal is this?", "alpha": 0.5, "prediction": "\ufffdesafif pird", "label": "Whale species 01", "latency_s": 0.0339, "written_at": 1796554893.041}
{"id": "f7c1bd87-4da5-4709-9471-3d60c8a70639", "dataset": "watkins", "prompt_name": "who", "prompt": "Which animal is this?", "alpha": 1.0, "prediction": "\u0018swtesll audio\ufffd", "label": "Whale species 01", "latency_s": 0.0339, "written_at": 1796554893.041}
"""  # noqa: E501
OLD_STATUS = {
    "sweep_id": OLD_ID,
    "name": "Old watkins (v1)",
    "state": "running",
    "total": 24,
    "done": 6,
    "failed": 0,
    "skipped_samples": 0,
    "rate_per_s": 183.7686044558685,
    "eta_s": 0.0979,
    "created_at": 1796554892.947409,
    "started_at": 1796554892.9548924,
    "updated_at": 1796554893.041,
    "finished_at": None,
    "message": "",
    "pid": 6615,
}


@pytest.fixture
def old_runs(tmp_path, monkeypatch):
    """The old sweep's folder, and its BEANS-Zero subset in the cache (the spec names no path, so its id is fixed)."""
    monkeypatch.setenv("BEANS_ZERO_CACHE", str(tmp_path / "cache"))
    write_sweep_data(tmp_path / "data")
    watkins = pads.field("dataset_name") == "watkins"
    table = open_local_source(tmp_path / "data").to_table(filter=watkins, columns=list(SAMPLE_COLUMNS))
    cached_subset_path("watkins").parent.mkdir(parents=True)
    pq.write_table(table, cached_subset_path("watkins"))
    folder = tmp_path / "runs" / OLD_ID
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(OLD_SPEC, encoding="utf-8")
    (folder / "results.jsonl").write_text(OLD_RESULTS, encoding="utf-8")
    (folder / "status.json").write_text(json.dumps(OLD_STATUS, indent=1) + "\n", encoding="utf-8")
    return tmp_path / "runs"


def test_an_old_sweep_is_listed_and_its_spec_rows_and_scores_read_as_written(old_runs):
    (status,) = list_sweeps(old_runs)
    assert (status.sweep_id, status.state, status.done, status.total) == (OLD_ID, SweepState.INTERRUPTED, 6, 24)
    spec = load_spec(old_runs, OLD_ID)
    assert spec.sweep_id == OLD_ID  # same id, so Resume finds the same folder
    assert spec.alphas == (0, 0.5, 1) and spec.to_dict() == json.loads(OLD_SPEC)
    rows = load_results(old_runs, OLD_ID)
    assert len(rows) == 6 and {row.alpha for row in rows} == {0.0, 0.5, 1.0}
    assert {row.label for row in rows} == {"Whale species 01"}
    scores = score_sweep(old_runs, OLD_ID)
    assert {(group.prompt_name, group.alpha) for group in scores} == {
        (prompt, alpha) for prompt in ("common", "who") for alpha in (0.0, 0.5, 1.0)
    }
    assert {group.mode.value for group in scores} == {"official"} and all(group.metrics.n == 1 for group in scores)


def test_an_old_sweep_resumes_to_complete_keeping_its_rows_and_files(old_runs, tiny_model):
    folder = SweepFolder(old_runs, OLD_ID)
    spec = SweepSpec.from_json_file(folder.spec_path)
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        status = run_sweep(engine, spec, old_runs)
    finally:
        engine.stop()
    assert status.state is SweepState.COMPLETE and (status.total, status.done, status.failed) == (24, 24, 0)
    assert engine.stats.rows_generated == 18  # the 6 old rows are not asked again
    assert folder.results_path.read_text(encoding="utf-8").startswith(OLD_RESULTS)
    assert len(item_predictions(folder.results.read())) == 24  # every item once
    assert folder.spec_path.read_text(encoding="utf-8") == OLD_SPEC  # not rewritten: the same spec
    assert folder.read_status().created_at == OLD_STATUS["created_at"]
