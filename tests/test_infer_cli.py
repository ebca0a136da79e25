"""`python -m naturelm_core.infer`: answers per window with timestamps, and one clear line for bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from naturelm_core.audio import windows
from naturelm_core.infer import EXIT_BAD_INPUT, main
from naturelm_core.loading import load_model
from naturelm_core.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "What is the common name for the focal species in the audio?"
LINE = re.compile(r"^\[(\d+\.\d) s - (\d+\.\d) s\] (.*)$")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """25 s of a frequency-swept tone with noise, at 16 kHz so the CLI and a direct call see the same samples."""
    rate = 16_000
    t = np.arange(25 * rate) / rate
    rng = np.random.default_rng(0)
    signal = 0.3 * np.sin(2 * np.pi * (300 + 40 * t) * t) + 0.02 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("audio") / "sweep.wav"
    sf.write(path, signal.astype(np.float32), rate, subtype="FLOAT")
    return path


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "naturelm_core.infer", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_cli_answers_every_window_with_its_timestamps(tiny_dir, recording):
    result = _run_cli(
        "--audio", str(recording), "--prompt", PROMPT, "--alpha", "0.5", "--model", str(tiny_dir),
        "--device", "cpu", "--num-beams", "2", "--max-new-tokens", "6",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    spans = [LINE.match(line).group(1, 2) for line in lines]
    assert spans == [("0.0", "10.0"), ("10.0", "20.0"), ("20.0", "25.0")]  # the trailing 5 s window is kept

    model = load_model(tiny_dir, device="cpu")
    waveform, _ = sf.read(recording, dtype="float32")
    expected = model.generate([w.samples for w in windows(waveform)], PROMPT, 0.5, num_beams=2, max_new_tokens=6)
    assert [LINE.match(line).group(3) for line in lines] == [" ".join(answer.split()) for answer in expected]


def test_cli_bad_file_is_one_error_line_and_exit_2(tmp_path, tiny_dir):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are field notes, not a recording")
    result = _run_cli("--audio", str(not_audio), "--prompt", PROMPT, "--alpha", "0.5", "--model", str(tiny_dir))
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "notes.wav" in error_lines[0]
    assert "not a readable audio file" in error_lines[0]


def test_hop_shorter_than_the_window_overlaps_windows(tiny_dir, recording, capsys):
    code = main(
        ["--audio", str(recording), "--prompt", PROMPT, "--alpha", "1", "--model", str(tiny_dir),
         "--device", "cpu", "--num-beams", "1", "--max-new-tokens", "2", "--window-s", "10", "--hop-s", "7.5"]
    )  # fmt: skip
    assert code == 0
    spans = [LINE.match(line).group(1, 2) for line in capsys.readouterr().out.splitlines()]
    assert spans == [("0.0", "10.0"), ("7.5", "17.5"), ("15.0", "25.0")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alpha", "1.5"], "alpha of row 0 is 1.5"),
        (["--alpha", "0.5", "--window-s", "12"], "--window-s must be at most 10 s"),
        (["--alpha", "0.5", "--num-beams", "0"], "--num-beams and --max-new-tokens must be at least 1"),
        (["--alpha", "0.5", "--model", "/nonexistent/checkpoint"], "checkpoint folder not found"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(recording, extra, message, capsys):
    code = main(["--audio", str(recording), "--prompt", PROMPT, "--device", "cpu", *extra])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: ")
    assert message in captured.err


def test_missing_audio_file_names_it(tmp_path, capsys):
    code = main(["--audio", str(tmp_path / "absent.flac"), "--prompt", PROMPT, "--alpha", "0.5"])
    assert code == EXIT_BAD_INPUT
    assert "absent.flac" in capsys.readouterr().err


def test_demo_answers_offline_and_says_the_answers_are_meaningless(recording, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NATURELM_DEMO_DIR", str(tmp_path / "demo"))
    code = main(["--audio", str(recording), "--prompt", PROMPT, "--alpha", "0.5", "--demo", "--max-new-tokens", "3"])
    captured = capsys.readouterr()
    assert code == 0
    assert [LINE.match(line).group(1, 2) for line in captured.out.splitlines()] == [
        ("0.0", "10.0"),
        ("10.0", "20.0"),
        ("20.0", "25.0"),
    ]
    assert "Offline demo: tiny random model, answers are meaningless" in captured.err


def test_silence_fails_and_truncation_warns_before_the_model_loads(tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(32000, dtype=np.float32), 16000)
    assert main(["--audio", str(silent), "--prompt", PROMPT, "--alpha", "0.5", "--model", "/nonexistent"]) == 2
    assert "'silent.wav' is silent" in capsys.readouterr().err
    full = tmp_path / "full.wav"
    sf.write(full, (0.2 * np.random.default_rng(1).standard_normal(64000)).astype(np.float32), 16000)
    data = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    assert main(["--audio", str(cut), "--prompt", PROMPT, "--alpha", "0.5", "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "warning: 'cut.wav' looks truncated" in err and "error:" in err  # warned, then the model failed to load
