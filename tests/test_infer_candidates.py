"""`python -m naturelm_core.infer --candidates`: each window's answer, then its candidates most probable first,
with the probabilities `NatureLM.score_labels` gives; `--score-only` skips generation; bad lists fail early."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from naturelm_core.audio import windows
from naturelm_core.infer import EXIT_BAD_INPUT, main

PROMPT = "What is the common name for the focal species in the audio?"
LABELS = ["Humpback Whale", "Killer Whale", "Walrus"]
ANSWER = re.compile(r"^\[(\d+\.\d) s - (\d+\.\d) s\]( .*)?$")
CANDIDATE = re.compile(r"^  (\d\.\d{4})\t(.+)$")


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    t = np.arange(15 * 16_000) / 16_000
    path = tmp_path_factory.mktemp("audio") / "chirp.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * (300 + 40 * t) * t)).astype(np.float32), 16_000, subtype="FLOAT")
    return path


def _args(recording, checkpoint, *extra: str) -> list[str]:
    return ["--audio", str(recording), "--prompt", PROMPT, "--alpha", "0.5", "--model", str(checkpoint),
            "--device", "cpu", "--num-beams", "1", "--max-new-tokens", "4", *extra]  # fmt: skip


def _windows_of(stdout: str) -> list[tuple[str, dict[str, float]]]:
    blocks: list[tuple[str, dict[str, float]]] = []
    for line in stdout.splitlines():
        if ANSWER.match(line):
            blocks.append((line, {}))
        else:
            probability, label = CANDIDATE.match(line).groups()
            blocks[-1][1][label] = float(probability)
    return blocks


@pytest.mark.parametrize("score_only", [False, True], ids=["answer-and-scores", "score-only"])
def test_each_window_lists_its_candidates_with_the_models_probabilities(
    tiny_checkpoint, tiny_model, recording, capsys, score_only
):
    extra = ["--candidates", ", ".join(LABELS), *(["--score-only"] if score_only else [])]
    assert main(_args(recording, tiny_checkpoint, *extra)) == 0
    blocks = _windows_of(capsys.readouterr().out)
    waveform, _ = sf.read(recording, dtype="float32")
    parts = windows(waveform)
    direct = tiny_model.score_labels([w.samples for w in parts], PROMPT, LABELS, 0.5)
    assert len(blocks) == len(parts) == 2
    for (line, printed), scores in zip(blocks, direct, strict=True):
        assert list(printed) == sorted(LABELS, key=lambda label: -scores.probabilities[label])
        assert printed == pytest.approx(scores.probabilities, abs=1e-4)
        assert (ANSWER.match(line).group(3) is None) == score_only


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--candidates", "Walrus, Walrus"], "error: --candidates lists Walrus twice"),
        (["--score-only"], "error: --score-only needs --candidates"),
    ],
)
def test_a_bad_candidate_list_is_one_line_before_the_model_loads(tmp_path, recording, capsys, extra, message):
    assert main(_args(recording, tmp_path / "no-model-here", *extra)) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_a_too_long_label_is_refused_with_the_label_error(tiny_checkpoint, recording, capsys):
    assert main(_args(recording, tiny_checkpoint, "--candidates", "Walrus, " + "x" * 400)) == EXIT_BAD_INPUT
    assert "tokens long" in capsys.readouterr().err
