"""BEATs (iter3+ AS2M fine-tuned), the audio encoder NatureLM-audio ships, with the published names.

Parameter names follow the checkpoint (`patch_embedding`, `encoder.pos_conv.0.weight_g`, ...) so its
state dict loads without a key map. Only inference is implemented: dropouts and layer-drop are
no-ops at inference and are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from naturelm_core.config import BEATsConfig

# Upstream fixes the gated relative-position projection to 8 outputs, summed in two groups of 4.
GATE_OUTPUTS = 8


def check_published_variant(cfg: BEATsConfig) -> None:
    """Refuse BEATs options this implementation does not build, rather than silently ignoring them."""
    expected = {
        "layer_norm_first": False,
        "deep_norm": True,
        "relative_position_embedding": True,
        "gru_rel_pos": True,
        "finetuned_model": True,
        "activation_fn": "gelu",
    }
    wrong = {key: getattr(cfg, key) for key, value in expected.items() if getattr(cfg, key) != value}
    if wrong:
        raise ValueError(f"only the published BEATs variant {expected} is implemented; this config has {wrong}")
    if cfg.embed_dim == cfg.encoder_embed_dim:
        raise ValueError("BEATs with embed_dim == encoder_embed_dim has no post_extract_proj; not implemented")


def convolve(conv: Callable[..., Tensor], x: Tensor, weight: Tensor, bias: Tensor | None, **options: Any) -> Tensor:
    """`conv(x, weight, bias, **options)`, computed in float32 where the model computes in bf16 (its weights or
    autocast), and returned in the dtype that computation would have returned.

    Why, on both kinds of device:
    - CPU: oneDNN's bf16 convolutions return wrong values for some shapes (pytorch/pytorch#163347; with torch
      2.14.1 a conv1d of 48 channels in 4 groups, kernel 16, is off by 100%).
    - CUDA: cuDNN runs BEATs' two convolutions (the 16 x 16 patch embedding, the grouped 128-tap positional
      convolution) with slow generic kernels in bf16: one 10 s window took 17.0 ms under bf16 autocast and 9.1 ms
      in float32 on an H100, 88% of the bf16 time in those two (benchmarks/gpu.py `profile`, 2026-12-06). In
      float32 they run as TF32 tensor-core kernels (cuDNN's default), no less precise than bf16.
    """
    device = x.device.type
    autocast = torch.is_autocast_enabled(device)
    out_dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
    if out_dtype == torch.float32 and x.dtype == weight.dtype == torch.float32:
        return conv(x, weight, bias, **options)
    bias = None if bias is None else bias.float()
    with torch.autocast(device, enabled=False):
        return conv(x.float(), weight.float(), bias, **options).to(out_dtype)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """Bucket of the offset j - i for every (query i, key j): [length, length] int64.

    Half the buckets are for positive offsets; within each half, small distances get their own
    bucket and larger ones share logarithmically wider buckets up to max_distance. The float32
    log matches upstream, so bucket boundaries fall on the same integers.
    """
    positions = torch.arange(length, dtype=torch.long, device=device)
    offsets = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    max_exact = half // 2
    distance = offsets.abs()
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    far_bucket = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return (offsets > 0).long() * half + torch.where(distance < max_exact, distance, far_bucket)


class WeightNormConv1d(nn.Module):
    """Grouped conv1d whose kernel is g * v / ||v||, one norm per kernel tap (norm over dims 0 and 1).

    Written out instead of torch's parametrizations so the parameters keep the checkpoint's old
    `weight_g` / `weight_v` names.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.padding = kernel_size // 2
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream's initialisation: normal v, zero bias, and g equal to ||v|| so that W = v at start."""
        channels, _, kernel_size = self.weight_v.shape
        nn.init.normal_(self.weight_v, mean=0.0, std=math.sqrt(4.0 / (kernel_size * channels)))
        nn.init.zeros_(self.bias)
        with torch.no_grad():
            self.weight_g.copy_(torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))

    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return convolve(F.conv1d, x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class BEATsSelfAttention(nn.Module):
    """Multi-head self-attention plus a relative-position bias scaled per query by a learned gate."""

    def __init__(self, cfg: BEATsConfig, relative_attention_bias: nn.Embedding) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.num_heads = cfg.encoder_attention_heads
        self.head_dim = dim // self.num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.grep_linear = nn.Linear(self.head_dim, GATE_OUTPUTS)
        self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        # One table for the whole encoder: every layer holds the same module (see BEATsEncoder).
        self.relative_attention_bias = relative_attention_bias

    def forward(self, x: Tensor, position_bias: Tensor) -> Tensor:
        """`position_bias` [heads, length, length]: the shared table's entries for each (query, key) offset."""
        batch, length, dim = x.shape
        q, k, v = (
            proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        # The gate reads the unscaled query (projection output, before the 1/sqrt(head_dim)).
        gate_logits = self.grep_linear(q).view(batch, self.num_heads, length, 2, GATE_OUTPUTS // 2).sum(-1)
        gate_a, gate_b = torch.sigmoid(gate_logits).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0  # [batch, heads, length, 1]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=gate * position_bias)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, dim))


class BEATsEncoderLayer(nn.Module):
    """Post-LN transformer layer with DeepNorm: the residual is up-weighted by (2 * layers) ** 0.25."""

    def __init__(self, cfg: BEATsConfig, relative_attention_bias: nn.Embedding) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.deep_norm_alpha = (2 * cfg.encoder_layers) ** 0.25
        self.self_attn = BEATsSelfAttention(cfg, relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, position_bias: Tensor) -> Tensor:
        x = self.self_attn_layer_norm(self.deep_norm_alpha * x + self.self_attn(x, position_bias))
        return self.final_layer_norm(self.deep_norm_alpha * x + self.fc2(F.gelu(self.fc1(x))))


class BEATsEncoder(nn.Module):
    """Convolutional positional embedding, a LayerNorm, then the layers (no LayerNorm after the last)."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.num_buckets = cfg.num_buckets
        self.max_distance = cfg.max_distance
        # A one-element Sequential only to keep the published name `pos_conv.0.*`.
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups))
        self.layer_norm = nn.LayerNorm(dim)
        relative_attention_bias = nn.Embedding(cfg.num_buckets, cfg.encoder_attention_heads)
        self.layers = nn.ModuleList(BEATsEncoderLayer(cfg, relative_attention_bias) for _ in range(cfg.encoder_layers))

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        # Padding kernel // 2 on both sides yields one extra step for an even kernel; upstream drops it.
        positional = self.pos_conv(x.transpose(1, 2))[..., :length].transpose(1, 2)
        x = self.layer_norm(x + F.gelu(positional))
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance, x.device)
        # Looked up once for all layers, which share the table: a [heads, length, length] gather per layer was 1.8 ms
        # of an H100's 7.2 ms for one 10 s window (benchmarks/gpu.py profile, 18:47Z); each layer's gate scales it.
        position_bias = self.layers[0].self_attn.relative_attention_bias(buckets).permute(2, 0, 1)
        for layer in self.layers:
            x = layer(x, position_bias)
        return x


class BEATs(nn.Module):
    """Normalised fbank [B, frames, mel] -> BEATs tokens [B, time_patches * mel_patches, dim], time-major."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        check_published_variant(cfg)
        patch = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=patch, stride=patch, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
        self.encoder = BEATsEncoder(cfg)
        # The AudioSet classifier head: in the checkpoint, never used by NatureLM.
        self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)

    def forward(self, fbank: Tensor) -> Tensor:
        embedding = self.patch_embedding
        patches = convolve(F.conv2d, fbank.unsqueeze(1), embedding.weight, embedding.bias, stride=embedding.stride)
        # patches: [B, embed_dim, time_patches, mel_patches]
        tokens = patches.flatten(2).transpose(1, 2)  # token = mel_patches * time_patch + mel_patch
        return self.encoder(self.post_extract_proj(self.layer_norm(tokens)))
