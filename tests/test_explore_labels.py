"""Candidate labels beside the answer (issue 19) and `/score_labels`: the probabilities the app shows are the
model's own (compared with `NatureLM.score_labels` called directly), and empty candidates do no work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

gradio_client = pytest.importorskip("gradio_client")

from naturelm_core.audio import load_audio  # noqa: E402
from naturelm_core.events import matching_candidate, parse_candidates  # noqa: E402
from naturelm_core.explore import LABEL_COLUMNS, probabilities_by_label, score_recording  # noqa: E402
from ui.explore_labels import match_line, scan_chart_handler  # noqa: E402

PROMPT = "What is the common name for the focal species in the audio?"
LABELS = ["Humpback Whale", "Killer Whale", "Walrus"]


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory) -> str:
    rate = 16000
    t = np.arange(3 * rate) / rate
    path = tmp_path_factory.mktemp("audio") / "chirp.wav"
    sf.write(path, 0.4 * np.sin(2 * np.pi * (500 + 40 * t) * t), rate)
    return str(path)


def test_candidates_are_parsed_from_commas_or_lines_and_matched_normalised():
    assert parse_candidates("Humpback Whale, Killer Whale\nWalrus,\n") == LABELS
    assert parse_candidates("  ") == []
    assert matching_candidate("  killer whale.", LABELS) == "Killer Whale"
    assert matching_candidate("Killer Whales", LABELS) is None


def test_score_labels_returns_the_models_probabilities_sorted(client, tiny_model, short_wav):
    table = client.predict(
        gradio_client.handle_file(short_wav), PROMPT, ", ".join(LABELS), 0.5, api_name="/score_labels"
    )
    frame = pd.DataFrame(table["data"], columns=table["headers"])
    assert list(frame.columns) == LABEL_COLUMNS
    [direct] = tiny_model.score_labels([load_audio(short_wav)[0]], PROMPT, LABELS, 0.5)
    assert list(frame["label"]) == sorted(LABELS, key=lambda label: -direct.probabilities[label])
    for _, row in frame.iterrows():
        assert row["probability"] == pytest.approx(direct.probabilities[row["label"]], rel=1e-4)
        assert row["log_likelihood"] == pytest.approx(direct.log_likelihoods[row["label"]], rel=1e-4)
    assert frame["probability"].sum() == pytest.approx(1.0, rel=1e-4)


def test_score_labels_takes_a_recipe_and_empty_candidates_do_no_work(client, short_wav):
    recipe = '{"alpha": 0.8, "layers": "linear:0.2:1"}'
    with_recipe = client.predict(gradio_client.handle_file(short_wav), PROMPT, "Walrus\nKiller Whale", 0.5, recipe,
                                 api_name="/score_labels")  # fmt: skip
    assert sorted(row[0] for row in with_recipe["data"]) == ["Killer Whale", "Walrus"]
    empty = client.predict(gradio_client.handle_file(short_wav), PROMPT, "  ", 0.5, api_name="/score_labels")
    assert empty["data"] == []


@pytest.mark.parametrize(("candidates", "message"), [("Walrus, Walrus", "listed twice"), ("x" * 400, "tokens long")])
def test_bad_candidates_are_refused_with_the_label_error(client, short_wav, candidates, message):
    with pytest.raises(Exception, match=message) as caught:
        client.predict(gradio_client.handle_file(short_wav), PROMPT, candidates, 0.5, api_name="/score_labels")
    assert "Traceback" not in str(caught.value)


def test_the_match_line_says_whether_the_answer_is_a_candidate():
    assert "Killer Whale" in match_line("killer whale!", ", ".join(LABELS))
    assert "none of the 3" in match_line("a bird", ", ".join(LABELS))
    assert match_line("a bird", "") == ""


def test_the_scan_chart_is_one_batched_call_with_one_row_per_alpha(served_app, tiny_model, short_wav, monkeypatch):
    engine = served_app.engine
    calls = []
    original = engine.score_labels
    monkeypatch.setattr(
        engine, "score_labels", lambda rows, labels, **kw: calls.append(len(rows)) or original(rows, labels, **kw)
    )
    figure = scan_chart_handler(engine)(short_wav, PROMPT, "0, 0.5, 1", ", ".join(LABELS))
    assert calls == [3]
    waveform = load_audio(short_wav)[0]
    direct = tiny_model.score_labels([waveform] * 3, PROMPT, LABELS, [0.0, 0.5, 1.0])
    by_label = {trace.name: list(trace.y) for trace in figure.data}
    for label in LABELS:
        assert by_label[label] == pytest.approx([d.probabilities[label] for d in direct], rel=1e-4)
    assert scan_chart_handler(engine)(short_wav, PROMPT, "0, 1", "") is None
    assert calls == [3]


def test_score_recording_averages_windows_and_is_empty_without_labels(served_app, tiny_model):
    waveform = 0.3 * np.sin(np.linspace(0, 4000, 16000 * 15)).astype(np.float32)
    assert score_recording(served_app.engine, waveform, PROMPT, [], [0.5]) == []
    [scores] = score_recording(served_app.engine, waveform, PROMPT, LABELS, [0.5])
    first, second = tiny_model.score_labels([waveform[: 16000 * 10], waveform[16000 * 10 :]], PROMPT, LABELS, 0.5)
    for label in LABELS:
        mean = (first.probabilities[label] + second.probabilities[label]) / 2
        assert scores.probabilities[label] == pytest.approx(mean, rel=1e-4)
    assert list(probabilities_by_label([scores])) == LABELS
