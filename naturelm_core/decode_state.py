"""Every buffer a static prefill or decode step reads or writes, allocated once per batch shape.

Why: a CUDA graph freezes shapes and memory addresses, so everything a step reads lives in buffers allocated once
per batch shape: the KV cache, the attention mask, each item's position, the input tokens and, crucially, each
item's alpha. Changing alpha is a copy into that buffer: the same graph (naturelm_core.static_decoding) serves
every alpha and every mix of alphas, with no weight writes and no recompilation.

Merge recipes (naturelm_core.recipes) ride in the same buffers: a state holds one scale per item,
layer and rank column (alpha * layers[l] * modules[m]; a plain alpha's is the alpha), applied to the
rank-r products as the alpha always was, by one multiply; a spectral row's sit beside them
(`spectral_scales`), zero on the other rows.

The beams of one item share its prompt, so the cache holds each item's prompt once (left-padded to
`prompt_capacity` columns), then its beams' generated tokens interleaved: column
`prompt_capacity + t * beams + b` holds the token row b generated at step t. A decode step is then a
pass over `beams` tokens per item, each seeing the prompt and the generated columns of its own history,
a per-item mask (`DecodeState.ancestry`) that beam search's reorder gathers instead of moving keys and
values: at the sweep batch (176 items x 2 beams) attention reads each prompt once instead of once per
beam (74 -> 53 µs per layer, benchmarks/decode_parts.py), and a prompt is prefilled once per item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from naturelm_core.alpha import RowMerge
from naturelm_core.prompting import PaddedBatch


class SteppedModel(Protocol):
    """What shapes a state's buffers: naturelm_core.llama_step's LlamaStep, which imports this module (so this one
    names only what it reads)."""

    @property
    def weight(self) -> Tensor: ...  # the token embeddings: device, dtype and hidden size

    layers: Sequence[object]
    num_kv_heads: int
    head_dim: int
    lora_ranks: tuple[int, ...]
    lm_head: nn.Linear
    rotary_emb: nn.Module


class DecodeState:
    """Every buffer a forward pass reads or writes, for one shape: (items, beams, prompt capacity, new tokens).

    Column `prompt_capacity + t * beams + b` of an item's cache holds the token row b generated at step t;
    `ancestry[i, b]` marks the columns beam b of item i sees (the prompt, and its history's tokens).
    Each item's merge: `scales` [items, layers, rank columns q | k | v | o], every column of projection m
    at alpha * layers[l] * modules[m], and `spectral_scales` the same times the direction's weight w_i
    for spectral items; each zero on the other kind of item. `spectral`: whether the loaded generation
    has a spectral item (the graph variant it runs).
    """

    def __init__(self, step: SteppedModel, items: int, beams: int, prompt_capacity: int, max_new_tokens: int) -> None:
        weight = step.weight
        device, dtype = weight.device, weight.dtype
        self.items = items
        self.beams = beams
        self.rows = items * beams
        self.prompt_capacity = prompt_capacity
        self.max_new_tokens = max_new_tokens
        self.length = prompt_capacity + max_new_tokens * beams
        shape = (len(step.layers), items, step.num_kv_heads, self.length, step.head_dim)
        # Zeros, not empty: masked columns still meet the values in softmax(.) @ V, and 0 * NaN is NaN.
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        # Prompt columns holding real tokens, and generated columns written so far.
        self.mask = torch.zeros(items, self.length, device=device, dtype=torch.bool)
        column_beam = (torch.arange(self.length, device=device) - prompt_capacity) % beams
        is_prompt = torch.arange(self.length, device=device) < prompt_capacity
        # Which columns beam b's token may see at the start of a generation: the whole prompt, and the columns of
        # beam b. `ancestry` is that per item, and after each reorder the columns of the beam it continues.
        self.own_beam = is_prompt[None] | (column_beam[None] == torch.arange(beams, device=device)[:, None])
        self.ancestry = self.own_beam.expand(items, -1, -1).clone()  # [items, beams, length]
        self.positions = torch.zeros(items, device=device, dtype=torch.long)
        self.columns = prompt_capacity + torch.arange(beams, device=device)
        self.tokens = torch.zeros(self.rows, device=device, dtype=torch.long)
        self.ranks = step.lora_ranks
        self.scales = torch.zeros(items, len(step.layers), sum(self.ranks), device=device, dtype=torch.float32)
        self.spectral_scales = torch.zeros_like(self.scales)
        self.spectral = False
        vocab = step.lm_head.weight.shape[0]
        self.projected = torch.empty(self.rows, vocab - vocab % 8 + 8, device=device, dtype=dtype)
        self.logits = torch.empty(self.rows, vocab, device=device, dtype=torch.promote_types(dtype, torch.float32))
        self.prompt_embeds = torch.zeros(items, prompt_capacity, weight.shape[1], device=device, dtype=dtype)
        self.prompt_positions = torch.zeros(items, prompt_capacity, device=device, dtype=torch.long)
        self.prompt_columns = torch.arange(prompt_capacity, device=device)
        self.causal = torch.ones(prompt_capacity, prompt_capacity, device=device, dtype=torch.bool).tril()
        positions = torch.arange(prompt_capacity + max_new_tokens, device=device)[None]
        cos, sin = step.rotary_emb(weight[:1], positions)
        half = step.head_dim // 2
        self.cos = cos[0]
        self.signed_sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)

    def windows(self, window_block: int) -> list[int]:
        """The attention windows decode steps use: prompt capacity plus whole blocks of generated tokens."""
        blocks = math.ceil(self.max_new_tokens / window_block)
        return [
            self.prompt_capacity + min(self.max_new_tokens, (b + 1) * window_block) * self.beams for b in range(blocks)
        ]

    def load(self, batch: PaddedBatch, item_merge: RowMerge) -> None:
        """Start a generation: each item's prompt right-aligned in the prompt columns, nothing generated."""
        items, prompt_length = batch.attention_mask.shape
        start = self.prompt_capacity - prompt_length
        self.prompt_embeds[:items, :start] = 0.0
        self.prompt_embeds[:items, start:] = batch.inputs_embeds
        self.mask.zero_()
        self.mask[:items, start : self.prompt_capacity] = batch.attention_mask.bool()
        self.prompt_positions[:items] = 0
        self.prompt_positions[:items, start:] = batch.position_ids
        self.rewind()
        self.positions[:items] = batch.position_ids[:, -1] + 1
        self.tokens.zero_()
        scales, spectral_scales = _rank_columns(item_merge, self.ranks)
        self.scales.zero_()
        self.scales[:items] = scales
        self.spectral_scales.zero_()
        if spectral_scales is not None:
            self.spectral_scales[:items] = spectral_scales
        self.spectral = spectral_scales is not None

    def rewind(self) -> None:
        """Back to the first generated column, as `load` leaves it, without touching the prompts."""
        self.columns.copy_(self.prompt_capacity + torch.arange(self.beams, device=self.columns.device))
        self.positions.zero_()
        self.ancestry.copy_(self.own_beam.expand_as(self.ancestry))

    def reorder(self, rows: Tensor, generated: int) -> None:
        """Row i continues beam rows[i], a beam of its own item: the generated columns that beam sees become row
        i's. Nothing moves in the cache: a beam's history is a set of columns (`ancestry`), gathered here, a few
        bytes per item, where moving the keys and values themselves copied up to 0.5 GB a step at the sweep
        batch. Each beam's next token still goes to its own column, which no other beam's history holds."""
        items = rows.shape[0] // self.beams
        first_row = torch.arange(items, device=rows.device)[:, None] * self.beams
        source_beam = (rows.view(items, self.beams) - first_row)[:, :, None]  # [items, beams, 1]
        stop = self.prompt_capacity + generated * self.beams
        history = self.ancestry[:items, :, self.prompt_capacity : stop]
        history.copy_(torch.gather(history, 1, source_beam.expand_as(history)))


def _rank_columns(merge: RowMerge, ranks: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    """Per item and layer, the scale of every rank column (see `DecodeState`): plain items' (a copy of their
    scale, so a plain alpha's numbers are unchanged), and spectral items' (None when there are none)."""
    scales = merge.scales.repeat_interleave(torch.tensor(ranks, device=merge.scales.device), dim=2)
    if merge.spectral is None:
        return scales, None
    weights = torch.cat([merge.spectra[:, :rank] for rank in ranks], dim=1)  # [items, rank columns]
    spectral = merge.spectral[:, None, None]
    return scales.masked_fill(spectral, 0.0), (scales * weights[:, None, :]).masked_fill(~spectral, 0.0)
