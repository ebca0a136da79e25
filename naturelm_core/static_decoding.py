"""Prefill and decode from a preallocated KV cache, replayed on CUDA as captured graphs: the GPU fast path.

Why: one decode step of Llama-3.1-8B reads 15 GB of weights, about 5 ms on an H100, but eager
PyTorch spends 35-50 ms launching its ~2,000 small kernels from Python. A CUDA graph replays all of
them with one launch. A graph freezes shapes and memory addresses, so everything a step reads lives
in buffers allocated once per batch shape (naturelm_core.decode_state); the step itself is Llama's decoder
written out (naturelm_core.llama_step). Changing alpha is a copy into a buffer: the same graph serves every alpha
and every mix of alphas, with no weight writes and no recompilation.

Merge recipes (naturelm_core.recipes) ride in the same buffers: a state holds one scale per item,
layer and rank column (alpha * layers[l] * modules[m]; a plain alpha's is the alpha), applied to the
rank-r products as the alpha always was, by one multiply. A batch with a spectral row runs a second
variant of the graphs, captured the first time a state meets one: each projection's rank-r product
also goes through its singular basis (naturelm_core.spectral) at the spectral rows' weights, zero on
the other rows, whose numbers are therefore exactly those of the plain variant. Changing recipes
only changes buffer contents: no graph is captured again and no weight is written.

The attention window grows in blocks of `window_block` generated tokens (one graph per window), so
early steps of a long generation do not read columns that are still empty. Small prompt batches
(interactive requests) are prefilled by a graph too; large ones (sweeps, compute-bound) eagerly, over
the batch's own length. A few batch shapes are held at a time, each with its state and graphs.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor
from transformers import PreTrainedModel

from naturelm_core.alpha import RowMerge
from naturelm_core.decode_state import DecodeState
from naturelm_core.llama_step import LlamaStep
from naturelm_core.prompting import PaddedBatch

PROMPT_BLOCK = 16  # prompt capacity is rounded up to this, so prompts of similar length share a graph
WINDOW_BLOCK = 16  # attention window granularity, in generated tokens (one graph per window)
MAX_STATES = 4  # batch shapes kept with their buffers and graphs; the least recently used is dropped
MAX_MET_SHAPES = 64  # batch shapes remembered as met once (StaticDecoding._key_for)
SMALL_PREFILL_TOKENS = 1024  # prompt batches up to items x capacity tokens are prefilled by a graph
# An eager prefill copies its items' shared first tokens (PaddedBatch.shared_prefix) from an item of the same merge
# when that spares at least this many tokens: below it, the host-side grouping costs more than it saves.
SHARED_PREFIX_TOKENS = 512
PAUSE_PREFILL_TOKENS = 4096  # a prefill that may pause for a waiting user does so after about this many tokens


def row_capacity(rows: int) -> int:
    """Rows a state is built for: powers of two up to 32, then multiples of 32, so few graphs serve all batches."""
    if rows <= 32:
        return 1 << (rows - 1).bit_length()
    return 32 * math.ceil(rows / 32)


def item_capacity(items: int, beams: int) -> int:
    """Items a state is built for: enough for `row_capacity` of the decoded rows, and no more."""
    return math.ceil(row_capacity(items * beams) / beams)


def _merge_groups(item_merge: RowMerge) -> tuple[Tensor, Tensor]:
    """Each item's group of identical merges [items], and each group's first item [groups], on the host: the
    merges are a few hundred numbers an item (layers x projections, spectral weights), where the state's rank
    columns are 8,192 (torch.unique over those took 63 ms on an H100)."""
    parts = [item_merge.scales.flatten(1)]
    if item_merge.spectral is not None:
        parts += [item_merge.spectra, item_merge.spectral[:, None].float()]
    _, group_of_item = torch.unique(torch.cat(parts, dim=1).cpu(), dim=0, return_inverse=True)
    items = group_of_item.shape[0]
    first = torch.full((int(group_of_item.max()) + 1,), items).scatter_reduce_(
        0, group_of_item, torch.arange(items), "amin"
    )
    return group_of_item, first


class _Runner:
    """A state plus how to run it: CUDA graphs replayed on the GPU, the plain forward elsewhere.

    Graphs come in two variants, plain and spectral (`DecodeState.spectral`); each is captured the
    first time the state runs it, and replayed for every later generation, whatever its recipes.
    """

    def __init__(
        self,
        step: LlamaStep,
        state: DecodeState,
        window_block: int,
        use_graphs: bool,
        small_prefill_tokens: int,
        shared_prefix_tokens: int = SHARED_PREFIX_TOKENS,
    ) -> None:
        self.step = step
        self.state = state
        self.windows = state.windows(window_block)
        self.window_block = window_block
        self.use_graphs = use_graphs
        # A small prompt batch is prefilled over the whole capacity by a graph; a large one eagerly.
        self.prefill_by_graph = state.items * state.prompt_capacity <= small_prefill_tokens
        self.shared_prefix_tokens = shared_prefix_tokens
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, Tensor]] = {}  # by (window, spectral)
        self.prefill_graphs: dict[bool, tuple[torch.cuda.CUDAGraph, Tensor]] = {}  # by spectral
        self.captured: set[bool] = set()  # variants whose graphs exist
        self.pool: tuple | None = None  # one memory pool for all of them: their outputs live in the state

    def prepare(self, spectral: bool) -> bool:
        """Set the variant the next generation runs; capture its graphs if it is the first to. True if it did."""
        self.state.spectral = spectral
        if not self.use_graphs or spectral in self.captured:
            return False
        self._capture(prefill=self.prefill_by_graph)
        self.captured.add(spectral)
        return True

    def _capture(self, prefill: bool) -> None:
        """Capture the graphs of the state's variant; should cuDNN attention or our Triton kernels refuse to
        be captured, capture without them (the torch versions compute the same)."""
        while True:
            try:
                self._capture_graphs(prefill)
                return
            except torch.OutOfMemoryError:  # not the kernels' fault: the engine retries with fewer rows
                raise
            except RuntimeError:
                variant = self.state.spectral
                self.graphs = {key: graph for key, graph in self.graphs.items() if key[1] != variant}
                self.prefill_graphs.pop(variant, None)
                if self.step.cudnn_gqa:
                    self.step.cudnn_gqa = False
                elif any(getattr(self.step, name) for name in LlamaStep.TRITON_KERNELS):
                    for name in LlamaStep.TRITON_KERNELS:
                        setattr(self.step, name, False)
                else:
                    raise

    def _capture_graphs(self, prefill: bool) -> None:
        """Warm up on a side stream (library handles, kernel choices), then capture one graph per window
        and, for small batches, one for the prefill. Warm-up mutates the state; every generation reloads it."""
        variant = self.state.spectral
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        self.state.rewind()  # a state captured again (another variant) may sit at its last column: warm-up moves on
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _attention_kernels():
            if prefill:
                self.step.prefill(self.state)
            for window in self.windows:
                self.step.decode(self.state, window)
        torch.cuda.current_stream().wait_stream(side)
        if prefill:
            self.prefill_graphs[variant] = self._graph(self.pool, lambda: self.step.prefill(self.state))
        for window in self.windows:
            decode = functools.partial(self.step.decode, self.state, window)
            self.graphs[window, variant] = self._graph(self.pool, decode)

    @staticmethod
    def _graph(pool: tuple, run: Callable[[], Tensor]) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"), _attention_kernels():
            logits = run()
        return graph, logits

    def prefill(
        self, batch: PaddedBatch, item_merge: RowMerge, between_chunks: Callable[[], None] | None = None
    ) -> Tensor:
        """Load the prompts and run them, once per item; logits [items x beams, V] of each row's first new token.

        With `between_chunks`, a large prefill runs in chunks of about PAUSE_PREFILL_TOKENS tokens and calls
        it between them: a sweep batch's prefill (about 230 ms at 176 items on an H100) is the longest stretch
        a waiting user would otherwise sit through. Each item's prefill is independent of the others'.
        """
        items, prompt_length = batch.attention_mask.shape
        self.state.load(batch, item_merge)
        graph = self.prefill_graphs.get(self.state.spectral)
        if not self.prefill_by_graph:
            chunk = items if between_chunks is None else max(1, PAUSE_PREFILL_TOKENS // prompt_length)
            passes, sources = self._prefill_passes(batch, item_merge)
            with _attention_kernels():  # over the batch's own length: no compute on the capacity's padding
                for begin, end, shared in passes:
                    if shared:
                        self.step.copy_prefix(self.state, sources, begin, shared)
                    for first in range(begin, end, chunk):
                        if first and between_chunks is not None:
                            _catch_up(self.state.logits)  # or the host runs ahead and the pause comes too late
                            between_chunks()
                        count = min(chunk, end - first)
                        self.step.prefill(self.state, items=count, length=prompt_length, first=first, shared=shared)
            logits = self.state.logits[:items]
        elif graph is None:
            logits = self.step.prefill(self.state)[:items]
        else:
            graph[0].replay()
            logits = graph[1][:items]
        return logits.repeat_interleave(self.state.beams, dim=0)

    def _prefill_passes(
        self, batch: PaddedBatch, item_merge: RowMerge
    ) -> tuple[list[tuple[int, int, int]], Tensor | None]:
        """The eager prefill's passes (first item, end, shared tokens) and the items the second pass copies from.

        Items up to the last first-of-its-merge are prefilled whole; every later item takes its shared prompt
        prefix (PaddedBatch.shared_prefix) from the first item of its merge and computes only the rest. A sweep
        batch lists a recording's alphas together, so the first recording's items hold every merge: 8 of each
        later item's 58 prompt tokens are copied, not computed, and no pass is added.
        """
        items, shared = item_merge.rows, batch.shared_prefix
        whole = [(0, items, 0)]
        if items * shared < self.shared_prefix_tokens:
            return whole, None
        group_of_item, first_of_group = _merge_groups(item_merge)
        split = int(first_of_group.max()) + 1
        if (items - split) * shared < max(1, self.shared_prefix_tokens):
            return whole, None
        sources = first_of_group[group_of_item[split:]].to(self.state.keys.device)
        return [(0, split, 0), (split, items, shared)], sources

    def run(self, generated: int) -> Tensor:
        """The decode step that writes generated token number `generated` (0-based) of every beam."""
        window = self.windows[generated // self.window_block]
        graph = self.graphs.get((window, self.state.spectral))
        if graph is None:
            return self.step.decode(self.state, window)
        graph[0].replay()
        return graph[1]


def _catch_up(on: Tensor) -> None:
    """Wait for the device to finish what was queued: a pause point means something only when the host is not
    several chunks ahead of the GPU (work a waiting user's request would queue behind)."""
    if on.is_cuda:
        torch.cuda.current_stream(on.device).synchronize()


def _attention_kernels():
    """Memory-efficient attention (masks, bf16) or the math kernel, both safe to capture (cuDNN is asked
    for explicitly, where `_cudnn_gqa_works` found it)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class StaticDecoding:
    """Owns the decode states (and their graphs) of one model, a few batch shapes at a time."""

    def __init__(
        self,
        use_graphs: bool | None = None,
        max_states: int = MAX_STATES,
        prompt_block: int = PROMPT_BLOCK,
        window_block: int = WINDOW_BLOCK,
        small_prefill_tokens: int = SMALL_PREFILL_TOKENS,
        shared_prefix_tokens: int = SHARED_PREFIX_TOKENS,
    ) -> None:
        """`use_graphs=None` captures graphs exactly when the model is on CUDA."""
        self.use_graphs = use_graphs
        self.max_states = max_states
        self.prompt_block = prompt_block
        self.window_block = window_block
        self.small_prefill_tokens = small_prefill_tokens
        self.shared_prefix_tokens = shared_prefix_tokens
        # Keyed by (shape, slot): a generation paused for another one of the same shape (the engine answering a
        # user inside a sweep batch) must not have its state reloaded under it, so the second takes slot 1.
        self._runners: OrderedDict[tuple[tuple[int, int, int, int], int], _Runner] = OrderedDict()
        self._in_use: set[tuple[tuple[int, int, int, int], int]] = set()
        self._met: OrderedDict[tuple[int, int, int, int], None] = OrderedDict()  # shapes asked for (see _key_for)
        self._step: LlamaStep | None = None
        self._fingerprint: tuple[int, ...] = ()
        self.captures = 0  # graph sets captured (per state and variant): a benchmark proves alphas cause none

    def __deepcopy__(self, memo: dict) -> StaticDecoding:
        """A copied model starts with no states: graphs point at the original's weights."""
        return StaticDecoding(
            self.use_graphs,
            self.max_states,
            self.prompt_block,
            self.window_block,
            self.small_prefill_tokens,
            self.shared_prefix_tokens,
        )

    @property
    def step(self) -> LlamaStep | None:
        """The model's step as last built (None before the first generation)."""
        return self._step

    @property
    def shapes(self) -> list[tuple[int, int, int, int]]:
        """(item capacity, beams, prompt capacity, new tokens) of the states held, least recently used first."""
        return [shape for shape, _ in self._runners]

    def clear(self) -> None:
        self.drop_states()
        self._step = None

    def drop_states(self) -> None:
        """Forget every batch shape's buffers and graphs; the step (and its fused weight copies) stays."""
        self._runners.clear()
        self._met.clear()

    @torch.no_grad()
    def decoder(
        self,
        llm: PreTrainedModel,
        batch: PaddedBatch,
        row_alphas: RowMerge | Tensor,
        repeats: int,
        max_new_tokens: int,
        min_rows: int = 1,
    ) -> StaticCacheDecoder:
        """A decoder for one generation over `batch` (one row per item), each item repeated `repeats` times.

        `row_alphas` holds each decoded row's merge (item-major, repeated per beam), or one plain alpha
        per row [rows]; the beams of an item share its prompt, hence its merge. With `min_rows`, the state
        decodes at least that many rows (the rest padding): a sweep's first and last batches come in whatever
        size decoding's timing gives them, and one state for all the small ones is one graph capture where a
        state per size costs a capture each (~0.5 s on an H100) when a size recurs.
        """
        step = self._llama_step(llm)
        step.refresh()
        items, prompt_length = batch.attention_mask.shape
        rows = items * repeats
        merge = row_alphas if isinstance(row_alphas, RowMerge) else RowMerge.from_alphas(row_alphas, len(step.layers))
        if merge.rows != rows:
            raise ValueError(f"expected {rows} row alphas (items x repeats), got {merge.rows}")
        if merge.spectra is not None and merge.spectra.shape[1] < max(step.lora_ranks):
            raise ValueError(f"{merge.spectra.shape[1]} spectral weights per row for LoRA ranks {step.lora_ranks}")
        prompt_capacity = self.prompt_block * math.ceil(prompt_length / self.prompt_block)
        shape = (item_capacity(max(items, -(-min_rows // repeats)), repeats), repeats, prompt_capacity, max_new_tokens)
        key = self._key_for(shape)
        runner = self._runners.get(key)
        if runner is None:
            while len(self._runners) >= self.max_states:
                self._runners.popitem(last=False)
            use_graphs = step.weight.is_cuda if self.use_graphs is None else self.use_graphs
            state = DecodeState(step, *shape)
            runner = _Runner(
                step, state, self.window_block, use_graphs, self.small_prefill_tokens, self.shared_prefix_tokens
            )
        self.captures += runner.prepare(spectral=merge.spectral is not None)
        self._runners[key] = runner
        self._runners.move_to_end(key)
        self._in_use.add(key)
        return StaticCacheDecoder(
            runner, batch, merge.take(slice(None, None, repeats)), rows, lambda: self._in_use.discard(key)
        )

    def _key_for(self, shape: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], int]:
        """The state a generation of `shape` runs in: its own where held; the first time a shape is met, the
        smallest free held state of the same beams, prompt capacity and new tokens with more items, if any.

        Why: a sweep meets one-off batch sizes (its first batch of one recording, a short last one) and a
        state of their own costs its graphs' capture (~0.5 s on an H100, the time of several batches), where
        a held larger state only decodes the padding rows for one generation. A shape met again gets its own.
        """
        own = (shape, next(slot for slot in itertools.count() if (shape, slot) not in self._in_use))
        if own in self._runners or shape in self._met:
            return own
        self._met[shape] = None
        while len(self._met) > MAX_MET_SHAPES:
            self._met.popitem(last=False)
        larger = [
            key for key in self._runners if key not in self._in_use and key[0][1:] == shape[1:] and key[0][0] > shape[0]
        ]
        return min(larger, key=lambda key: key[0][0]) if larger else own

    def _llama_step(self, llm: PreTrainedModel) -> LlamaStep:
        """The step for `llm`, rebuilt (and every graph dropped) when the model or a weight's address changed."""
        if self._step is None or self._step.llm is not llm or self._step.fingerprint() != self._fingerprint:
            self.clear()
            self._step = LlamaStep(llm)
            self._fingerprint = self._step.fingerprint()
        return self._step


class StaticCacheDecoder:
    """The `TokenDecoder` of one generation on a static state; see the module docstring.

    The logits a call returns live in the state and are overwritten by the next call: read them first
    (the search loops do). `reorder` expects beam search's rows: each row continues a beam of its own item.
    """

    def __init__(
        self,
        runner: _Runner,
        batch: PaddedBatch,
        item_merge: RowMerge,
        rows: int,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.runner = runner
        self.batch = batch
        self.item_merge = item_merge
        self.rows = rows
        self.generated = 0
        self.between_steps: Callable[[], None] | None = None
        self.release = release  # the state is free for another generation of its shape once this is called

    @torch.no_grad()
    def prefill(self) -> Tensor:
        return self.runner.prefill(self.batch, self.item_merge, self.between_steps)

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        if self.generated >= self.runner.state.max_new_tokens:
            raise RuntimeError(f"the state holds {self.runner.state.max_new_tokens} new tokens; no room for more")
        self.runner.state.tokens[: self.rows].copy_(tokens)
        logits = self.runner.run(self.generated)
        self.generated += 1
        return logits[: self.rows]

    @torch.no_grad()
    def reorder(self, rows: Tensor) -> None:
        self.runner.state.reorder(rows, self.generated)
