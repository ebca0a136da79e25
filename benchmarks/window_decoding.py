"""Whole-file vs window-only decoding: recordings a sweep's decoding thread turns into model windows per second.

    python benchmarks/window_decoding.py                        # 32 FLAC files of 60 s at 44.1 kHz, 10 s windows
    python benchmarks/window_decoding.py --files 8 --seconds 600

A sweep hears each recording's first model window only. This writes synthetic 44.1 kHz mono FLAC files (a tone
under noise, so FLAC cannot compress them away) and a labels CSV to a temporary folder, then makes every file's
model window on this thread, as one of the sweep's decoding threads does: `model_window(subset.decode(row))`
(the whole file decoded and resampled, as sweeps did before) and `model_window(subset.decode(row, head_s=...))`
(only the window's source frames, as they do now). Each is timed after one warm-up pass (page cache, torch
kernels), best of --repeats, taking turns; the windows of the two must be identical, or the command fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sweep_decoding import SOURCE_RATE, write_recordings
from evaluation.datasets import SampleRow, Subset, load_recordings
from evaluation.sweep import model_window

Decoder = Callable[[Subset, SampleRow], np.ndarray]


def whole_file(subset: Subset, row: SampleRow) -> np.ndarray:
    return model_window(subset.decode(row))


def window_only(subset: Subset, row: SampleRow) -> np.ndarray:
    return model_window(subset.decode(row, head_s=subset.window_s))


DECODERS: dict[str, Decoder] = {"whole file": whole_file, "window only": window_only}


def windows_of(subset: Subset, decode: Decoder) -> list[np.ndarray]:
    return [decode(subset, row) for row in subset.rows()]


def files_per_second(subset: Subset, repeats: int) -> dict[str, float]:
    """Best of `repeats` passes per decoder; the decoders take turns, so a burst of load hits both alike."""
    best = dict.fromkeys(DECODERS, float("inf"))
    count = len(subset)
    for _ in range(repeats):
        for name, decode in DECODERS.items():
            started = time.perf_counter()
            windows_of(subset, decode)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: count / seconds for name, seconds in best.items()}


def same_windows(subset: Subset) -> bool:
    """Whether both decoders give identical windows (also the warm-up pass)."""
    whole, head = (windows_of(subset, decode) for decode in DECODERS.values())
    return all(np.array_equal(a, b) for a, b in zip(whole, head, strict=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/window_decoding.py", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=32, help="FLAC files to write (default 32)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each file (default 60)")
    parser.add_argument("--window-s", type=float, default=10.0, help="model window cut from each file (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per decoder; the best is kept")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        f"# {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} intra-op threads, "
        f"one decoding thread; {args.files} FLAC files x {args.seconds:g} s at {SOURCE_RATE} Hz, "
        f"{args.window_s:g} s windows, best of {args.repeats}"
    )
    with tempfile.TemporaryDirectory(prefix="window-decoding-") as scratch:
        subset = load_recordings(
            write_recordings(Path(scratch), args.files, args.seconds, "flac"), window_s=args.window_s
        )
        identical = same_windows(subset)
        rates = files_per_second(subset, args.repeats)
    print("| decoding | files/s | ms per file |")
    print("|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {1000 / rate:.1f} |")
    print(f"window only: {rates['window only'] / rates['whole file']:.1f}x; windows identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
