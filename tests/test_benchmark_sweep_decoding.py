"""benchmarks/sweep_decoding.py on a few short files: it writes recordings a sweep can read and prints its table.

The timings are not checked (CI machines vary); that every recording decodes, in every format and worker count, is.
"""

from __future__ import annotations

import pytest
import soundfile as sf

import benchmarks.sweep_decoding as benchmark


def test_the_written_recordings_are_read_back_at_44k1_with_their_labels(tmp_path):
    from evaluation.datasets import load_recordings

    folder = benchmark.write_recordings(tmp_path, count=3, seconds=1.0, extension="flac")
    assert sf.info(folder / "recording-0000.flac").samplerate == 44_100
    subset = load_recordings(folder)
    assert subset.labels() == ["tone 400 Hz", "tone 450 Hz", "tone 500 Hz"]
    assert [row.file_name for row in subset.rows()] == [f"recording-000{i}.flac" for i in range(3)]
    assert benchmark.decode_all(subset, workers=2) == 3
    assert subset.skipped == []


def test_the_command_prints_one_row_per_format_and_worker_count(capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "default_workers", lambda: 2)  # so 'default' repeats 2 and adds no row
    argv = [
        "--recordings",
        "3",
        "--seconds",
        "1",
        "--repeats",
        "1",
        "--workers",
        "1,2,default",
        "--formats",
        "flac,mp3",
    ]
    assert benchmark.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| flac", "| mp3"))]
    assert [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows] == [
        ("flac", "1"),
        ("flac", "2"),
        ("mp3", "1"),
        ("mp3", "2"),
    ]
    assert all(float(row.split("|")[3]) > 0 for row in rows)


def test_unknown_formats_and_worker_counts_are_refused(capsys):
    assert benchmark.main(["--formats", "flac,aiff"]) == 2
    assert "unknown format(s) ['aiff']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main(["--workers", "0"])
