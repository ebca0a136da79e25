"""CUDA graphs of the audio encoder, for Explore's few-window calls and a sweep's recurring chunk.

One call through BEATs and the Q-Former launches 466 kernels in float32 and 740 under bf16 autocast,
which adds a cast before most products. A graph per (device, window count and length, precision)
replays the same kernels without the host: on an H100 (docs/perf/h100-2026-12-07T1137Z/results.md,
audio_encoder and profile) one window took 4.5 ms from a graph against 19.6 ms eagerly in bf16, and
8.3 against 14.1 ms in float32.

A sweep batch encodes its windows in one call (16 recordings x 11 alphas share 16 windows) or in
chunks of the engine's ENCODER_CHUNK = 32, and eagerly that call is bound by the host too: 16 windows
took 1.28 ms a window = 20.4 ms (15-21 ms of host time) against about 11.4 ms of GPU work at 0.71 ms a
window (176 windows; docs/perf/h100-2026-12-07T1137Z/results.md, audio_encoder), on a one-batch sweep's
critical path. So calls of up to GRAPH_MAX_WINDOWS = 32 windows are replayed, under three rules that
keep graphs from costing more than they save:

- Up to FIRST_SIGHT_WINDOWS = 4 windows, a shape is captured the first time it is met, as before.
- A larger call is padded (copies of its last window) to a power of two of at least
  LARGE_GRAPH_MIN_WINDOWS = 16 windows, up to GRAPH_MAX_WINDOWS: a sweep from files meets remainder
  chunks of every size between 5 and 31 as decoding's timing shapes its batches, and each size would
  need a capture of its own; padded, they are two shapes. A padded window costs ~0.85 ms of GPU in bf16.
- A larger shape is captured the second time it is met: a sweep repeats its chunk every batch, while
  a one-off remainder chunk would pay a capture (two warm-up runs, the capture, an eager check) for
  nothing. Sightings are remembered for the last SIGHTINGS_HELD shapes only.
- A large graph holds its activations in a private memory pool, so at most MAX_LARGE_GRAPHS of them
  are held (the least recently used is dropped, its pool with it), none is captured while the GPU has
  less than LARGE_CAPTURE_MIN_FREE_BYTES free (a 24 GB Space GPU holds a 16 GB LLM), and running out
  of memory while capturing one leaves that shape eager for the process.

Each graph is checked once, when captured, against the eager encoder on the same (padded) input, bit for
bit; a difference or any other failure to capture turns graphs off for the process (logged), so a graph
can cost time but never change an embedding beyond what the call's batch size changes in an eager call
(the order of a product's sums may differ between batch sizes: bf16 rounding).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from naturelm_core.weight_addresses import WeightAddresses

logger = logging.getLogger(__name__)

FIRST_SIGHT_WINDOWS = 4  # Explore answers one window at a time; detection's interactive calls a few
GRAPH_MAX_WINDOWS = 32  # a sweep batch's encoder chunk (engine.ENCODER_CHUNK; a test checks they agree)
MAX_LARGE_GRAPHS = 2  # a sweep's full chunk and the remainder its batches repeat; each holds a call's activations
LARGE_CAPTURE_MIN_FREE_BYTES = 8 * 1024**3  # what must stay free for the LLM's batches beside the pools
SIGHTINGS_HELD = 64  # shapes whose first sighting is remembered
LARGE_GRAPH_MIN_WINDOWS = 16  # larger calls are padded to a power of two of at least this many windows


def graph_windows(count: int, first_sight_windows: int = FIRST_SIGHT_WINDOWS, most: int = GRAPH_MAX_WINDOWS) -> int:
    """The windows a graph for a call of `count` windows encodes: `count` for a few windows, else padded to one of
    a few sizes, so every remainder chunk of a sweep shares a graph with its neighbours."""
    if count <= first_sight_windows:
        return count
    return min(most, max(LARGE_GRAPH_MIN_WINDOWS, 1 << (count - 1).bit_length()))


class _CapturePolicy:
    """Which shapes to capture and which large graphs to drop: decisions only, no CUDA, so a CPU can test them.

    Keys are whatever identifies a graph (device, shape, precision); `windows` is the call's window count.
    """

    def __init__(
        self,
        first_sight_windows: int = FIRST_SIGHT_WINDOWS,
        max_large_graphs: int = MAX_LARGE_GRAPHS,
        min_free_bytes: int = LARGE_CAPTURE_MIN_FREE_BYTES,
        sightings_held: int = SIGHTINGS_HELD,
    ) -> None:
        self.first_sight_windows = first_sight_windows
        self.max_large_graphs = max_large_graphs
        self.min_free_bytes = min_free_bytes
        self.sightings_held = sightings_held
        self._sightings: OrderedDict[Hashable, None] = OrderedDict()  # large keys met once, oldest first
        self._large: OrderedDict[Hashable, None] = OrderedDict()  # held large graphs, least recently used first
        self._eager_only: set[Hashable] = set()  # large keys whose capture ran out of memory
        self._told_low_memory = False

    def is_large(self, windows: int) -> bool:
        """Whether a call of `windows` windows is captured at its second sighting and counted against the bound."""
        return windows > self.first_sight_windows

    def should_capture(self, key: Hashable, windows: int, free_bytes: Callable[[], int]) -> bool:
        """Whether a call with no graph for `key` captures one now; a call that does not is encoded eagerly.

        `free_bytes` (the GPU's free memory) is asked only where a large capture is otherwise due.
        """
        if not self.is_large(windows):
            return True
        if key in self._eager_only:
            return False
        if key not in self._sightings:
            self._sightings[key] = None
            if len(self._sightings) > self.sightings_held:
                self._sightings.popitem(last=False)
            return False
        self._sightings.move_to_end(key)
        free = free_bytes()
        if free < self.min_free_bytes:
            if not self._told_low_memory:
                self._told_low_memory = True
                logger.info(
                    "audio encoder: a %d-window call stays eager (%.1f GiB free, under the %.1f GiB a large CUDA "
                    "graph capture leaves); such calls are captured once memory allows",
                    windows,
                    free / 1024**3,
                    self.min_free_bytes / 1024**3,
                )
            return False
        return True

    def captured(self, key: Hashable, windows: int) -> list[Hashable]:
        """Note a graph captured for `key`; the large keys whose graphs must now be dropped to keep the bound."""
        if not self.is_large(windows):
            return []
        self._large[key] = None
        self._large.move_to_end(key)
        evicted = []
        while len(self._large) > self.max_large_graphs:
            evicted.append(self._large.popitem(last=False)[0])
        return evicted

    def used(self, key: Hashable) -> None:
        """Note a replay of `key`'s graph: the least recently replayed large graph is the one dropped."""
        if key in self._large:
            self._large.move_to_end(key)

    def failed_out_of_memory(self, key: Hashable) -> None:
        """`key`'s large capture ran out of memory: encode it eagerly from now on, and hold no graph for it."""
        self._eager_only.add(key)
        self._large.pop(key, None)


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
        self._policy = _CapturePolicy()
        self._lock = threading.Lock()
        self._addresses: WeightAddresses | None = None  # of the encoder last served

    def __deepcopy__(self, memo: dict) -> EncoderGraphs:
        """A copied model starts with no graphs: these read and write the original's tensors."""
        copy = EncoderGraphs(self.max_windows)
        copy.enabled = self.enabled
        return copy

    def encode(
        self, module: nn.Module, encode: Callable[[Tensor], Tensor], windows: Tensor, precision: str
    ) -> Tensor | None:
        """`encode(windows)` replayed from a graph, or None where no graph serves (CPU, many windows, off,
        a large shape met for the first time or while memory is short).

        `module` is the encoder `encode` runs: a graph captured before its weights moved (a reload that
        replaced the tensors) is captured again rather than read from freed memory.
        """
        count = windows.shape[0]
        if not self.enabled or windows.device.type != "cuda" or count > self.max_windows:
            return None
        padded = graph_windows(count, self._policy.first_sight_windows, self.max_windows)
        if padded > count:
            windows = torch.cat((windows, windows[-1:].expand(padded - count, -1)))
        key = (windows.device, tuple(windows.shape), precision)
        with self._lock:
            if self._addresses is None or self._addresses.module is not module:
                self._addresses = WeightAddresses(module)
            weights = self._addresses.addresses()
            graph = self._graphs.get(key)
            if graph is None or graph.weights != weights:
                graph = self._capture_if_due(key, encode, windows, weights)
                if graph is None:
                    return None
            else:
                self._policy.used(key)
            graph.windows.copy_(windows)
            graph.graph.replay()
            return graph.embeddings[:count].clone()

    def _capture_if_due(
        self, key: tuple, encode: Callable[[Tensor], Tensor], windows: Tensor, weights: tuple[int, ...]
    ) -> _Graph | None:
        """A graph for `key`, captured now if the policy says so, held, and large ones beyond the bound dropped."""
        count = windows.shape[0]
        if not self._policy.should_capture(key, count, lambda: torch.cuda.mem_get_info(windows.device)[0]):
            return None
        out_of_memory = False
        try:
            graph = self._capture(encode, windows, weights)
        except torch.cuda.OutOfMemoryError as error:
            if not self._policy.is_large(count):
                return self._turn_off(f"capture failed: {type(error).__name__}: {error}")
            out_of_memory = True  # handled below, once the failed capture's tensors are released with `error`
        except RuntimeError as error:
            return self._turn_off(f"capture failed: {type(error).__name__}: {error}")
        if out_of_memory:
            return self._stay_eager_out_of_memory(key, count)
        if graph is None:
            return None
        self._graphs[key] = graph
        for evicted in self._policy.captured(key, count):
            del self._graphs[evicted]  # its graph and buffers go, and with them its memory pool
        return graph

    def _capture(self, encode: Callable[[Tensor], Tensor], windows: Tensor, weights: tuple[int, ...]) -> _Graph | None:
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
        self.captures += 1
        return _Graph(graph, static_windows, static_embeddings, weights)

    def _stay_eager_out_of_memory(self, key: tuple, windows: int) -> None:
        """A large capture that ran out of memory would run out again: that shape alone stays eager."""
        self._policy.failed_out_of_memory(key)
        self._graphs.pop(key, None)  # a graph of older weights, were there one
        torch.cuda.empty_cache()  # the failed capture's pool, released, goes back to the GPU
        logger.info(
            "audio encoder: capturing a %d-window CUDA graph ran out of memory; that shape stays eager", windows
        )
        return None

    def _turn_off(self, why: str) -> None:
        self.enabled = False
        self._graphs.clear()
        self._policy = _CapturePolicy()  # its large keys named the graphs just dropped
        logger.warning("audio encoder CUDA graphs are off for this process (%s); encoding eagerly", why)
        return None
