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
