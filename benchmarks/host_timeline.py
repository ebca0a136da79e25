"""Where an Explore answer, a 16 x 11 sweep batch and a one-alpha sweep from FLAC files leave the GPU idle: host
timers and CUDA events around each call of the generation path.

    python3 benchmarks/host_timeline.py OUT_DIR [--scenarios explore,sweep,files]

Why: torch's profiler with Python stacks slowed the host it was measuring (an Explore answer 182 ms under it
against 144 without, 2026-12-07) and could not name the host frames of the GPU's idle gaps. Here each traced
call records a CUDA event as it is entered and left: the GPU time between them is its work plus any wait for the
host, and a call whose GPU time equals its host time ran with the GPU idle. The first run (12:53Z, H100) found a
generation's decoder set-up (4.7 ms: a walk of the LLM's module tree) and a sweep batch's prompt building (7.4
ms) running with the GPU idle, behind a host-to-GPU copy that waited for the audio encoder. The files scenario
(issue 23's one alpha per recording from FLAC) traces the engine's worker through a SweepRunner over 352 files:
how long it waited for decoded rows (`take_batch`), and each batch's encoding and generation.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import gpu
from naturelm_core import engine as engine_module
from naturelm_core import model as model_module
from naturelm_core import static_decoding, tensor_search


class _HostEvent:
    """Stands in for a CUDA event on the CPU (a dry run of this script)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, other: _HostEvent) -> float:
        return 1000 * (other.t - self.t)


def event() -> torch.cuda.Event | _HostEvent:
    return torch.cuda.Event(enable_timing=True) if torch.cuda.is_available() else _HostEvent()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Tracer:
    """Wraps methods and functions so that, while `on`, each call records (label, nesting depth, host start and
    end, CUDA events at entry and exit)."""

    def __init__(self) -> None:
        self.records: list[tuple] = []
        self.depth = 0
        self.on = False

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)
        tracer = self

        @functools.wraps(original)
        def traced(*a: Any, **k: Any) -> Any:
            if not tracer.on:
                return original(*a, **k)
            e0 = event()
            e0.record()
            t0 = time.perf_counter()
            depth = tracer.depth
            tracer.depth += 1
            try:
                return original(*a, **k)
            finally:
                tracer.depth -= 1
                t1 = time.perf_counter()
                e1 = event()
                e1.record()
                tracer.records.append((label, depth, t0, t1, e0, e1))

        setattr(owner, name, traced)

    def report(self, title: str) -> tuple[dict[str, Any], list[str]]:
        """Per call: host start and time, GPU start and time; per label their sums; and the GPU time that passed
        between top-level calls (work no traced call queued, or idling)."""
        synchronize()
        records = sorted(self.records, key=lambda r: r[2])
        origin_t, origin_e = records[0][2], records[0][4]
        lines = [f"## {title}", "label depth host_start host_ms gpu_start gpu_ms"]
        per = {}
        top_end = None
        idle_between = 0.0
        for label, depth, t0, t1, e0, e1 in records:
            g0, g1 = origin_e.elapsed_time(e0), origin_e.elapsed_time(e1)
            h0 = 1000 * (t0 - origin_t)
            lines.append(f"{label} {depth} {h0:.2f} {1000 * (t1 - t0):.3f} {g0:.2f} {g1 - g0:.3f}")
            entry = per.setdefault(label, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += 1000 * (t1 - t0)
            entry[2] += g1 - g0
            if depth == 0:
                if top_end is not None:
                    idle_between += max(0.0, g0 - top_end)
                top_end = g1
        span = origin_e.elapsed_time(records[-1][5]) if records else 0.0
        summary = {
            "span_gpu_ms": span,
            "gpu_ms_between_top_level_calls": idle_between,
            "per_label": {k: {"n": v[0], "host_ms": round(v[1], 3), "gpu_ms": round(v[2], 3)} for k, v in per.items()},
        }
        self.records = []
        return summary, lines


def p50(device: torch.device, fn: Callable[[], Any], n: int = 15) -> float:
    fn()
    fn()
    times = []
    for _ in range(n):
        seconds, _ = gpu.timed(device, fn)
        times.append(1000 * seconds)
    return statistics.median(times)


SCENARIOS = ("explore", "sweep", "files")
FILE_RECORDINGS = 352  # as benchmarks/gpu.py's sweep_files: two full batches of 176 and the first small one


def trace_file_sweeps(model: Any, device: torch.device, tracer: Tracer) -> tuple[dict[str, Any], list[str]]:
    """One-alpha sweeps over FILE_RECORDINGS 10 s FLAC files through SweepRunner and the engine's worker on the
    default decoding pool, as benchmarks/gpu.py's sweep_files runs them: after an untraced warm-up over the first 16
    files (graphs captured), one sweep whose windows the engine has not encoded yet, then the same again, its
    embeddings now in the engine's cache."""
    from benchmarks.sweep_decoding import write_recordings
    from evaluation.sweep import SweepRunner

    args = argparse.Namespace(beams=2, new_tokens=20)
    results: dict[str, Any] = {}
    text: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        recordings = write_recordings(Path(folder) / "recordings", FILE_RECORDINGS, 10.0, "flac")
        engine = engine_module.Engine(model, max_batch_rows=176, sweep_capacity=100_000)
        try:
            for name, limit in (("warm", 16), ("files_not_encoded", None), ("files_encoded", None)):
                spec = gpu.file_sweep_spec(name, recordings, [1.0], args, limit)
                runner = SweepRunner(engine, spec, Path(folder) / "runs" / name)
                engine.stats.recent_sweep_batches.clear()
                tracer.on = name != "warm"
                seconds, status = gpu.timed(device, runner.run)
                tracer.on = False
                if name == "warm":
                    continue
                summary, lines = tracer.report(name)
                summary["answers_per_s"] = status.done / seconds
                summary["batch_rows"] = list(engine.stats.recent_sweep_batches)
                results[name] = summary
                text += lines
        finally:
            engine.stop()
    return results, text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for host_timeline.json and host_timeline.txt")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"a comma-separated subset of {SCENARIOS}")
    arguments = parser.parse_args(argv)
    out, scenarios = arguments.out, arguments.scenarios.split(",")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = gpu.build_model("full" if cuda else "tiny", device, torch.bfloat16 if cuda else torch.float32)
    model.decode_with_static_cache = True
    window = gpu.recordings(1, seed=31)[0]
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu"}
    explore = lambda: gpu.interactive_ids(model, window, 0.5, 1, 20)  # noqa: E731
    tracer = Tracer()
    for owner, name, label in (
        (model_module.NatureLM, "encode_audio", "encode"),
        (model_module.NatureLM, "build_inputs", "build_inputs"),
        (model_module.NatureLM, "row_merge", "row_merge"),
        (static_decoding.StaticDecoding, "decoder", "decoder"),
        (static_decoding.StaticCacheDecoder, "prefill", "prefill"),
        (static_decoding.StaticCacheDecoder, "step", "step"),
        (static_decoding.StaticCacheDecoder, "reorder", "reorder"),
        (tensor_search.GreedySearchState, "advance", "g_advance"),
        (tensor_search.GreedySearchState, "all_done", "g_all_done"),
        (tensor_search.GreedySearchState, "finish", "g_finish"),
        (tensor_search.BeamSearchState, "advance", "b_advance"),
        (tensor_search.BeamSearchState, "all_done", "b_all_done"),
        (tensor_search.BeamSearchState, "finish", "b_finish"),
        (model_module, "decode_answers", "decode_answers"),
        (gpu, "decode_answers", "decode_answers"),
        (engine_module.Engine, "_embed_windows", "embed_windows"),
        (engine_module.Engine, "_generate", "engine_generate"),
        (engine_module._RequestQueue, "take_batch", "take_batch"),
    ):
        tracer.wrap(owner, name, label)
    text: list[str] = []
    if "explore" in scenarios:
        results["explore_p50_ms"] = p50(device, explore)
        explore()
        tracer.on = True
        explore()
        summary, lines = tracer.report("explore")
        tracer.on = False
        results["explore_trace"] = summary
        text += lines
    if "sweep" in scenarios:
        traces, lines = trace_sweep(model, device, tracer)
        results.update(traces)
        text += lines
    if "files" in scenarios:
        traces, lines = trace_file_sweeps(model, device, tracer)
        results.update(traces)
        text += lines
    (out / "host_timeline.json").write_text(json.dumps(results, indent=2))
    (out / "host_timeline.txt").write_text("\n".join(text))
    print(json.dumps(results, indent=2))


def trace_sweep(model: Any, device: torch.device, tracer: Tracer) -> tuple[dict[str, Any], list[str]]:
    """A 16 x 11 sweep through the engine, timed three times untraced, then traced once."""
    results: dict[str, Any] = {}
    args = argparse.Namespace(sweep_batch=176, beams=2, new_tokens=20)
    shared = gpu.recordings(16, seed=52)
    warm = gpu.recordings(16, seed=51)
    gpu.engine_sweep(model, warm, gpu.SWEEP_ALPHAS, args)
    sweep_times = []
    for seed in (54, 55, 56):
        windows = gpu.recordings(16, seed=seed)
        seconds, _ = gpu.timed(device, lambda w=windows: gpu.engine_sweep(model, w, gpu.SWEEP_ALPHAS, args))
        sweep_times.append(1000 * seconds)
    results["sweep_ms"] = sweep_times
    tracer.on = True
    seconds, _ = gpu.timed(device, lambda: gpu.engine_sweep(model, shared, gpu.SWEEP_ALPHAS, args))
    tracer.on = False
    summary, lines = tracer.report("sweep")
    results["sweep_traced_ms"] = 1000 * seconds
    results["sweep_trace"] = summary
    return results, lines


if __name__ == "__main__":
    main()
