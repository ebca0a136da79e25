"""Programmatic dependent launch of the one-row step's kernels: off wherever it cannot run, and on a GPU that runs it,
the same answers as the kernels launched one after another."""

from __future__ import annotations

import pytest
import torch

from naturelm_core import dependent_launch, one_row
from tests.test_decode_attention import PROMPTS

needs_hopper = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="needs a CUDA GPU of compute capability 9 or later",
)


def test_off_a_kernel_sees_no_launch_option_and_does_not_wait():
    """Triton's interpreter and Triton versions before 3.3 know no `launch_pdl`: a launch without dependents passes
    none, and the kernel's constant keeps it from waiting."""
    assert dependent_launch.options(False) == {"DEPENDENT": False}
    assert dependent_launch.options(True) == {"DEPENDENT": True, "launch_pdl": True}


def test_the_cpu_has_no_dependent_launch():
    cpu = torch.device("cpu")
    assert not dependent_launch.supported(cpu)
    assert not one_row.dependent_launch_works(cpu, torch.float32)


@needs_hopper
def test_the_start_up_check_passes_on_hopper():
    assert one_row.dependent_launch_works(torch.device("cuda"), torch.bfloat16)


@needs_hopper
def test_one_row_answers_are_the_same_launched_as_dependents_or_not(tiny_checkpoint):
    """Explore-shaped generations (one item, greedy: one row a step, under CUDA graphs) at a plain alpha, a spectral
    recipe and a layer and module recipe: the same ids with the step's kernels launched as dependents and without."""
    from naturelm_core.loading import load_model
    from naturelm_core.static_decoding import StaticDecoding

    model = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    model.decode_with_static_cache = True
    generator = torch.Generator().manual_seed(11)
    rows = [[torch.randn(29, 64, generator=generator).to("cuda", torch.bfloat16)] for _ in PROMPTS]
    points = [0.5, {"alpha": 0.8, "rank": 2}, {"layers": "linear:0.2:1", "modules": {"k_proj": 0.5}}]
    for prompt, row, point in zip(PROMPTS, rows, points, strict=True):
        answers = {}
        for dependent in (False, True):
            model.static_decoding = StaticDecoding(prompt_block=8, window_block=4)
            model.generate_ids_from_embeddings([row], prompt, [0.5], 1, 2)  # builds the step (and captures)
            step = model.static_decoding.step
            assert step.fused_one_row and step.dependent_launch  # the tiny model's one-row step runs our kernels
            step.dependent_launch = dependent
            model.static_decoding.drop_states()  # captured again with the launch switched
            answers[dependent] = model.generate_ids_from_embeddings([row], prompt, [point], 1, 20)
        assert answers[True] == answers[False], point
        assert len(answers[True][0]) > 1


@pytest.fixture(scope="module")
def model(static_tiny_model):
    return static_tiny_model


def test_only_a_one_row_steps_products_are_launched_as_dependents(model, monkeypatch):
    """With the flag on, every product and attention of a one-row decode step (the lm_head's too) is launched as a
    dependent, and no attention of a two-beam step is (nor any product: a one-row product is not called there); with
    it off, none is. The kernels are stood in for by their torch versions, which record how they were asked (a CPU
    runs no Triton)."""
    from naturelm_core import decode_attention
    from naturelm_core import one_row as one_row_module
    from naturelm_core.static_decoding import StaticDecoding
    from tests.static_helpers import audio_rows

    asked: list[bool] = []
    attention_asked: list[bool] = []
    torch_linear, torch_gated = one_row_module.linear, one_row_module.gated

    def attention(query, keys, values, visible, fused, dependent=False):
        attention_asked.append(dependent)
        return decode_attention.reference(query, keys, values, visible)

    def linear(x, weight, fused, dependent=False, **kwargs):
        asked.append(dependent)
        return torch_linear(x, weight, False, **kwargs)

    def gated(x, gate, up, fused, norm=None, dependent=False):
        asked.append(dependent)
        return torch_gated(x, gate, up, False, norm=norm)

    rows = audio_rows(1, seed=3)
    model.decode_with_static_cache = True
    answers = {}
    for flag in (True, False):
        model.static_decoding = StaticDecoding(prompt_block=8, window_block=4)
        model.generate_ids_from_embeddings(rows, PROMPTS[:1], [0.5], 1, 2)  # builds the step
        step = model.static_decoding.step
        step.fused_one_row, step.fused_decode_attention, step.dependent_launch = True, True, flag
        with monkeypatch.context() as patch:
            patch.setattr(one_row_module, "linear", linear)
            patch.setattr(one_row_module, "gated", gated)
            patch.setattr(decode_attention, "attention", attention)
            asked.clear()
            attention_asked.clear()
            answers[flag] = model.generate_ids_from_embeddings(rows, PROMPTS[:1], [0.5], 1, 6)
            one_row_asks, one_row_attention = list(asked), list(attention_asked)
            asked.clear()
            attention_asked.clear()
            model.generate_ids_from_embeddings(rows, PROMPTS[:1], [0.5], 2, 6)  # two beams: two rows a step
            two_row_asks, two_row_attention = list(asked), list(attention_asked)
        per_step = 4 * len(step.layers) + 1  # q | k | v, o, gate and up, down a layer; then the lm_head
        assert one_row_asks and len(one_row_asks) % per_step == 0
        assert one_row_asks == [flag] * len(one_row_asks)
        assert one_row_attention == [flag] * (len(one_row_asks) // per_step * len(step.layers))
        assert not two_row_asks  # no one-row product at all
        assert two_row_attention and not any(two_row_attention)
    assert answers[True] == answers[False]
