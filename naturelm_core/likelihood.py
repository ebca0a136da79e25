"""How likely each row is to answer each candidate label exactly: one prefill per row, then every candidate.

lm-evaluation-harness calls this a loglikelihood request: score given continuations of a context
instead of generating one. Here the context is a row's prompt with its audio, at the row's own alpha
or merge recipe, and the continuations are the closed set's labels (naturelm_core.label_scores says
exactly what is scored: the label's canonical tokens, then the end of the answer).

Why prefill once: a prompt is about 60 tokens (29 of them audio) and a label about 5, so scoring 50
labels by running prompt + label 50 times spends over 90% of the compute on the same prompt. Each
row's prompt runs once (`CachedDecoder.prefill`, the eager generate's own prefill, whose last logits
also score every label's first token); then the (row, candidate) pairs run in passes of at most
`max_candidates_per_pass` sequences, each pass one forward of just the label tokens over its rows'
prompt KV cache, gathered (copied) to one row per candidate.

Memory, per pass of C candidates whose longest has L tokens: the gathered cache, C x (prompt + L)
positions in every layer (Llama-3.1-8B in bf16: 128 KiB a position, 2 GiB for C = 256 and 62
positions), plus the logits, C x L x 128257 in float32 (0.5 MiB a position, a few times that while
the log-softmax is formed). The rows' prompt caches live for the whole call (about 60 positions a
row). Measured on an H100 (random weights, 176 rows x 50 two-token labels), above the model: 5.1 GiB
at C = 256 (65 rows/s), 2.4 GiB at C = 64 (25 rows/s), 16 GiB at C = 1024 (72 rows/s), before the
gathered cache was built layer by layer, which removes up to one copy of it. Candidates are ordered by
length before being cut into passes, so a pass pads its labels to about their own length. The engine
lowers C, or the rows of a batch, after an out-of-memory error (naturelm_core.engine).

The merge: every forward runs inside `row_alphas.applied(...)` with its own rows' merge (the prefill
with the call's, each pass with `merge.take` of its candidates' rows), the path generate's eager
decoding takes, so an alpha or recipe means here what it means there. The static-cache GPU path
(naturelm_core.static_decoding) is not used: scoring runs eagerly on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from naturelm_core.alpha import RowAlphas, RowMerge
from naturelm_core.decoding import CachedDecoder
from naturelm_core.label_scores import DEFAULT_CANDIDATES_PER_PASS, Candidates, LabelScores, TokenLogProbs
from naturelm_core.prompting import PaddedBatch


@torch.no_grad()
def score_candidates(
    llm: PreTrainedModel,
    row_alphas: RowAlphas,
    batch: PaddedBatch,
    merge: RowMerge,
    candidates: Sequence[Candidates],
    stop_ids: Sequence[int],
    max_candidates_per_pass: int = DEFAULT_CANDIDATES_PER_PASS,
    between_passes: Callable[[], None] | None = None,
) -> list[LabelScores]:
    """Each row's scores over its own candidate set (`candidates[row]`).

    `between_passes` is called between two passes. No merge is applied then and this call's state is
    its own tensors, so it may run other work on the model (the engine answers waiting users there).
    """
    if max_candidates_per_pass < 1:
        raise ValueError(f"max_candidates_per_pass must be at least 1, got {max_candidates_per_pass}")
    if len(candidates) != merge.rows:
        raise ValueError(f"got {len(candidates)} candidate sets for {merge.rows} rows")
    with row_alphas.applied(merge):
        prompt = CachedDecoder(llm, batch)
        first = torch.log_softmax(prompt.prefill(), dim=-1)
    pairs = [(row, ids) for row, row_candidates in enumerate(candidates) for ids in row_candidates.token_ids]
    order = sorted(range(len(pairs)), key=lambda index: len(pairs[index][1]))
    stops = torch.tensor(list(stop_ids), device=first.device)
    passes = []
    for start in range(0, len(order), max_candidates_per_pass):
        if start and between_passes is not None:
            between_passes()
        chunk = order[start : start + max_candidates_per_pass]
        passes.append((chunk, _score_pass(llm, row_alphas, prompt, first, merge, [pairs[i] for i in chunk], stops)))
    values: list[list[float]] = [[] for _ in pairs]
    for chunk, log_probs in passes:  # read back only now, so the device never waits for the host between passes
        for index, row in zip(chunk, log_probs.tolist(), strict=True):
            values[index] = row
    in_order = iter(values)
    return [_row_scores(row_candidates, in_order) for row_candidates in candidates]


def _row_scores(candidates: Candidates, values: Iterator[list[float]]) -> LabelScores:
    """A row's scores from its candidates' log-prob lists (tokens, then the end), taken in label order."""
    tokens = {}
    for label, ids, pieces in zip(candidates.labels, candidates.token_ids, candidates.pieces, strict=True):
        row = next(values)
        tokens[label] = TokenLogProbs(ids, pieces, tuple(row[: len(ids)]), row[len(ids)])
    return LabelScores.from_tokens(tokens)


def _score_pass(
    llm: PreTrainedModel,
    row_alphas: RowAlphas,
    prompt: CachedDecoder,
    first: Tensor,
    merge: RowMerge,
    pairs: list[tuple[int, tuple[int, ...]]],
    stops: Tensor,
) -> Tensor:
    """Log-probs [C, W + 1] of C (row, label ids) pairs: label token j at column j, the end at column len(ids).

    The labels are right-padded to the longest, W, with their own first id; padding comes after every
    real token, so the causal mask keeps real tokens from seeing it, and its outputs are never read.
    """
    device = first.device
    rows = torch.tensor([row for row, _ in pairs], device=device)
    lengths = torch.tensor([len(ids) for _, ids in pairs], device=device)
    width = max(len(ids) for _, ids in pairs)
    ids = torch.tensor([[*ids, *[ids[0]] * (width - len(ids))] for _, ids in pairs], device=device)
    steps = torch.arange(width, device=device)
    label_mask = (steps[None] < lengths[:, None]).to(prompt.attention_mask.dtype)
    # A generator: each layer's gathered copy is taken into the cache before the next layer's is made.
    cache = DynamicCache((k.index_select(0, rows), v.index_select(0, rows)) for k, v, _ in prompt.cache)
    with row_alphas.applied(merge.take(rows)):
        logits = llm(
            inputs_embeds=llm.get_input_embeddings()(ids),
            attention_mask=torch.cat([prompt.attention_mask[rows], label_mask], dim=1),
            position_ids=prompt.next_position[rows, None] + steps,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=0,
        ).logits
    del cache
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # log-softmax in at least float32
    normalizer = torch.logsumexp(logits, dim=-1)  # [C, W]
    following = logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] - normalizer[:, :-1]  # token j+1 after token j
    ends = torch.logsumexp(logits.index_select(-1, stops), dim=-1) - normalizer  # the end, after each position
    log_probs = torch.cat([first[rows, ids[:, 0], None], following, following.new_zeros(len(pairs), 1)], dim=1)
    return log_probs.scatter(1, lengths[:, None], ends.gather(1, lengths[:, None] - 1))
