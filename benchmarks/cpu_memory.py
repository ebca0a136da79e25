"""Resident memory of NatureLM-audio served on a CPU in float32: the figure the README states.

    python benchmarks/cpu_memory.py [--size full|tiny]

Builds the full-size model with random weights of the real shapes (benchmarks/gpu.py's build_model, on
the CPU, float32 as the app loads it there), answers one 10 s recording (greedy, 20 new tokens), and
prints the process's peak resident memory. Needs a machine with more RAM than the answer (our CI
machine has 24 GiB, so this runs on the GPU machine's CPU side).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu import PROMPT, build_model, recordings


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--new-tokens", type=int, default=20)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = build_model(args.size, torch.device("cpu"), torch.float32)
    built = {"seconds": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib()}
    start = time.perf_counter()
    answer = model.generate(recordings(1, seed=1), PROMPT, 0.5, num_beams=1, max_new_tokens=args.new_tokens)
    answered = {"seconds": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib(), "words": len(answer[0].split())}
    print(json.dumps({"size": args.size, "threads": torch.get_num_threads(), "built": built, "answered": answered}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
