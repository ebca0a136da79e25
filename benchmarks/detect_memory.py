"""Memory and time of detection over a long recording: streamed window by window, answered by an instant model.

    python benchmarks/detect_memory.py [--hours 2] [--rate 48000] [--channels 1] [--format flac] [--hop-s 10]

Writes a synthetic recording (a 1 kHz tone in every third minute, silence between) in blocks,
then runs `naturelm_core.detection.detect` over it through a real Engine whose model answers at
once from each window's loudness, so what is measured is reading, resampling, batching and
merging, not the LLM. Prints JSON: the peak of Python and numpy allocations during the run
(tracemalloc; torch's own buffers are not seen there), the growth of the process's peak resident
memory (Linux's VmHWM, reset before the run: everything, torch included), the largest source buffer
the stream held, and what decoding the whole file at once would take for comparison.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from naturelm_core.audio_stream import open_windows
from naturelm_core.detection import detect
from naturelm_core.engine import Engine

PROMPT = "What is the common name for the focal species in the audio?"
TONE_EVERY_S = 180
TONE_LENGTH_S = 60
LOUD_RMS = 0.05


class InstantModel:
    """Answers from each window's loudness at once: "Tone." where loud, "None" where silent.

    It satisfies the engine's GenerativeModel protocol, so batching, the embedding cache and the
    queue are the real ones; `rows_per_call` records how many rows each generate call got.
    """

    def __init__(self) -> None:
        self.rows_per_call: list[int] = []

    def encode_audio(self, windows: np.ndarray) -> torch.Tensor:
        samples = torch.as_tensor(np.asarray(windows))
        return samples.pow(2).mean(dim=1).sqrt()[:, None, None]

    def generate_from_embeddings(self, audio_embeds, prompts, alphas, **_: object) -> list[str]:
        self.rows_per_call.append(len(prompts))
        return ["Tone." if row[0].item() > LOUD_RMS else "None" for row in audio_embeds]


def write_long_recording(path: Path, seconds: int, rate: int = 48_000, channels: int = 1) -> Path:
    """A tone for TONE_LENGTH_S in every TONE_EVERY_S, written one second at a time (memory stays small)."""
    t = np.arange(rate) / rate
    tone = np.repeat((0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[:, None], channels, axis=1)
    silence = np.zeros_like(tone)
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16") as sound_file:
        for second in range(seconds):
            sound_file.write(tone if second % TONE_EVERY_S < TONE_LENGTH_S else silence)
    return path


def expected_events(seconds: int) -> list[tuple[float, float]]:
    """The tone's spans: what 10 s windows at a 10 s hop should report (tones start on window edges)."""
    return [(float(start), float(min(start + TONE_LENGTH_S, seconds))) for start in range(0, seconds, TONE_EVERY_S)]


def resident_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak_resident() -> None:
    """Linux: make VmHWM (peak resident memory) restart from the current resident size."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(path: Path, window_s: float = 10.0, hop_s: float = 10.0, max_batch_rows: int = 32) -> dict:
    """Stream and detect over `path` once; memory figures in MiB."""
    info = sf.info(str(path))
    with open_windows(path, window_s, hop_s) as stream:  # the reader alone, for its largest buffer
        for _ in stream:
            pass
        max_buffer_bytes = stream.max_buffer_bytes
    model = InstantModel()
    engine = Engine(model, max_batch_rows=max_batch_rows).start()
    try:
        reset_peak_resident()
        resident_before = resident_kib("VmRSS")
        tracemalloc.start()
        start = time.perf_counter()
        result = detect(engine, path, PROMPT, [1.0], window_s, hop_s)
        seconds = time.perf_counter() - start
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        resident_growth = resident_kib("VmHWM") - resident_before
    finally:
        engine.stop()
    return {
        "recording": {"seconds": info.duration, "rate": info.samplerate, "channels": info.channels,
                      "format": info.format, "file_mib": path.stat().st_size / 2**20},
        "whole_file_float32_mib": info.frames * info.channels * 4 / 2**20,
        "largest_source_buffer_mib": max_buffer_bytes / 2**20,
        "traced_peak_mib": traced_peak / 2**20,
        "peak_resident_growth_mib": resident_growth / 2**10,
        "detect_seconds": seconds,
        "windows": len(result.windows),
        "events": [(e.start_s, e.end_s, e.label) for e in result.events],
        "generate_calls": len(model.rows_per_call),
        "max_rows_per_call": max(model.rows_per_call),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=48_000)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--format", choices=("flac", "wav"), default="flac")
    parser.add_argument("--hop-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    seconds = round(args.hours * 3600)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"long.{args.format}"
        start = time.perf_counter()
        write_long_recording(path, seconds, args.rate, args.channels)
        written_s = time.perf_counter() - start
        report = measure(path, hop_s=args.hop_s)
    report["write_seconds"] = written_s
    if args.hop_s == 10.0:  # expected_events is what 10 s windows at a 10 s hop report
        report["events_as_expected"] = [tuple(e[:2]) for e in report["events"]] == expected_events(seconds)
    report["events"] = len(report["events"])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
