"""The instant model and long-recording writer of benchmarks/detect_memory.py, for the detection tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "detect_memory.py"

_spec = importlib.util.spec_from_file_location("benchmark_detect_memory", BENCHMARK)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

InstantModel = benchmark.InstantModel
