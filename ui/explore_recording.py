"""The Explore tab's recording: what was uploaded, its warnings and its spectrogram, and loading it for an answer.

Why `load_recording` and not `load_audio` (issue 17): digital silence is refused with its message,
and a truncated or nearly silent file is still answered but said to be, both as a toast and under
the upload, so a researcher never trusts an answer about nothing. A recording longer than one call
may decode (10 minutes) is described from its header and its first minutes only: Detect streams it.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from naturelm_core.audio import MAX_DURATION_S, AudioTooLongError, describe_audio, load_recording
from naturelm_core.explore import PREVIEW_S, preview_waveform
from ui.errors import user_facing
from ui.explore_figures import spectrogram_figure
from ui.text import audio_info_markdown, long_recording_markdown, recording_warnings_markdown


def recording_for_answer(audio_path: str | None) -> np.ndarray:
    """The waveform an answer is asked about; its warnings become toasts (the answer still comes)."""
    if not audio_path:
        raise ValueError("No recording: upload a file or record with the microphone first.")
    recording = load_recording(audio_path)
    for warning in recording.warnings:
        gr.Warning(warning)
    return recording.waveform


def recording_view(audio_path: str) -> tuple[str, Any, tuple[str, ...]]:
    """(the info markdown, the spectrogram figure, the warnings) of an uploaded file.

    A file whose header says it is over MAX_DURATION_S is not decoded whole: its first PREVIEW_S are read.
    """
    info = describe_audio(audio_path)
    if info["duration_s"] <= MAX_DURATION_S:
        try:
            recording = load_recording(audio_path)
        except AudioTooLongError:  # an mp3 header can understate; fall through to the preview
            pass
        else:
            text = audio_info_markdown(info, recording.duration_s) + recording_warnings_markdown(recording.warnings)
            return text, spectrogram_figure(recording.waveform), recording.warnings
    waveform, duration_s = preview_waveform(audio_path)
    text = audio_info_markdown(info, duration_s) + long_recording_markdown(duration_s, PREVIEW_S)
    return text, spectrogram_figure(waveform), ()


def recording_section() -> gr.Audio:
    """The upload, what it is (with its warnings), and its spectrogram (as the model hears it)."""
    audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording", elem_id="audio-input")
    audio_info = gr.Markdown(elem_id="audio-info")
    spectrogram = gr.Plot(label="Spectrogram")

    @user_facing
    def describe(audio_path: str | None) -> tuple[str, Any]:
        if not audio_path:
            return "", None
        text, figure, warnings = recording_view(audio_path)
        for warning in warnings:
            gr.Warning(warning)
        return text, figure

    audio.change(describe, audio, [audio_info, spectrogram], api_visibility="private")
    return audio
