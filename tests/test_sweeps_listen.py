"""Listening to a swept sample (issue 17 b) and choosing recordings on the server within --data-root (c)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.sweep_decoding import write_recordings
from evaluation.datasets import load_subset
from evaluation.server_data import DATA_ROOT_OFF, DataRoot, DataRootError
from evaluation.sweep import DataSource, SweepSpec
from evaluation.sweep_audio import SampleAudioError, sample_audio
from evaluation.sweep_forms import SweepForm
from evaluation.sweep_uploads import IMPORT_PREFIX
from naturelm_core.audio import load_audio
from tests.sweep_helpers import RecordingQueue, spec_dict, write_sweep_data
from ui.sweeps_listen import listen_to, row_sample
from ui.sweeps_service import SweepsService


def _service(runs_dir: Path, data_root: Path | None = None) -> tuple[SweepsService, RecordingQueue]:
    queue = RecordingQueue()
    backends = SimpleNamespace(local=SimpleNamespace(runs_dir=runs_dir), queue_for=lambda *_: queue)
    return SweepsService(backends, data_root=DataRoot(data_root)), queue


def _recordings_spec(folder: Path) -> SweepSpec:
    return SweepSpec.from_dict(
        {
            "name": "garden",
            "source": "recordings",
            "path": str(folder),
            "labels_csv": str(folder / "labels.csv"),
            "subsets": ["garden"],
            "prompts": ["common"],
            "alphas": [0.0, 1.0],
        }
    )


def _saved(runs_dir: Path, spec: SweepSpec) -> str:
    folder = runs_dir / spec.sweep_id
    folder.mkdir(parents=True)
    spec.to_json_file(folder / "spec.json")
    return spec.sweep_id


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    return write_recordings(tmp_path / "garden", count=3, seconds=1.0, extension="wav")


def test_a_recordings_sample_is_its_own_file_decoded_as_the_model_hears_it(recordings):
    spec = _recordings_spec(recordings)
    for name in ("recording-0000.wav", "recording-0002.wav"):
        heard = sample_audio(spec, "garden", name)
        expected, _ = load_audio(str(recordings / name))
        np.testing.assert_array_equal(heard.waveform, expected)
        assert heard.sample_rate == 16_000 and heard.source == str(recordings / name)
    other = sample_audio(spec, "garden", "recording-0001.wav").waveform
    assert not np.allclose(other, sample_audio(spec, "garden", "recording-0000.wav").waveform)


@pytest.mark.parametrize(
    ("sample_id", "words"),
    [("gone.wav", "no longer in"), ("../labels-elsewhere.wav", "inside"), ("../../etc/passwd", "inside")],
)
def test_a_missing_or_escaping_recording_is_refused_with_a_reason(recordings, sample_id, words):
    with pytest.raises(SampleAudioError, match=words):
        sample_audio(_recordings_spec(recordings), "garden", sample_id)


def test_a_parquet_sample_is_read_from_its_row(tmp_path):
    write_sweep_data(tmp_path)
    spec = SweepSpec.from_dict(spec_dict(tmp_path))
    subset = load_subset("watkins", tmp_path)
    samples = {sample.id: sample for sample in subset}
    for sample_id in list(samples)[:3]:
        heard = sample_audio(spec, "watkins", sample_id)
        expected, _ = load_audio(samples[sample_id].audio, samples[sample_id].sample_rate)
        np.testing.assert_array_equal(heard.waveform, expected)
    with pytest.raises(SampleAudioError, match="no sample 'nope'"):
        sample_audio(spec, "watkins", "nope")
    with pytest.raises(SampleAudioError, match="no data set"):
        sample_audio(spec, "esc50", next(iter(samples)))


def test_selecting_an_answers_row_plays_that_recording_and_draws_its_spectrogram(tmp_path, recordings):
    runs = tmp_path / "runs"
    service, _ = _service(runs)
    key = _saved(runs, _recordings_spec(recordings))
    columns = ["dataset", "id", "prompt", "label", "n_correct", "n_alphas", "α=0"]
    dataset, sample_id = row_sample(columns, ["garden", "recording-0001.wav", "common", "tone", 0, 2, "✗ x"])
    audio, figure, message = listen_to(service, key, dataset, sample_id)
    rate, waveform = audio
    np.testing.assert_array_equal(waveform, load_audio(str(recordings / "recording-0001.wav"))[0])
    assert rate == 16_000 and figure.data[0].type == "heatmap" and "recording-0001.wav" in message

    (recordings / "recording-0002.wav").unlink()
    audio, figure, message = listen_to(service, key, "garden", "recording-0002.wav")
    assert audio is None and figure is None and "no longer in" in message and "Traceback" not in message
    assert "imported folder" in listen_to(service, f"{IMPORT_PREFIX}paper", "garden", "x")[2]
    with pytest.raises(SampleAudioError, match="Select a row"):
        row_sample(columns, None)


def _form() -> SweepForm:
    return SweepForm(name="server garden", presets=("common",), alphas="0, 1", limit=0)


def test_a_folder_inside_the_data_root_starts_the_headless_recordings_spec(tmp_path, recordings):
    service, queue = _service(tmp_path / "runs", data_root=tmp_path)
    assert service.data_root.choices() == ["garden/labels.csv"]
    queued = service.start_server_folder(_form(), "garden/labels.csv")
    spec = queue.specs[-1]
    assert queued.sweep_id == spec.sweep_id and queued.items == 3 * 2
    assert spec.source is DataSource.RECORDINGS and spec.subsets == ("garden",)
    assert spec.path == str(recordings.resolve()) and Path(spec.path).is_absolute()
    assert spec.labels_csv == str(recordings.resolve() / "labels.csv")
    headless = _recordings_spec(recordings)
    assert {k: spec.to_dict()[k] for k in ("source", "path", "labels_csv")} == {
        k: headless.to_dict()[k] for k in ("source", "path", "labels_csv")
    }
    service.start_server_folder(_form(), "garden")  # the folder itself means its labels.csv
    assert queue.specs[-1].sweep_id == spec.sweep_id


def test_paths_outside_the_data_root_are_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_recordings(outside, count=2, seconds=1.0, extension="wav")
    write_recordings(root / "inside", count=2, seconds=1.0, extension="wav")
    os.symlink(outside, root / "linked")
    (root / "sneaky").mkdir()
    (root / "sneaky" / "labels.csv").write_text("file,label\n../../outside/recording-0000.wav,tone\n")
    service, queue = _service(tmp_path / "runs", data_root=root)
    assert service.data_root.choices() == ["inside/labels.csv", "sneaky/labels.csv"]
    for choice in (str(outside / "labels.csv"), "../outside/labels.csv", "linked/labels.csv", "linked"):
        with pytest.raises(DataRootError, match="outside the data root"):
            service.start_server_folder(_form(), choice)
    with pytest.raises(DataRootError, match="names files outside the data root"):
        service.start_server_folder(_form(), "sneaky/labels.csv")
    assert queue.specs == []


def test_without_the_flag_the_picker_is_off_and_says_how_to_turn_it_on(tmp_path, recordings):
    service, queue = _service(tmp_path / "runs")
    assert service.data_root.choices() == [] and "--data-root" in DATA_ROOT_OFF
    with pytest.raises(DataRootError, match="--data-root"):
        service.start_server_folder(_form(), str(recordings / "labels.csv"))
    assert queue.specs == []


def test_the_served_app_plays_a_sample_through_its_api(launch_app, recordings):
    """/sweep_sample_audio (what selecting a row runs) answers a gradio_client with the recording and a figure."""
    import soundfile as sf

    app = launch_app()
    key = _saved(app.runs_dir, _recordings_spec(recordings))
    audio, figure, message = app.client().predict(key, "garden", "recording-0001.wav", api_name="/sweep_sample_audio")
    played, rate = sf.read(audio, dtype="float32")
    expected, _ = load_audio(str(recordings / "recording-0001.wav"))
    assert rate == 16_000 and len(played) == len(expected)
    # gradio writes 16-bit audio scaled to full range: compare shapes of the waveforms, not their levels
    np.testing.assert_allclose(played / np.abs(played).max(), expected / np.abs(expected).max(), atol=2e-3)
    assert figure is not None and "recording-0001.wav" in message
    missing = app.client().predict(key, "garden", "gone.wav", api_name="/sweep_sample_audio")
    assert missing[0] is None and "no longer in" in missing[2]
