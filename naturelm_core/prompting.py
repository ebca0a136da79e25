"""From a user's prompt and audio embeddings to the LLM's input embeddings, as NatureLM-audio builds them.

Text and audio meet in embedding space: the templated prompt is split at each `<AudioHere>`, the text
pieces are embedded, and one window's audio embeddings go where each placeholder was. A batch of such
sequences is LEFT-padded, so every row's last position is its real last token and generation can
append to all rows at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from naturelm_core.config import AUDIO_PLACEHOLDER, AUDIO_PROMPT_PREFIX
from naturelm_core.host_copies import to_device


def apply_template(prompt: str, template: str) -> str:
    """The audio prefix is prepended to a prompt that has no audio placeholder at all, then stripped.

    Upstream prepends unless the exact prefix with its trailing space is present, so a prompt written
    with "<Audio><AudioHere></Audio>\n" (the paper fork's in-context queries) got one placeholder more
    than it has recordings. Here a placeholder the user wrote anywhere counts.
    """
    if AUDIO_PLACEHOLDER not in prompt:
        prompt = AUDIO_PROMPT_PREFIX + prompt
    return template.format(prompt.strip())


def tokenize_prompt(tokenizer, prompt: str, template: str) -> list[list[int]]:
    """Token ids of the text pieces around each placeholder; pieces = placeholders + 1.

    No special tokens are added (BOS is one embedding in front, added by `assemble_batch`); special-token
    strings written in the text, like `<|eot_id|>`, still become their single ids.
    """
    pieces = apply_template(prompt, template).split(AUDIO_PLACEHOLDER)
    return [tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in pieces]


def assemble_batch(
    embed_tokens: nn.Embedding,
    bos_id: int,
    pad_id: int,
    rows: Sequence[tuple[Sequence[Sequence[int]], Sequence[torch.Tensor]]],
) -> PaddedBatch:
    """The left-padded batch of every row's BOS, text pieces and audio blocks [T_i, H], in that order.

    Rows with the same pieces and audio lengths share one layout (a sweep batch: one prompt and one window per
    row, 176 rows), so the batch is written per layout: its text tokens in one embedding lookup and indexed
    write for the whole batch, each of its placeholders in one copy of its rows' stacked blocks. Row by row
    this took 4.4-7.4 ms of an H100 host's time per sweep batch with the GPU idle before the prefill
    (2026-12-07 12:53Z). The host's ids, mask and positions reach the GPU in one copy from pinned memory that
    does not wait for the queue, so the batch is built while the audio encoder still runs. A row is
    (piece ids, audio blocks), with one block per placeholder, so pieces = blocks + 1.
    """
    weight = embed_tokens.weight
    hidden = weight.shape[1]
    layouts: dict[tuple[tuple[tuple[int, ...], ...], tuple[int, ...]], list[int]] = {}
    for row, (piece_ids, audio) in enumerate(rows):
        if len(audio) != len(piece_ids) - 1:
            raise ValueError(
                f"row {row}: the prompt has {len(piece_ids) - 1} {AUDIO_PLACEHOLDER} placeholder(s) but "
                f"{len(audio)} audio embedding block(s) were given; pass one block per placeholder"
            )
        for block in audio:
            if block.dim() != 2 or block.shape[1] != hidden:
                raise ValueError(f"row {row}: an audio embedding block must be [T, {hidden}], got {tuple(block.shape)}")
        key = (tuple(map(tuple, piece_ids)), tuple(len(block) for block in audio))
        layouts.setdefault(key, []).append(row)
    row_lengths = np.empty(len(rows), dtype=np.int64)
    for (pieces, audio_lengths), members in layouts.items():
        row_lengths[members] = 1 + sum(map(len, pieces)) + sum(audio_lengths)
    length = int(row_lengths.max())
    inputs_embeds = weight[pad_id].expand(len(rows), length, hidden).clone()
    text_rows, text_columns, text_ids = [], [], []
    for (pieces, audio_lengths), members in layouts.items():
        column = length - int(row_lengths[members[0]])
        texts = [[bos_id, *pieces[0]], *pieces[1:]]
        for placeholder, ids in enumerate(texts):
            text_rows.append(np.repeat(members, len(ids)))
            text_columns.append(np.tile(np.arange(column, column + len(ids)), len(members)))
            text_ids.append(np.tile(np.asarray(ids, dtype=np.int64), len(members)))
            column += len(ids)
            if placeholder < len(audio_lengths):
                blocks = torch.stack([rows[row][1][placeholder] for row in members])
                audio_columns = slice(column, column + audio_lengths[placeholder])
                inputs_embeds[_rows_of(members), audio_columns] = blocks.to(device=weight.device, dtype=weight.dtype)
                column += audio_lengths[placeholder]
    starts = length - row_lengths
    attention_mask = (np.arange(length)[None] >= starts[:, None]).astype(np.int64)
    position_ids = np.maximum(attention_mask.cumsum(axis=1) - 1, 0)
    where, attention_mask, position_ids = _to_device(
        weight.device,
        np.stack([np.concatenate(text_rows), np.concatenate(text_columns), np.concatenate(text_ids)]),
        attention_mask,
        position_ids,
    )
    inputs_embeds[where[0], where[1]] = embed_tokens(where[2])
    shortest = int(row_lengths.min())
    shared = _shared_prefix([[bos_id, *pieces[0]] for pieces, _ in layouts], shortest)
    return PaddedBatch(inputs_embeds, attention_mask, position_ids, shared)


def _rows_of(members: list[int]) -> slice | list[int]:
    """A layout's rows as a slice where they are consecutive (always in a sweep batch): indexing with a list
    copies it to the GPU and waits for the queue."""
    if members[-1] - members[0] == len(members) - 1:
        return slice(members[0], members[-1] + 1)
    return members


def _to_device(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    """Integer arrays on `device` in one copy that does not wait for the GPU (naturelm_core.host_copies)."""
    packed = to_device(torch.from_numpy(np.concatenate([array.ravel() for array in arrays])), device)
    tensors, start = [], 0
    for array in arrays:
        tensors.append(packed[start : start + array.size].view(array.shape))
        start += array.size
    return tensors


def _shared_prefix(leading: Sequence[Sequence[int]], shortest: int) -> int:
    """How many first tokens every row has in common: the same ids at the same positions, hence the same keys and
    values at any one merge. Each row keeps at least its last token to itself (its logits start the answer)."""
    common = 0
    for ids in zip(*leading, strict=False):
        if any(token != ids[0] for token in ids):
            break
        common += 1
    return min(common, shortest - 1)


@dataclass
class PaddedBatch:
    """LLM inputs of a left-padded batch; positions count real tokens only, so padding shifts nothing."""

    inputs_embeds: torch.Tensor  # [B, L, H]
    attention_mask: torch.Tensor  # [B, L], 0 on padding
    position_ids: torch.Tensor  # [B, L], 0 on padding, then 0, 1, ... on the real tokens
    shared_prefix: int = 0  # first real tokens identical in every row (text before the first audio block)

    def repeat_rows(self, repeats: int) -> PaddedBatch:
        """Each row `repeats` times in place (row r -> rows r * repeats ..), as beam search lays out beams."""
        return PaddedBatch(
            self.inputs_embeds.repeat_interleave(repeats, dim=0),
            self.attention_mask.repeat_interleave(repeats, dim=0),
            self.position_ids.repeat_interleave(repeats, dim=0),
            self.shared_prefix,
        )
