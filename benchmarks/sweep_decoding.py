"""How fast a sweep can read recordings: files decoded and cut to their model window per second, on the CPU.

    python benchmarks/sweep_decoding.py                      # 48 recordings of 30 s, FLAC and MP3, 1 vs default
    python benchmarks/sweep_decoding.py --workers 1,2,4 --recordings 24 --seconds 60 --formats flac
    python benchmarks/sweep_decoding.py --beside-busy-thread   # as beside the engine's thread at its busiest

A GPU answers a few hundred rows a second; a sweep with one row per recording needs as many
recordings decoded a second, or the GPU waits. This writes synthetic 44.1 kHz recordings (noise
under a tone, so FLAC cannot compress them away) and a labels CSV to a temporary folder, then reads
them exactly as the sweep does: Subset.rows on this thread, Subset.decode (of each file's window
only) + model_window on evaluation.prefetch threads, as far ahead as SweepRunner lets them run.
Each setting is timed after one warm-up pass (page cache, torch kernels), best of --repeats.
`--beside-busy-thread` keeps one more thread running Python meanwhile, as the engine's thread does between
GPU waits: a decode thread then waits for the GIL after each call that released it (up to the interpreter's
switch interval, 5 ms), so this counts how often decoding lets go of the GIL.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.datasets import SampleRow, Subset, load_recordings
from evaluation.prefetch import default_workers, prefetch_map
from evaluation.sweep import DECODE_AHEAD_PER_WORKER, model_window

SOURCE_RATE = 44_100
FORMATS = {"flac": "FLAC", "mp3": "MP3", "wav": "WAV", "ogg": "OGG"}


def write_recordings(folder: Path, count: int, seconds: float, extension: str, seed: int = 0) -> Path:
    """`count` mono recordings of `seconds` at 44.1 kHz in `folder`, with the labels.csv load_recordings reads."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    lines = ["file,label"]
    for index in range(count):
        frequency = 400.0 + 50.0 * (index % 40)
        audio = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(len(t))
        name = f"recording-{index:04d}.{extension}"
        sf.write(folder / name, audio.astype(np.float32), SOURCE_RATE, format=FORMATS[extension])
        lines.append(f"{name},tone {frequency:.0f} Hz")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def decode_all(subset: Subset, workers: int, one_torch_thread: bool = False) -> int:
    """Read every recording as a sweep does; returns how many gave a model window."""

    def decode_window(row: SampleRow) -> np.ndarray:
        return model_window(subset.decode(row, head_s=subset.window_s))

    ahead = DECODE_AHEAD_PER_WORKER * workers
    decoded = 0
    rows = subset.rows()
    for outcome in prefetch_map(decode_window, rows, workers=workers, ahead=ahead, one_torch_thread=one_torch_thread):
        outcome.result()  # a recording this benchmark wrote must decode
        decoded += 1
    return decoded


def recordings_per_second(
    subset: Subset, worker_counts: Sequence[int], repeats: int, one_torch_thread: bool = False
) -> dict[int, float]:
    """Best of `repeats` passes per worker count; the counts take turns, so a burst of load hits them alike."""
    decode_all(subset, worker_counts[0], one_torch_thread)  # warm-up
    best = dict.fromkeys(worker_counts, float("inf"))
    count = 0
    for _ in range(repeats):
        for workers in worker_counts:
            started = time.perf_counter()
            count = decode_all(subset, workers, one_torch_thread)
            best[workers] = min(best[workers], time.perf_counter() - started)
    return {workers: count / seconds for workers, seconds in best.items()}


@contextmanager
def busy_python_thread() -> Iterator[None]:
    """A thread running pure Python (it holds the GIL except when the interpreter makes it let go) while inside."""
    stop = threading.Event()

    def spin() -> None:
        count = 0
        while not stop.is_set():
            count += 1

    thread = threading.Thread(target=spin, name="busy-python", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def parse_workers(text: str) -> list[int]:
    """'1,default,4' -> [1, <default>, 4], in order and without repeats."""
    counts: list[int] = []
    for part in text.split(","):
        count = default_workers() if part.strip() == "default" else int(part)
        if count < 1:
            raise argparse.ArgumentTypeError(f"worker counts must be at least 1, got {count}")
        if count not in counts:
            counts.append(count)
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/sweep_decoding.py", description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=48, help="recordings per format (default 48)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each recording (default 30)")
    parser.add_argument("--formats", default="flac,mp3", help=f"comma-separated, of {sorted(FORMATS)}")
    parser.add_argument("--workers", type=parse_workers, default="1,default", help="e.g. 1,2,4 ('default' allowed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting; the best is kept")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's, one per core)"
    )
    parser.add_argument(
        "--one-torch-thread",
        action="store_true",
        help="decode threads keep to one torch thread each, as a sweep whose model is on a GPU decodes",
    )
    parser.add_argument("--window-s", type=float, default=10.0, help="model window cut from each recording")
    parser.add_argument(
        "--beside-busy-thread", action="store_true", help="time decoding while another thread runs Python"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    formats = [name.strip() for name in args.formats.split(",")]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        print(f"error: unknown format(s) {unknown}; choose from {sorted(FORMATS)}", file=sys.stderr)
        return 2
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    print(
        f"# {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} intra-op threads, "
        f"default decode workers {default_workers()}; {args.recordings} x {args.seconds:g} s at {SOURCE_RATE} Hz, "
        f"{args.window_s:g} s windows"
        + (", beside a thread running Python" if args.beside_busy_thread else "")
        + (", one torch thread per decode thread" if args.one_torch_thread else "")
    )
    print("| format | workers | recordings/s | speed-up |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="sweep-decoding-") as scratch:
        for extension in formats:
            folder = write_recordings(Path(scratch) / extension, args.recordings, args.seconds, extension)
            subset = load_recordings(folder, window_s=args.window_s)
            with busy_python_thread() if args.beside_busy_thread else nullcontext():
                rates = recordings_per_second(subset, args.workers, args.repeats, args.one_torch_thread)
            baseline = rates[args.workers[0]]
            for workers, rate in rates.items():
                print(f"| {extension} | {workers} | {rate:.1f} | {rate / baseline:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
