"""NatureLM-audio: the audio encoder, Llama with LoRA, and generation where every row has its own alpha.

The model holds no alpha. Each call validates its rows' alphas or merge recipes (naturelm_core.recipes:
wherever an alpha is accepted, a recipe is too, as a `MergeRecipe` or its JSON dict), installs them
(per row, repeated per beam) for exactly the duration of that call, and the LoRA layers refuse to run
outside such a call; see naturelm_core.alpha for why this makes cross-request leaks impossible.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch import Tensor, nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from naturelm_core.alpha import RowMerge, RowScaledDropout, install_row_alphas
from naturelm_core.alphas import GridPoint, PointLike, check_grid_point, validate_alphas
from naturelm_core.audio import load_audio
from naturelm_core.config import SAMPLE_RATE, WINDOW_SECONDS, NatureLMConfig
from naturelm_core.decoding import CachedDecoder, TokenDecoder, beam_search, greedy_search
from naturelm_core.encoder import AudioEncoder
from naturelm_core.encoder_graphs import EncoderGraphs
from naturelm_core.label_scores import (
    DEFAULT_CANDIDATES_PER_PASS,
    Candidates,
    LabelScores,
    LabelsLike,
    candidate_sets,
)
from naturelm_core.likelihood import score_candidates
from naturelm_core.llama_step import StaticDecodingUnsupported
from naturelm_core.prompting import PaddedBatch, assemble_batch, tokenize_prompt
from naturelm_core.recipes import MERGE_MODULES
from naturelm_core.static_decoding import StaticCacheDecoder, StaticDecoding
from naturelm_core.tensor_search import tensor_beam_search, tensor_greedy_search

logger = logging.getLogger(__name__)

LORA_TARGET_MODULES = MERGE_MODULES
WINDOW_SAMPLES = round(WINDOW_SECONDS * SAMPLE_RATE)
AUDIO_PRECISIONS = ("float32", "bfloat16")
PROMPT_CACHE_SIZE = 1024  # distinct prompts whose token pieces are kept
# Generation options a caller may pass, with the only values our decoding loop implements (None: any float).
_NEUTRAL_GENERATION_OPTIONS: dict[str, Any] = {
    "do_sample": False,
    "repetition_penalty": 1.0,
    "early_stopping": False,
    "length_penalty": None,
}


class NatureLM(nn.Module):
    """NatureLM-audio for inference, with a per-row LoRA interpolation weight alpha.

    `llm` must already have its embeddings resized to len(tokenizer), i.e. with `[PAD]`; it is wrapped
    here with peft LoRA so that `llama_model.state_dict()` uses the published checkpoint's names
    without their leading "llama_model.".
    """

    def __init__(
        self,
        config: NatureLMConfig,
        audio_encoder: AudioEncoder,
        llm: LlamaForCausalLM,
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = audio_encoder
        self.tokenizer = tokenizer
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(LORA_TARGET_MODULES),
            bias="none",
            task_type=TaskType.CAUSAL_LM,
        )
        # LoRA in the LLM's dtype, as upstream (peft 0.11) ran it and the checkpoint stores it (bf16), not peft's fp32.
        self.llama_model = get_peft_model(llm, lora, autocast_adapter_dtype=False)
        self.row_alphas = install_row_alphas(self.llama_model, config.lora_dropout)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; add '[PAD]' (as upstream does) before building NatureLM")
        if llm.get_input_embeddings().num_embeddings < len(tokenizer):
            raise ValueError(
                f"the LLM embeds {llm.get_input_embeddings().num_embeddings} tokens but the tokenizer has "
                f"{len(tokenizer)}; resize the embeddings to len(tokenizer) first"
            )
        self.stop_ids = _stop_ids(llm)
        # Prefill and decode from a static KV cache, as CUDA graphs; None: exactly when the model is on CUDA.
        self.decode_with_static_cache: bool | None = None
        self.static_decoding = StaticDecoding()
        self._pieces_cache: dict[str, list[list[int]]] = {}
        self._audio_precision: str | None = None
        # Where load_model read the checkpoint and the Llama (a Hub id or a folder), and whether this is the offline
        # demo: a sweep records them beside its rows, so numbers can be traced to the model that produced them.
        self.source: str | None = None
        self.llm_source: str | None = None
        self.demo = False
        self.encoder_graphs = EncoderGraphs()  # encoder calls of up to 32 windows replayed as CUDA graphs (GPU only)
        self.eval()  # an inference wrapper: LoRA dropout only applies after an explicit .train()

    @property
    def llm(self) -> LlamaForCausalLM:
        """The Llama with LoRA layers inside it, called directly (peft's wrapper adds nothing at inference)."""
        return self.llama_model.get_base_model()

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def audio_precision(self) -> str:
        """How the audio encoder computes: "bfloat16" (its float32 weights under bf16 autocast) or "float32".

        The default follows the LLM: bfloat16 with a bfloat16 LLM, because upstream's encode_audio runs
        under bf16 autocast (the published model was evaluated that way); float32 with a float32 LLM,
        which is what the golden target records. Set it to override, e.g. float32 BEATs beside a bf16 LLM.
        """
        if self._audio_precision is not None:
            return self._audio_precision
        return "bfloat16" if self.dtype == torch.bfloat16 else "float32"

    @audio_precision.setter
    def audio_precision(self, precision: str | None) -> None:
        if precision not in (None, *AUDIO_PRECISIONS):
            raise ValueError(
                f"audio precision must be one of {AUDIO_PRECISIONS} (or None: follow the LLM), got {precision!r}"
            )
        self._audio_precision = precision

    @torch.no_grad()
    def encode_audio(self, windows: Tensor | np.ndarray) -> Tensor:
        """Waveform windows [B, S] at 16 kHz -> audio embeddings [B, T, H] in the LLM's dtype.

        Windows stay float32 on the way in: the encoder computes its fbank in float32 whatever its
        precision, and a bf16 waveform would lose the quiet parts of a recording. Under bf16 autocast
        (see audio_precision) matrix products run in bf16 and norms and softmax in float32.
        """
        windows = torch.as_tensor(windows, dtype=torch.float32).to(self.device)
        precision = self.audio_precision
        embeddings = self.encoder_graphs.encode(self.audio_encoder, self._encode_eagerly, windows, precision)
        return (embeddings if embeddings is not None else self._encode_eagerly(windows)).to(self.dtype)

    def _encode_eagerly(self, windows: Tensor) -> Tensor:
        # No autocast cast cache: a CUDA graph may capture this call, and cached casts would outlive it.
        bf16 = self.audio_precision == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            return self.audio_encoder(windows)

    def generate(
        self,
        audio: Sequence[str | os.PathLike | np.ndarray] | str | os.PathLike | np.ndarray,
        prompts: Sequence[str] | str,
        alphas: Sequence[PointLike] | PointLike,
        num_beams: int = 2,
        max_new_tokens: int = 100,
        allow_extrapolation: bool = False,
        **gen: Any,
    ) -> list[str]:
        """One answer per audio row (a path, or a 16 kHz mono float32 array of at most one 10 s window).

        `alphas`: one per row, or one for all: a float, a `MergeRecipe` or a recipe's JSON dict, in any
        mix, e.g. [0.5, {"layers": "linear:0.2:1"}, MergeRecipe(alpha=0.8, rank=8)].
        A shorter clip is zero-padded to 10 s and clamped to [-1, 1], as upstream's processor does.
        """
        return self.generate_from_embeddings(
            self._embed_rows(audio), prompts, alphas, num_beams, max_new_tokens, allow_extrapolation, **gen
        )

    def _embed_rows(
        self, audio: Sequence[str | os.PathLike | np.ndarray] | str | os.PathLike | np.ndarray
    ) -> list[list[Tensor]]:
        """Each audio row (a path or an array, one model window) encoded: one embedding block per row."""
        if isinstance(audio, str | os.PathLike | np.ndarray):
            audio = [audio]
        if len(audio) == 0:
            raise ValueError("nothing to answer: no audio rows were given")
        embeds = self.encode_audio(np.stack([_model_window(item) for item in audio]))
        return [[row] for row in embeds]

    def generate_from_embeddings(
        self,
        audio_embeds: Sequence[Sequence[Tensor]],
        prompts: Sequence[str] | str,
        alphas: Sequence[PointLike] | PointLike,
        num_beams: int = 2,
        max_new_tokens: int = 100,
        allow_extrapolation: bool = False,
        between_steps: Callable[[], None] | None = None,
        min_rows: int = 1,
        **gen: Any,
    ) -> list[str]:
        """Answers for rows of cached audio embeddings: one [T, H] tensor per `<AudioHere>` of the row's prompt."""
        ids = self.generate_ids_from_embeddings(
            audio_embeds,
            prompts,
            alphas,
            num_beams,
            max_new_tokens,
            allow_extrapolation,
            between_steps,
            min_rows,
            **gen,
        )
        return decode_answers(self.tokenizer, ids)

    @torch.no_grad()
    def generate_ids_from_embeddings(
        self,
        audio_embeds: Sequence[Sequence[Tensor]],
        prompts: Sequence[str] | str,
        alphas: Sequence[PointLike] | PointLike,
        num_beams: int = 2,
        max_new_tokens: int = 100,
        allow_extrapolation: bool = False,
        between_steps: Callable[[], None] | None = None,
        min_rows: int = 1,
        **gen: Any,
    ) -> list[list[int]]:
        """Generated token ids per row: greedy for num_beams=1 (stop id kept), else transformers-4.44 beam search.

        `between_steps` is called every few decode steps on the static path, where it may run another
        generation to completion (the engine answers a waiting user inside a long sweep batch): there each
        batch's alphas, KV cache and graphs live in its own state. The eager path never calls it, since
        its LoRA layers read the one shared alpha buffer of the call in progress. `min_rows`: the static
        state decodes at least this many rows, padding included (StaticDecoding.decoder says why); the
        answers are the same.
        """
        for name, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        length_penalty = _length_penalty(gen)
        merge = self.row_merge(alphas, len(audio_embeds), allow_extrapolation)
        batch = self.build_inputs(audio_embeds, prompts)
        row_merge = merge.repeat_rows(num_beams)
        if self.uses_static_cache:
            # Every row's merge lives in the static state; the LoRA layers' own alpha path is not used, so the
            # search runs outside `row_alphas.applied` and may nest another generation (`between_steps`).
            try:
                decoder = self.static_decoding.decoder(self.llm, batch, row_merge, num_beams, max_new_tokens, min_rows)
            except StaticDecodingUnsupported as error:
                logger.warning("static-cache decoding is off for this model: %s", error)
                self.decode_with_static_cache = False
            else:
                decoder.between_steps = between_steps
                try:
                    return self._search(decoder, num_beams, max_new_tokens, length_penalty, between_steps)
                finally:
                    decoder.release()
        with self.row_alphas.applied(row_merge):
            decoder = CachedDecoder(self.llm, batch.repeat_rows(num_beams))
            return self._search(decoder, num_beams, max_new_tokens, length_penalty)

    def release_cached_states(self) -> None:
        """Free the static decoder's per-shape KV caches and graphs (after running out of memory); the
        next generation builds what it needs again."""
        self.static_decoding.drop_states()

    @property
    def uses_static_cache(self) -> bool:
        """Whether generation decodes with the static cache (graphs on CUDA); never while training."""
        if self.training:
            return False
        return self.device.type == "cuda" if self.decode_with_static_cache is None else self.decode_with_static_cache

    def _search(
        self,
        decoder: TokenDecoder,
        num_beams: int,
        max_new_tokens: int,
        length_penalty: float,
        between_steps: Callable[[], None] | None = None,
    ) -> list[list[int]]:
        """The static decoder's steps are graphs the CPU only enqueues: its search stays on the device too
        (naturelm_core.tensor_search, the same answers), so the CPU never waits for a step to finish."""
        if isinstance(decoder, StaticCacheDecoder):
            if num_beams == 1:
                return tensor_greedy_search(decoder, max_new_tokens, self.stop_ids, between_steps=between_steps)
            return tensor_beam_search(
                decoder, num_beams, max_new_tokens, self.stop_ids, length_penalty, between_steps=between_steps
            )
        if num_beams == 1:
            return greedy_search(decoder, max_new_tokens, self.stop_ids)
        return beam_search(decoder, num_beams, max_new_tokens, self.stop_ids, length_penalty)

    @torch.no_grad()
    def next_token_logits(
        self,
        audio_embeds: Sequence[Sequence[Tensor]],
        prompts: Sequence[str] | str,
        alphas: Sequence[PointLike] | PointLike,
        allow_extrapolation: bool = False,
    ) -> Tensor:
        """Logits [B, V] (float32, or float64 for a float64 model) of each row's first generated position."""
        merge = self.row_merge(alphas, len(audio_embeds), allow_extrapolation)
        batch = self.build_inputs(audio_embeds, prompts)
        with self.row_alphas.applied(merge):
            return CachedDecoder(self.llm, batch).prefill()

    def score_labels(
        self,
        audio: Sequence[str | os.PathLike | np.ndarray] | str | os.PathLike | np.ndarray,
        prompts: Sequence[str] | str,
        labels: LabelsLike | Sequence[LabelsLike],
        alphas: Sequence[PointLike] | PointLike,
        allow_extrapolation: bool = False,
        max_candidates_per_pass: int = DEFAULT_CANDIDATES_PER_PASS,
    ) -> list[LabelScores]:
        """How likely each audio row is to be answered with each label exactly (naturelm_core.label_scores).

        Audio, prompts and alphas (floats or merge recipes) as for `generate`, one per row or one for all.
        `labels`: one candidate list for every row, or one per row; a list of strings or `Candidates`.
        Candidates are scored `max_candidates_per_pass` sequences at a time (naturelm_core.likelihood).
        """
        return self.score_labels_from_embeddings(
            self._embed_rows(audio), prompts, labels, alphas, allow_extrapolation, max_candidates_per_pass
        )

    @torch.no_grad()
    def score_labels_from_embeddings(
        self,
        audio_embeds: Sequence[Sequence[Tensor]],
        prompts: Sequence[str] | str,
        labels: LabelsLike | Sequence[LabelsLike],
        alphas: Sequence[PointLike] | PointLike,
        allow_extrapolation: bool = False,
        max_candidates_per_pass: int = DEFAULT_CANDIDATES_PER_PASS,
        between_passes: Callable[[], None] | None = None,
    ) -> list[LabelScores]:
        """`score_labels` for rows of cached audio embeddings: one [T, H] tensor per `<AudioHere>` of the row's prompt.

        Everything is checked before the LLM runs. `between_passes` runs between two passes of candidates,
        where no merge is applied: it may run another request on this model (the engine's waiting users).
        """
        merge = self.row_merge(alphas, len(audio_embeds), allow_extrapolation)
        candidates = candidate_sets(self.tokenizer, labels, len(audio_embeds))
        batch = self.build_inputs(audio_embeds, prompts)
        return score_candidates(
            self.llm, self.row_alphas, batch, merge, candidates, self.stop_ids, max_candidates_per_pass, between_passes
        )

    def label_candidates(self, labels: LabelsLike) -> Candidates:
        """One candidate set checked and tokenized once: a sweep over a closed set passes it to every row."""
        return labels if isinstance(labels, Candidates) else Candidates.tokenize(self.tokenizer, labels)

    @property
    def num_layers(self) -> int:
        """Decoder layers of the LLM: the length of a recipe's `layers` list."""
        return self.llm.config.num_hidden_layers

    def check_grid_point(self, value: object, allow_extrapolation: bool = False, name: str = "alpha") -> GridPoint:
        """One alpha or recipe checked against this model (its layers and LoRA rank); plain recipes become floats.

        `name` is how a refusal names the value (a sweep names the spec's recipe it refuses)."""
        return check_grid_point(value, allow_extrapolation, self.num_layers, self.config.lora_rank, name)

    def row_merge(
        self, alphas: Sequence[PointLike] | PointLike, rows: int, allow_extrapolation: bool = False
    ) -> RowMerge:
        """The checked merge of `rows` rows (one alpha or recipe per row, or one for all) as tensors."""
        points = validate_alphas(alphas, rows, allow_extrapolation, self.num_layers, self.config.lora_rank)
        return RowMerge.from_points(points, self.num_layers, self.config.lora_rank, self.device)

    def compute_spectral_bases(self) -> None:
        """Compute every LoRA projection's singular basis now (load_model does, once the weights are in) rather
        than at the first spectral recipe; each is recomputed only should its LoRA weights change."""
        for module in self.llm.modules():
            if isinstance(module, RowScaledDropout):
                module.basis.maps()

    def build_inputs(self, audio_embeds: Sequence[Sequence[Tensor]], prompts: Sequence[str] | str) -> PaddedBatch:
        """The left-padded LLM inputs of a batch: templated prompts with audio spliced at the placeholders."""
        rows = len(audio_embeds)
        if rows == 0:
            raise ValueError("nothing to generate: the batch has no rows")
        prompts = [prompts] * rows if isinstance(prompts, str) else list(prompts)
        if len(prompts) != rows:
            raise ValueError(f"got {len(prompts)} prompts for {rows} audio rows; pass one per row or a single str")
        for row, blocks in enumerate(audio_embeds):
            if isinstance(blocks, Tensor):
                raise TypeError(f"row {row}: audio embeddings must be a list of [T, H] tensors, one per placeholder")
        pieces = [self._prompt_pieces(prompt) for prompt in prompts]
        return assemble_batch(
            self.llm.get_input_embeddings(),
            self.tokenizer.bos_token_id,
            self.tokenizer.pad_token_id,
            list(zip(pieces, audio_embeds, strict=True)),
        )

    def _prompt_pieces(self, prompt: str) -> list[list[int]]:
        """The prompt's token pieces, tokenized once per distinct prompt: a sweep batch repeats one prompt
        across 176 rows. The cache is bounded; a full one starts again."""
        pieces = self._pieces_cache.get(prompt)
        if pieces is None:
            if len(self._pieces_cache) >= PROMPT_CACHE_SIZE:
                self._pieces_cache.clear()
            pieces = tokenize_prompt(self.tokenizer, prompt, self.config.prompt_template)
            self._pieces_cache[prompt] = pieces
        return pieces


# transformers 4.x's `clean_up_tokenization`, which NatureLM-audio's answers (and the paper's released
# predictions) went through; transformers 5 silently skips it for BPE tokenizers, so it is applied here.
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    for spaced, joined in _CLEAN_UP:
        text = text.replace(spaced, joined)
    return text


def decode_answers(tokenizer: Any, ids: Sequence[Sequence[int]]) -> list[str]:
    """Decode as upstream did: special tokens (the stop id, [PAD]) dropped, then the 4.x clean-up."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [clean_up_tokenization(text) for text in texts]


def _stop_ids(llm: LlamaForCausalLM) -> list[int]:
    """The LLM's own stop ids (Llama-3.1: 128001, 128008, 128009), in order: the first closes beam hypotheses."""
    generation_config = getattr(llm, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = llm.config.eos_token_id
    if eos is None:
        raise ValueError("the LLM defines no eos_token_id, so generation could never stop on one")
    return [eos] if isinstance(eos, int) else list(eos)


def _length_penalty(gen: dict[str, Any]) -> float:
    """Accept only the generation options our decoding implements; refuse the rest by name."""
    unknown = sorted(set(gen) - set(_NEUTRAL_GENERATION_OPTIONS))
    if unknown:
        raise TypeError(f"unsupported generation options {unknown}; supported: {sorted(_NEUTRAL_GENERATION_OPTIONS)}")
    for name, neutral in _NEUTRAL_GENERATION_OPTIONS.items():
        if neutral is not None and name in gen and gen[name] != neutral:
            raise ValueError(f"{name}={gen[name]!r} is not supported; only {name}={neutral!r} is implemented")
    return float(gen.get("length_penalty", 1.0))


def _model_window(item: str | os.PathLike | np.ndarray) -> np.ndarray:
    """One 10 s model window: loaded or given at 16 kHz, right-padded with zeros, then clamped to [-1, 1]."""
    if isinstance(item, str | os.PathLike):
        waveform, _ = load_audio(item)
    elif isinstance(item, np.ndarray):
        if item.ndim != 1:
            raise ValueError(f"an audio array must be 16 kHz mono, 1-D, got shape {item.shape}")
        waveform = item.astype(np.float32, copy=False)
    else:
        raise TypeError(f"audio rows must be file paths or numpy arrays, got {type(item).__name__}")
    if len(waveform) > WINDOW_SAMPLES:
        raise ValueError(
            f"audio of {len(waveform) / SAMPLE_RATE:.2f} s is longer than one {WINDOW_SECONDS:g} s model window; "
            "cut it with naturelm_core.audio.windows() and pass one row per window (or several placeholders per prompt)"
        )
    padded = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    padded[: len(waveform)] = waveform
    return np.clip(padded, -1.0, 1.0)
