"""`python -m naturelm_core.detect`: a folder in, every export out; bad input is one line on stderr and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from naturelm_core.annotations import RAVEN_COLUMNS
from naturelm_core.detect import EXIT_BAD_INPUT, main

PROMPT = "What is the common name for the focal species in the audio?"


def _write(path, seconds: float, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = 0.1 * np.random.default_rng(len(str(path))).standard_normal(round(seconds * rate))
    sf.write(path, noise.astype(np.float32), rate)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_a_folder_is_analysed_recursively_and_every_export_written(tiny_checkpoint, tmp_path, capsys):
    _write(tmp_path / "in" / "dawn.wav", 12.0, 16_000)
    _write(tmp_path / "in" / "site2" / "dusk.flac", 25.0, 44_100)
    (tmp_path / "in" / "site2" / "broken.mp3").write_bytes(b"\xff\xfb" + b"junk" * 200)
    (tmp_path / "in" / "notes.txt").write_text("not audio, not a recording")
    code = main([
        str(tmp_path / "in"), "--prompt", PROMPT, "--alpha", "0, 1", "--out", str(tmp_path / "out"),
        "--model", str(tiny_checkpoint), "--device", "cpu", "--num-beams", "1", "--max-new-tokens", "3",
    ])  # fmt: skip
    assert code == EXIT_BAD_INPUT  # broken.mp3 could not be used; the others were still analysed
    errors = _error_lines(capsys)
    assert len(errors) == 1 and errors[0].startswith("error: broken.mp3: ")
    for stem, folder, windows in [("dawn", tmp_path / "out", 2), ("dusk", tmp_path / "out" / "site2", 3)]:
        table = pd.read_csv(folder / f"{stem}.NatureLM.selection.table.txt", sep="\t")
        assert tuple(table.columns) == RAVEN_COLUMNS
        data = json.loads((folder / f"{stem}.NatureLM.json").read_text())
        assert data["alphas"] == ["0", "1"] and len(data["windows"]) == 2 * windows
        assert (folder / f"{stem}.NatureLM.events.csv").is_file()
        labels = (folder / f"{stem}.NatureLM.labels.txt").read_text().splitlines()
        assert len(labels) == len(table) and all(len(line.split("\t")) == 3 for line in labels)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hop-s", "0"], "error: the hop is 0 s; it must be between 1 and 10 s"),
        (["--window-s", "30"], "error: the window length is 30 s; it must be between 1 and 10 s"),
        (["--alpha", "2"], "error: alpha is 2; it must lie in [0, 1]"),
        (["--formats", "raven,pdf"], "error: --formats takes some of raven, audacity, csv, json"),
        (["--high-freq-hz", "12000"], "error: the frequency band 0-12000 Hz must lie within 0-8000 Hz"),
        (["--prompt", " "], "error: the prompt is empty"),
    ],
)
def test_bad_settings_fail_in_one_line_before_the_model_loads(tmp_path, capsys, options, message):
    _write(tmp_path / "dawn.wav", 3.0, 16_000)
    args = [str(tmp_path / "dawn.wav"), "--prompt", PROMPT, "--alpha", "1", "--out", str(tmp_path / "out")]
    assert main([*args, "--model", str(tmp_path / "no-model-here"), *options]) == EXIT_BAD_INPUT
    errors = _error_lines(capsys)
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert not (tmp_path / "out").exists()


def test_a_folder_without_recordings_or_with_clashing_names_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["--prompt", PROMPT, "--alpha", "1", "--out", str(tmp_path / "out")]
    assert main([str(tmp_path / "empty"), *args]) == EXIT_BAD_INPUT
    assert "no flac/mp3/ogg/wav recordings in" in _error_lines(capsys)[0]
    _write(tmp_path / "twins" / "dawn.wav", 1.0, 16_000)
    _write(tmp_path / "twins" / "dawn.flac", 1.0, 16_000)
    assert main([str(tmp_path / "twins"), *args]) == EXIT_BAD_INPUT
    assert "would write the same exports; rename one" in _error_lines(capsys)[0]
