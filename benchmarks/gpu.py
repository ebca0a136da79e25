"""NatureLM-audio speed on one GPU, with random weights of the real shapes: nothing is downloaded.

    python benchmarks/gpu.py --out DIR            # full size (BEATs + Q-Former + Llama-3.1-8B, bf16, LoRA r=32)
    python benchmarks/gpu.py --out DIR --size tiny  # the same code on a tiny model, on the CPU, in seconds
    python benchmarks/gpu.py --out DIR --sections sweep,breakdown --sweep-ours-only  # an A/B of our sweep in ~25 s

Measures in one run, on the same inputs and generation settings: (a) the cost of changing alpha
between requests; (b) interactive latency for one 10 s recording (greedy and beam 2, p50/p90);
(c) sweep throughput of our engine and of a re-creation of the public reference loop; (d) the
memory-bandwidth bound of a decode step next to the measured step time; (e) peak GPU memory; and a
check that the static-cache decoder generates what the eager one does. Writes results.json and
results.md to --out (each section as soon as it finishes, so a partial run still reports).

Honesty notes, also in docs/PERFORMANCE.md: weights are random, so answers are meaningless but
cost the same as real ones; generation runs to exactly `--new-tokens` tokens whenever no stop id
comes up (random weights almost never produce one; the tokens actually generated are reported);
the tokenizer is a stand-in with Llama-3.1's special ids and about its token counts (the real one
is gated); the reference loop uses our left-padded batches and SDPA attention, which can only make
it faster than the public code.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torchaudio.compliance import kaldi
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from naturelm_core.config import NatureLMConfig
from naturelm_core.decoding import CachedDecoder
from naturelm_core.encoder import AudioEncoder
from naturelm_core.engine import Engine, GenerationSettings, Priority
from naturelm_core.fbank import NUM_MEL_BINS, WAVEFORM_SCALE, beats_fbank
from naturelm_core.model import NatureLM, decode_answers
from naturelm_core.tiny import LLAMA3_ROPE

PROMPT = "What is the common name for the focal species in the audio?"  # BEANS-Zero's common-name prompt
SWEEP_ALPHAS = [round(0.1 * i, 1) for i in range(11)]
# Interleaved rounds of each compared sweep (recipes' in memory, sweep_files' one per recording from files): a sweep
# is a batch or a few, so one slow moment or one graph capture would decide a single run; the 95% targets compare
# the median_low rounds.
RECIPE_ROUNDS = 3
LONG_ONE_ALPHA_SWEEP_FACTOR = 3  # the long one-alpha sweep from files reads this many times --file-recordings
REFERENCE_BATCH = 16  # the public loop's batch size
WINDOW_SAMPLES = 160_000  # 10 s at 16 kHz
BOS_ID, PAD_ID, VOCAB = 128000, 128256, 128257
STOP_IDS = [128001, 128008, 128009]


class StandInTokenizer:
    """Llama-3.1's special ids with word-level pieces, which give about Llama-3's token counts in English.

    Speed depends on how many tokens a prompt becomes and on which ids stop generation; both are kept.
    The real tokenizer is gated and cannot be downloaded here, so the word ids are hashes.
    """

    SPECIAL: ClassVar[dict[str, int]] = {
        "<|begin_of_text|>": BOS_ID,
        "<|end_of_text|>": 128001,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008,
        "<|eot_id|>": 128009,
        "[PAD]": PAD_ID,
    }
    SPECIAL_PIECE = re.compile(r"(<\|[a-z_]+\|>|\[PAD\])")
    PIECE = re.compile(r" ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]+|\s+")
    bos_token_id = BOS_ID
    pad_token_id = PAD_ID

    def __len__(self) -> int:
        return VOCAB

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = [BOS_ID] if add_special_tokens else []
        for index, part in enumerate(self.SPECIAL_PIECE.split(text)):  # odd parts are special tokens
            if index % 2:
                ids.append(self.SPECIAL[part])
            else:
                ids += [zlib.crc32(piece.encode()) % BOS_ID for piece in self.PIECE.findall(part)]
        return {"input_ids": ids}

    def batch_decode(
        self, ids: Sequence[Sequence[int]], skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = False
    ) -> list[str]:
        return [" ".join(f"w{i}" for i in row if not (skip_special_tokens and i >= BOS_ID)) for row in ids]


def llama_config(size: str, layers: int | None = None) -> LlamaConfig:
    """Llama-3.1-8B-Instruct's shapes with the [PAD] row (128257), or the same architecture tiny."""
    dims = (
        {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32}
        if size == "full"
        else {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    )
    if layers is not None:
        dims["num_hidden_layers"] = layers
    return LlamaConfig(
        vocab_size=VOCAB,
        num_key_value_heads=8 if size == "full" else 2,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters=dict(LLAMA3_ROPE),
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=STOP_IDS,
        pad_token_id=PAD_ID,
        attn_implementation="sdpa",
        **dims,
    )


@torch.no_grad()
def build_model(
    size: str, device: torch.device, dtype: torch.dtype, seed: int = 0, layers: int | None = None
) -> NatureLM:
    """Random weights of the real shapes, made on the GPU in seconds: built on `meta`, then filled in place."""
    torch.manual_seed(seed)
    config = NatureLMConfig.full() if size == "full" else NatureLMConfig.tiny()
    with torch.device("meta"):
        llm = LlamaForCausalLM(llama_config(size, layers)).to(dtype)
    llm.to_empty(device=device)
    for parameter in llm.parameters():
        if parameter.dim() == 1:
            parameter.fill_(1.0)  # RMSNorm gains
        else:
            parameter.normal_(0.0, 0.02)
    # to_empty left the rotary frequencies uninitialised: rebuild them from the config.
    llm.model.rotary_emb = type(llm.model.rotary_emb)(llm.config).to(device)
    llm.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=STOP_IDS, pad_token_id=PAD_ID)
    with torch.device(device):
        audio_encoder = AudioEncoder(config, llm.config.hidden_size)  # float32, as load_model keeps it
    model = NatureLM(config, audio_encoder, llm, StandInTokenizer()).to(device)
    for name, parameter in model.llama_model.named_parameters():
        if ".lora_B." in name:
            parameter.normal_(0.0, 0.02)  # peft starts B at zero, which would make alpha a no-op
    return model.eval()


def recordings(count: int, seed: int) -> list[np.ndarray]:
    """Distinct 10 s windows (noise): the audio encoder's cost does not depend on the content."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, WINDOW_SAMPLES).astype(np.float32) for _ in range(count)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, function: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = function()
    sync(device)
    return time.perf_counter() - start, result


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    return {
        "p50_ms": statistics.median(ms),
        "p90_ms": ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))],
        "min_ms": ms[0],
        "n": len(ms),
    }


def interactive_ids(
    model: NatureLM, window: np.ndarray, alpha: float | dict[str, Any], beams: int, new_tokens: int
) -> list[int]:
    """What NatureLM.generate does for one recording at an alpha or a merge recipe, returning ids so the tokens
    can be counted."""
    embeds = model.encode_audio(window[None])
    ids = model.generate_ids_from_embeddings([[embeds[0]]], PROMPT, [alpha], beams, new_tokens)
    decode_answers(model.tokenizer, ids)
    return ids[0]


# --- sections ------------------------------------------------------------------------------------


def section_environment(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    import peft
    import transformers

    llm = model.llm
    embeds = llm.get_input_embeddings().weight
    weight_bytes = sum(p.numel() * p.element_size() for n, p in llm.named_parameters() if "embed_tokens" not in n)
    lora_bytes = sum(p.numel() * p.element_size() for n, p in llm.named_parameters() if ".lora_" in n)
    prompt_tokens = model.build_inputs([[torch.zeros(29, embeds.shape[1], device=device)]], PROMPT)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "size": args.size,
        "llm_dtype": str(embeds.dtype),
        "lora_dtype": str(next(p for n, p in llm.named_parameters() if ".lora_A." in n).dtype),
        "attention": llm.config._attn_implementation,
        "llm_parameters": sum(p.numel() for p in llm.parameters()),
        "weight_bytes_per_step": weight_bytes,
        "lora_bytes": lora_bytes,
        "prompt_tokens_with_audio": int(prompt_tokens.inputs_embeds.shape[1]),
        "new_tokens": args.new_tokens,
    }


def section_bandwidth(device: torch.device) -> dict[str, Any]:
    """Device-to-device copy of 4 GiB, bytes read plus written, median of 10 (the step bound's denominator)."""
    source = torch.empty(2**31, dtype=torch.bfloat16, device=device).normal_()
    target = torch.empty_like(source)
    target.copy_(source)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    bytes_moved = 2 * source.numel() * source.element_size()
    del source, target
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    a @ b
    matmul_times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        matmul_times.append(start.elapsed_time(end) / 1000)
    del a, b
    torch.cuda.empty_cache()
    return {
        "copy_gb_per_s": bytes_moved / statistics.median(times) / 1e9,
        "bytes_moved": bytes_moved,
        "bf16_matmul_tflop_per_s": 2 * 8192**3 / statistics.median(matmul_times) / 1e12,
    }


def section_correctness(model: NatureLM, args: argparse.Namespace) -> dict[str, Any]:
    """The static-cache decoder (graphs on CUDA) against the eager one, on the full model in its dtype."""
    windows = recordings(4, seed=11)
    embeds = model.encode_audio(np.stack(windows))
    rows = [[e] for e in embeds]
    alphas = [0.0, 0.35, 0.7, 1.0]
    result: dict[str, Any] = {}
    for beams in (1, 2):
        ids = {}
        for static in (False, True):
            model.decode_with_static_cache = static
            ids[static] = model.generate_ids_from_embeddings(rows, PROMPT, alphas, beams, args.new_tokens)
        model.decode_with_static_cache = None
        prefixes = [_common_prefix(a, b) / max(len(a), 1) for a, b in zip(ids[False], ids[True], strict=True)]
        result[f"beams_{beams}"] = {
            "rows_identical": sum(a == b for a, b in zip(ids[False], ids[True], strict=True)),
            "rows": len(alphas),
            "mean_common_prefix_fraction": statistics.mean(prefixes),
            "distinct_answers_across_alphas": len({tuple(r) for r in ids[True]}),
        }
    result["lockstep_logits"] = _lockstep_logits(model, rows, alphas, steps=5)
    return result


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


@torch.no_grad()
def _lockstep_logits(model: NatureLM, rows: list, alphas: list[float], steps: int) -> list[dict[str, float]]:
    """Feed both decoders the same tokens; per step, |static - eager| relative to the eager logits' size."""
    batch = model.build_inputs(rows, PROMPT)
    alpha_tensor = torch.tensor(alphas, device=model.device)
    with model.row_alphas.applied(alpha_tensor):
        eager = CachedDecoder(model.llm, batch)
        static = model.static_decoding.decoder(model.llm, batch, alpha_tensor, 1, steps + 1)
        eager_logits, static_logits = eager.prefill(), static.prefill()
        all_tokens = []
        report = []
        for _ in range(steps):
            tokens = eager_logits.argmax(dim=-1)
            all_tokens.append(tokens)
            eager_logits, static_logits = eager.step(tokens), static.step(tokens).clone()
            report.append(
                {
                    "relative_l2": _relative(static_logits, eager_logits),
                    "max_abs": float((static_logits - eager_logits).abs().max()),
                    "argmax_agree": float((static_logits.argmax(-1) == eager_logits.argmax(-1)).float().mean()),
                }
            )
    # The noise floor: the eager decoder on the first row alone against the same row in the batch of 4.
    first = model.build_inputs(rows[:1], PROMPT)
    with model.row_alphas.applied(alpha_tensor[:1]):
        alone = CachedDecoder(model.llm, first)
        alone.prefill()
    with model.row_alphas.applied(alpha_tensor):
        batched = CachedDecoder(model.llm, batch)
        batched.prefill()
    for index, tokens in enumerate(all_tokens):
        with model.row_alphas.applied(alpha_tensor[:1]):
            alone_logits = alone.step(tokens[:1])
        with model.row_alphas.applied(alpha_tensor):
            batched_logits = batched.step(tokens)
        report[index]["eager_row_in_batch_vs_alone"] = _relative(batched_logits[:1], alone_logits)
    return report


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


def section_precision(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Each decoder against a float32 reference (METHOD: compare with higher precision), on a model of
    full width and 4 layers: logits of 5 decode steps fed the reference's own tokens."""
    reference_model = build_model(args.size, device, torch.float32, seed=1, layers=4)
    half_model = copy.deepcopy(reference_model).to(torch.bfloat16)
    embeds = reference_model.encode_audio(np.stack(recordings(4, seed=81)))
    rows = [[e] for e in embeds]
    alphas = [0.0, 0.35, 0.7, 1.0]
    reference = _step_logits(reference_model, rows, alphas, None, static=False)
    tokens = [logits.argmax(dim=-1) for logits in reference[:-1]]
    result: dict[str, Any] = {}
    for label, model, static in (
        ("float32_static", reference_model, True),
        ("bfloat16_eager", half_model, False),
        ("bfloat16_static", half_model, True),
    ):
        logits = _step_logits(model, rows, alphas, tokens, static)
        result[label] = {
            "max_relative_l2_vs_float32_eager": max(_relative(a, b) for a, b in zip(logits, reference, strict=True)),
            "argmax_agreement": statistics.mean(
                float((a.argmax(-1) == b.argmax(-1)).float().mean()) for a, b in zip(logits, reference, strict=True)
            ),
        }
    del reference_model, half_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


@torch.no_grad()
def _step_logits(
    model: NatureLM, rows: list, alphas: list[float], tokens: list[torch.Tensor] | None, static: bool, steps: int = 5
) -> list[torch.Tensor]:
    """Float32 logits of the prefill and `steps` decode steps, fed `tokens` (or the argmax when None)."""
    batch = model.build_inputs(rows, PROMPT)
    alpha_tensor = torch.tensor(alphas, device=model.device)
    with model.row_alphas.applied(alpha_tensor):
        if static:
            decoder = model.static_decoding.decoder(model.llm, batch, alpha_tensor, 1, steps + 1)
        else:
            decoder = CachedDecoder(model.llm, batch)
        logits = [decoder.prefill().float().clone()]
        for step in range(steps):
            fed = logits[-1].argmax(dim=-1) if tokens is None else tokens[step]
            logits.append(decoder.step(fed).float().clone())
    return logits


def section_alpha_change(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """20 requests at one alpha, then 20 at 20 distinct alphas: same cost, no new graph captures."""
    window = recordings(1, seed=21)[0]
    cold, _ = timed(device, lambda: interactive_ids(model, window, 0.5, 1, args.new_tokens))
    captures_before = model.static_decoding.captures
    writes_before = _weight_versions(model)
    same = [timed(device, lambda: interactive_ids(model, window, 0.5, 1, args.new_tokens))[0] for _ in range(20)]
    distinct_alphas = [float(a) for a in np.random.default_rng(0).permutation(np.linspace(0.0, 1.0, 20))]
    distinct, answers = [], set()
    for alpha in distinct_alphas:
        seconds, ids = timed(device, lambda alpha=alpha: interactive_ids(model, window, alpha, 1, args.new_tokens))
        distinct.append(seconds)
        answers.add(tuple(ids))
    return {
        "first_call_ms": 1000 * cold,
        "same_alpha": percentiles(same),
        "twenty_distinct_alphas": percentiles(distinct),
        "ratio_p50_distinct_over_same": statistics.median(distinct) / statistics.median(same),
        "graph_captures_during_alpha_changes": model.static_decoding.captures - captures_before,
        "distinct_answers_among_20_alphas": len(answers),
        "weight_writes": _weight_versions(model) - writes_before,
    }


def _weight_versions(model: NatureLM) -> int:
    """In-place writes so far to the model's weights and to the static step's fused copies of them."""
    tensors = list(model.parameters())
    step = model.static_decoding.step
    if step is not None:
        tensors += [t for layer in step.layers for t in (layer.qkv, layer.lora_b_qkv)]
    return sum(tensor._version for tensor in tensors)


def section_latency(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """One 10 s recording, the prompt, `new_tokens` tokens: encode + prefill + decode + detokenise."""
    window = recordings(1, seed=31)[0]
    result: dict[str, Any] = {}
    for label, static, repeats in (("static_graphs", True, args.repeats), ("eager", False, max(3, args.repeats // 5))):
        model.decode_with_static_cache = static
        for beams in (1, 2):
            interactive_ids(model, window, 0.5, beams, args.new_tokens)  # warm-up (captures the shape once)
            runs = [
                timed(device, lambda b=beams: interactive_ids(model, window, 0.5, b, args.new_tokens))
                for _ in range(repeats)
            ]
            stats = percentiles([seconds for seconds, _ in runs])
            stats["tokens"] = statistics.mean(len(ids) for _, ids in runs)
            result[f"{label}_beams_{beams}"] = stats
    model.decode_with_static_cache = None
    return result


def section_decode_step(
    model: NatureLM, device: torch.device, args: argparse.Namespace, bandwidth: float | None, matmul_tflops: float
):
    """Measured ms per decode step (Python loop and argmax included) at one row and at the sweep batch
    (`sweep_batch` items x `beams` beams, whose beams share their item's prompt in the cache)."""
    embeds = model.encode_audio(recordings(1, seed=41)[0][None])[0]
    env = section_environment(model, device, args)
    result: dict[str, Any] = {}
    for items, beams in ((1, 1), (args.sweep_batch, args.beams)):
        rows = items * beams
        batch = model.build_inputs([[embeds]] * items, PROMPT)
        alphas = torch.linspace(0.0, 1.0, items, device=device).repeat_interleave(beams)
        entry: dict[str, Any] = {"items": items, "beams": beams}
        for label in ("static_graphs", "eager"):
            repeats = 1 if label == "eager" and rows > 1 and args.size == "full" else 3  # eager at 352 rows: ~1 s
            times = [_time_steps(model, batch, alphas, beams, label, args.new_tokens, device) for _ in range(repeats)]
            entry[f"{label}_ms_per_step"] = 1000 * statistics.median(times)
        prompt_length = batch.inputs_embeds.shape[1]
        config = model.llm.config
        head_dim = config.hidden_size // config.num_attention_heads
        column_bytes = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 2
        # Columns read per step, averaged over a generation: each item's prompt once, each row's own tokens.
        entry["kv_bytes_per_step"] = column_bytes * (items * prompt_length + rows * args.new_tokens // 2)
        entry["kv_bytes_per_step_if_each_beam_held_its_prompt"] = (
            column_bytes * rows * (prompt_length + args.new_tokens // 2)
        )
        if bandwidth:
            flops = 2 * env["weight_bytes_per_step"] / 2 * rows  # two flops per (bf16) weight per row
            entry["bound_compute_ms"] = 1000 * flops / (matmul_tflops * 1e12)
            entry["bound_weights_ms"] = 1000 * env["weight_bytes_per_step"] / bandwidth
            entry["bound_weights_and_kv_ms"] = (
                1000 * (env["weight_bytes_per_step"] + entry["kv_bytes_per_step"]) / (bandwidth)
            )
            entry["static_over_bound_weights"] = entry["static_graphs_ms_per_step"] / entry["bound_weights_ms"]
            entry["static_over_bound_weights_and_kv"] = (
                entry["static_graphs_ms_per_step"] / entry["bound_weights_and_kv_ms"]
            )
            floor = max(entry["bound_weights_and_kv_ms"], entry["bound_compute_ms"])
            entry["static_over_max_of_bounds"] = entry["static_graphs_ms_per_step"] / floor
        result[f"rows_{rows}"] = entry
    return result


@torch.no_grad()
def _time_steps(
    model: NatureLM, batch, row_alphas: torch.Tensor, beams: int, label: str, new_tokens: int, device
) -> float:
    with model.row_alphas.applied(row_alphas):
        if label == "eager":
            decoder = CachedDecoder(model.llm, batch.repeat_rows(beams))
        else:
            decoder = model.static_decoding.decoder(model.llm, batch, row_alphas, beams, new_tokens)
        tokens = decoder.prefill().argmax(dim=-1)
        sync(device)
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            tokens = decoder.step(tokens).argmax(dim=-1)
        sync(device)
        return (time.perf_counter() - start) / (new_tokens - 1)


@torch.no_grad()
def section_audio_encoder(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """The audio encoder per window, float32 vs bf16 autocast (the default beside a bf16 LLM, as upstream
    runs it), at an Explore request (1 window), a sweep's shared windows (16; both from a CUDA graph, and
    eagerly) and one window per answer (176); the batched fbank against kaldi.fbank's row-by-row loop (what
    the encoder used before); and what bf16 changes: the embeddings' relative L2 to float32 and the first
    generated token at 4 alphas."""
    result: dict[str, Any] = {}
    for count in (1, 16, args.sweep_batch):
        windows = torch.as_tensor(np.stack(recordings(count, seed=91)), device=device)
        entry: dict[str, Any] = {}
        for precision in ("float32", "bfloat16"):
            model.audio_precision = precision
            graphs = model.encoder_graphs
            for label, graphs_on in (("", True), ("eager_", False)):
                if not graphs_on and count > graphs.max_windows:
                    continue  # eager either way
                enabled, graphs.enabled = graphs.enabled, graphs_on and graphs.enabled
                for _ in range(2):  # warm-up, and the capture: at a large shape's second call
                    model.encode_audio(windows)
                seconds = [timed(device, lambda w=windows: model.encode_audio(w))[0] for _ in range(5)]
                entry[f"{label}{precision}_ms_per_window"] = 1000 * statistics.median(seconds) / count
                graphs.enabled = enabled
        seconds = [timed(device, lambda w=windows: beats_fbank(w))[0] for _ in range(5)]
        entry["fbank_batched_ms"] = 1000 * statistics.median(seconds)
        entry["fbank_kaldi_rows_ms"] = 1000 * timed(device, lambda w=windows: _kaldi_rows(w))[0]
        result[f"windows_{count}"] = entry
    windows = np.stack(recordings(16, seed=92))
    model.audio_precision = "float32"
    reference = model.encode_audio(windows)
    model.audio_precision = "bfloat16"
    rounded = model.encode_audio(windows)
    model.audio_precision = None
    result["embeddings_relative_l2_bf16_vs_float32"] = _relative(rounded.float(), reference.float())
    result["graphs"] = {"enabled": model.encoder_graphs.enabled, "captures": model.encoder_graphs.captures}
    alphas = [0.0, 0.35, 0.7, 1.0]
    row_alphas = [a for _ in range(len(windows)) for a in alphas]
    logits = [
        model.next_token_logits([[e] for e in embeds for _ in alphas], PROMPT, row_alphas).float()
        for embeds in (reference, rounded)
    ]
    result["first_step_logits_relative_l2"] = _relative(logits[1], logits[0])
    result["first_token_agreement"] = float((logits[0].argmax(-1) == logits[1].argmax(-1)).float().mean())
    return result


def _kaldi_rows(windows: torch.Tensor) -> torch.Tensor:
    """The encoder's fbank as it was computed before: torchaudio's kaldi.fbank, one call per row."""
    scaled = windows * WAVEFORM_SCALE
    options = {"num_mel_bins": NUM_MEL_BINS, "sample_frequency": 16000, "frame_length": 25, "frame_shift": 10}
    return torch.stack([kaldi.fbank(row.unsqueeze(0), **options) for row in scaled])


def section_breakdown(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Where one interactive request and one sweep batch spend their time (static decoding), each part timed
    after a first, untimed call at the same shape (graph captures and kernel choices are not counted)."""
    model.decode_with_static_cache = True
    result: dict[str, Any] = {}
    for label, recordings_count, alphas in (("interactive", 1, [0.5]), ("sweep_batch", REFERENCE_BATCH, SWEEP_ALPHAS)):
        windows = np.stack(recordings(recordings_count, seed=61))
        beams = 1 if label == "interactive" else args.beams
        for _ in range(2):  # a sweep batch's 16 windows: captured at the shape's second call
            model.encode_audio(windows)
        encode_s, embeds = timed(device, lambda w=windows: model.encode_audio(w))
        rows = [[e] for e in embeds for _ in alphas]
        row_alphas = [a for _ in embeds for a in alphas]
        build_s, batch = timed(device, lambda r=rows: model.build_inputs(r, PROMPT))
        item_alphas = torch.tensor(row_alphas, device=device)

        def generate(r=rows, a=row_alphas, b=beams) -> list[list[int]]:
            return model.generate_ids_from_embeddings(r, PROMPT, a, b, args.new_tokens)

        generate()  # the shape's state and graphs, built once
        with model.row_alphas.applied(item_alphas):
            decoder = model.static_decoding.decoder(
                model.llm, batch, item_alphas.repeat_interleave(beams), beams, args.new_tokens
            )
            try:
                prefill_s, _ = timed(device, decoder.prefill)
            finally:
                decoder.release()  # else the generation below would build a second state of this shape
        generate_s, _ = timed(device, generate)
        result[label] = {
            "rows": len(rows),
            "beams": beams,
            "encode_ms": 1000 * encode_s,
            "build_inputs_ms": 1000 * build_s,
            "prefill_ms": 1000 * prefill_s,
            "generate_ids_ms": 1000 * generate_s,
            "decode_and_search_ms": 1000 * (generate_s - build_s - prefill_s),
        }
    model.decode_with_static_cache = None
    return result


def section_profile(model: NatureLM, device: torch.device, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """GPU kernels of one static decode step (run eagerly: a graph replays the same kernels), of one prefill,
    and of the audio encoder on one window in bf16 and float32 (graphs or not, the kernels are these)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return {"skipped": "no GPU"}
    embeds = model.encode_audio(recordings(1, seed=71)[0][None])[0]
    result: dict[str, Any] = {}
    tables = []
    for items, beams in ((1, 1), (args.sweep_batch, args.beams)):
        batch = model.build_inputs([[embeds]] * items, PROMPT)
        alphas = torch.linspace(0.0, 1.0, items, device=device).repeat_interleave(beams)
        with model.row_alphas.applied(alphas):
            decoder = model.static_decoding.decoder(model.llm, batch, alphas, beams, args.new_tokens)
            decoder.prefill()
            runner = decoder.runner
            runner.step.decode(runner.state, runner.windows[-1])
            sync(device)
            with profile(activities=[ProfilerActivity.CUDA]) as trace:
                for _ in range(3):
                    runner.step.decode(runner.state, runner.windows[-1])
                sync(device)
        kernels = [e for e in trace.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu_us = sum(e.device_time for e in kernels) / 3
        label = f"rows_{items * beams}"
        result[label] = {"kernels_per_step": len(kernels) / 3, "gpu_busy_ms_per_step": gpu_us / 1000}
        tables.append(f"decode step, {items} items x {beams} beams, last window\n{_kernel_table(trace, 25)}")
        tables.append(f"one layer's kernels in order, {items} items x {beams} beams\n{_one_layer(kernels)}")
    for items in (1, args.sweep_batch):  # Explore's prompt (5.0 ms of weights to read) and a sweep batch's
        batch = model.build_inputs([[embeds]] * items, PROMPT)
        alphas = torch.linspace(0.0, 1.0, items, device=device)
        beams = 1 if items == 1 else 2
        with model.row_alphas.applied(alphas):
            merges = alphas.repeat_interleave(beams)
            decoder = model.static_decoding.decoder(model.llm, batch, merges, beams, args.new_tokens)
            decoder.prefill()
            sync(device)
            with profile(activities=[ProfilerActivity.CUDA]) as trace:
                decoder.prefill()
                sync(device)
            decoder.release()
        result[f"prefill_items_{items}"] = _gpu_busy(trace)
        tables.append(f"prefill, items={items}\n{_kernel_table(trace, 25)}")
    # A whole sweep batch's generation (prefill, steps, beam search, cache reordering): the GPU's busy time against
    # the wall clock says how much of the time outside the step graphs is kernels and how much is the GPU waiting.
    rows = [[embeds]] * items
    row_alphas = torch.linspace(0.0, 1.0, items).tolist()
    generate = lambda: model.generate_ids_from_embeddings(rows, PROMPT, row_alphas, args.beams, args.new_tokens)  # noqa: E731
    generate()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        wall_s, _ = timed(device, generate)
    result[f"generation_items_{items}"] = {**_gpu_busy(trace), "wall_ms": 1000 * wall_s}
    tables.append(f"whole generation, {items} items x {args.beams} beams\n{_kernel_table(trace, 30)}")
    # The same generation with the host's Python stacks: what the host was running while the GPU waited.
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as trace:
        generate()
        sync(device)
    result[f"generation_items_{items}_gpu_idle"] = idle_gaps(trace.events())
    # An Explore answer (one recording, greedy), encoder included: what its time over the bound is made of.
    window = recordings(1, seed=73)[0]
    interactive_ids(model, window, 0.5, 1, args.new_tokens)
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as trace:
        interactive_ids(model, window, 0.5, 1, args.new_tokens)
        sync(device)
    result["explore_answer_gpu_idle"] = idle_gaps(trace.events(), min_gap_us=5.0)
    graphs_enabled, model.encoder_graphs.enabled = model.encoder_graphs.enabled, False  # each kernel, not a replay
    for precision in ("bfloat16", "float32"):  # one window: why bf16 costs twice float32 there (audio_encoder)
        model.audio_precision = precision
        window = recordings(1, seed=72)[0][None]
        model.encode_audio(window)
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as trace:
            model.encode_audio(window)
            sync(device)
        result[f"encoder_one_window_{precision}"] = _gpu_busy(trace)
        tables.append(f"audio encoder, one window, {precision}\n{_kernel_table(trace, 15)}")
    model.audio_precision, model.encoder_graphs.enabled = None, graphs_enabled
    (out / "profile.txt").write_text("\n\n".join(tables))
    return result


def _gpu_busy(trace: Any) -> dict[str, Any]:
    """How many kernels a profiled call ran and how long the GPU was busy with them."""
    kernels = [e for e in trace.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {"kernels": len(kernels), "gpu_busy_ms": sum(e.device_time for e in kernels) / 1000}


def idle_gaps(events: Sequence[Any], min_gap_us: float = 20.0, top: int = 15) -> dict[str, Any]:
    """Where the GPU sat idle during a profiled call, and what the host ran meanwhile.

    The gaps between device kernels of at least `min_gap_us`, summed. Within a gap each host event's own
    time (its overlap with the gap less its children's) is credited to its innermost enclosing frame of this
    project (naturelm_core, evaluation), so a gap that one slow Python function causes is named by that
    function; threads running side by side share the gap, and time no event covers is "(no host operation
    recorded)". With `with_stack`, torch's profiler records Python frames as events of their own, parents of
    the operations they call (its events' `stack` lists stayed empty on the GPU host, 2026-12-07, so every
    gap read as unrecorded). Events with no project frame above them are "(outside the project)". Only
    threads that ran torch operations count: a thread blocked in a wait (an idle engine or server thread)
    records one Python frame that spans every gap.
    """
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    if not kernels:
        return {"kernels": 0}
    gaps: list[tuple[float, float]] = []
    busy_until = kernels[0][1]
    for start, end in kernels[1:]:
        if start - busy_until >= min_gap_us:
            gaps.append((busy_until, start))
        busy_until = max(busy_until, end)
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    working = {e.thread for e in host if e.name.startswith("aten::")}
    host = sorted((e for e in host if e.thread in working), key=lambda e: e.time_range.start)
    starts = [e.time_range.start for e in host]
    longest = max((e.time_range.end - e.time_range.start for e in host), default=0.0)
    credited: dict[str, float] = {}
    for gap_start, gap_end in gaps:
        # Only events that start within `longest` before the gap can reach into it: tens of thousands of host
        # events against hundreds of gaps would otherwise cost the GPU machine's time in Python.
        window = host[bisect.bisect_left(starts, gap_start - longest) : bisect.bisect_left(starts, gap_end)]
        overlapping = [(e, min(gap_end, e.time_range.end) - max(gap_start, e.time_range.start)) for e in window]
        overlapping = [(e, overlap) for e, overlap in overlapping if overlap > 0]
        children: dict[int, float] = {}  # per event, the time its overlapping children ran within the gap
        for e, overlap in overlapping:
            if e.cpu_parent is not None:
                children[id(e.cpu_parent)] = children.get(id(e.cpu_parent), 0.0) + overlap
        own = [(_project_frame(e), overlap - children.get(id(e), 0.0)) for e, overlap in overlapping]
        gap = gap_end - gap_start
        total = sum(own_time for _, own_time in own)
        scale = gap / total if total > gap else 1.0  # threads side by side share the gap: not counted twice
        for frame, own_time in own:
            credited[frame] = credited.get(frame, 0.0) + own_time * scale
        if total < gap:
            unrecorded = "(no host operation recorded)"
            credited[unrecorded] = credited.get(unrecorded, 0.0) + gap - total
    ranked = sorted(credited.items(), key=lambda item: -item[1])[:top]
    return {
        "kernels": len(kernels),
        "span_ms": (busy_until - kernels[0][0]) / 1000,
        "gaps": len(gaps),
        "idle_ms_in_gaps": sum(end - start for start, end in gaps) / 1000,
        "largest_gaps_ms": sorted(((end - start) / 1000 for start, end in gaps), reverse=True)[:5],
        "idle_ms_by_host_frame": {frame: ms / 1000 for frame, ms in ranked},
    }


def _project_frame(event: Any) -> str:
    """The name of the innermost project frame enclosing a host event (the event itself if it is one)."""
    while event is not None:
        if "naturelm_core" in event.name or "evaluation" in event.name:
            return event.name
        event = event.cpu_parent
    return "(outside the project)"


def _kernel_table(trace: Any, rows: int) -> str:
    return trace.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70)


def _one_layer(kernels: list) -> str:
    """One decoder layer's kernels of the first step in launch order, from the third layer's attention kernel to
    the fourth's: which operation costs what. (Attention, one kernel a layer, marks the layers: a one-row step
    folds its RMSNorms into its products, naturelm_core.one_row.)"""
    kernels = sorted(kernels, key=lambda e: e.time_range.start)
    marks = [i for i, e in enumerate(kernels) if any(part in e.name for part in ("attention", "fmha", "sdpa"))]
    if len(marks) < 4:
        return "(no attention kernels to mark the layers by)"
    return "\n".join(f"{e.device_time:9.2f} us  {e.name[:110]}" for e in kernels[marks[2] : marks[3]])


def reference_loop(
    model: NatureLM,
    windows: list[np.ndarray],
    alphas: list[float],
    args: argparse.Namespace,
    batch_seconds: list[float] | None = None,
):
    """The public evaluation loop: alpha outermost, one LoRA scale for the whole batch, every recording
    re-encoded for every alpha, batches of 16, transformers' generate with beam search."""
    generation = GenerationConfig(
        num_beams=args.beams,
        do_sample=False,
        max_new_tokens=args.new_tokens,
        repetition_penalty=1.0,
        length_penalty=1.0,
        early_stopping=False,
        eos_token_id=STOP_IDS,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
    )
    tokens = []
    batch_seconds = [] if batch_seconds is None else batch_seconds
    start_time = time.perf_counter()
    for alpha in alphas:
        for start in range(0, len(windows), REFERENCE_BATCH):
            chunk = windows[start : start + REFERENCE_BATCH]
            embeds = model.encode_audio(np.stack(chunk))
            batch = model.build_inputs([[e] for e in embeds], PROMPT)
            # One global scale: every row (and beam) of the batch at the same alpha.
            scale = torch.full((len(chunk) * args.beams,), alpha, device=model.device)
            with torch.no_grad(), model.row_alphas.applied(scale):
                output = model.llm.generate(
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    generation_config=generation,
                )
            tokens += [len(answer.split()) for answer in decode_answers(model.tokenizer, output.tolist())]
            batch_seconds.append(time.perf_counter() - start_time)
            start_time = time.perf_counter()
    return tokens


def engine_sweep(model: NatureLM, windows: list[np.ndarray], alphas: list[float], args: argparse.Namespace):
    """Our path: every (recording, alpha) row queued at once; the engine encodes each recording once and
    generates mixed-alpha batches of `sweep_batch` rows."""
    engine = Engine(model, max_batch_rows=args.sweep_batch, inline=True, sweep_capacity=100_000)
    settings = GenerationSettings(num_beams=args.beams, max_new_tokens=args.new_tokens)
    rows = [([window], PROMPT, alpha) for window in windows for alpha in alphas]
    answers = engine.answer_many(rows, settings=settings, priority=Priority.SWEEP, timeout_s=3600)
    tokens = [len(answer.split()) for answer in answers]  # counted as for the reference loop
    stats = {"batches": engine.stats.batches, "windows_encoded": engine.stats.windows_encoded}
    return tokens, stats


def section_sweep(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Answers per second on the same recordings, alphas, prompt, beams and new-token budget."""
    alphas = SWEEP_ALPHAS
    result: dict[str, Any] = {"alphas": len(alphas), "beams": args.beams, "new_tokens": args.new_tokens}
    warm = recordings(REFERENCE_BATCH, seed=51)
    shared = recordings(args.sweep_recordings, seed=52)
    reference_rate = None if args.sweep_ours_only else _reference_rate(model, device, args, warm, shared, result)
    model.decode_with_static_cache = True
    engine_sweep(model, warm, alphas, args)  # warm-up: captures this batch shape's graphs once
    large = recordings(args.large_recordings, seed=53)
    double = argparse.Namespace(**{**vars(args), "sweep_batch": 2 * args.sweep_batch})
    engine_sweep(model, warm + warm, alphas, double)  # warm-up of the doubled batch's shape
    greedy = argparse.Namespace(**{**vars(args), "beams": 1})  # issue 23 asks for greedy beside beam search
    engine_sweep(model, warm, alphas, greedy)
    for batch in (warm, warm + warm):  # the encoder's graph of a 5-32-window shape is captured at its second call
        model.encode_audio(np.stack(batch))
    for label, windows, options in (
        ("ours", shared, args),
        ("ours_large", large, args),
        ("ours_large_double_batch", large, double),
        ("ours_greedy", shared, greedy),
    ):
        seconds, (tokens, stats) = timed(device, lambda w=windows, o=options: engine_sweep(model, w, alphas, o))
        result[label] = {
            **_throughput(seconds, tokens),
            **stats,
            "rows_per_batch": options.sweep_batch,
            "beams": options.beams,
        }
    model.decode_with_static_cache = None
    if reference_rate is None:
        return result
    model.decode_with_static_cache = False
    seconds, (tokens, stats) = timed(device, lambda: engine_sweep(model, shared, alphas, args))
    result["ours_eager_decode"] = {**_throughput(seconds, tokens), **stats}
    model.decode_with_static_cache = None
    result["speedup_vs_reference"] = result["ours"]["answers_per_s"] / reference_rate
    result["speedup_large_vs_reference"] = result["ours_large"]["answers_per_s"] / reference_rate
    return result


def _reference_rate(
    model: NatureLM,
    device: torch.device,
    args: argparse.Namespace,
    warm: list[np.ndarray],
    shared: list[np.ndarray],
    result: dict[str, Any],
) -> float:
    """The public loop's answers/s on the same sweep (into `result`), the rate the speedups divide by."""
    alphas = SWEEP_ALPHAS
    reference_loop(model, warm[:REFERENCE_BATCH], alphas[:1], args)  # warm-up, same shapes
    batch_seconds: list[float] = []
    seconds, tokens = timed(device, lambda: reference_loop(model, shared, alphas, args, batch_seconds))
    result["reference_loop"] = _throughput(seconds, tokens)
    # The reference is CPU-bound (eager transformers), so its rate moves with the host: the speedups
    # use its median batch, the more favourable to it of the two when a few batches ran slow.
    median_rate = len(tokens) / len(batch_seconds) / statistics.median(batch_seconds)  # equal batches
    result["reference_loop"]["batch_seconds"] = batch_seconds
    result["reference_loop"]["answers_per_s_median_batch"] = median_rate
    return max(median_rate, result["reference_loop"]["answers_per_s"])


def recipe_points(rank: int, alpha: float = 0.5) -> dict[str, Any]:
    """One point of each kind from `alpha`: the plain alpha, a layer ramp from it to 1, a spectral recipe at it
    (half the rank)."""
    return {
        "plain_alphas": alpha,
        "layer_ramps": {"layers": f"linear:{alpha:g}:1"},
        "spectral": {"alpha": alpha, "rank": max(1, rank // 2)},
    }


def section_recipes(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Merge recipes per row (issue 18): the same sweep as `section_sweep`'s "ours" with 11 plain alphas, 11
    layer ramps and 11 spectral recipes per recording, side by side (median of interleaved rounds); no graph
    capture and no weight write once each variant's graphs exist; the SVD bases' memory. Then an Explore
    answer (`section_latency`'s, greedy) at a plain alpha, a layer ramp and a spectral recipe, interleaved:
    issue 23 asks recipes for 95% of plain alphas' speed at the sweep, at Explore and from files."""
    from naturelm_core.alpha import RowScaledDropout

    start = time.perf_counter()
    model.compute_spectral_bases()
    sync(device)
    bases_seconds = time.perf_counter() - start
    bases_bytes = 0
    for module in model.llm.modules():
        if isinstance(module, RowScaledDropout):
            bases_bytes += sum(m.numel() * m.element_size() for m in module.basis.maps())
    rank = model.config.lora_rank
    grids = {  # 11 distinct grid points each
        "plain_alphas": SWEEP_ALPHAS,
        "layer_ramps": [{"layers": f"linear:{a:g}:1"} for a in SWEEP_ALPHAS],
        "spectral": [{"alpha": a, "rank": max(1, rank // 2)} for a in SWEEP_ALPHAS[1:]]
        + [{"alpha": 1.0, "rank": max(1, rank // 4)}],
    }
    model.decode_with_static_cache = True
    warm = recordings(REFERENCE_BATCH, seed=81)
    shared = recordings(args.sweep_recordings, seed=82)
    result: dict[str, Any] = {"svd_bases_mib": bases_bytes / 2**20, "svd_bases_seconds": bases_seconds}
    try:
        for grid in grids.values():
            engine_sweep(model, warm, grid, args)  # warm-up: each variant's graphs for this batch shape
        captures, writes = model.static_decoding.captures, _weight_versions(model)
        rounds: dict[str, list[dict[str, Any]]] = {label: [] for label in grids}
        for _ in range(RECIPE_ROUNDS):  # interleaved, so a slow moment of the GPU does not land on one variant
            for label, grid in grids.items():
                seconds, (tokens, stats) = timed(device, lambda g=grid: engine_sweep(model, shared, g, args))
                rounds[label].append({**_throughput(seconds, tokens), **stats})
        for label, measured in rounds.items():
            result[label] = median_round(measured)
        result["graph_captures_during_recipe_changes"] = model.static_decoding.captures - captures
        result["weight_writes"] = _weight_versions(model) - writes
    finally:
        model.decode_with_static_cache = None
    plain = result["plain_alphas"]["answers_per_s"]
    result["layer_ramps_vs_plain"] = result["layer_ramps"]["answers_per_s"] / plain
    result["spectral_vs_plain"] = result["spectral"]["answers_per_s"] / plain
    result["explore"] = _explore_by_recipe(model, device, args, recipe_points(rank))
    return result


def median_round(measured: list[dict[str, Any]], listed: Sequence[str] = ()) -> dict[str, Any]:
    """The round of median_low answers/s (a measured rate, not an average of two), with every round's answers/s
    beside it in `answers_per_s_rounds`, and every round's value of each `listed` key in `{key}_rounds`."""
    rates = [each["answers_per_s"] for each in measured]
    median = measured[rates.index(statistics.median_low(rates))]
    return {
        **median,
        "answers_per_s_rounds": rates,
        **{f"{key}_rounds": [each[key] for each in measured] for key in listed},
    }


def _explore_by_recipe(
    model: NatureLM, device: torch.device, args: argparse.Namespace, points: dict[str, Any]
) -> dict[str, Any]:
    """Explore's p50 at each point, interleaved (a slow moment of the GPU lands on every kind alike), and each
    kind's speed as a share of the plain alpha's (its p50 over theirs)."""
    window = recordings(1, seed=31)[0]
    model.decode_with_static_cache = True
    try:
        for point in points.values():  # warm-up: the spectral variant's graphs are captured on first use
            interactive_ids(model, window, point, 1, args.new_tokens)
        seconds: dict[str, list[float]] = {label: [] for label in points}
        for _ in range(args.repeats):
            for label, point in points.items():
                seconds[label].append(
                    timed(device, lambda p=point: interactive_ids(model, window, p, 1, args.new_tokens))[0]
                )
    finally:
        model.decode_with_static_cache = None
    result: dict[str, Any] = {label: percentiles(times) for label, times in seconds.items()}
    plain = result["plain_alphas"]["p50_ms"]
    for label in points:
        if label != "plain_alphas":
            result[f"{label}_vs_plain"] = plain / result[label]["p50_ms"]
    return result


def file_sweep_spec(
    name: str,
    recordings_folder: Path,
    points: list[float | dict[str, Any]],
    args: argparse.Namespace,
    limit: int | None = None,
) -> Any:
    """A sweep over the benchmark's FLAC recordings: the common-name prompt, the run's beams and tokens, at
    `points` (plain alphas, and recipes, which a spec lists apart)."""
    from evaluation.sweep import SweepSpec

    return SweepSpec.from_dict(
        {
            "name": name,
            "source": "recordings",
            "path": str(recordings_folder),
            "subsets": ["benchmark"],
            "prompts": [{"name": "common", "template": PROMPT}],
            "alphas": [point for point in points if not isinstance(point, dict)],
            "recipes": [point for point in points if isinstance(point, dict)],
            "num_beams": args.beams,
            "max_new_tokens": args.new_tokens,
            "limit": limit,
        }
    )


def section_sweep_files(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Whole sweeps from audio files (FLAC, 44.1 kHz, 10 s) through SweepRunner and the engine's own worker
    thread, recordings decoded on 1 thread or on the default pool while the GPU answers: with 1 answer
    per recording decoding is the load; with 11 the GPU is. Compare with the in-memory sweep above.

    One alpha, one layer ramp and one spectral recipe per recording on the default pool (issue 23 asks recipes
    for 95% of one alpha's rate from files) are timed in RECIPE_ROUNDS interleaved rounds, each reporting its
    median_low round with every round's answers/s and graph captures, and the shares are of those medians: the
    batch shapes a sweep meets depend on decoding's timing, and a shape not met before costs a CUDA-graph capture
    inside the timed run, so one run each measured capture luck (and the host's drift over the section) more than
    the recipe; interleaving spreads the drift over all three. The other sweeps run once each."""
    import tempfile

    from benchmarks.sweep_decoding import write_recordings
    from evaluation.prefetch import SHORTER_SWITCH_INTERVAL, default_workers
    from evaluation.sweep import SweepRunner

    result: dict[str, Any] = {
        "recordings": args.file_recordings,
        "default_decode_workers": {"one_alpha": default_workers(1), "eleven_alphas": default_workers(11)},
    }
    long_sweep = (1 if args.one_alpha_files_only else LONG_ONE_ALPHA_SWEEP_FACTOR) * args.file_recordings
    with tempfile.TemporaryDirectory() as folder:
        recordings_folder = write_recordings(Path(folder) / "recordings", long_sweep, 10.0, "flac")
        engine = Engine(model, max_batch_rows=args.sweep_batch, sweep_capacity=100_000)

        def sweep(
            name: str, alphas: list[float], workers: int | None, limit: int | None = args.file_recordings
        ) -> dict[str, Any]:
            spec = file_sweep_spec(name, recordings_folder, alphas, args, limit)
            runner = SweepRunner(engine, spec, Path(folder) / "runs" / name, decode_workers=workers)
            engine.stats.recent_sweep_batches.clear()
            captures, encoder_captures = model.static_decoding.captures, model.encoder_graphs.captures
            seconds, status = timed(device, runner.run)
            return {
                "answers": status.done,
                "seconds": seconds,
                "answers_per_s": status.done / seconds,
                "rows_per_batch": engine.stats.sweep_rows_per_batch(),
                "batch_rows": " ".join(map(str, engine.stats.recent_sweep_batches)),  # the last 32
                "graph_captures": model.static_decoding.captures - captures,  # new batch shapes met by this sweep
                # the encoder's chunks follow decoding's timing: a 5-32-window size met twice is captured
                "encoder_graph_captures": model.encoder_graphs.captures - encoder_captures,
            }

        # Measured once each here; the default pool's one alpha and one recipe per recording in rounds below.
        plans = {"one_alpha": ([1.0], (1, 4, 8)), "eleven_alphas": (SWEEP_ALPHAS, (1, None))}
        recipes = recipe_points(model.config.lora_rank)  # at 0.5: a ramp to alpha 1 would be plain alpha 1
        for label in ("layer_ramps", "spectral"):  # one recipe per recording: its share of one alpha's rate
            plans[f"one_recipe_{label}"] = ([recipes[label]], ())
        compared = ("one_alpha", "one_recipe_layer_ramps", "one_recipe_spectral")
        if args.one_alpha_files_only:  # an A/B of decoding beside the engine: the sweeps it moves, quickly, once
            plans = {"one_alpha": ([1.0], (8, None))}
        try:
            for label, (alphas, worker_counts) in plans.items():
                sweep(f"warm-{label}", alphas, None, limit=16)  # graph capture of these batch shapes
                for workers in worker_counts:  # with one alpha decoding is the bound, with eleven the GPU
                    key = f"{label}_decode_workers_{workers or 'default'}"
                    result[key] = sweep(f"{label}-{workers}", alphas, workers)
            if args.one_alpha_files_only:
                return result
            rounds: dict[str, list[dict[str, Any]]] = {label: [] for label in compared}
            for round_index in range(RECIPE_ROUNDS):  # interleaved: the host's drift lands on every variant alike
                for label in compared:
                    rounds[label].append(sweep(f"{label}-default-{round_index}", plans[label][0], None))
            for label, measured in rounds.items():
                result[f"{label}_decode_workers_default"] = median_round(
                    measured, listed=("graph_captures", "encoder_graph_captures")
                )
            # The same with CPython's own switch interval while decoding (what evaluation.prefetch shortens).
            shorter, SHORTER_SWITCH_INTERVAL.seconds = SHORTER_SWITCH_INTERVAL.seconds, sys.getswitchinterval()
            try:
                result["one_alpha_decode_workers_default_switch_interval_unchanged"] = sweep("one-5ms", [1.0], None)
            finally:
                SHORTER_SWITCH_INTERVAL.seconds = shorter
            # 352 recordings at one alpha are a few batches, so filling and draining the pipeline weigh on them.
            result["one_alpha_long_decode_workers_default"] = sweep("one-long", [1.0], None, limit=long_sweep)
        finally:
            engine.stop()
    one_alpha = result["one_alpha_decode_workers_default"]["answers_per_s"]
    for label in ("layer_ramps", "spectral"):
        result[f"one_recipe_{label}_vs_one_alpha"] = (
            result[f"one_recipe_{label}_decode_workers_default"]["answers_per_s"] / one_alpha
        )
    return result


def section_app_path(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """The app's own path, built as app.py builds it: one Engine at its default batch size with its worker
    thread, one SweepQueue, sweeps from FLAC files on disk, Explore answers through answer_recording.

    Explore answers come first (one of them used to shrink every later batch to one row); then sweeps at 1
    and 11 alphas per recording; then the 11-alpha sweep again while an Explore request arrives every
    second: its rate against the idle sweep's, and Explore's p50 against the idle p50. Last, the one-alpha
    sweep again with a request every quarter second (it lasts about two seconds): there the sweep's decoding
    threads (one per core, up to 16) compete with the request's own thread for the interpreter.
    """
    import tempfile
    import threading

    from benchmarks.sweep_decoding import write_recordings
    from evaluation.sweep import SweepFolder, SweepQueue
    from naturelm_core.engine import default_batch_rows
    from naturelm_core.explore import answer_recording

    model.decode_with_static_cache = None
    engine = Engine(model, max_batch_rows=default_batch_rows(model)).start()
    greedy = GenerationSettings(num_beams=1, max_new_tokens=args.new_tokens)
    fresh_recordings = iter(recordings(args.repeats + 64, seed=61))  # a new upload each time: encoded too
    result: dict[str, Any] = {"max_batch_rows": engine.max_batch_rows, "recordings": args.file_recordings}

    def explore_once() -> float:
        start = time.perf_counter()
        answer_recording(engine, next(fresh_recordings), PROMPT, [0.5], greedy)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder:
        recordings_folder = write_recordings(Path(folder) / "recordings", args.file_recordings, 10.0, "flac")
        queue = SweepQueue(engine, Path(folder) / "runs")

        def sweep(name: str, alphas: list[float], limit: int | None = None, explore_every_s: float = 0.0):
            spec = file_sweep_spec(name, recordings_folder, alphas, args, limit)
            engine.stats.recent_sweep_batches.clear()
            engine.stats.recent_interactive_waits_s.clear()
            pauses = engine.stats.sweep_pauses
            captures = model.static_decoding.captures
            start = time.perf_counter()
            queue.submit(spec)
            latencies: list[float] = []
            finished = threading.Event()
            waiter = threading.Thread(target=lambda: (queue.join(), finished.set()), daemon=True)
            waiter.start()
            while explore_every_s and not finished.wait(timeout=explore_every_s):
                latencies.append(explore_once())
            finished.wait()
            seconds = time.perf_counter() - start
            done = SweepFolder(queue.runs_dir, spec.sweep_id).read_status().done
            entry = {
                "answers": done,
                "seconds": seconds,
                "answers_per_s": done / seconds,
                "rows_per_batch": engine.stats.sweep_rows_per_batch(),
                "sweep_pauses": engine.stats.sweep_pauses - pauses,
                "batch_rows": " ".join(map(str, engine.stats.recent_sweep_batches)),  # the last 32
                "graph_captures": model.static_decoding.captures - captures,
            }
            if latencies:
                entry["explore_during_sweep"] = percentiles(latencies)
                entry["explore_wait_for_the_model"] = percentiles(list(engine.stats.recent_interactive_waits_s))
            return entry

        try:
            result["explore_first"] = percentiles([explore_once() for _ in range(3)])
            result["explore_idle"] = percentiles([explore_once() for _ in range(args.repeats)])
            for label, alphas in (("one_alpha", [1.0]), ("eleven_alphas", SWEEP_ALPHAS)):
                sweep(f"warm-{label}", alphas, limit=16)  # graph capture of these batch shapes
                result[label] = sweep(label, alphas)
            other_alphas = [round(0.05 + 0.1 * i, 2) for i in range(10)] + [1.0]  # a new sweep, not a resumption
            result["eleven_alphas_with_explore_each_s"] = sweep("with-explore", other_alphas, explore_every_s=1.0)
            result["one_alpha_with_explore_each_quarter_s"] = sweep("one-with-explore", [0.95], explore_every_s=0.25)
        finally:
            queue.close()
            engine.stop()
    for prefix, idle, busy in (
        ("", "eleven_alphas", "eleven_alphas_with_explore_each_s"),
        ("one_alpha_", "one_alpha", "one_alpha_with_explore_each_quarter_s"),
    ):
        with_explore = result[busy]
        rate = with_explore["answers_per_s"] / result[idle]["answers_per_s"]
        result[f"{prefix}sweep_rate_with_explore_vs_idle"] = rate
        if "explore_during_sweep" in with_explore:
            result[f"{prefix}explore_p50_during_sweep_vs_idle"] = (
                with_explore["explore_during_sweep"]["p50_ms"] / result["explore_idle"]["p50_ms"]
            )
    return result


def _label_likelihoods(model: NatureLM, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """benchmarks/likelihood_bench.py's section (it imports this module, hence the late import)."""
    from benchmarks.likelihood_bench import section_label_likelihoods

    return section_label_likelihoods(model, device, args)


def _throughput(seconds: float, tokens: list[int]) -> dict[str, Any]:
    return {
        "answers": len(tokens),
        "seconds": seconds,
        "answers_per_s": len(tokens) / seconds,
        "mean_tokens_per_answer": statistics.mean(tokens),
    }


# --- report --------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The table docs/PERFORMANCE.md shows; every number that a section produced, errors named."""
    env = results.get("environment", {})
    lines = [
        f"Device: {env.get('device')} | date: {env.get('date')} | torch {env.get('torch')} | "
        f"transformers {env.get('transformers')} | peft {env.get('peft')}",
        f"Command: `{env.get('command')}`",
        "",
        "| measure | value |",
        "| --- | --- |",
    ]
    for section, values in results.items():
        if section == "environment":
            continue
        for key, value in _flatten(values):
            lines.append(f"| {section}.{key} | {_format(value)} |" if key else f"| {section} | {_format(value)} |")
    return "\n".join(lines) + "\n"


def _flatten(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(values, dict):
        return [item for key, value in values.items() for item in _flatten(value, f"{prefix}{key}.")]
    if isinstance(values, list):
        return [item for index, value in enumerate(values) for item in _flatten(value, f"{prefix}{index}.")]
    return [(prefix.rstrip("."), values)]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def targets(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Issue 23's yardsticks, from this run's own measurements: the sweep's compute floor (answers/s if
    every matrix product ran at the measured bf16 rate) and an Explore answer's bound (the measured
    encoder, then prefill and each decode step at the larger of their compute and memory bounds)."""
    env, bandwidth = results["environment"], results.get("bandwidth")
    shares = _recipe_shares(results)
    if not bandwidth:
        return {"recipes_share_of_plain": shares} if shares else {}
    flop_rate = bandwidth["bf16_matmul_tflop_per_s"] * 1e12
    copy_rate = bandwidth["copy_gb_per_s"] * 1e9
    weights = env["weight_bytes_per_step"] / 2  # bf16 parameters a token passes through (lm_head included)
    prompt, new_tokens = env["prompt_tokens_with_audio"], env["new_tokens"]

    def compute_floor(beams: int) -> float:
        """Answers/s if an answer's prompt and its beams' decode steps ran at the measured product rate."""
        return flop_rate / (2 * weights * (prompt + beams * (new_tokens - 1)))

    out: dict[str, Any] = {"sweep_compute_floor_answers_per_s": compute_floor(args.beams)}
    sweep = results.get("sweep", {}).get("ours")
    if sweep:
        out["sweep_answers_per_s"] = sweep["answers_per_s"]
        out["sweep_share_of_floor"] = sweep["answers_per_s"] / out["sweep_compute_floor_answers_per_s"]
    greedy = results.get("sweep", {}).get("ours_greedy")
    if greedy:  # its own floor: one row per answer decodes
        out["sweep_greedy_answers_per_s"] = greedy["answers_per_s"]
        out["sweep_greedy_share_of_floor"] = greedy["answers_per_s"] / compute_floor(1)
    step = results.get("decode_step", {}).get("rows_1", {}).get("bound_weights_and_kv_ms")
    encoder = results.get("audio_encoder", {}).get("windows_1", {}).get("bfloat16_ms_per_window")
    latency = results.get("latency", {}).get("static_graphs_beams_1", {}).get("p50_ms")
    if step and encoder and latency:
        prefill = 1000 * max(env["weight_bytes_per_step"] / copy_rate, 2 * weights * prompt / flop_rate)
        bound = encoder + prefill + (new_tokens - 1) * step
        out["explore_bound_ms"] = {
            "total": bound,
            "encoder_measured": encoder,
            "prefill": prefill,
            "decode": bound - encoder - prefill,
        }
        out["explore_p50_ms"] = latency
        out["explore_over_bound"] = latency / bound
    if shares:
        out["recipes_share_of_plain"] = shares
    return out


def _recipe_shares(results: dict[str, Any]) -> dict[str, float]:
    """Each recipe kind's speed as a share of plain alphas', where this run measured it (the sweep, an Explore
    answer, one recipe per recording from files), and the lowest: issue 23 asks >= 0.95 at each."""
    places = (
        ("sweep", results.get("recipes", {})),
        ("explore", results.get("recipes", {}).get("explore", {})),
        ("files_one_per_recording", results.get("sweep_files", {})),
    )
    shares = {
        f"{where}_{kind}": value
        for where, section in places
        for kind in ("layer_ramps", "spectral")
        for value in [section.get(f"{kind}_vs_plain", section.get(f"one_recipe_{kind}_vs_one_alpha"))]
        if isinstance(value, float)
    }
    return {**shares, "lowest": min(shares.values())} if shares else {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmark-results"))
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--sweep-recordings", type=int, default=16, help="recordings in the side-by-side sweep")
    parser.add_argument("--large-recordings", type=int, default=64, help="recordings in our larger sweep")
    parser.add_argument("--sweep-batch", type=int, default=176, help="rows per engine batch (16 recordings x 11)")
    parser.add_argument("--file-recordings", type=int, default=352, help="FLAC recordings in the sweep from files")
    parser.add_argument(
        "--one-alpha-files-only",
        action="store_true",
        help="sweep_files runs only its one-alpha sweeps on 8 threads and the default (an A/B in ~30 s)",
    )
    parser.add_argument(
        "--sweep-ours-only",
        action="store_true",
        help="sweep leaves out the public loop and the eager-decode sweep (half of the section's time): for A/Bs",
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per latency measurement")
    parser.add_argument(
        "--sections",
        default=(
            "correctness,alpha_change,latency,decode_step,breakdown,audio_encoder,sweep,sweep_files,app_path,profile,precision,"
            "label_likelihoods,recipes"
        ),
    )
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build_seconds, model = timed(device, lambda: build_model(args.size, device, dtype))
    results: dict[str, Any] = {"environment": section_environment(model, device, args)}
    results["environment"]["build_seconds"] = build_seconds
    if device.type == "cuda":
        results["environment"]["model_gpu_memory_gib"] = torch.cuda.memory_allocated(device) / 2**30
    bandwidth, matmul_tflops = None, 0.0
    if device.type == "cuda":
        results["bandwidth"] = section_bandwidth(device)
        bandwidth = results["bandwidth"]["copy_gb_per_s"] * 1e9
        matmul_tflops = results["bandwidth"]["bf16_matmul_tflop_per_s"]
    sections = {
        "correctness": lambda: section_correctness(model, args),
        "alpha_change": lambda: section_alpha_change(model, device, args),
        "latency": lambda: section_latency(model, device, args),
        "decode_step": lambda: section_decode_step(model, device, args, bandwidth, matmul_tflops),
        "breakdown": lambda: section_breakdown(model, device, args),
        "audio_encoder": lambda: section_audio_encoder(model, device, args),
        "profile": lambda: section_profile(model, device, args, out),
        "precision": lambda: section_precision(device, args),
        "sweep": lambda: section_sweep(model, device, args),
        "sweep_files": lambda: section_sweep_files(model, device, args),
        "app_path": lambda: section_app_path(model, device, args),
        "recipes": lambda: section_recipes(model, device, args),
        "label_likelihoods": lambda: _label_likelihoods(model, device, args),
    }
    peaks = {}
    for name in args.sections.split(","):
        start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            results[name] = sections[name]()
        except Exception as error:  # a failed section is reported, and the others still run
            results[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results[name + "_seconds"] = time.perf_counter() - start
        if device.type == "cuda":  # what the section allocated at most, with the model and held states
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
            results["peak_gpu_memory_gib"] = peaks
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "results.md").write_text(markdown(results))
        print(f"[{name}] {time.perf_counter() - start:.1f} s", flush=True)
    step = model.static_decoding.step  # built by the first static generation
    if step is not None:  # which kernels the figures were measured with: a failed start-up check falls back
        results["kernels_in_use"] = step.kernels_in_use()
    results["targets"] = targets(results, args)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
