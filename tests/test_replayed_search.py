"""The search step replayed as a CUDA graph (tensor_search.ReplayedAdvance) answers what the eager step does.

Capture happens inside a generation (at its second step) and the graph then serves every later generation of
the state; these tests run a model's real generations both ways. On the CPU nothing is captured, which the
last test pins; the others need a GPU and run on the device.
"""

from __future__ import annotations

import pytest
import torch

from naturelm_core import tensor_search

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
PROMPTS = ["Caption the audio.", "What is the common name for the focal species in the audio?", "Is there a bird?"]


def _generations(model, num_beams: int) -> list[list[list[int]]]:
    """Three generations of one batch shape at different alphas, then one with fewer rows."""
    generator = torch.Generator().manual_seed(3)
    hidden = model.llm.config.hidden_size
    audio = [[torch.randn(29, hidden, generator=generator).to(model.device, model.dtype)] for _ in PROMPTS]
    answers = [
        model.generate_ids_from_embeddings(audio, PROMPTS, alphas, num_beams, 12)
        for alphas in ([0.0, 0.5, 1.0], [1.0, 0.2, 0.7], [0.4, 0.4, 0.4])
    ]
    answers.append(model.generate_ids_from_embeddings(audio[:2], PROMPTS[:2], [0.6, 0.3], num_beams, 12))
    return answers


@needs_cuda
@pytest.mark.parametrize("num_beams", [1, 2, 3])
def test_replayed_search_steps_give_the_eager_steps_answers(tiny_checkpoint, num_beams):
    from naturelm_core.loading import load_model

    model = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    replayed = _generations(model, num_beams)
    # One capture per search shape (three rows, then two), whatever the alphas; none of the steps' graphs again.
    assert model.static_decoding.search_captures == 2
    step_captures = model.static_decoding.captures

    eager_model = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    eager_model.static_decoding.replay_searches = False  # a fresh eager search state per generation, as before
    eager = _generations(eager_model, num_beams)
    assert eager_model.static_decoding.search_captures == 0
    assert eager_model.static_decoding.captures == step_captures
    assert replayed == eager
    assert all(len(ids) > 1 for answers in replayed for ids in answers)


@needs_cuda
def test_a_search_that_cannot_be_captured_stays_eager_and_answers(tiny_checkpoint, monkeypatch):
    from naturelm_core.loading import load_model

    model = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    want = _generations(model, 2)
    advance = tensor_search.BeamSearchState.advance
    attempts = []

    def refused_while_capturing(self, logits):
        if torch.cuda.is_current_stream_capturing():
            attempts.append(1)
            raise RuntimeError("operation not permitted when stream is capturing")
        return advance(self, logits)

    monkeypatch.setattr(tensor_search.BeamSearchState, "advance", refused_while_capturing)
    failing = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    got = _generations(failing, 2)
    assert got == want
    assert failing.static_decoding.search_captures == 0
    assert len(attempts) == 2  # once per search shape, never again


def test_on_the_cpu_searches_keep_no_state_between_generations(tiny_model):
    """Graphs exist on CUDA only: a CPU model's static runners hold no replayed searches."""
    tiny_model.decode_with_static_cache = True
    try:
        answers = _generations(tiny_model, 2)
    finally:
        tiny_model.decode_with_static_cache = None
    assert all(len(ids) > 1 for generation in answers for ids in generation)
    runners = tiny_model.static_decoding._runners.values()
    assert runners and all(runner.searches is None for runner in runners)
    assert tiny_model.static_decoding.search_captures == 0
