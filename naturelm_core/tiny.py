"""A tiny random NatureLM-audio in the published layout, so every path of the real model runs without a download.

`write_tiny_checkpoint(folder)` writes what the Hub repo holds (`config.json` + `model.safetensors`
with the audio stack in fp32, LoRA A/B and the [PAD]-resized `llama_embed_tokens.weight` in bf16,
no Llama base weights) and, in `folder/llm/`, what the gated meta-llama repo holds (an ordinary
transformers Llama folder with its tokenizer, no [PAD]). `load_model(folder)` then loads it through
exactly the code that loads the real one. Values come from a seeded generator, never from module
initialisers, so a seed gives the same bytes whatever transformers' init code does.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from naturelm_core.config import NatureLMConfig
from naturelm_core.encoder import AudioEncoder
from naturelm_core.tokenizer import BOS_TOKEN, STOP_TOKENS, write_tiny_tokenizer

LLAMA_FOLDER = "llm"
CHECKPOINT_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
PUBLISHED_LORA_PREFIX = "llama_model.base_model.model.model.layers"
PUBLISHED_EMBEDDING_KEY = "llama_embed_tokens.weight"
# Llama-3.1's RoPE frequency scaling, kept even at tiny sizes so the real rope code path runs.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def tiny_llama_config(vocab_size: int, bos_token_id: int, eos_token_ids: list[int]) -> LlamaConfig:
    """Llama-3.1-8B's architecture at hidden 64, 2 layers, 4 query heads sharing 2 key/value heads."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters=dict(LLAMA3_ROPE),
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_ids,
        dtype="float32",
    )


def write_tiny_checkpoint(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the tiny model (a few hundred kB, well under a second); the same seed gives identical files."""
    folder = Path(folder)
    llama_dir = folder / LLAMA_FOLDER
    tokenizer = write_tiny_tokenizer(llama_dir)
    eos_ids = tokenizer.convert_tokens_to_ids(list(STOP_TOKENS))
    bos_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    llama_config = tiny_llama_config(len(tokenizer), bos_id, eos_ids)
    config = NatureLMConfig.tiny(llama_path=LLAMA_FOLDER)
    generator = torch.Generator().manual_seed(seed)

    with torch.device("meta"):
        llama_shapes = {name: tuple(t.shape) for name, t in LlamaForCausalLM(llama_config).state_dict().items()}
    llama_weights = {name: _random_tensor(name, shape, generator) for name, shape in llama_shapes.items()}

    published = _random_audio_stack(config, llama_config.hidden_size, generator)
    published.update(_random_lora(llama_config, config.lora_rank, generator))
    pad_row = _random_tensor("model.embed_tokens.weight", (1, llama_config.hidden_size), generator)
    # Upstream's llama_embed_tokens IS the LLM's input embedding after the [PAD] resize, stored in bf16.
    resized = torch.cat([llama_weights["model.embed_tokens.weight"], pad_row])
    published[PUBLISHED_EMBEDDING_KEY] = resized.to(torch.bfloat16)

    save_file(llama_weights, str(llama_dir / CHECKPOINT_FILE), metadata={"format": "pt"})
    llama_config.save_pretrained(str(llama_dir))
    # As meta-llama ships it (sampling on); NatureLM's generate must set its own decoding options.
    GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_ids, do_sample=True, temperature=0.6, top_p=0.9
    ).save_pretrained(str(llama_dir))
    save_file(published, str(folder / CHECKPOINT_FILE), metadata={"format": "pt"})
    config.to_json_file(folder / CONFIG_FILE)
    return folder


def _random_audio_stack(config: NatureLMConfig, llm_hidden_size: int, generator: torch.Generator) -> dict:
    """Every audio-stack tensor under its published name, fp32; a shared tensor is stored once, as upstream."""
    with torch.random.fork_rng(devices=[]):  # module init draws from the global RNG; leave the caller's alone
        encoder = AudioEncoder(config, llm_hidden_size)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in encoder.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if tensor.is_floating_point():
            tensors[name] = _random_tensor(name, tuple(tensor.shape), generator)
        else:
            tensors[name] = tensor.detach().clone()  # index buffers such as the Q-Former's position_ids
    return tensors


def _random_lora(llama_config: LlamaConfig, rank: int, generator: torch.Generator) -> dict:
    """peft's LoRA A [r, in] and B [out, r] for q/k/v/o of every layer, bf16 as published; B is non-zero."""
    head_dim = llama_config.hidden_size // llama_config.num_attention_heads
    hidden = llama_config.hidden_size
    out_features = {
        "q_proj": llama_config.num_attention_heads * head_dim,
        "k_proj": llama_config.num_key_value_heads * head_dim,
        "v_proj": llama_config.num_key_value_heads * head_dim,
        "o_proj": hidden,
    }
    in_features = {
        "q_proj": hidden,
        "k_proj": hidden,
        "v_proj": hidden,
        "o_proj": llama_config.num_attention_heads * head_dim,
    }
    tensors = {}
    for layer in range(llama_config.num_hidden_layers):
        for target in LORA_TARGETS:
            prefix = f"{PUBLISHED_LORA_PREFIX}.{layer}.self_attn.{target}"
            for part, shape in (("lora_A", (rank, in_features[target])), ("lora_B", (out_features[target], rank))):
                name = f"{prefix}.{part}.default.weight"
                tensors[name] = _random_tensor(name, shape, generator).to(torch.bfloat16)
    return tensors


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Scaled normal values by role, so activations stay O(1) and the logits are decisive, as in the golden model.

    Norm gains sit near 1 and biases near 0; the embedding and lm_head have unit scale so that a random
    model still prefers some tokens clearly; LoRA B is large enough that alpha visibly changes the text.
    """
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    if len(shape) == 1 and name.endswith(".bias"):
        return 0.1 * noise
    if (len(shape) == 1 and name.endswith(".weight")) or name.endswith((".weight_g", ".grep_a")):
        return 1.0 + 0.1 * noise
    if name.endswith(("embed_tokens.weight", "lm_head.weight", "relative_attention_bias.weight")):
        return noise
    if ".lora_B." in name:
        return noise / math.sqrt(fan_in)
    return noise * math.sqrt(2.0 / fan_in)
