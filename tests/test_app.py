"""The app end to end through gradio_client: answers equal the model's, alphas never leak, bad input is a message."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

gradio_client = pytest.importorskip("gradio_client")

from naturelm_core.audio import load_audio  # noqa: E402

PROMPT = "What is the common name for the focal species in the audio?"


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> str:
    """A 3 s, 44.1 kHz stereo chirp: resampling and mono mixing run on the way in."""
    t = np.arange(44100 * 3) / 44100
    tone = 0.4 * np.sin(2 * np.pi * (500 + 400 * t) * t)
    path = tmp_path_factory.mktemp("audio") / "chirp.wav"
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), 44100)
    return str(path)


def _direct(model, path: str, alphas: list[float], num_beams: int = 2, max_new_tokens: int = 100) -> list[str]:
    waveform, _ = load_audio(path)
    return model.generate(
        [waveform] * len(alphas), [PROMPT] * len(alphas), alphas, num_beams=num_beams, max_new_tokens=max_new_tokens
    )


def test_explore_endpoint_equals_calling_the_model(client, tiny_model, recording):
    answer = client.predict(gradio_client.handle_file(recording), PROMPT, 0.35, api_name="/explore")
    assert answer == _direct(tiny_model, recording, [0.35])[0]
    answer_greedy = client.predict(gradio_client.handle_file(recording), PROMPT, 0.8, 1, 12, api_name="/explore")
    assert answer_greedy == _direct(tiny_model, recording, [0.8], num_beams=1, max_new_tokens=12)[0]


def test_alpha_scan_endpoint_equals_the_model_at_each_alpha(client, tiny_model, recording):
    table = client.predict(gradio_client.handle_file(recording), PROMPT, "0, 0.5, 1", api_name="/alpha_scan")
    alphas = [float(row[0]) for row in table["data"]]
    answers = [row[1] for row in table["data"]]
    assert alphas == [0.0, 0.5, 1.0]
    assert answers == _direct(tiny_model, recording, alphas)


def test_the_alpha_scan_reads_ranges_as_the_sweeps_tab_does(client, tiny_model, recording):
    table = client.predict(gradio_client.handle_file(recording), PROMPT, "0:1:0.5", api_name="/alpha_scan")
    alphas = [float(row[0]) for row in table["data"]]
    assert alphas == [0.0, 0.5, 1.0]
    assert [row[1] for row in table["data"]] == _direct(tiny_model, recording, alphas)
    with pytest.raises(Exception, match="start:stop:step") as caught:
        client.predict(gradio_client.handle_file(recording), PROMPT, "0:1", api_name="/alpha_scan")
    assert "Traceback" not in str(caught.value)


def test_sixteen_concurrent_clients_each_get_their_own_alpha(served_app, tiny_model, recording):
    alphas = [round(random.Random(i).uniform(0, 1), 3) for i in range(16)]
    expected = {a: _direct(tiny_model, recording, [a], num_beams=1, max_new_tokens=16)[0] for a in alphas}

    def ask(alpha: float) -> str:
        own_client = served_app.client()
        return own_client.predict(gradio_client.handle_file(recording), PROMPT, alpha, 1, 16, api_name="/explore")

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, alphas))
    assert answers == [expected[a] for a in alphas]
    assert len(set(expected.values())) > 1  # the alphas really do lead to different answers


@pytest.mark.parametrize(
    ("name", "content", "alpha", "message"),
    [
        ("corrupt.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)), 0.5, "corrupt|could not|not a"),
        ("notes.wav", b"these are my field notes, not audio\n" * 20, 0.5, "not|corrupt|could not"),
        ("short.wav", None, 0.5, "0.5 s|too short|shorter"),
        ("ok.wav", "valid", 7.0, r"alpha|\[0, 1\]|7"),
    ],
)
def test_bad_input_gets_a_clear_message_and_the_app_keeps_serving(
    client, tmp_path, recording, name, content, alpha, message
):
    path = tmp_path / name
    if content is None:
        sf.write(path, np.zeros(int(0.2 * 16000), dtype=np.float32), 16000)
    elif content == "valid":
        path = recording
    else:
        path.write_bytes(content)
    with pytest.raises(Exception, match=message) as caught:
        client.predict(gradio_client.handle_file(str(path)), PROMPT, alpha, api_name="/explore")
    assert "Traceback" not in str(caught.value)
    assert isinstance(client.predict(gradio_client.handle_file(recording), PROMPT, 0.5, 1, 4, api_name="/explore"), str)
