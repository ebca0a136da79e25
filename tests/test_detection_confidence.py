"""Detection confidence (issue 20): with a candidate list every window is scored over it and each event carries
its label's mean probability over its windows; without one (or for a label outside it) the confidence is None.
Probabilities are compared with `NatureLM.score_labels` called directly on the same windows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from naturelm_core.annotations import write_exports
from naturelm_core.audio import windows as split_windows
from naturelm_core.detect import EXIT_BAD_INPUT
from naturelm_core.detect import main as detect_main
from naturelm_core.detection import detect
from naturelm_core.engine import Engine
from naturelm_core.events import matching_candidate, parse_candidates
from naturelm_core.label_scores import LabelError
from naturelm_core.requests import GenerationSettings

PROMPT = "What is the common name for the focal species in the audio?"
SETTINGS = GenerationSettings(num_beams=1, max_new_tokens=3)
RATE = 16_000


@pytest.fixture(scope="module")
def waveform() -> np.ndarray:
    t = np.arange(25 * RATE) / RATE
    return (0.4 * np.sin(2 * np.pi * (500 + 40 * t) * t)).astype(np.float32)


@pytest.fixture(scope="module", params=[False, True], ids=["worker", "inline"])
def engine(request, tiny_model):
    engine = Engine(tiny_model, max_batch_rows=4, inline=request.param)
    yield engine if request.param else engine.start()
    engine.stop()


def _labels(result) -> list[str]:
    return list(dict.fromkeys(event.label for event in result.events))


def test_without_candidates_the_confidence_stays_none(engine, waveform):
    result = detect(engine, waveform, PROMPT, [0.5], 5.0, 5.0, settings=SETTINGS)
    assert result.events and all(event.confidence is None for event in result.events)
    assert all(window.probabilities is None for window in result.windows)


def test_each_event_carries_its_labels_mean_probability(engine, tiny_model, waveform):
    plain = detect(engine, waveform, PROMPT, [0.5], 5.0, 5.0, settings=SETTINGS)
    candidates = [*_labels(plain)[:1], "Walrus"]
    result = detect(engine, waveform, PROMPT, [0.5], 5.0, 5.0, settings=SETTINGS, candidates=candidates)
    assert [e.label for e in result.events] == [e.label for e in plain.events]
    parts = split_windows(waveform, window_s=5.0, hop_s=5.0)
    direct = tiny_model.score_labels([w.samples for w in parts], PROMPT, candidates, 0.5)
    for window, scores in zip(result.windows, direct, strict=True):
        assert window.probabilities == pytest.approx(scores.probabilities, rel=1e-4)
    for event in result.events:
        label = matching_candidate(event.label, candidates)
        if label is None:
            assert event.confidence is None
            continue
        inside = [
            s.probabilities[label]
            for w, s in zip(parts, direct, strict=True)
            if event.start_s <= w.start_s < event.end_s
        ]
        assert len(inside) == event.windows
        assert event.confidence == pytest.approx(float(np.mean(inside)), rel=1e-4)
    assert any(event.confidence is not None for event in result.events)


def test_a_bad_candidate_list_is_refused_before_any_window(engine, waveform):
    with pytest.raises(LabelError, match="listed twice"):
        detect(engine, waveform, PROMPT, [0.5], 5.0, 5.0, settings=SETTINGS, candidates=["Walrus", "Walrus"])


def test_the_exports_carry_the_confidence(engine, waveform, tmp_path):
    plain = detect(engine, waveform, PROMPT, [0.5], 5.0, 5.0, settings=SETTINGS)
    result = detect(engine, waveform, PROMPT, [0.5], 5.0, 5.0, settings=SETTINGS, candidates=_labels(plain))
    paths = write_exports(result, tmp_path, "chirp")
    raven = pd.read_csv(paths["raven"], sep="\t")
    csv = pd.read_csv(paths["csv"])
    expected = [round(event.confidence, 6) for event in result.events]
    assert list(raven["Confidence"]) == pytest.approx(expected)
    assert list(csv["confidence"]) == pytest.approx(expected)
    data = json.loads(paths["json"].read_text())
    assert [e["confidence"] for e in data["events"]] == pytest.approx([e.confidence for e in result.events])


def test_the_detect_cli_takes_candidates(tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "chirp.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(12 * RATE).astype(np.float32), RATE)
    args = [str(path), "--prompt", PROMPT, "--alpha", "1", "--out", str(tmp_path / "out"), "--model",
            str(tiny_checkpoint), "--device", "cpu", "--num-beams", "1", "--max-new-tokens", "3"]  # fmt: skip
    assert detect_main([*args, "--candidates", "Walrus, Walrus"]) == EXIT_BAD_INPUT
    assert "error: --candidates lists Walrus twice" in capsys.readouterr().err
    assert detect_main([*args, "--candidates", "Walrus, Killer Whale"]) == 0
    data = json.loads((tmp_path / "out" / "chirp.NatureLM.json").read_text())
    assert all(set(window["probabilities"]) == {"Walrus", "Killer Whale"} for window in data["windows"])


def test_detect_endpoint_takes_candidates_as_its_last_input(launch_app, tiny_model, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    served = launch_app()
    path = tmp_path / "chirp.wav"
    t = np.arange(15 * RATE) / RATE
    sf.write(path, 0.4 * np.sin(2 * np.pi * (500 + 40 * t) * t), RATE)
    plain = detect(served.engine, str(path), PROMPT, [0.5], 5.0, 5.0)
    short = [label for label in _labels(plain) if len(tiny_model.tokenizer(label)["input_ids"]) < 60]
    candidates = ", ".join(label for label in short if "," not in label) + ", Walrus"
    table, raven, _ = served.client().predict(
        gradio_client.handle_file(str(path)), PROMPT, 0.5, 5.0, 5.0, "", "", candidates, api_name="/detect"
    )
    expected = detect(served.engine, str(path), PROMPT, [0.5], 5.0, 5.0, candidates=parse_candidates(candidates))
    events = pd.DataFrame(table["data"], columns=table["headers"])
    assert list(events["confidence"]) == pytest.approx([e.confidence for e in expected.events], nan_ok=True)
    confidences = pd.read_csv(raven, sep="\t")["Confidence"]
    assert list(confidences) == pytest.approx(
        [e.confidence or float("nan") for e in expected.events], nan_ok=True, rel=1e-5
    )
