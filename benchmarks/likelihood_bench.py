"""Label likelihoods (issue 19): our scorer against a naive loop, on the same inputs, measured in the same run.

    python benchmarks/likelihood_bench.py --size tiny          # the tiny model on the CPU, in seconds
    python benchmarks/likelihood_bench.py --out DIR            # full size (random weights) on a GPU

16 recordings x 11 alphas x 50 labels; an answer is one (recording, alpha) row's scores over all 50.
Ours: the engine's `score_labels` (each recording encoded once, rows of mixed alphas batched, each row's
prompt prefilled once and its 50 candidates scored from that cache, `max_candidates_per_pass` at a time).
Naive: for each alpha and batch of 16 recordings, the recordings encoded, then for each label one
teacher-forced forward over prompt + label, nothing shared between labels. It already keeps only the
label positions' logits, so the speedup measures the shared prompt, not skipped logits. Both compute the
same numbers; their largest difference is reported. `section_label_likelihoods` is what benchmarks/gpu.py
runs as a section.

Measured once on an H100 (bf16, random weights of the real shapes, stand-in tokenizer: 2-token labels):
ours 65 answers/s (5.1 GiB above the model), naive 4.2 answers/s (0.45 GiB): 15.4x. Largest difference
0.33 nats in bf16 (not investigated there; in float32 on the CPU they agree to 1e-5). The tiny model on
2 shared CPU cores: 2.4x and 3.8x in two runs (its 64-wide layers cost next to nothing beside its
128257-row output layer, which both loops pay).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu import PROMPT, REFERENCE_BATCH, SWEEP_ALPHAS, build_model, recordings, timed
from naturelm_core.engine import Engine, Priority
from naturelm_core.label_scores import DEFAULT_CANDIDATES_PER_PASS
from naturelm_core.model import NatureLM

RECORDINGS = 16
ROWS_PER_BATCH = 176  # 16 recordings x 11 alphas, as the generation sweep
# 50 common names, as a BEANS-Zero closed set lists them (a few words, some sharing a prefix).
LABELS = [
    f"{adjective} {bird}"
    for adjective in ("Common", "Eurasian", "American", "Little", "Great")
    for bird in ("Robin", "Wren", "Owl", "Warbler", "Thrush", "Crow", "Sparrow", "Finch", "Grebe", "Heron")
]


def section_label_likelihoods(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Answers per second and peak GPU memory of our scorer and of the naive loop, their speedup and agreement."""
    rows_per_batch = getattr(args, "label_batch_rows", ROWS_PER_BATCH)
    per_pass = getattr(args, "candidates_per_pass", DEFAULT_CANDIDATES_PER_PASS)
    windows = recordings(RECORDINGS, seed=61)
    result: dict[str, Any] = {
        "recordings": RECORDINGS,
        "alphas": len(SWEEP_ALPHAS),
        "labels": len(LABELS),
        "label_tokens_mean": float(np.mean([len(ids) for ids in model.label_candidates(LABELS).token_ids])),
        "rows_per_batch": rows_per_batch,
        "candidates_per_pass": per_pass,
    }
    warm = recordings(2, seed=62)
    ours_scores(model, warm, rows_per_batch, per_pass)  # warm-up of both paths, same shapes
    naive_scores(model, warm, SWEEP_ALPHAS[:1], LABELS[:2])
    for name, run in (
        ("ours", lambda: ours_scores(model, windows, rows_per_batch, per_pass)),
        ("naive", lambda: naive_scores(model, windows, SWEEP_ALPHAS, LABELS)),
    ):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            held = torch.cuda.memory_allocated(device)
        seconds, scores = timed(device, run)
        result[name] = {"seconds": seconds, "answers_per_s": len(scores) / seconds, "answers": len(scores)}
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            result[name]["peak_gpu_memory_gib"] = peak / 2**30
            result[name]["peak_above_model_gib"] = (peak - held) / 2**30
        result[name + "_log_likelihoods"] = scores
    ours, naive = result.pop("ours_log_likelihoods"), result.pop("naive_log_likelihoods")
    differences = [
        (abs(ours[key][label] - naive[key][label]), abs(naive[key][label])) for key in ours for label in LABELS
    ]
    result["max_abs_difference"] = max(difference for difference, _ in differences)
    result["max_relative_difference"] = max(difference / size for difference, size in differences)
    result["speedup"] = result["ours"]["answers_per_s"] / result["naive"]["answers_per_s"]
    return result


def ours_scores(
    model: NatureLM, windows: list[np.ndarray], rows_per_batch: int, per_pass: int
) -> dict[tuple[int, float], dict[str, float]]:
    """Every (recording, alpha) row through the engine's scoring path, as a sweep would queue it."""
    engine = Engine(
        model, max_batch_rows=rows_per_batch, inline=True, sweep_capacity=100_000, max_candidates_per_pass=per_pass
    )
    keys = [(index, alpha) for index in range(len(windows)) for alpha in SWEEP_ALPHAS]
    rows = [([windows[index]], PROMPT, alpha) for index, alpha in keys]
    scores = engine.score_labels(rows, LABELS, priority=Priority.SWEEP, timeout_s=3600)
    return {key: s.log_likelihoods for key, s in zip(keys, scores, strict=True)}


@torch.no_grad()
def naive_scores(
    model: NatureLM, windows: list[np.ndarray], alphas: list[float], labels: list[str]
) -> dict[tuple[int, float], dict[str, float]]:
    """One teacher-forced forward per (alpha, label) over a batch of recordings' prompt + label."""
    scores: dict[tuple[int, float], dict[str, float]] = {}
    embed_tokens = model.llm.get_input_embeddings()
    for alpha in alphas:
        for start in range(0, len(windows), REFERENCE_BATCH):
            embeds = model.encode_audio(np.stack(windows[start : start + REFERENCE_BATCH]))
            batch = model.build_inputs([[e] for e in embeds], PROMPT)
            rows = batch.inputs_embeds.shape[0]
            for label in labels:
                ids = model.tokenizer(label, add_special_tokens=False)["input_ids"]
                label_ids = torch.tensor([ids] * rows, device=model.device)
                last = batch.position_ids[:, -1:]
                with model.row_alphas.applied(torch.full((rows,), alpha, device=model.device)):
                    logits = model.llm(
                        inputs_embeds=torch.cat([batch.inputs_embeds, embed_tokens(label_ids)], dim=1),
                        attention_mask=torch.cat([batch.attention_mask, torch.ones_like(label_ids)], dim=1),
                        position_ids=torch.cat(
                            [batch.position_ids, last + 1 + torch.arange(len(ids), device=last.device)], 1
                        ),
                        logits_to_keep=len(ids) + 1,  # the positions that predict the label's tokens and its end
                    ).logits
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                tokens = log_probs[:, :-1].gather(-1, label_ids[..., None])[..., 0].sum(dim=1)
                end = torch.logsumexp(log_probs[:, -1, model.stop_ids], dim=-1)
                for offset, value in enumerate((tokens + end).tolist()):
                    scores.setdefault((start + offset, alpha), {})[label] = value
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--label-batch-rows", type=int, default=ROWS_PER_BATCH)
    parser.add_argument("--candidates-per-pass", type=int, default=DEFAULT_CANDIDATES_PER_PASS)
    parser.add_argument("--out", help="folder for likelihood.json (printed either way)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(args.size, device, dtype)
    result = {"device": str(device), "size": args.size, **section_label_likelihoods(model, device, args)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "likelihood.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
