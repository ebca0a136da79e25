"""The Sweeps tab's form and view logic without a browser: alpha grids, kept uploads, the sweeps table, imports,
and the service between the tab and evaluation."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evaluation.backend_choice import SweepBackends
from evaluation.reference import MappingError
from evaluation.sweep import DataSource, SweepQueue, SweepState, SweepStatus
from evaluation.sweep_forms import SweepForm, SweepFormError, check_spec_data, spec_from_form
from evaluation.sweep_uploads import IMPORT_PREFIX, UPLOADS_DIR, UploadError, import_paper_uploads, persist_uploads
from naturelm_core.alphas import AlphaError
from tests.sweep_helpers import WATKINS_LABELS, write_sweep_data
from ui.sweeps_service import RunsSnapshot, SweepsService, SweepsUnavailable, read_snapshot
from ui.tables import sweeps_table
from ui.text import format_duration, view_choices

BASE_FORM = {"name": "s", "source": "beans-zero", "subsets": ["watkins"], "presets": ["common"]}


def _form_alphas(text: str, runs_dir: Path) -> tuple[float, ...]:
    """The alpha grid the form's alphas field gives (naturelm_core.alphas' grammar)."""
    return spec_from_form(SweepForm(**BASE_FORM, alphas=text), runs_dir).alphas


def test_alpha_text_takes_values_and_inclusive_ranges_without_float_noise(tmp_path):
    assert _form_alphas("0:1:0.1", tmp_path) == tuple(i / 10 for i in range(11))
    assert _form_alphas("0, 0.3:0.5:0.1; 1, 0.4", tmp_path) == (0.0, 0.3, 0.4, 0.5, 1.0)
    assert 0.3 in _form_alphas("0:1:0.1", tmp_path)  # not 0.30000000000000004


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("a", "not a number"), ("0:1", "start:stop:step"), ("1:0:0.1", "start <= stop"), ("nan", "finite")],
)
def test_bad_alpha_text_names_the_problem(text, message, tmp_path):
    with pytest.raises(AlphaError, match=message):
        _form_alphas(text, tmp_path)


def test_alpha_grids_too_fine_to_sweep_are_refused(tmp_path):
    with pytest.raises(AlphaError, match="more than the 101"):
        _form_alphas("0:1:0.001", tmp_path)


def test_uploads_are_kept_by_content_so_the_same_upload_resumes_the_same_sweep(tmp_path):
    first, second = tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_bytes(b"one")
    second.write_bytes(b"one")
    csv = tmp_path / "labels upload.csv"
    csv.write_text("file,label\nx.wav,Robin\n")
    root = tmp_path / "runs"
    kept = persist_uploads([str(first), str(csv)], root / UPLOADS_DIR, rename={str(csv): "labels.csv"})
    assert sorted(p.name for p in kept.iterdir()) == ["labels.csv", "x.wav"]
    assert persist_uploads([str(second), str(csv)], root / UPLOADS_DIR, rename={str(csv): "labels.csv"}) == kept
    second.write_bytes(b"two")
    assert persist_uploads([str(second), str(csv)], root / UPLOADS_DIR, rename={str(csv): "labels.csv"}) != kept
    with pytest.raises(UploadError, match="share the name"):
        persist_uploads([str(first), str(second)], root / UPLOADS_DIR)

    def form() -> SweepForm:
        return SweepForm(
            name="garden",
            source=DataSource.RECORDINGS.value,
            labels_csv=str(csv),
            recordings=[str(first)],
            recordings_name="My Garden!",
            presets=["common"],
            alphas="0, 1",
        )

    spec = spec_from_form(form(), root)
    assert spec.source is DataSource.RECORDINGS and spec.subsets == ("my-garden",)
    assert spec.labels_csv == str(kept / "labels.csv")
    assert spec_from_form(form(), root).sweep_id == spec.sweep_id


def test_number_fields_zero_means_no_limit_and_fractions_are_refused(tmp_path):
    base = BASE_FORM
    spec = spec_from_form(SweepForm(**base, limit=0, top_k_classes=None), tmp_path)
    assert (spec.limit, spec.top_k_classes) == (None, None)
    assert spec_from_form(SweepForm(**base, limit=25, top_k_classes=5), tmp_path).limit == 25
    with pytest.raises(SweepFormError, match="sample limit"):
        spec_from_form(SweepForm(**base, limit=2.5), tmp_path)
    with pytest.raises(SweepFormError, match="beams"):
        spec_from_form(SweepForm(**base, num_beams=0), tmp_path)
    custom = spec_from_form(SweepForm(**{**base, "presets": []}, custom_prompts="Who sings?\n\nName it."), tmp_path)
    assert [(p.name, p.template) for p in custom.prompts] == [("custom-1", "Who sings?"), ("custom-2", "Name it.")]


def test_the_sweeps_table_shows_rate_and_eta_only_while_a_sweep_runs():
    running = SweepStatus("a-1", "a", SweepState.RUNNING, total=40, done=10, rate_per_s=2.5, eta_s=12.0)
    stopped = SweepStatus("b-2", "b", SweepState.CANCELLED, total=40, done=10, rate_per_s=2.5, eta_s=12.0)
    table = sweeps_table([running, stopped])
    assert table[["state", "done", "total", "progress", "rate", "ETA"]].values.tolist() == [
        ["running", 10, 40, "25%", "2.50/s", "0:12"],
        ["cancelled", 10, 40, "25%", "-", "-"],
    ]
    assert [format_duration(s) for s in (None, 59.6, 3725)] == ["-", "1:00", "1:02:05"]


def test_an_import_keeps_only_paper_files_and_zip_members_cannot_escape(tmp_path):
    record = {"prediction": "Robin", "label": "Robin", "id": "s1", "dataset_name": "garden", "lora_scale": 0.5}
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../../beans_zero_eval_garden_query0_lora050.jsonl", json.dumps(record) + "\n")
        bundle.writestr("notes/readme.txt", "not a result")
    runs = tmp_path / "runs"
    key = import_paper_uploads([str(archive)], runs, "Field Test")
    folder = runs / "_imports" / key.removeprefix(IMPORT_PREFIX)
    assert key.startswith(IMPORT_PREFIX + "field-test-")
    assert [p.name for p in folder.iterdir()] == ["beans_zero_eval_garden_query0_lora050.jsonl"]
    assert not (tmp_path / "beans_zero_eval_garden_query0_lora050.jsonl").exists()
    assert (f"imported · {folder.name}", key) in view_choices(read_snapshot(runs))
    with pytest.raises(UploadError, match="none of the uploads"):
        notes = tmp_path / "notes.txt"
        notes.write_text("hello")
        import_paper_uploads([str(notes)], runs)


def test_start_checks_the_data_and_the_mapping_before_queueing(tmp_path):
    data = tmp_path / "data"
    write_sweep_data(data)
    mapping = tmp_path / "names.jsonl"
    mapping.write_text(
        "".join(json.dumps({"label": lab, "scientific_name": f"Sci {lab}"}) + "\n" for lab in WATKINS_LABELS)
    )
    form = SweepForm(
        name="checked",
        source="parquet",
        subsets=["watkins"],
        local_path=str(data),
        presets=["common", "scientific"],
        alphas="0, 0.5, 1",
        limit=5,
        mapping_file=str(mapping),
    )
    spec = spec_from_form(form, tmp_path / "runs")
    assert check_spec_data(spec) == 5 * 2 * 3
    assert spec.label_mapping().scientific_name(WATKINS_LABELS[0]) == f"Sci {WATKINS_LABELS[0]}"
    assert Path(spec.mapping_file).parent.parent == tmp_path / "runs" / UPLOADS_DIR  # kept beyond Gradio's cache

    mapping.write_text('{"label": "only a label"}\n')
    broken = spec_from_form(form, tmp_path / "runs")
    with pytest.raises(MappingError, match="scientific_name"):
        check_spec_data(broken)


def test_a_labels_csv_naming_recordings_that_were_not_uploaded_is_refused(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\na.wav,Robin\nb.wav,Wren\n")
    form = SweepForm(
        name="r", source="recordings", labels_csv=str(csv), recordings=[str(tmp_path / "a.wav")], presets=["common"]
    )
    with pytest.raises(SweepFormError, match=r"not uploaded: \['b.wav'\]"):
        check_spec_data(spec_from_form(form, tmp_path / "runs"))


def test_on_zero_gpu_the_sweeps_service_refuses_every_start_before_touching_the_runs_folder(tmp_path):
    runs = tmp_path / "runs"
    service = SweepsService(SweepBackends(SweepQueue(None, runs), source="tiny"), zero_gpu=True)
    form = SweepForm(**BASE_FORM)
    for start in (
        lambda: service.start(form),
        lambda: service.run_preset("closed-set-2", form),
        lambda: service.run_fork_config("config.yml", form),
        lambda: service.resume("a-sweep"),
    ):
        with pytest.raises(SweepsUnavailable, match="dedicated GPU"):
            start()
    assert not runs.exists()


def test_a_fresh_page_shows_the_running_sweep_else_the_newest():
    newest = SweepStatus("new-1", "new", SweepState.COMPLETE, created_at=3.0)
    running = SweepStatus("run-2", "run", SweepState.RUNNING, created_at=2.0)
    older = SweepStatus("old-3", "old", SweepState.CANCELLED, created_at=1.0)
    assert RunsSnapshot((newest, running, older), ()).default_selection() == "run-2"
    assert RunsSnapshot((newest, older), ()).default_selection() == "new-1"
    assert RunsSnapshot((), ("imported-1",)).default_selection() is None
