"""The Explore tab's newer endpoints through gradio_client: recording checks (issue 17), `/detect` (issue 20),
merge recipes in `/explore` and `/recipe_scan` (issue 18). Answers are compared with the model called directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

gradio_client = pytest.importorskip("gradio_client")

from naturelm_core.annotations import RAVEN_COLUMNS  # noqa: E402
from naturelm_core.audio import load_audio  # noqa: E402
from naturelm_core.detection import detect  # noqa: E402
from naturelm_core.explore import recipe_grid  # noqa: E402
from ui.explore_recording import recording_view  # noqa: E402

PROMPT = "What is the common name for the focal species in the audio?"
RECIPE = {"alpha": 0.8, "layers": "linear:0.2:1"}


def _chirp(path, seconds: float, rate: int = 16000) -> str:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.4 * np.sin(2 * np.pi * (500 + 40 * t) * t), rate)
    return str(path)


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory) -> str:
    """25 s: five 5 s windows, three 10 s ones (the last partial)."""
    return _chirp(tmp_path_factory.mktemp("audio") / "chirp25.wav", 25.0)


@pytest.fixture()
def truncated_wav(tmp_path) -> str:
    """A wav whose header declares 3 s but whose data stops after about 2 s (a copy cut short)."""
    path = tmp_path / "cut.wav"
    _chirp(path, 3.0)
    data = path.read_bytes()
    (tmp_path / "truncated.wav").write_bytes(data[: 44 + 2 * 16000 * 2])
    return str(tmp_path / "truncated.wav")


def _file(path: str):
    return gradio_client.handle_file(path)


def test_a_silent_recording_is_refused_with_its_message(client, tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(16000 * 2, dtype=np.float32), 16000)
    with pytest.raises(Exception, match="silent") as caught:
        client.predict(_file(str(path)), PROMPT, 0.5, api_name="/explore")
    assert "Traceback" not in str(caught.value)


def test_a_truncated_recording_is_answered_and_its_info_says_so(client, tiny_model, truncated_wav):
    answer = client.predict(_file(truncated_wav), PROMPT, 0.5, 1, 8, api_name="/explore")
    waveform, _ = load_audio(truncated_wav)
    [direct] = tiny_model.generate([waveform], [PROMPT], [0.5], num_beams=1, max_new_tokens=8)
    assert answer == direct
    info, figure, warnings = recording_view(truncated_wav)
    assert warnings and any("trunc" in w.lower() or "declares" in w.lower() for w in warnings)
    assert warnings[0][:30] in info.replace("&#x27;", "'")
    assert figure is not None


def test_explore_takes_a_merge_recipe_as_its_last_input(client, tiny_model, tmp_path):
    path = _chirp(tmp_path / "short.wav", 3.0)
    recipe_text = '{"alpha": 0.8, "layers": "linear:0.2:1"}'
    answer = client.predict(_file(path), PROMPT, 0.5, 1, 8, recipe_text, api_name="/explore")
    [direct] = tiny_model.generate([load_audio(path)[0]], [PROMPT], [RECIPE], 1, 8)
    assert answer == direct
    plain = client.predict(_file(path), PROMPT, 0.8, 1, 8, "", api_name="/explore")
    assert plain != answer
    with pytest.raises(Exception, match=r"recipe|JSON"):
        client.predict(_file(path), PROMPT, 0.5, 1, 8, '{"alpha": 0.8, "layres": 1}', api_name="/explore")


def test_detect_returns_the_events_and_the_raven_and_audacity_files(client, served_app, long_recording):
    table, raven, audacity = client.predict(_file(long_recording), PROMPT, 0.5, 5.0, 5.0, api_name="/detect")
    expected = detect(served_app.engine, long_recording, PROMPT, [0.5], 5.0, 5.0)
    events = pd.DataFrame(table["data"], columns=table["headers"])
    assert list(events["label"]) == [event.label for event in expected.events]
    assert list(events["start_s"]) == [event.start_s for event in expected.events]
    selections = pd.read_csv(raven, sep="\t", keep_default_na=False)
    assert tuple(selections.columns) == RAVEN_COLUMNS
    assert list(selections["Begin Time (s)"]) == list(events["start_s"])
    labels = [line.split("\t") for line in Path(audacity).read_text(encoding="utf-8").splitlines()]
    assert [float(cells[1]) for cells in labels] == list(events["end_s"])


@pytest.mark.parametrize(
    ("window_s", "hop_s", "message"),
    [(5.0, 0.0, "hop is 0 s"), (12.0, 5.0, "window length is 12 s"), (None, 5.0, "number of seconds")],
)
def test_detect_refuses_bad_settings_with_a_sentence(client, long_recording, window_s, hop_s, message):
    with pytest.raises(Exception, match=message) as caught:
        client.predict(_file(long_recording), PROMPT, 0.5, window_s, hop_s, api_name="/detect")
    assert "Traceback" not in str(caught.value)


def test_recipe_scan_answers_every_grid_point_as_the_model_does(client, tiny_model, tmp_path):
    path = _chirp(tmp_path / "short.wav", 3.0)
    table, _ = client.predict(_file(path), PROMPT, "module_off", "0.5, 1", "", "", 1, 8, api_name="/recipe_scan")
    grid = recipe_grid("module_off", [0.5, 1.0])
    points = grid.flat()
    waveform, _ = load_audio(path)
    direct = tiny_model.generate([waveform] * len(points), [PROMPT] * len(points), points, 1, 8)
    assert [row[3] for row in table["data"]] == direct
    assert [row[1] for row in table["data"]][:5] == ["none", "q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.raises(Exception, match="not a number"):
        client.predict(_file(path), PROMPT, "ramp", "0, x", "1", "", 1, 8, api_name="/recipe_scan")
