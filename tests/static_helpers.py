"""Generation on the tiny model through the static-cache decoder or the eager one, for the static-decoding tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from naturelm_core.static_decoding import StaticDecoding


def generate_ids(
    model,
    rows: Sequence[Sequence[torch.Tensor]],
    prompts: Sequence[str],
    alphas: Sequence,
    num_beams: int,
    max_new_tokens: int,
    static: bool,
    decoding: StaticDecoding | None = None,
) -> list[list[int]]:
    """The ids `model` generates on the static path (with `decoding`'s states, when given) or the eager one; the
    model chooses its path by itself again afterwards."""
    model.decode_with_static_cache = static
    if decoding is not None:
        model.static_decoding = decoding
    try:
        return model.generate_ids_from_embeddings(rows, prompts, alphas, num_beams, max_new_tokens)
    finally:
        model.decode_with_static_cache = None


def audio_rows(count: int, seed: int) -> list[list[torch.Tensor]]:
    """`count` windows' worth of the tiny model's audio embeddings (29 x 64 each), one block per row, the same for a
    seed: the rows the static-decoding tests generate from."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(29, 64, generator=generator)] for _ in range(count)]
