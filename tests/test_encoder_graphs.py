"""The audio encoder's CUDA graphs: on a GPU only, never a different embedding; few-window shapes captured at
first sight, sweep-sized ones padded to 16 or 32 windows and captured at their second, at most two of those held,
and none while memory is short."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from naturelm_core.encoder_graphs import (
    FIRST_SIGHT_WINDOWS,
    GRAPH_MAX_WINDOWS,
    LARGE_CAPTURE_MIN_FREE_BYTES,
    MAX_LARGE_GRAPHS,
    EncoderGraphs,
    _CapturePolicy,
    graph_windows,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")

PLENTY = LARGE_CAPTURE_MIN_FREE_BYTES * 2
SHORT = LARGE_CAPTURE_MIN_FREE_BYTES - 1


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


def test_a_sweep_chunk_is_within_what_graphs_serve():
    from naturelm_core.engine import ENCODER_CHUNK

    assert ENCODER_CHUNK <= GRAPH_MAX_WINDOWS


# --- the capture policy, on a CPU: keys are anything hashable ---


def _key(windows: int, precision: str = "bfloat16") -> tuple:
    return ("cuda:0", (windows, 160_000), precision)


def _free(free_bytes: int):
    return lambda: free_bytes


def _capture_at_second_sighting(policy: _CapturePolicy, key: tuple) -> list:
    """Sight `key` twice, capture it, and return the keys its capture evicts."""
    windows = key[1][0]
    assert not policy.should_capture(key, windows, _free(PLENTY))
    assert policy.should_capture(key, windows, _free(PLENTY))
    return policy.captured(key, windows)


@pytest.mark.parametrize("windows", [1, FIRST_SIGHT_WINDOWS])
def test_a_few_window_shape_is_captured_at_first_sight_whatever_memory_is_free(windows):
    policy = _CapturePolicy()
    assert policy.should_capture(_key(windows), windows, _free(0))
    assert policy.captured(_key(windows), windows) == []


def test_a_sweep_sized_shape_is_captured_at_its_second_sighting_not_its_first():
    policy = _CapturePolicy()
    assert not policy.should_capture(_key(16), 16, _free(PLENTY))
    assert not policy.should_capture(_key(16, "float32"), 16, _free(PLENTY))  # another key: its own first sighting
    assert policy.should_capture(_key(16), 16, _free(PLENTY))
    assert not policy.should_capture(_key(FIRST_SIGHT_WINDOWS + 1), FIRST_SIGHT_WINDOWS + 1, _free(PLENTY))


def test_a_third_large_graph_evicts_the_least_recently_used_one():
    policy = _CapturePolicy()
    assert MAX_LARGE_GRAPHS == 2
    assert _capture_at_second_sighting(policy, _key(16)) == []
    assert _capture_at_second_sighting(policy, _key(32)) == []
    policy.used(_key(16))  # now 32 is the least recently used
    assert _capture_at_second_sighting(policy, _key(8)) == [_key(32)]
    assert policy.should_capture(_key(32), 32, _free(PLENTY))  # met before: captured again at once
    assert policy.captured(_key(32), 32) == [_key(16)]  # 8 was captured after 16's last use


def test_small_graphs_are_not_counted_against_the_large_bound_nor_evicted():
    policy = _CapturePolicy()
    for windows in range(1, FIRST_SIGHT_WINDOWS + 1):
        assert policy.should_capture(_key(windows), windows, _free(PLENTY))
        assert policy.captured(_key(windows), windows) == []
    evicted = []
    for windows in (16, 32, 8, 6):
        evicted += _capture_at_second_sighting(policy, _key(windows))
    for windows in range(1, FIRST_SIGHT_WINDOWS + 1):
        policy.used(_key(windows))
    assert evicted == [_key(16), _key(32)]  # two large graphs held throughout, beside the four small ones


def test_too_little_free_memory_defers_a_large_capture_until_there_is_enough():
    policy = _CapturePolicy()
    assert not policy.should_capture(_key(16), 16, _free(PLENTY))
    assert not policy.should_capture(_key(16), 16, _free(SHORT))
    assert not policy.should_capture(_key(16), 16, _free(SHORT))
    assert policy.should_capture(_key(16), 16, _free(LARGE_CAPTURE_MIN_FREE_BYTES))


def test_free_memory_is_asked_only_when_a_large_capture_is_due():
    def unasked() -> int:
        raise AssertionError("free memory asked for")

    policy = _CapturePolicy()
    assert policy.should_capture(_key(1), 1, unasked)
    assert not policy.should_capture(_key(16), 16, unasked)


def test_a_shape_whose_capture_ran_out_of_memory_is_never_captured_again():
    policy = _CapturePolicy()
    assert _capture_at_second_sighting(policy, _key(16)) == []
    policy.failed_out_of_memory(_key(16))
    for _ in range(3):
        assert not policy.should_capture(_key(16), 16, _free(PLENTY))
    assert _capture_at_second_sighting(policy, _key(32)) == []
    assert _capture_at_second_sighting(policy, _key(8)) == []  # 16 no longer counts against the bound


def test_sightings_are_remembered_for_a_bounded_number_of_shapes():
    policy = _CapturePolicy(sightings_held=64)
    for length in range(100):
        assert not policy.should_capture(("cuda:0", (16, length), "bfloat16"), 16, _free(PLENTY))
    assert len(policy._sightings) == 64
    assert not policy.should_capture(("cuda:0", (16, 0), "bfloat16"), 16, _free(PLENTY))  # forgotten: first again
    assert policy.should_capture(("cuda:0", (16, 99), "bfloat16"), 16, _free(PLENTY))


# --- what EncoderGraphs does when a capture fails (the capture itself replaced: no GPU needed) ---


@pytest.mark.parametrize(
    ("windows", "error", "still_enabled"),
    [
        (16, torch.cuda.OutOfMemoryError("out of memory"), True),  # that shape alone stays eager
        (1, torch.cuda.OutOfMemoryError("out of memory"), False),  # a small shape: as before, graphs off
        (16, RuntimeError("capture invalidated"), False),
    ],
)
def test_a_failed_capture_turns_graphs_off_unless_a_large_one_ran_out_of_memory(
    monkeypatch, windows, error, still_enabled
):
    graphs = EncoderGraphs()
    attempts = []

    def failing_capture(encode, windows, weights):
        attempts.append(windows.shape[0])
        raise error

    monkeypatch.setattr(graphs, "_capture", failing_capture)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (PLENTY, 2 * PLENTY))
    key = ("cuda:0", (windows, 160_000), "bfloat16")
    for _ in range(3):
        if graphs.enabled:
            assert graphs._capture_if_due(key, lambda w: w, torch.zeros(windows, 160_000), ()) is None
    assert graphs.enabled is still_enabled and graphs.captures == 0
    assert attempts == [windows]  # a large shape: tried at its second sighting, then never again


# --- on a GPU: sweep-sized calls through the tiny model ---


@needs_cuda
def test_a_six_window_call_is_eager_at_first_sight_then_replayed_padded_to_sixteen(tiny_checkpoint):
    """Replayed, six windows are the first six of the eager encoder's sixteen (the last one repeated): bit for
    bit, and within bf16 rounding of the six encoded alone."""
    from naturelm_core.loading import load_model

    model = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    graphs = model.encoder_graphs
    windows = _windows(6)
    first = model.encode_audio(windows)
    assert graphs.enabled and graphs.captures == 0
    second = model.encode_audio(windows)
    assert graphs.captures == 1 and [key[1][0] for key in graphs._graphs] == [16]
    third = model.encode_audio(windows)
    assert graphs.enabled and graphs.captures == 1
    graphs.enabled = False
    eager = model.encode_audio(windows)
    padded = model.encode_audio(np.concatenate([windows, np.repeat(windows[-1:], 10, axis=0)]))[:6]
    assert torch.equal(first, eager)
    for output in (second, third):
        assert torch.equal(output, padded)
        assert torch.allclose(output.float(), eager.float(), atol=5e-2, rtol=5e-2)


@needs_cuda
def test_only_two_large_graphs_are_held_beside_the_small_ones(tiny_checkpoint):
    from naturelm_core.loading import load_model

    model = load_model(str(tiny_checkpoint), device="cuda", dtype="bfloat16")
    graphs = model.encoder_graphs = EncoderGraphs(max_windows=64)
    windows = _windows(40)
    model.encode_audio(windows[:1])
    for count in (5, 17, 33):  # padded to 16, 32 and 64 windows
        for _ in range(2):
            model.encode_audio(windows[:count])
    assert graphs.enabled and graphs.captures == 4
    held = sorted(key[1][0] for key in graphs._graphs)
    assert held == [1, 32, 64]
    replayed = model.encode_audio(windows[:33])
    graphs.enabled = False
    padded = np.concatenate([windows[:33], np.repeat(windows[32:33], 31, axis=0)])
    assert torch.equal(replayed, model.encode_audio(padded)[:33])


@pytest.mark.parametrize(
    ("count", "most", "expected"),
    [(1, 32, 1), (4, 32, 4), (5, 32, 16), (16, 32, 16), (17, 32, 32), (31, 32, 32), (32, 32, 32), (17, 24, 24)],
)
def test_a_larger_call_is_padded_to_one_of_a_few_sizes(count, most, expected):
    assert graph_windows(count, FIRST_SIGHT_WINDOWS, most) == expected


def test_every_remainder_of_a_one_alpha_sweep_batch_shares_two_graph_shapes():
    """A batch of n windows is encoded in ENCODER_CHUNK chunks plus a remainder of any size: padded, the large calls
    of every batch size from 1 to 176 are two shapes, where unpadded they were 28."""
    from naturelm_core.engine import ENCODER_CHUNK

    calls = ({ENCODER_CHUNK} | {n % ENCODER_CHUNK for n in range(1, 177)}) - {0}  # full chunks and remainders
    large = {size for size in calls if size > FIRST_SIGHT_WINDOWS}
    assert len(large) == 28
    assert {graph_windows(size) for size in large} == {16, 32}
