"""CUDA graphs of the audio encoder for the few-window calls an Explore answer makes.

One 10 s window through BEATs and the Q-Former is hundreds of kernel launches, and bf16 autocast adds a
cast before most of them. A graph per (window count, length, precision) replays the same kernels
without the host: on an H100 (benchmarks/gpu.py, section audio_encoder, 2026-12-06 16:49Z) one window
went from 17.9 to 17.0 ms in bf16 and from 9.8 to 8.9 ms in float32. The rest is the GPU's own time at
batch 1. Large batches (sweeps) stay eager: there the GPU is the bound, and a graph per batch size
would hold activation memory for every size seen.

Each graph is checked once, when captured, against the eager encoder on the same input, bit for bit;
a difference or a failure to capture turns graphs off for the process (logged), so a graph can cost
time but never change an embedding.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

GRAPH_MAX_WINDOWS = 4  # Explore answers one window at a time; detection's interactive calls a few


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    windows: Tensor  # the input buffer the graph reads
    embeddings: Tensor  # the output buffer it writes
    weights: tuple[int, ...]  # where the encoder's weights were when captured


class EncoderGraphs:
    """Captured encoder calls, keyed by input shape and precision; thread-safe (one replay at a time)."""

    def __init__(self, max_windows: int = GRAPH_MAX_WINDOWS) -> None:
        self.max_windows = max_windows
        self.enabled = True
        self.captures = 0
        self._graphs: dict[tuple, _Graph] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> EncoderGraphs:
        """A copied model starts with no graphs: these read and write the original's tensors."""
        copy = EncoderGraphs(self.max_windows)
        copy.enabled = self.enabled
        return copy

    def encode(
        self, module: nn.Module, encode: Callable[[Tensor], Tensor], windows: Tensor, precision: str
    ) -> Tensor | None:
        """`encode(windows)` replayed from a graph, or None where no graph serves (CPU, many windows, off).

        `module` is the encoder `encode` runs: a graph captured before its weights moved (a reload that
        replaced the tensors) is captured again rather than read from freed memory.
        """
        if not self.enabled or windows.device.type != "cuda" or windows.shape[0] > self.max_windows:
            return None
        weights = tuple(p.data_ptr() for p in module.parameters())
        key = (windows.device, tuple(windows.shape), precision)
        with self._lock:
            graph = self._graphs.get(key)
            if graph is None or graph.weights != weights:
                graph = self._capture(encode, windows, weights)
                if graph is None:
                    return None
                self._graphs[key] = graph
            graph.windows.copy_(windows)
            graph.graph.replay()
            return graph.embeddings.clone()

    def _capture(self, encode: Callable[[Tensor], Tensor], windows: Tensor, weights: tuple[int, ...]) -> _Graph | None:
        try:
            static_windows = windows.clone()
            side = torch.cuda.Stream(device=windows.device)
            side.wait_stream(torch.cuda.current_stream(windows.device))
            with torch.cuda.stream(side):  # warm-up off the capture: library handles and workspaces exist first
                for _ in range(2):
                    encode(static_windows)
            torch.cuda.current_stream(windows.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_embeddings = encode(static_windows)
            graph.replay()
            expected = encode(windows)
            if not torch.equal(static_embeddings, expected):
                difference = float((static_embeddings.float() - expected.float()).abs().max())
                return self._turn_off(f"its output differed from the eager encoder's by up to {difference:.3g}")
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
            return self._turn_off(f"capture failed: {type(error).__name__}: {error}")
        self.captures += 1
        return _Graph(graph, static_windows, static_embeddings, weights)

    def _turn_off(self, why: str) -> None:
        self.enabled = False
        self._graphs.clear()
        logger.warning("audio encoder CUDA graphs are off for this process (%s); encoding eagerly", why)
        return None
