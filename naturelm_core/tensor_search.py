"""Greedy and beam search as fixed-shape tensor work: no host synchronisation per step.

naturelm_core.decoding reads every step's candidates back to the host (`.tolist()`, `bool(...)`), so on
a GPU each step waits for the device, however fast its CUDA graph replays. Here a step is pure tensor
work over buffers allocated once per (batch shape, stop ids, length penalty): it can be captured in the
same CUDA graph as the decode step. The host asks whether everything is done only every few steps
(`all_done`), and reads the answer once (`finish`).

The semantics are decoding.py's (transformers 4.44), token for token. Its Python lists become tables:

- an item's list of at most `num_beams` hypotheses is `num_beams` slots with an insertion stamp. List
  order is stamp order, so `list.remove(min(...))` frees the oldest slot among the lowest scores, and
  `best()`, the last of a stable sort, is the newest slot among the highest;
- the loop over candidates is unrolled over the first `num_beams` ranks (only a stop id there ends a
  hypothesis), and the first `num_beams` candidates that are not stop ids, in rank order, come from a
  stable sort of the stop flags;
- scores follow the same arithmetic: beam scores carried in float32 between steps (decoding.py's
  torch.tensor of Python floats), hypothesis scores and comparisons in float64 as Python floats,
  divided by `length ** length_penalty` values that Python itself computed once per length.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from naturelm_core import beam_candidates
from naturelm_core.decoding import TokenDecoder

# Live beams other than beam 0 start here, as in decoding.beam_search: otherwise every beam picks the same tokens.
_DEAD_BEAM_SCORE = -1e9
_NO_SLOT = torch.iinfo(torch.long).max


def _require_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _stop_tensor(stop_ids: Sequence[int], device: torch.device | str | None) -> Tensor:
    if len(stop_ids) == 0:
        raise ValueError("stop_ids is empty: generation needs at least one stop id")
    return torch.tensor(list(dict.fromkeys(stop_ids)), dtype=torch.long, device=device)


def _is_stop(tokens: Tensor, stops: Tensor) -> Tensor:
    """Elementwise membership without torch.isin, whose kernels may sort: a broadcast compare captures anywhere."""
    return (tokens[..., None] == stops).any(dim=-1)


def _put(target: Tensor, mask: Tensor, value: Tensor | int | bool) -> None:
    """target[mask] = value without boolean indexing (whose shapes depend on the data): in place, one kernel.

    A tensor value goes through torch.where, never masked_fill_, which may read a 0-dim tensor to the host.
    """
    if isinstance(value, Tensor):
        torch.where(mask, value, target, out=target)
    else:
        target.masked_fill_(mask, value)


class HypothesisTable:
    """decoding._Hypotheses for every item at once: `num_beams` slots per item instead of a list."""

    def __init__(self, items: int, num_beams: int, max_new_tokens: int, device: torch.device | str | None) -> None:
        shape = (items, num_beams)
        self.scores = torch.zeros(shape, dtype=torch.float64, device=device)
        self.tokens = torch.zeros((*shape, max_new_tokens), dtype=torch.long, device=device)
        self.lengths = torch.zeros(shape, dtype=torch.long, device=device)  # tokens held, stop id not included
        self.finished = torch.zeros(shape, dtype=torch.bool, device=device)
        self.valid = torch.zeros(shape, dtype=torch.bool, device=device)
        self.stamps = torch.zeros(shape, dtype=torch.long, device=device)  # insertion order = decoding's list order
        self.added = torch.zeros(items, dtype=torch.long, device=device)  # the next stamp, per item
        self.slots = torch.arange(num_beams, device=device)

    def reset(self) -> None:
        self.valid.fill_(False)
        self.added.zero_()

    def worst_scores(self) -> Tensor:
        """[items] lowest score held (+inf while empty)."""
        return torch.where(self.valid, self.scores, torch.inf).amin(dim=1)

    def add(
        self,
        active: Tensor,
        tokens: Tensor,
        length: Tensor | int,
        sum_logprobs: Tensor,
        denominator: Tensor,
        finished: bool,
    ) -> None:
        """_Hypotheses.add for each item where `active`: tokens [items, T] (the first `length` count).

        Accepted while a slot is free or when beating the worst; a full table then loses its oldest
        lowest-scored entry (the one list.remove(min(...)) removes: the new score beats the worst, so
        the minimum is always an old entry).
        """
        scores = sum_logprobs / denominator
        worst = self.worst_scores()
        accept = active & (~self.valid.all(dim=1) | (scores > worst))
        candidates = torch.where(self.scores == worst[:, None], self.stamps, _NO_SLOT)
        slot = torch.where(self.valid, candidates, -1).argmin(dim=1)  # a free slot (-1) first
        write = accept[:, None] & (self.slots == slot[:, None])
        _put(self.scores, write, scores[:, None])
        _put(self.tokens, write[..., None], tokens[:, None, :])
        _put(self.lengths, write, length)
        _put(self.finished, write, finished)
        _put(self.valid, write, True)
        _put(self.stamps, write, self.added[:, None])
        self.added.add_(accept.long())

    def cannot_improve(self, best_sum_logprobs: Tensor, denominator: Tensor) -> Tensor:
        """[items] _Hypotheses.cannot_improve: full, and the worst at least the best candidate's score now."""
        return self.valid.all(dim=1) & (self.worst_scores() >= best_sum_logprobs / denominator)

    def best_slots(self) -> Tensor:
        """[items] _Hypotheses.best: the highest score, the newest entry among equals (sorted() is stable)."""
        top = torch.where(self.valid, self.scores, -torch.inf).amax(dim=1)
        return torch.where(self.valid & (self.scores == top[:, None]), self.stamps, -1).argmax(dim=1)


class BeamSearchState:
    """Everything decoding.beam_search keeps between steps, in buffers of fixed shape on one device.

    Rows are item-major (row item * num_beams + k is beam k of the item). `advance` writes its outputs
    into the same buffers every call, and the step counter is a device tensor, so one captured graph of
    `advance` serves every step of every generation; `reset` starts a generation in place.
    """

    def __init__(
        self,
        items: int,
        num_beams: int,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        length_penalty: float = 1.0,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (("items", items), ("num_beams", num_beams), ("max_new_tokens", max_new_tokens)):
            _require_positive(name, value)
        self.items = items
        self.num_beams = num_beams
        self.rows = items * num_beams
        self.max_new_tokens = max_new_tokens
        self.stops = _stop_tensor(stop_ids, device)
        self.first_stop_id = stop_ids[0]  # what a finished hypothesis is returned with, whichever stop id ended it
        # Enough candidates that num_beams of them are not stop ids, however many beams end on one.
        self.candidates = max(2, 1 + self.stops.numel()) * num_beams
        self.item_first_rows = torch.arange(items, device=device)[:, None] * num_beams
        self.columns = torch.arange(max_new_tokens, device=device)
        # length ** length_penalty as decoding._Hypotheses computes it, in Python, for lengths 1..max_new_tokens.
        self.denominators = torch.tensor(
            [length**length_penalty for length in range(1, max_new_tokens + 1)], dtype=torch.float64, device=device
        )
        self.beam_scores = torch.zeros(items, num_beams, device=device)  # float32, what the next step adds
        self.next_scores = torch.zeros(items, num_beams, dtype=torch.float64, device=device)  # unrounded
        self.sequences = torch.zeros(self.rows, max_new_tokens, dtype=torch.long, device=device)
        self.hypotheses = HypothesisTable(items, num_beams, max_new_tokens, device)
        self.done = torch.zeros(items, dtype=torch.bool, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.next_tokens = torch.zeros(self.rows, dtype=torch.long, device=device)
        self.source_rows = torch.zeros(self.rows, dtype=torch.long, device=device)
        # On a GPU, the candidates come from one pass over the logits (naturelm_core.beam_candidates).
        self.fused = beam_candidates.fused_kernel_works(self.beam_scores.device)
        self.reset()

    def reset(self) -> None:
        """Start a generation: only beam 0 of each item is live, nothing is finished."""
        self.beam_scores.fill_(_DEAD_BEAM_SCORE)
        self.beam_scores[:, 0] = 0.0
        self.next_scores.zero_()
        self.sequences.zero_()
        self.hypotheses.reset()
        self.done.fill_(False)
        self.step.zero_()

    def advance(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """One step of decoding.beam_search from logits [rows, V]: (next tokens [rows], source rows [rows]).

        Both are this state's buffers, overwritten by the next call: the decoder reorders its rows by
        the sources, then steps with the tokens. Call at most `max_new_tokens` times per `reset`.
        """
        self._check(logits)
        vocab = logits.shape[1]
        top_scores, top_indices = beam_candidates.candidates(logits, self.beam_scores, self.candidates, self.fused)
        rows = self.item_first_rows + torch.div(top_indices, vocab, rounding_mode="floor")
        tokens = top_indices % vocab
        is_stop = _is_stop(tokens, self.stops)
        was_done = self.done.clone()
        denominator = self.denominators.index_select(0, self.step.view(1))  # the current length's

        # Candidates in rank order: a stop id among the first num_beams ranks ends its beam's hypothesis.
        for rank in range(self.num_beams):
            self.hypotheses.add(
                ~was_done & is_stop[:, rank],
                self.sequences.index_select(0, rows[:, rank]),
                self.step,
                top_scores[:, rank].double(),
                denominator,
                finished=True,
            )
        # The first num_beams candidates that are not stop ids continue, in rank order.
        kept = torch.argsort(is_stop, dim=1, stable=True)[:, : self.num_beams]
        # A done item's rows are kept busy (decoding.py: the first stop id, from its first row, score 0).
        next_scores = torch.where(was_done[:, None], 0.0, top_scores.gather(1, kept).double())
        next_tokens = torch.where(was_done[:, None], self.first_stop_id, tokens.gather(1, kept)).view(-1)
        source_rows = torch.where(was_done[:, None], self.item_first_rows, rows.gather(1, kept)).view(-1)
        self.done |= self.hypotheses.cannot_improve(top_scores[:, 0].double(), denominator)

        grown = torch.where(
            self.columns == self.step, next_tokens[:, None], self.sequences.index_select(0, source_rows)
        )
        self.sequences.copy_(grown)
        self.next_scores.copy_(next_scores)
        self.beam_scores.copy_(next_scores)  # rounded to float32 as torch.tensor(next_scores) rounds them
        self.next_tokens.copy_(next_tokens)
        self.source_rows.copy_(source_rows)
        self.step.add_(1)
        return self.next_tokens, self.source_rows

    def _check(self, logits: Tensor) -> None:
        """Shapes only (metadata, no synchronisation)."""
        if logits.dim() != 2 or logits.shape[0] != self.rows:
            raise ValueError(f"expected logits [{self.rows}, vocab] (items x beams rows), got {tuple(logits.shape)}")
        if logits.shape[1] * self.num_beams < self.candidates:
            raise ValueError(f"a vocabulary of {logits.shape[1]} is too small for {self.candidates} candidates")

    def all_done(self) -> bool:
        """Whether every item has stopped (a host synchronisation: ask every few steps, not every step)."""
        return bool(self.done.all())

    def finish(self) -> list[list[int]]:
        """Each item's answer, as decoding.beam_search ends: a finished one with the FIRST stop id appended.

        Items still running offer their beams, scored by the last step's sums over the length generated.
        That closes the generation: a second call returns the same answers; `reset` starts the next.
        """
        steps = int(self.step)
        if steps == 0:
            raise RuntimeError("finish() before any advance(): nothing was generated")
        running = ~self.done
        denominator = self.denominators[steps - 1]
        beams = self.sequences.view(self.items, self.num_beams, -1)
        for beam in range(self.num_beams):
            self.hypotheses.add(running, beams[:, beam], steps, self.next_scores[:, beam], denominator, finished=False)
        self.done.fill_(True)

        table = self.hypotheses
        slot = table.best_slots()[:, None]
        tokens = table.tokens.gather(1, slot[..., None].expand(-1, -1, self.max_new_tokens))[:, 0].tolist()
        lengths = table.lengths.gather(1, slot)[:, 0].tolist()
        finished = table.finished.gather(1, slot)[:, 0].tolist()
        return [
            [*ids[:length], self.first_stop_id] if ended else ids[:length]
            for ids, length, ended in zip(tokens, lengths, finished, strict=True)
        ]


class GreedySearchState:
    """decoding.greedy_search's state in fixed buffers: each row's tokens so far and whether it stopped."""

    def __init__(
        self, rows: int, max_new_tokens: int, stop_ids: Sequence[int], device: torch.device | str | None = None
    ) -> None:
        _require_positive("rows", rows)
        _require_positive("max_new_tokens", max_new_tokens)
        self.rows = rows
        self.max_new_tokens = max_new_tokens
        self.stops = _stop_tensor(stop_ids, device)
        self.columns = torch.arange(max_new_tokens, device=device)
        self.sequences = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.reset()

    def reset(self) -> None:
        self.sequences.zero_()
        self.finished.fill_(False)
        self.step.zero_()

    def advance(self, logits: Tensor) -> Tensor:
        """Argmax of the raw logits [rows, V]: next tokens [rows], this state's buffer (overwritten next call).

        A stopped row keeps emitting whatever its logits say; `finish` cuts it after its first stop id.
        """
        if logits.dim() != 2 or logits.shape[0] != self.rows:
            raise ValueError(f"expected logits [{self.rows}, vocab], got {tuple(logits.shape)}")
        torch.argmax(logits, dim=-1, out=self.tokens)
        self.finished |= _is_stop(self.tokens, self.stops)
        _put(self.sequences, self.columns == self.step, self.tokens[:, None])
        self.step.add_(1)
        return self.tokens

    def all_done(self) -> bool:
        """Whether every row has emitted a stop id (a host synchronisation)."""
        return bool(self.finished.all())

    def finish(self) -> list[list[int]]:
        """Each row's ids up to and including its first stop id (all of them if it never stopped)."""
        steps = int(self.step)
        if steps == 0:
            raise RuntimeError("finish() before any advance(): nothing was generated")
        sequences = self.sequences[:, :steps]
        is_stop = _is_stop(sequences, self.stops)
        first_stop = is_stop.int().argmax(dim=1)  # argmax returns the first maximum
        lengths = torch.where(is_stop.any(dim=1), first_stop + 1, sequences.shape[1]).tolist()
        return [ids[:length] for ids, length in zip(sequences.tolist(), lengths, strict=True)]


def _stops_now(length: int, max_new_tokens: int, check_every: int, all_done: Callable[[], bool]) -> bool:
    """The loops' exit: at the last token, or at a check (every `check_every` steps) that finds all done.

    Steps run after everything is done leave the answers as they are, so checking rarely costs only compute.
    """
    return length == max_new_tokens or (length % check_every == 0 and all_done())


def _pause(length: int, check_every: int, between_steps: Callable[[], None] | None) -> None:
    """Let the caller run other work between steps: this search's buffers are its own and wait unchanged."""
    if between_steps is not None and length % check_every == 0:
        between_steps()


def tensor_greedy_search(
    decoder: TokenDecoder,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    check_every: int = 4,
    between_steps: Callable[[], None] | None = None,
) -> list[list[int]]:
    """decoding.greedy_search's answers, looking at the device only every `check_every` steps.

    `between_steps`, if given, is called every `check_every` steps (see NatureLM.generate_ids_from_embeddings)."""
    _require_positive("check_every", check_every)
    logits = decoder.prefill()
    state = GreedySearchState(logits.shape[0], max_new_tokens, stop_ids, logits.device)
    for length in range(1, max_new_tokens + 1):
        tokens = state.advance(logits)
        if _stops_now(length, max_new_tokens, check_every, state.all_done):
            break
        _pause(length, check_every, between_steps)
        logits = decoder.step(tokens)
    return state.finish()


def tensor_beam_search(
    decoder: TokenDecoder,
    num_beams: int,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    length_penalty: float = 1.0,
    check_every: int = 4,
    between_steps: Callable[[], None] | None = None,
) -> list[list[int]]:
    """decoding.beam_search's answers, looking at the device only every `check_every` steps.

    The decoder receives this state's buffers (source rows, tokens), overwritten at the next step:
    it must use them within the call, as CachedDecoder and StaticCacheDecoder do.
    """
    _require_positive("check_every", check_every)
    _require_positive("num_beams", num_beams)
    logits = decoder.prefill()
    if logits.shape[0] % num_beams:
        raise ValueError(f"{logits.shape[0]} rows are not whole items of num_beams={num_beams} beams")
    state = BeamSearchState(
        logits.shape[0] // num_beams, num_beams, max_new_tokens, stop_ids, length_penalty, logits.device
    )
    for length in range(1, max_new_tokens + 1):
        tokens, source_rows = state.advance(logits)
        if _stops_now(length, max_new_tokens, check_every, state.all_done):
            break
        _pause(length, check_every, between_steps)
        decoder.reorder(source_rows)
        logits = decoder.step(tokens)
    return state.finish()
