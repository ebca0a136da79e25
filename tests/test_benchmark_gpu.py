"""benchmarks/gpu.py end to end on the tiny model (CPU): it runs, writes its report, and its checks hold.

CI has no GPU, so this keeps the benchmark from rotting between GPU sessions; the timings are not checked.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # about 15 s on 2 cores: builds two tiny models and runs both decoders
def test_the_tiny_run_reports_static_decoding_equal_to_eager_and_to_float32(tmp_path):
    from benchmarks import gpu as benchmark  # imports the model code: loaded by the test that runs it

    argv = ["--size", "tiny", "--out", str(tmp_path), "--sections", "correctness,precision", "--new-tokens", "4"]
    assert benchmark.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert "error" not in results["correctness"] and "error" not in results["precision"]
    for beams in ("beams_1", "beams_2"):
        assert results["correctness"][beams]["rows_identical"] == results["correctness"][beams]["rows"] == 4
    assert all(step["relative_l2"] < 1e-5 for step in results["correctness"]["lockstep_logits"])
    assert results["precision"]["float32_static"]["max_relative_l2_vs_float32_eager"] < 1e-5
    assert results["environment"]["prompt_tokens_with_audio"] > 29  # the prompt's text around 29 audio embeddings
    assert "| correctness.beams_1.rows_identical | 4 |" in (tmp_path / "results.md").read_text()


def test_the_stand_in_tokenizer_keeps_llama3_special_ids_and_word_counts():
    from benchmarks.gpu import StandInTokenizer

    tokenizer = StandInTokenizer()
    ids = tokenizer("<|start_header_id|>user<|end_header_id|>\n\nWhat is it?<|eot_id|>")["input_ids"]
    assert ids[0] == 128006 and ids[2] == 128007 and ids[-1] == 128009
    assert len(ids) == 9  # header, user, header end, "\n\n", What, " is", " it", "?", eot
    assert len(tokenizer) == 128257 and tokenizer.pad_token_id == 128256
    assert tokenizer.batch_decode([[5, 128009, 7]]) == ["w5 w7"]


def test_idle_gaps_credits_each_gpu_wait_to_the_project_frame_the_host_ran_meanwhile():
    from types import SimpleNamespace

    import torch

    from benchmarks.gpu import idle_gaps

    def event(kind, start, end, stack=()):
        device = torch.autograd.DeviceType.CUDA if kind == "gpu" else torch.autograd.DeviceType.CPU
        return SimpleNamespace(device_type=device, time_range=SimpleNamespace(start=start, end=end), stack=list(stack))

    search = ["naturelm_core/tensor_search.py(186): advance", "naturelm_core/static_decoding.py(700): generate"]
    events = [
        event("gpu", 0, 100),
        event("gpu", 105, 200),  # a 5 us gap: below the threshold
        event("gpu", 1200, 1300),  # a 1000 us gap, the host in the search for 3/4 of it, in torch for 1/4
        event("gpu", 1300, 1400),
        event("gpu", 3400, 3500),  # a 2000 us gap with nothing recorded on the host
        event("cpu", 200, 950, search),
        event("cpu", 950, 1200, ["site-packages/torch/nn/functional.py(10): linear"]),
    ]
    report = idle_gaps(events)
    assert report["kernels"] == 5 and report["gaps"] == 2
    assert report["idle_ms_in_gaps"] == 3.0 and report["span_ms"] == 3.5
    assert report["largest_gaps_ms"] == [2.0, 1.0]
    by_frame = report["idle_ms_by_host_frame"]
    assert by_frame == {
        "(no host operation recorded)": 2.0,
        search[0]: 0.75,
        "(outside the project)": 0.25,
    }
    assert idle_gaps([event("cpu", 0, 10, search)]) == {"kernels": 0}
    # A host operation that started before the gap (a long one among short ones) is still found.
    spanning = [event("gpu", 0, 100), event("gpu", 1100, 1200), event("cpu", 50, 1100, search)]
    spanning += [event("cpu", start, start + 10, search[1:]) for start in range(0, 40, 10)]
    assert idle_gaps(spanning)["idle_ms_by_host_frame"] == {search[0]: 1.0}
