"""From a user's prompt and audio embeddings to the LLM's input embeddings, as NatureLM-audio builds them.

Text and audio meet in embedding space: the templated prompt is split at each `<AudioHere>`, the text
pieces are embedded, and one window's audio embeddings go where each placeholder was. A batch of such
sequences is LEFT-padded, so every row's last position is its real last token and generation can
append to all rows at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from naturelm_core.config import AUDIO_PLACEHOLDER, AUDIO_PROMPT_PREFIX


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

    No special tokens are added (BOS is one embedding in front, added by `splice`); special-token
    strings written in the text, like `<|eot_id|>`, still become their single ids.
    """
    pieces = apply_template(prompt, template).split(AUDIO_PLACEHOLDER)
    return [tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in pieces]


def splice(
    embed_tokens: nn.Embedding, bos_id: int, piece_ids: Sequence[Sequence[int]], audio: Sequence[torch.Tensor]
) -> torch.Tensor:
    """[L, H] input embeddings: BOS, then text pieces alternating with the audio blocks [T_i, H]."""
    if len(audio) != len(piece_ids) - 1:
        raise ValueError(
            f"the prompt has {len(piece_ids) - 1} {AUDIO_PLACEHOLDER} placeholder(s) but {len(audio)} audio "
            "embedding block(s) were given; pass one block per placeholder"
        )
    weight = embed_tokens.weight
    parts = [embed_tokens(torch.tensor([bos_id, *piece_ids[0]], device=weight.device))]
    for block, ids in zip(audio, piece_ids[1:], strict=True):
        if block.dim() != 2 or block.shape[1] != weight.shape[1]:
            raise ValueError(f"an audio embedding block must be [T, {weight.shape[1]}], got {tuple(block.shape)}")
        parts.append(block.to(device=weight.device, dtype=weight.dtype))
        parts.append(embed_tokens(torch.tensor(list(ids), dtype=torch.long, device=weight.device)))
    return torch.cat(parts)


@dataclass
class PaddedBatch:
    """LLM inputs of a left-padded batch; positions count real tokens only, so padding shifts nothing."""

    inputs_embeds: torch.Tensor  # [B, L, H]
    attention_mask: torch.Tensor  # [B, L], 0 on padding
    position_ids: torch.Tensor  # [B, L], 0 on padding, then 0, 1, ... on the real tokens

    def repeat_rows(self, repeats: int) -> PaddedBatch:
        """Each row `repeats` times in place (row r -> rows r * repeats ..), as beam search lays out beams."""
        return PaddedBatch(
            self.inputs_embeds.repeat_interleave(repeats, dim=0),
            self.attention_mask.repeat_interleave(repeats, dim=0),
            self.position_ids.repeat_interleave(repeats, dim=0),
        )


def left_pad(sequences: Sequence[torch.Tensor], pad_embedding: torch.Tensor) -> PaddedBatch:
    """Stack [L_i, H] sequences to [B, max L, H], filling the front of shorter rows with `pad_embedding`."""
    length = max(sequence.shape[0] for sequence in sequences)
    hidden = pad_embedding.shape[-1]
    inputs_embeds = pad_embedding.expand(len(sequences), length, hidden).clone()
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long, device=pad_embedding.device)
    for row, sequence in enumerate(sequences):
        inputs_embeds[row, length - sequence.shape[0] :] = sequence
        attention_mask[row, length - sequence.shape[0] :] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return PaddedBatch(inputs_embeds, attention_mask, position_ids)
