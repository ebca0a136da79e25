"""The search loops on a hand-made language model whose every probability is known.

A table gives the next-token distribution from the last token, so each expected answer below can be
worked out on paper; the golden test checks the same rules against upstream on a real model.
"""

from __future__ import annotations

import math

import torch

from naturelm_core.decoding import beam_search, greedy_search

VOCAB = 8
START = 0
STOPS = [5, 6, 7]  # the first one, 5, is what a finished beam hypothesis is returned with


class TableDecoder:
    """Next-token log-probs from each row's last token; rows start at the given tokens."""

    def __init__(self, table: dict[int, dict[int, float]], start_tokens: list[int]) -> None:
        self.log_probs = torch.full((VOCAB, VOCAB), math.log(1e-6))
        for token, distribution in table.items():
            for next_token, probability in distribution.items():
                self.log_probs[token, next_token] = math.log(probability)
        self.last = torch.tensor(start_tokens)
        self.steps = 0

    def prefill(self) -> torch.Tensor:
        return self.log_probs[self.last]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        self.last = tokens
        return self.log_probs[tokens]

    def reorder(self, rows: torch.Tensor) -> None:
        self.last = self.last[rows]


# From the start: 1 (0.5) or 2 (0.3). After 1: stop id 6 (0.6) or 3 (0.3). After 2 or 3: mostly 3 / 4.
TABLE = {
    START: {1: 0.5, 2: 0.3, 3: 0.1, 4: 0.1},
    1: {6: 0.6, 3: 0.3, 4: 0.1},
    2: {3: 0.9, 4: 0.1},
    3: {4: 0.5, 3: 0.4, 2: 0.1},
    4: {3: 0.5, 4: 0.4, 2: 0.1},
}


def test_greedy_keeps_the_stop_id_it_generated_and_stops():
    decoder = TableDecoder(TABLE, [START])
    assert greedy_search(decoder, max_new_tokens=10, stop_ids=STOPS) == [[1, 6]]
    assert decoder.steps == 1


def test_greedy_runs_to_max_new_tokens_without_a_stop():
    table = {START: {2: 0.9, 1: 0.1}, 2: {3: 0.9, 6: 0.1}, 3: {2: 0.9, 6: 0.1}}
    assert greedy_search(TableDecoder(table, [START]), max_new_tokens=5, stop_ids=STOPS) == [[2, 3, 2, 3, 2]]


def test_greedy_rows_are_independent():
    """Row 1 starts after token 2 and never stops; row 0 stops at step 2 and must not be extended."""
    assert greedy_search(TableDecoder(TABLE, [START, 2]), max_new_tokens=3, stop_ids=STOPS) == [[1, 6], [3, 4, 3]]


def test_finished_beam_wins_with_length_normalisation_including_the_stop_token():
    """[1, stop] scores log(0.5 * 0.6) / 2 = -0.60; the best running beam [2, 3, 4] log(0.135) / 3 = -0.67.

    Dividing the finished one by 1 (stop token not counted) would give -1.20 and let the running beam
    win; returning the generated stop id 6 instead of the first, 5, is what transformers 5.x does.
    """
    assert beam_search(TableDecoder(TABLE, [START, START]), 2, 3, STOPS) == [[1, 5]]


def test_running_beams_win_when_the_finished_one_scores_lower():
    """With 8 new tokens allowed, the finished [1, stop] (-0.60) loses to a long beam such as [2, 3, 4, 3, ...]."""
    table = {**TABLE, 3: {4: 0.9, 3: 0.1}, 4: {3: 0.9, 4: 0.1}}
    (ids,) = beam_search(TableDecoder(table, [START, START]), 2, 8, STOPS)
    assert ids == [2, 3, 4, 3, 4, 3, 4, 3]


def test_beam_search_stops_early_once_no_candidate_can_beat_the_finished_ones():
    """Both beams end on a stop at step 2; the best remaining candidate cannot catch up, so no third step."""
    table = {START: {1: 0.5, 2: 0.5}, 1: {5: 0.9, 3: 0.1}, 2: {6: 0.9, 3: 0.1}, 3: {4: 1.0}}
    decoder = TableDecoder(table, [START, START])
    (ids,) = beam_search(decoder, 2, 10, STOPS)
    assert ids in ([1, 5], [2, 5])
    assert decoder.steps == 1


def test_beam_search_items_are_independent_of_their_batch():
    alone = [beam_search(TableDecoder(TABLE, [start] * 2), 2, 4, STOPS)[0] for start in (START, 2, 4)]
    together = beam_search(TableDecoder(TABLE, [START, START, 2, 2, 4, 4]), 2, 4, STOPS)
    assert together == alone
