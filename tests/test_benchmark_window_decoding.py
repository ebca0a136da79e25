"""benchmarks/window_decoding.py on a few short files: it prints both rows and checks the windows are identical.

The timings are not checked (CI machines vary); the windows' equality, and the table, are.
"""

from __future__ import annotations

import soundfile as sf

import benchmarks.window_decoding as benchmark


def test_the_written_files_are_44k1_flac_and_both_decoders_give_the_same_windows(tmp_path):
    from evaluation.datasets import load_recordings

    folder = benchmark.write_recordings(tmp_path, 2, 12.0, "flac")
    info = sf.info(folder / "recording-0000.flac")
    assert (info.format, info.samplerate, info.frames) == ("FLAC", 44_100, 12 * 44_100)
    assert benchmark.same_windows(load_recordings(folder))


def test_the_command_prints_a_row_per_decoder_and_succeeds(capsys):
    assert benchmark.main(["--files", "2", "--seconds", "11", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:3] for line in out.splitlines() if line.startswith(("| whole", "| window"))]
    assert [name.strip() for name, _ in rows] == ["whole file", "window only"]
    assert all(float(rate) > 0 for _, rate in rows)
    assert "windows identical: True" in out


def test_different_windows_fail_the_command(capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "same_windows", lambda subset: False)
    assert benchmark.main(["--files", "1", "--seconds", "1", "--repeats", "1"]) == 1
    assert "windows identical: False" in capsys.readouterr().out
