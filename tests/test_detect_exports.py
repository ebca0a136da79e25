"""The Explore tab's Detect panel writes each export file once per detection: `/detect` writes them, and the step
Gradio runs after it (timeline, summary, the list of every export) shows those same files instead of writing them
again. Writes are counted at the one function every export goes through (naturelm_core.annotations._write)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from naturelm_core.annotations import FORMATS
from naturelm_core.engine import Engine
from ui.explore_detect import RunningDetections, _detect_handler, _show_result

# By its module path: `from naturelm_core import annotations` finds the package's __future__ import of that name.
annotations_module = importlib.import_module("naturelm_core.annotations")
PROMPT = "What is the common name for the focal species in the audio?"
RATE = 16_000


@pytest.fixture()
def written(monkeypatch) -> list[Path]:
    """Every file an export writes, in order, while the test runs (the files are still written)."""
    paths: list[Path] = []
    real = annotations_module._write

    def counting(path, text):
        paths.append(Path(path))
        return real(path, text)

    monkeypatch.setattr(annotations_module, "_write", counting)
    return paths


def test_detect_then_its_follow_up_write_each_export_file_once(tiny_model, tmp_path, written):
    path = tmp_path / "chirp.wav"
    t = np.arange(10 * RATE) / RATE
    sf.write(path, 0.4 * np.sin(2 * np.pi * (500 + 40 * t) * t), RATE)
    engine = Engine(tiny_model, max_batch_rows=4).start()
    try:
        _, raven, audacity, detected = _detect_handler(engine, RunningDetections())(str(path), PROMPT, 0.5, 5.0, 5.0)
        _, _, listed = _show_result(str(path), detected)
    finally:
        engine.stop()
    assert len(written) == len(FORMATS) and len(set(written)) == len(FORMATS)  # one file per format, once each
    assert sorted(map(Path, listed)) == sorted(written)  # the follow-up lists the files /detect wrote
    assert {raven, audacity} <= set(listed)
