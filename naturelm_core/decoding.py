"""Greedy and beam search over a left-padded batch of input embeddings, as transformers 4.44 decodes.

NatureLM-audio was published with transformers 4.44, whose beam search differs from today's (5.x
rewrote it): a finished hypothesis is stored without its stop token, scored by its summed log-prob
(stop token included) over its length (stop token included), and returned with the FIRST stop id
appended; a batch item stops once it holds `num_beams` finished hypotheses and the worst of them is at
least the best candidate's score at the current length. We reproduce those semantics here, in a loop
small enough to read, over any `TokenDecoder`: `CachedDecoder` (transformers, eager) or the static-cache
decoder of naturelm_core.static_decoding, whose steps replay as CUDA graphs on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedModel

from naturelm_core.prompting import PaddedBatch


class TokenDecoder(Protocol):
    """What the search loops drive: any causal LM over a fixed set of rows (a CUDA-graph one, a test table)."""

    def prefill(self) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def reorder(self, rows: torch.Tensor) -> None: ...


class CachedDecoder:
    """A causal LM over one batch: a prefill of the prompts, then one new token per row per step.

    Keeps the KV cache, the attention mask and each row's next position (positions count real tokens,
    so left padding changes nothing).
    """

    def __init__(self, llm: PreTrainedModel, batch: PaddedBatch) -> None:
        self.llm = llm
        self.embed_tokens: nn.Embedding = llm.get_input_embeddings()
        self.batch = batch
        self.attention_mask = batch.attention_mask
        self.next_position = batch.position_ids[:, -1] + 1
        self.cache = None

    def _forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        output = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=self.attention_mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = output.past_key_values
        logits = output.logits[:, -1, :]
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # log-softmax in at least float32

    def prefill(self) -> torch.Tensor:
        """Logits [rows, V] of each row's first generated position."""
        return self._forward(self.batch.inputs_embeds, self.batch.position_ids)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row; logits [rows, V] of the position after it."""
        ones = torch.ones_like(self.attention_mask[:, :1])
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        logits = self._forward(self.embed_tokens(tokens[:, None]), self.next_position[:, None])
        self.next_position = self.next_position + 1
        return logits

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i] (beam search keeps the best continuations)."""
        self.cache.reorder_cache(rows)
        self.attention_mask = self.attention_mask[rows]
        self.next_position = self.next_position[rows]


def greedy_search(decoder: TokenDecoder, max_new_tokens: int, stop_ids: Sequence[int]) -> list[list[int]]:
    """Argmax of the raw logits per step; a row ends after a stop id, which is kept in its ids."""
    logits = decoder.prefill()
    stop = torch.tensor(list(stop_ids), device=logits.device)
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    generated = []
    for step in range(max_new_tokens):
        tokens = logits.argmax(dim=-1)
        generated.append(tokens)
        finished = finished | torch.isin(tokens, stop)
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        logits = decoder.step(tokens)
    rows = torch.stack(generated, dim=1).tolist()
    return [_cut_after_stop(row, set(stop_ids)) for row in rows]


def _cut_after_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[: index + 1]
    return ids


@dataclass
class _Hypotheses:
    """The best `num_beams` hypotheses of one batch item: (score, tokens, ended on a stop id)."""

    num_beams: int
    length_penalty: float
    entries: list[tuple[float, list[int], bool]] = field(default_factory=list)
    done: bool = False

    def add(self, tokens: list[int], sum_logprob: float, length: int, finished: bool) -> None:
        score = sum_logprob / length**self.length_penalty
        if len(self.entries) < self.num_beams or score > self.worst_score():
            self.entries.append((score, tokens, finished))
            if len(self.entries) > self.num_beams:
                self.entries.remove(min(self.entries, key=lambda entry: entry[0]))

    def worst_score(self) -> float:
        return min(entry[0] for entry in self.entries)

    def cannot_improve(self, best_sum_logprob: float, length: int) -> bool:
        """4.44's heuristic with early_stopping=False: score the best candidate at the current length."""
        if len(self.entries) < self.num_beams:
            return False
        return self.worst_score() >= best_sum_logprob / length**self.length_penalty

    def best(self) -> tuple[list[int], bool]:
        _, tokens, finished = sorted(self.entries, key=lambda entry: entry[0])[-1]
        return tokens, finished


def beam_search(
    decoder: TokenDecoder,
    num_beams: int,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Beam search over rows already expanded per beam (row r * num_beams + k is beam k of item r)."""
    logits = decoder.prefill()
    rows, vocab = logits.shape
    items = rows // num_beams
    stops = set(stop_ids)
    candidates = max(2, 1 + len(stops)) * num_beams
    hypotheses = [_Hypotheses(num_beams, length_penalty) for _ in range(items)]
    beam_scores = torch.full((items, num_beams), -1e9, device=logits.device)
    beam_scores[:, 0] = 0.0  # only beam 0 is live at first, or every beam would pick the same tokens
    sequences: list[list[int]] = [[] for _ in range(rows)]

    for length in range(1, max_new_tokens + 1):
        scores = torch.log_softmax(logits, dim=-1) + beam_scores.view(-1, 1)
        top_scores, top_indices = torch.topk(scores.view(items, -1), candidates, dim=1)
        top_scores_list, top_indices_list = top_scores.tolist(), top_indices.tolist()
        next_scores, next_tokens, source_rows = [], [], []
        for item, item_hypotheses in enumerate(hypotheses):
            if item_hypotheses.done:  # keep the rows busy with anything; they are never read again
                next_scores += [0.0] * num_beams
                next_tokens += [stop_ids[0]] * num_beams
                source_rows += [item * num_beams] * num_beams
                continue
            kept = 0
            for rank, (score, index) in enumerate(zip(top_scores_list[item], top_indices_list[item], strict=True)):
                row, token = item * num_beams + index // vocab, index % vocab
                if token in stops:
                    if rank < num_beams:
                        item_hypotheses.add(sequences[row], score, length, finished=True)
                else:
                    next_scores.append(score)
                    next_tokens.append(token)
                    source_rows.append(row)
                    kept += 1
                    if kept == num_beams:
                        break
            item_hypotheses.done = item_hypotheses.cannot_improve(top_scores_list[item][0], length)

        sequences = [[*sequences[row], token] for row, token in zip(source_rows, next_tokens, strict=True)]
        if length == max_new_tokens or all(item.done for item in hypotheses):
            break
        beam_scores = torch.tensor(next_scores, device=logits.device).view(items, num_beams)
        source = torch.tensor(source_rows, device=logits.device)
        decoder.reorder(source)
        logits = decoder.step(torch.tensor(next_tokens, device=logits.device))

    results = []
    for item, item_hypotheses in enumerate(hypotheses):
        if not item_hypotheses.done:
            for beam in range(num_beams):
                row = item * num_beams + beam
                item_hypotheses.add(sequences[row], next_scores[row], len(sequences[row]), finished=False)
        tokens, finished = item_hypotheses.best()
        results.append([*tokens, stop_ids[0]] if finished else tokens)
    return results
