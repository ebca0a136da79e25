"""The tiny checkpoint: published layout, a normal Llama folder beside it, a Llama-3-like tokenizer, determinism."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

from naturelm_core.config import NatureLMConfig
from naturelm_core.tiny import write_tiny_checkpoint
from naturelm_core.tokenizer import LLAMA3_SPECIAL_TOKENS, STOP_TOKENS

LORA_KEY = re.compile(
    r"^llama_model\.base_model\.model\.model\.layers\.\d+\.self_attn\.[qkvo]_proj\.lora_[AB]\.default\.weight$"
)
AUDIO_PREFIXES = ("beats.", "ln_audio.", "audio_Qformer.", "audio_query_tokens", "audio_llama_proj.")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "I64": "int64"}


def _dtypes(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: SAFETENSORS_DTYPES[handle.get_slice(name).get_dtype()] for name in handle.keys()}  # noqa: SIM118


def test_published_file_holds_exactly_the_published_kinds_of_tensors(tiny_dir):
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir / "llm"))
    kinds = {
        "audio": [n for n in tensors if n.startswith(AUDIO_PREFIXES)],
        "lora": [n for n in tensors if LORA_KEY.match(n)],
        "embedding": [n for n in tensors if n == "llama_embed_tokens.weight"],
    }
    assert sum(len(names) for names in kinds.values()) == len(tensors)  # no base Llama weights, nothing else
    assert len(kinds["lora"]) == 2 * 4 * 2  # 2 layers x q/k/v/o x A/B
    assert all(tensors[n].dtype in (torch.float32, torch.int64) for n in kinds["audio"])
    assert all(tensors[n].dtype == torch.bfloat16 for n in kinds["lora"] + kinds["embedding"])
    assert all(tensors[n].abs().sum() > 0 for n in kinds["lora"] if ".lora_B." in n)
    # The [PAD] row: one more row than the Llama folder's tokenizer, which has no [PAD].
    assert "[PAD]" not in tokenizer.get_vocab()
    assert tensors["llama_embed_tokens.weight"].shape == (len(tokenizer) + 1, 64)
    # Only layer 0 carries the shared BEATs relative-position table, as in the published file.
    assert [n for n in tensors if "relative_attention_bias" in n] == [
        "beats.encoder.layers.0.self_attn.relative_attention_bias.weight"
    ]


def test_embedding_in_the_checkpoint_is_the_llama_embedding_plus_a_pad_row(tiny_dir):
    published = load_file(str(tiny_dir / "model.safetensors"))["llama_embed_tokens.weight"]
    llama = load_file(str(tiny_dir / "llm" / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(published[:-1], llama.to(torch.bfloat16))


def test_tiny_keys_are_published_names(tiny_dir, shared_dir):
    """Every tiny tensor has a name the real checkpoint has (tiny has fewer layers, so a subset)."""
    hub = json.loads((shared_dir / "reference" / "naturelm_hub_keys.json").read_text())
    hub_names = {tensor["name"] for tensor in hub["tensors"]}
    tiny_names = set(_dtypes(tiny_dir / "model.safetensors"))
    assert tiny_names <= hub_names
    hub_dtypes = {tensor["name"]: tensor["dtype"] for tensor in hub["tensors"]}
    for name, dtype in _dtypes(tiny_dir / "model.safetensors").items():
        assert dtype == hub_dtypes[name], name


def test_llama_folder_is_a_normal_transformers_folder(tiny_dir):
    llm_dir = tiny_dir / "llm"
    llama = LlamaForCausalLM.from_pretrained(str(llm_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    generation = GenerationConfig.from_pretrained(str(llm_dir))
    assert llama.config.hidden_size == 64
    assert llama.config.num_hidden_layers == 2
    assert (llama.config.num_attention_heads, llama.config.num_key_value_heads) == (4, 2)
    assert llama.config.rope_parameters["rope_type"] == "llama3"
    assert llama.config.vocab_size == len(tokenizer)
    assert not llama.config.tie_word_embeddings
    stop_ids = tokenizer.convert_tokens_to_ids(list(STOP_TOKENS))
    assert list(generation.eos_token_id) == stop_ids == list(llama.config.eos_token_id)
    assert generation.bos_token_id == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    # Same relative layout as Llama-3 (128000, 128001, 128008, 128009).
    base = tokenizer.bos_token_id
    assert stop_ids == [base + 1, base + 8, base + 9]
    config = NatureLMConfig.from_json_file(tiny_dir / "config.json")
    assert config.resolved_llama_path() == str(llm_dir)


def test_tokenizer_handles_the_prompt_template_like_llama3(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir / "llm"))
    for token in LLAMA3_SPECIAL_TOKENS:
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]
    text = "<|start_header_id|>user<|end_header_id|>\n\nWhat is the focal species? 12345 Hz<|eot_id|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\n\nWhat is the focal species? 12345 Hz"
    assert tokenizer(text)["input_ids"] == [tokenizer.bos_token_id, *ids]  # BOS like Llama-3's post-processor
    # Llama-3's pre-tokenizer splits numbers into groups of at most three digits.
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345", add_special_tokens=False)["input_ids"])
    assert "".join(pieces) == "12345"
    assert max(len(piece) for piece in pieces) <= 3
    assert len(tokenizer) == 512 + len(LLAMA3_SPECIAL_TOKENS)


def test_same_seed_same_bytes_other_seed_other_weights(tiny_dir, tmp_path):
    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    files = [
        "config.json",
        "model.safetensors",
        "llm/config.json",
        "llm/generation_config.json",
        "llm/model.safetensors",
        "llm/tokenizer.json",
    ]
    for name in files:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    for name in ("model.safetensors", "llm/model.safetensors"):
        first, second = load_file(str(tiny_dir / name)), load_file(str(other / name))
        assert first.keys() == second.keys()
        differing = [
            key for key in first if first[key].is_floating_point() and not torch.equal(first[key], second[key])
        ]
        assert len(differing) == sum(tensor.is_floating_point() for tensor in first.values()), name


def test_writing_does_not_touch_the_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    write_tiny_checkpoint(tmp_path / "tiny")
    assert torch.equal(torch.rand(3), expected)


def test_small_and_fast(tmp_path):
    started = time.perf_counter()
    folder = write_tiny_checkpoint(tmp_path / "tiny", seed=3)
    elapsed = time.perf_counter() - started
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert elapsed < 2.0
    assert size < 5 * 2**20
