"""The audio encoder's CUDA graphs: few-window calls only, on a GPU only, and never a different embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from naturelm_core.encoder_graphs import EncoderGraphs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _windows(count: int) -> np.ndarray:
    return (np.random.default_rng(3).standard_normal((count, 160_000)) * 0.1).astype(np.float32)


def test_no_graph_serves_cpu_calls_or_large_batches(tiny_model):
    graphs = EncoderGraphs(max_windows=2)
    encoder = tiny_model.audio_encoder
    assert graphs.encode(encoder, encoder, torch.as_tensor(_windows(1)), "float32") is None  # CPU
    if torch.cuda.is_available():
        assert graphs.encode(encoder, encoder, torch.zeros(3, 160_000, device="cuda"), "float32") is None
    assert graphs.captures == 0


@needs_cuda
def test_a_graph_replays_the_eager_encoder_bit_for_bit_and_is_captured_once_per_shape(tiny_checkpoint):
    from naturelm_core.loading import load_model

    model = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    windows = _windows(2)
    replayed = [model.encode_audio(windows[:1]), model.encode_audio(windows[1:]), model.encode_audio(windows)]
    assert model.encoder_graphs.enabled and model.encoder_graphs.captures == 2  # shapes [1, S] and [2, S]
    model.encoder_graphs.enabled = False
    eager = [model.encode_audio(windows[:1]), model.encode_audio(windows[1:]), model.encode_audio(windows)]
    for graph_output, eager_output in zip(replayed, eager, strict=True):
        assert torch.equal(graph_output, eager_output)


@needs_cuda
def test_a_graph_is_captured_again_after_the_weights_are_replaced(tiny_checkpoint):
    from naturelm_core.loading import load_model

    model = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    window = _windows(1)
    before = model.encode_audio(window)
    projection = model.audio_encoder.audio_llama_proj
    projection.weight = torch.nn.Parameter(projection.weight.detach() * 2)  # new storage, as a reload may give
    after = model.encode_audio(window)
    assert model.encoder_graphs.captures == 2 and not torch.equal(before, after)
    model.encoder_graphs.enabled = False
    assert torch.equal(after, model.encode_audio(window))


def test_a_copied_model_gets_graphs_of_its_own(tiny_model):
    import copy

    copied = copy.deepcopy(tiny_model)
    assert copied.encoder_graphs is not tiny_model.encoder_graphs and copied.encoder_graphs.captures == 0
