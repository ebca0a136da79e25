"""Model configuration, read from and written to the published checkpoint's `config.json`.

The published file (EarthSpeciesProject/NatureLM-audio) is a flat JSON object with a nested
`beats_cfg`. The Q-Former's width is not in it (upstream reads it from bert-base-uncased), so it
lives here as `qformer_*` fields that are written only when they differ from bert-base, which
keeps a full-size round trip byte-for-byte in the published layout while letting tiny test
models shrink the Q-Former too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PUBLISHED_REPO_ID = "EarthSpeciesProject/NatureLM-audio"
PUBLISHED_LLAMA_PATH = "meta-llama/Meta-Llama-3.1-8B-Instruct"
PROMPT_TEMPLATE = (
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)
AUDIO_PLACEHOLDER = "<AudioHere>"
AUDIO_PROMPT_PREFIX = "<Audio><AudioHere></Audio> "
SAMPLE_RATE = 16_000
WINDOW_SECONDS = 10.0


@dataclass
class BEATsConfig:
    """BEATs hyper-parameters, with the published checkpoint's keys and values as defaults."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 0.6
    layer_norm_first: bool = False
    deep_norm: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    finetuned_model: bool = True
    predictor_dropout: float = 0.0
    predictor_class: int = 527


_BERT_BASE_QFORMER = {"qformer_hidden_size": 768, "qformer_num_heads": 12, "qformer_intermediate_size": 3072}


@dataclass
class NatureLMConfig:
    """Everything needed to build NatureLM-audio, in the published `config.json` layout.

    `llama_path` may be a Hub id or a folder; a relative folder is resolved against the folder the
    config was read from (the tiny checkpoint keeps its Llama in `llm/` beside it).
    """

    beats_cfg: BEATsConfig = field(default_factory=BEATsConfig)
    llama_path: str = PUBLISHED_LLAMA_PATH
    beats_path: str | None = None
    freeze_beats: bool = True
    use_audio_Qformer: bool = True
    max_pooling: bool = False
    num_audio_query_token: int = 1
    freeze_audio_QFormer: bool = False
    window_level_Qformer: bool = True
    second_per_window: float = 0.333333
    second_stride: float = 0.333333
    downsample_factor: int = 8
    audio_llama_proj_model: str | None = None
    freeze_audio_llama_proj: bool = False
    lora: bool = True
    lora_rank: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    flash_attn: str = "eager"
    prompt_template: str = PROMPT_TEMPLATE
    max_txt_len: int = 160
    end_sym: str = "<|end_of_text|>"
    device: str = "cuda"
    audio_encoding_cache_size: int = 100
    qformer_hidden_size: int = 768
    qformer_num_heads: int = 12
    qformer_intermediate_size: int = 3072
    qformer_num_layers: int = 2
    # Set by from_json_file: where relative paths in this config are anchored. Never serialised.
    source_dir: str | None = field(default=None, repr=False, compare=False)

    @property
    def qformer_window_tokens(self) -> int:
        """BEATs tokens per Q-Former window: round(1500 * second_per_window / 30) = 17 as published.

        1500 / 30 is upstream's tokens-per-second constant (BEATs' 50 tokens/s); kept verbatim so
        that a config with another second_per_window windows exactly as upstream does.
        """
        return round(1500 * self.second_per_window / 30)

    @property
    def qformer_window_stride(self) -> int:
        return round(1500 * self.second_stride / 30)

    @property
    def lora_scaling(self) -> float:
        """Upstream's LoRA scale s = lora_alpha / r; 1.0 for NatureLM, so alpha is the whole scale."""
        return self.lora_alpha / self.lora_rank

    def resolved_llama_path(self) -> str:
        """The Llama location, with a relative local folder anchored at the config's folder."""
        if self.source_dir and not os.path.isabs(self.llama_path):
            candidate = Path(self.source_dir) / self.llama_path
            if candidate.is_dir():
                return str(candidate)
        return self.llama_path

    def to_dict(self) -> dict[str, Any]:
        """The published layout; Q-Former sizes only where they differ from bert-base."""
        data = dataclasses.asdict(self)
        data.pop("source_dir")
        if data["qformer_num_layers"] == 2:
            data.pop("qformer_num_layers")
        if all(data[k] == v for k, v in _BERT_BASE_QFORMER.items()):
            for key in _BERT_BASE_QFORMER:
                data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NatureLMConfig:
        """Build from a published config dict; unknown keys are refused so typos cannot hide."""
        data = dict(data)
        beats = BEATsConfig(**data.pop("beats_cfg", {}))
        known = {f.name for f in dataclasses.fields(cls)} - {"beats_cfg", "source_dir"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config.json has keys this version does not understand: {unknown}")
        return cls(beats_cfg=beats, **data)

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> NatureLMConfig:
        path = Path(path)
        config = cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        config.source_dir = str(path.resolve().parent)
        return config

    @classmethod
    def full(cls) -> NatureLMConfig:
        """The published NatureLM-audio configuration."""
        return cls()

    @classmethod
    def tiny(cls, llama_path: str = "llm") -> NatureLMConfig:
        """A few-MB model of the same architecture, for tests and the offline demo."""
        beats = BEATsConfig(
            embed_dim=32,
            encoder_layers=2,
            encoder_embed_dim=48,
            encoder_ffn_embed_dim=96,
            encoder_attention_heads=4,
            conv_pos=16,
            conv_pos_groups=4,
            num_buckets=32,
            max_distance=80,
            predictor_class=7,
        )
        return cls(
            beats_cfg=beats,
            llama_path=llama_path,
            lora_rank=4,
            lora_alpha=4,
            qformer_hidden_size=48,
            qformer_num_heads=4,
            qformer_intermediate_size=96,
            device="cpu",
        )
