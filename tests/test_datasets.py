"""BEANS-Zero access on synthetic shards: local parquet, the Hub path through an injected loader, the cache,
save_to_disk folders and a user's folder of recordings; labels, windows, rates and skipped rows."""

from __future__ import annotations

import glob
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from evaluation.datasets import (
    LabelsFileError,
    MissingColumnsError,
    UnknownSubsetError,
    cached_subset_path,
    fetch_label_counts,
    fetch_subset,
    load_recordings,
    load_subset,
)
from evaluation.synthetic import DEFECTS, label_frequency, synthetic_labels, write_synthetic_beans_zero

ROWS = {"watkins": 10, "esc50": 6, "enabirds": 5, "cbi": 4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero_shards")
    manifest = write_synthetic_beans_zero(folder, ROWS, shards=3, seed=1, unreadable={"cbi": 3})
    return folder, manifest


def hub_loader(folder, calls=None):
    """Stands in for datasets.load_dataset on the Hub: the same streaming parquet reader, on local shards."""
    import datasets

    def load(repo, **kwargs):
        if calls is not None:
            calls.append((repo, kwargs))
        files = {"test": sorted(glob.glob(str(folder / "*.parquet")))}
        return datasets.load_dataset("parquet", data_files=files, **kwargs)

    return load


def dominant_frequency(audio, rate):
    spectrum = np.abs(np.fft.rfft(audio))
    return np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()]


def test_round_trip_rows_labels_rates_and_windows(shards):
    folder, manifest = shards
    for name, window in [("watkins", 3.0), ("esc50", 5.0), ("enabirds", 10.0)]:
        subset = load_subset(name, folder)
        expected = {row.id: row for row in manifest if row.dataset == name}
        samples = list(subset)
        assert len(subset) == len(samples) == len(expected)
        assert subset.skipped == []
        assert subset.labels() == sorted({row.label for row in expected.values()})
        for sample in samples:
            row = expected[sample.id]
            assert (sample.dataset, sample.label, sample.sample_rate) == (name, row.label, row.sample_rate)
            assert sample.audio.dtype == np.float32 and len(sample.audio) == row.n_samples
            assert sample.window_s == window
            frequency = label_frequency(synthetic_labels(name).index(row.label))
            assert dominant_frequency(sample.audio, sample.sample_rate) == pytest.approx(frequency, abs=2)
            assert sample.instruction.startswith("What is the common name")
    assert load_subset("enabirds", folder).task == "detection"


def test_unreadable_rows_are_skipped_and_reported_without_aborting(shards, caplog):
    folder, manifest = shards
    subset = load_subset("cbi", folder)
    samples = list(subset)
    bad = {row.id: row.defect for row in manifest if row.dataset == "cbi" and row.defect}
    assert len(bad) == 3 and set(bad.values()) == set(DEFECTS[:3])
    assert {skipped.id for skipped in subset.skipped} == set(bad)
    assert len(samples) == ROWS["cbi"] - 3
    assert all(skipped.reason for skipped in subset.skipped)
    assert sum("skipping row" in message for message in caplog.messages) == 3


def test_labels_counts_and_top_k(shards):
    folder, manifest = shards
    subset = load_subset("watkins", folder)
    expected = Counter(row.label for row in manifest if row.dataset == "watkins")
    counts = subset.label_counts()
    assert counts == dict(expected)
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    top = subset.top_k_classes(2)
    assert top.labels() == list(counts)[:2]
    assert {sample.label for sample in top} == set(list(counts)[:2])
    assert len(top) == sum(list(counts.values())[:2])
    with pytest.raises(ValueError, match="k >= 1"):
        subset.top_k_classes(0)


def test_unknown_subset_errors_name_what_exists(shards):
    folder, _ = shards
    with pytest.raises(UnknownSubsetError, match="esc50"):
        load_subset("humbugdb", folder)
    with pytest.raises(UnknownSubsetError, match="no subset 'not-a-subset'"):
        fetch_subset("not-a-subset", folder / "cache", loader=hub_loader(folder))


def test_missing_columns_are_named(tmp_path):
    table = pa.table({"id": ["a"], "dataset_name": ["watkins"], "output": ["Walrus"], "audio": [[0.0, 0.1]]})
    pq.write_table(table, tmp_path / "shard-0.parquet")
    with pytest.raises(MissingColumnsError, match="metadata"):
        load_subset("watkins", tmp_path)


def test_hub_fetch_streams_one_subset_with_projection_then_works_offline(shards, tmp_path):
    folder, manifest = shards
    calls = []
    load_subset("esc50", cache_dir=tmp_path, loader=hub_loader(folder, calls))
    assert len(calls) == 1
    repo, kwargs = calls[0]
    assert repo == "EarthSpeciesProject/BEANS-Zero"
    assert kwargs["streaming"] is True and kwargs["split"] == "test"
    assert kwargs["filters"] == [("dataset_name", "==", "esc50")]
    assert "audio" in kwargs["columns"] and "source_dataset" not in kwargs["columns"]
    cached = cached_subset_path("esc50", tmp_path)
    assert pq.read_table(cached, columns=["dataset_name"]).column(0).unique().to_pylist() == ["esc50"]

    def offline(*args, **kwargs):
        raise AssertionError("a cached subset must not touch the Hub")

    again = load_subset("esc50", cache_dir=tmp_path, loader=offline)
    assert sorted(s.id for s in again) == sorted(row.id for row in manifest if row.dataset == "esc50")
    assert again.window_s == 5.0


def test_interrupted_fetch_leaves_no_cache(shards, tmp_path):
    folder, _ = shards

    class Broken:
        def with_format(self, _):
            return self

        def iter(self, batch_size):
            yield from hub_loader(folder)("x", split="test", streaming=True, columns=None).with_format("arrow").iter(2)
            raise ConnectionError("network dropped")

    with pytest.raises(ConnectionError):
        fetch_subset("watkins", tmp_path, loader=lambda *a, **k: Broken())
    assert not cached_subset_path("watkins", tmp_path).exists()


def test_label_counts_from_the_hub_read_no_audio(shards):
    folder, manifest = shards
    calls = []
    counts = fetch_label_counts("watkins", loader=hub_loader(folder, calls))
    assert counts == dict(Counter(row.label for row in manifest if row.dataset == "watkins"))
    assert calls[0][1]["columns"] == ["dataset_name", "output"]


def test_save_to_disk_folder(shards, tmp_path):
    import datasets

    folder, manifest = shards
    files = sorted(glob.glob(str(folder / "*.parquet")))
    dataset = datasets.Dataset.from_parquet(files, cache_dir=str(tmp_path / "hf_cache"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    subset = load_subset("watkins", tmp_path / "saved")
    assert sorted(s.id for s in subset) == sorted(row.id for row in manifest if row.dataset == "watkins")
    assert subset.window_s == 3.0


def test_user_folder_of_recordings_with_csv(tmp_path):
    rate = 22_050
    t = np.arange(rate) / rate
    sf.write(tmp_path / "robin.wav", 0.3 * np.sin(2 * np.pi * 440 * t), rate)
    (tmp_path / "calls").mkdir()
    t48 = np.arange(48_000) / 48_000
    sf.write(tmp_path / "calls" / "jay.flac", np.stack([0.2 * np.sin(2 * np.pi * 880 * t48)] * 2, axis=1), 48_000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav file")
    (tmp_path / "labels.csv").write_text(
        "file,label,scientific_label\n"
        "robin.wav,American Robin,Turdus migratorius\n"
        "calls/jay.flac,Blue Jay,Cyanocitta cristata\n"
        "broken.wav,Blue Jay,\n"
        "missing.wav,American Robin,\n"
    )
    subset = load_recordings(tmp_path, name="garden")
    assert subset.labels() == ["American Robin", "Blue Jay"]
    assert subset.label_counts() == {"American Robin": 2, "Blue Jay": 2}
    samples = {sample.id: sample for sample in subset}
    assert set(samples) == {"robin.wav", "calls/jay.flac"}
    assert {skipped.id for skipped in subset.skipped} == {"broken.wav", "missing.wav"}
    robin = samples["robin.wav"]
    assert (robin.dataset, robin.sample_rate, robin.window_s) == ("garden", 16_000, 10.0)
    assert robin.scientific_label == "Turdus migratorius"
    assert dominant_frequency(robin.audio, 16_000) == pytest.approx(440, abs=2)
    assert samples["calls/jay.flac"].audio.ndim == 1


def test_user_csv_errors(tmp_path):
    (tmp_path / "labels.csv").write_text("path,species\na.wav,x\n")
    with pytest.raises(MissingColumnsError, match="file"):
        load_recordings(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\na.wav,\n")
    with pytest.raises(LabelsFileError, match="rows \\[2\\]"):
        load_recordings(tmp_path)
    with pytest.raises(LabelsFileError, match="does not exist"):
        load_recordings(tmp_path, tmp_path / "other.csv")
