"""The tensor searches against decoding.py's loops: token-identical answers, and no host read per step.

decoding.py is the reference (its own tests and the golden ones pin it to transformers 4.44); here a
scripted language model drives both over many random cases, ties included, then the tiny model does
through both real decoders. tests/test_tensor_search_golden.py runs the 18 golden rows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from naturelm_core.decoding import CachedDecoder, TokenDecoder, _Hypotheses, beam_search, greedy_search
from naturelm_core.static_decoding import StaticDecoding
from naturelm_core.tensor_search import (
    BeamSearchState,
    GreedySearchState,
    HypothesisTable,
    tensor_beam_search,
    tensor_greedy_search,
)
from tests.static_helpers import audio_rows

VOCAB = 20
STOPS = [13, 4, 17]  # 13, what a finished beam is returned with, is neither the smallest nor the largest
CASES = 25


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread() -> Iterator[None]:
    """Every step here is a few tiny tensors; on a busy machine, waking a second OpenMP thread for each
    (log_softmax parallelises even 8 x 20) costs milliseconds, a hundred times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScriptedDecoder:
    """A causal LM in miniature: each row's logits are a function of its token history (prompt included).

    A seeded hash of the history picks half-integer logits (ties within a row) and sometimes pushes the
    stop ids up, so hypotheses finish at different lengths. At some lengths every row gets one flat
    distribution instead, so beams tie and so do the hypotheses they finish.
    """

    def __init__(self, prompts: list[int], seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.histories = [[prompt] for prompt in prompts]
        self.seed = seed
        self.dtype = dtype
        self.device = device
        self.steps = 0

    def prefill(self) -> torch.Tensor:
        return self._logits()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        for history, token in zip(self.histories, tokens.tolist(), strict=True):
            history.append(token)
        return self._logits()

    def reorder(self, rows: torch.Tensor) -> None:
        self.histories = [list(self.histories[row]) for row in rows.tolist()]

    def _logits(self) -> torch.Tensor:
        return torch.tensor([self._row(history) for history in self.histories], dtype=self.dtype, device=self.device)

    def _row(self, history: list[int]) -> list[float]:
        shared = random.Random(f"{self.seed}:{len(history)}")
        if shared.random() < 0.2:
            push = shared.choice([-3.0, 0.0, 3.0])
            return [push if token in STOPS else 0.0 for token in range(VOCAB)]
        own = random.Random(f"{self.seed}:{history}")
        logits = [round(own.gauss(0.0, 2.0) * 2) / 2 for _ in range(VOCAB)]
        push = own.choice([-3.0, -3.0, -3.0, 0.0, 2.0, 4.0])
        for stop in STOPS:
            logits[stop] += push
        return logits


def _cases(seed: int, max_items: int) -> Iterator[tuple[int, int, int]]:
    """(decoder seed, items, max_new_tokens) for CASES random cases."""
    rng = random.Random(seed)
    for _ in range(CASES):
        yield rng.randrange(10**6), rng.randint(1, max_items), rng.randint(1, 12)


def _assert_steps(tensor_steps: int, reference_steps: int, check_every: int, max_new_tokens: int) -> None:
    """Checking every step costs no extra step; checking rarely, at most check_every - 1 more, never past the end."""
    if check_every == 1:
        assert tensor_steps == reference_steps
    else:
        assert reference_steps <= tensor_steps <= min(reference_steps + check_every - 1, max_new_tokens - 1)


@pytest.mark.parametrize("check_every", [1, 4])
@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("num_beams", [2, 3, 4])
def test_beam_search_gives_decodings_answers(num_beams, length_penalty, check_every):
    answers = []
    for seed, items, max_new_tokens in _cases(seed=num_beams, max_items=4):
        prompts = [item for item in range(items) for _ in range(num_beams)]
        reference, tensor = ScriptedDecoder(prompts, seed), ScriptedDecoder(prompts, seed)
        want = beam_search(reference, num_beams, max_new_tokens, STOPS, length_penalty)
        got = tensor_beam_search(tensor, num_beams, max_new_tokens, STOPS, length_penalty, check_every)
        assert got == want, (seed, items, max_new_tokens)
        _assert_steps(tensor.steps, reference.steps, check_every, max_new_tokens)
        answers += want
    # The cases reach both endings, at many lengths.
    assert any(ids[-1] == STOPS[0] for ids in answers)
    assert any(ids[-1] != STOPS[0] for ids in answers)
    assert len({len(ids) for ids in answers}) >= 5


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_beam_search_from_float64_logits(length_penalty):
    """A float64 model's logits: beam scores still round to float32 between steps, as decoding.py's do."""
    for seed, items, max_new_tokens in _cases(seed=7, max_items=3):
        prompts = [item for item in range(items) for _ in range(2)]
        want = beam_search(ScriptedDecoder(prompts, seed, torch.float64), 2, max_new_tokens, STOPS, length_penalty)
        got = tensor_beam_search(
            ScriptedDecoder(prompts, seed, torch.float64), 2, max_new_tokens, STOPS, length_penalty
        )
        assert got == want, (seed, items, max_new_tokens)


@pytest.mark.parametrize("check_every", [1, 4])
def test_greedy_search_gives_decodings_answers(check_every):
    answers = []
    for seed, rows, max_new_tokens in _cases(seed=check_every, max_items=6):
        prompts = [row % 4 for row in range(rows)]
        reference, tensor = ScriptedDecoder(prompts, seed), ScriptedDecoder(prompts, seed)
        want = greedy_search(reference, max_new_tokens, STOPS)
        got = tensor_greedy_search(tensor, max_new_tokens, STOPS, check_every)
        assert got == want, (seed, rows, max_new_tokens)
        _assert_steps(tensor.steps, reference.steps, check_every, max_new_tokens)
        answers += want
    assert any(ids[-1] in STOPS for ids in answers)
    assert any(ids[-1] not in STOPS for ids in answers)


def _table_entries(table: HypothesisTable, item: int) -> list[tuple[float, list[int], bool]]:
    """One item's slots as decoding._Hypotheses would list them: valid ones in insertion order."""
    slots = sorted(
        (s for s in range(table.valid.shape[1]) if table.valid[item, s]), key=lambda s: table.stamps[item, s]
    )
    return [
        (
            table.scores[item, s].item(),
            table.tokens[item, s, : table.lengths[item, s]].tolist(),
            bool(table.finished[item, s]),
        )
        for s in slots
    ]


@pytest.mark.parametrize("num_beams", [1, 2, 3, 4])
def test_the_table_keeps_and_picks_what_the_hypothesis_list_does(num_beams):
    """Random adds whose scores come from a handful of values, so ties decide which entry goes and which wins."""
    rng = random.Random(num_beams)
    items, max_tokens, length_penalty = 5, 6, 1.5
    table = HypothesisTable(items, num_beams, max_tokens, "cpu")
    lists = [_Hypotheses(num_beams, length_penalty) for _ in range(items)]
    for _ in range(60):
        active = [rng.random() < 0.7 for _ in range(items)]
        sums = [rng.choice([-1.0, -2.0, -3.0, -6.0]) for _ in range(items)]
        tokens = [[rng.randrange(VOCAB) for _ in range(max_tokens)] for _ in range(items)]
        length, finished = rng.randint(1, max_tokens), rng.random() < 0.5
        count = length - 1 if finished else length  # a finished hypothesis holds its tokens before the stop id
        denominator = torch.tensor(length**length_penalty, dtype=torch.float64)
        table.add(
            torch.tensor(active),
            torch.tensor(tokens),
            count,
            torch.tensor(sums, dtype=torch.float64),
            denominator,
            finished,
        )
        for item in range(items):
            if active[item]:
                lists[item].add(tokens[item][:count], sums[item], length, finished)
        best_sum = rng.choice([-1.0, -2.0, -3.0])
        cannot_improve = table.cannot_improve(torch.full((items,), best_sum, dtype=torch.float64), denominator)
        best_slots = table.best_slots()
        for item, hypotheses in enumerate(lists):
            assert _table_entries(table, item) == hypotheses.entries
            assert bool(cannot_improve[item]) == hypotheses.cannot_improve(best_sum, length)
            if hypotheses.entries:
                slot = best_slots[item]
                best = (
                    table.tokens[item, slot, : table.lengths[item, slot]].tolist(),
                    bool(table.finished[item, slot]),
                )
                assert best == hypotheses.best()
    assert all(len(hypotheses.entries) == num_beams for hypotheses in lists)


def test_advance_reads_nothing_back_on_the_meta_device():
    """Meta tensors hold no values: any .item(), .tolist(), bool() or data-dependent shape in a step would raise."""
    beam = BeamSearchState(3, 2, 5, STOPS, 1.0, device="meta")
    greedy = GreedySearchState(4, 5, STOPS, device="meta")
    for _ in range(5):
        tokens, sources = beam.advance(torch.empty(6, VOCAB, device="meta"))
        assert tokens.shape == sources.shape == (6,)
        assert greedy.advance(torch.empty(4, VOCAB, device="meta")).shape == (4,)
    with pytest.raises((RuntimeError, NotImplementedError)):
        beam.all_done()  # the one host read, which the meta device refuses


class _RecordedOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.__name__)
        return func(*args, **(kwargs or {}))


HOST_READS_AND_DATA_SHAPES = {"_local_scalar_dense.default", "nonzero.default", "masked_select.default"}


def test_advance_dispatches_no_host_read_on_the_cpu():
    beam = BeamSearchState(2, 3, 4, STOPS, 1.0)
    greedy = GreedySearchState(2, 4, STOPS)
    logits = ScriptedDecoder([0, 0, 0, 1, 1, 1], seed=1).prefill()
    with _RecordedOps() as ops:
        for _ in range(4):
            beam.advance(logits)
            greedy.advance(logits[:2])
    assert "topk.default" in ops.names  # the recorder sees the step's ops
    assert not ops.names & HOST_READS_AND_DATA_SHAPES
    with _RecordedOps() as ops:
        beam.all_done()
    assert "_local_scalar_dense.default" in ops.names


def test_advance_returns_the_same_buffers_every_step_and_reset_starts_over():
    """A captured graph's outputs must stay where they were; a reset state repeats its first generation."""
    state = BeamSearchState(2, 2, 6, STOPS)
    decoder = ScriptedDecoder([0, 0, 1, 1], seed=5)
    logits = decoder.prefill()
    tokens, sources = state.advance(logits)
    first = (tokens.clone(), sources.clone())
    for _ in range(5):
        decoder.reorder(sources)
        assert state.advance(decoder.step(tokens)) == (tokens, sources)
    answers = state.finish()
    assert state.finish() == answers  # finishing closes the generation; a second call adds nothing
    state.reset()
    state.advance(logits)
    assert torch.equal(tokens, first[0]) and torch.equal(sources, first[1])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_beams"):
        BeamSearchState(1, 0, 4, STOPS)
    with pytest.raises(ValueError, match="stop_ids"):
        GreedySearchState(2, 4, [])
    with pytest.raises(ValueError, match="logits"):
        BeamSearchState(2, 2, 4, STOPS).advance(torch.zeros(3, VOCAB))
    with pytest.raises(ValueError, match="too small"):
        BeamSearchState(1, 2, 4, STOPS).advance(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not whole items"):
        tensor_beam_search(ScriptedDecoder([0, 0, 0], seed=0), 2, 4, STOPS)
    with pytest.raises(ValueError, match="check_every"):
        tensor_greedy_search(ScriptedDecoder([0], seed=0), 4, STOPS, check_every=0)
    with pytest.raises(RuntimeError, match="before any advance"):
        BeamSearchState(1, 2, 4, STOPS).finish()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("num_beams", [1, 2, 3])
def test_one_captured_cuda_graph_of_advance_serves_every_step(num_beams):
    """The point of the module: capture `advance` once, replay it for every step and a second generation."""
    items, max_new_tokens, length_penalty = 3, 10, 1.0
    logits = torch.zeros(items * num_beams, VOCAB, device="cuda")
    if num_beams == 1:
        state = GreedySearchState(items, max_new_tokens, STOPS, device="cuda")
    else:
        state = BeamSearchState(items, num_beams, max_new_tokens, STOPS, length_penalty, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        state.advance(logits)  # warm-up: library handles and allocations outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = state.advance(logits)
    for seed in (11, 12):
        prompts = [item for item in range(items) for _ in range(num_beams)]
        decoder = ScriptedDecoder(prompts, seed, device="cuda")
        state.reset()
        logits.copy_(decoder.prefill())
        for length in range(1, max_new_tokens + 1):
            graph.replay()
            if length == max_new_tokens or state.all_done():
                break
            if num_beams == 1:
                logits.copy_(decoder.step(outputs))
            else:
                decoder.reorder(outputs[1])
                logits.copy_(decoder.step(outputs[0]))
        reference = ScriptedDecoder(prompts, seed, device="cuda")
        if num_beams == 1:
            want = greedy_search(reference, max_new_tokens, STOPS)
        else:
            want = beam_search(reference, num_beams, max_new_tokens, STOPS, length_penalty)
        assert state.finish() == want


# The tiny model, through both real decoders: the eager one (transformers' cache) and the static one.
PROMPTS = [
    "Caption the audio.",
    "What is the common name for the focal species in the audio? Answer with the common name only.",
    "Is there a bird?",
]
ALPHAS = [0.0, 0.5, 1.0]


@contextmanager
def model_decoder(model, audio, prompts, alphas, num_beams: int, max_new_tokens: int, static: bool):
    """A decoder over the model's rows as NatureLM.generate_ids_from_embeddings builds it, alphas applied."""
    batch = model.build_inputs(audio, prompts)
    row_alphas = torch.tensor(alphas, device=model.device).repeat_interleave(num_beams)
    with torch.no_grad(), model.row_alphas.applied(row_alphas):
        if static:
            decoding = StaticDecoding(prompt_block=8, window_block=4)
            yield decoding.decoder(model.llm, batch, row_alphas, num_beams, max_new_tokens)
        else:
            yield CachedDecoder(model.llm, batch.repeat_rows(num_beams))


def tensor_search_ids(
    model, audio, prompts, alphas, num_beams: int, max_new_tokens: int, static: bool, length_penalty: float = 1.0
) -> list[list[int]]:
    """What generate_ids_from_embeddings returns, with the tensor searches in place of decoding.py's loops."""
    with model_decoder(model, audio, prompts, alphas, num_beams, max_new_tokens, static) as decoder:
        decoder: TokenDecoder
        if num_beams == 1:
            return tensor_greedy_search(decoder, max_new_tokens, model.stop_ids)
        return tensor_beam_search(decoder, num_beams, max_new_tokens, model.stop_ids, length_penalty)


@pytest.fixture(scope="module")
def tiny_audio() -> list[list[torch.Tensor]]:
    """Three windows' worth of audio embeddings (29 x 64 each), one per prompt."""
    return audio_rows(len(PROMPTS), seed=3)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("num_beams,length_penalty", [(1, 1.0), (2, 1.0), (3, 1.0), (2, 2.0)])
def test_the_tiny_model_answers_as_with_decodings_loops(tiny_model, tiny_audio, num_beams, length_penalty, static):
    tiny_model.decode_with_static_cache = False  # the reference: decoding.py over the eager decoder
    try:
        want = tiny_model.generate_ids_from_embeddings(
            tiny_audio, PROMPTS, ALPHAS, num_beams, 12, length_penalty=length_penalty
        )
    finally:
        tiny_model.decode_with_static_cache = None
    got = tensor_search_ids(tiny_model, tiny_audio, PROMPTS, ALPHAS, num_beams, 12, static, length_penalty)
    assert got == want
    assert all(len(ids) > 1 for ids in got)
