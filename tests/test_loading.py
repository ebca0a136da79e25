"""load_model: the tiny checkpoint through the real loading path, the strict key report, and clear errors."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
import traceback

import httpx
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from huggingface_hub.errors import GatedRepoError
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

import naturelm_core
from naturelm_core import loading
from naturelm_core.config import NatureLMConfig
from naturelm_core.encoder import AudioEncoder
from naturelm_core.loading import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    HubAccessError,
    HubUnreachableError,
    ModelLoadError,
    load_model,
    load_published_state,
    published_targets,
)
from naturelm_core.model import NatureLM
from naturelm_core.tiny import write_tiny_checkpoint
from naturelm_core.tokenizer import build_tiny_tokenizer

SECRET = "hf_NotARealTokenButSecret0123456789"
PROMPT = "What is the common name for the focal species in the audio?"
V_PROJ_LORA_B = "llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
RELATIVE_BIAS = "beats.encoder.layers.{}.self_attn.relative_attention_bias.weight"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def loaded_model(tiny_dir):
    return load_model(tiny_dir, device="cpu")


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """Never touch the network, even where HF_HUB_OFFLINE is unset, and start from an empty Hub cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def _edited_copy(tiny_dir, destination, edit) -> str:
    """A copy of the tiny checkpoint whose published tensors went through `edit` (dict -> dict)."""
    shutil.copytree(tiny_dir, destination)
    tensors = load_file(str(destination / "model.safetensors"))
    save_file(edit(tensors), str(destination / "model.safetensors"))
    return destination


def _audio(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, 16_000 * 4).astype(np.float32)


def test_load_model_is_exported_by_the_package():
    assert naturelm_core.load_model is load_model


def test_round_trip_loads_every_published_tensor_offline(tiny_dir, loaded_model, hub_offline):
    report = loaded_model.load_report
    published = load_file(str(tiny_dir / "model.safetensors"))
    assert sorted(report.loaded) == sorted(published)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    targets = published_targets(loaded_model)
    for name, tensor in published.items():  # float32 holds every bf16 value exactly
        assert torch.equal(targets[name].detach().to(tensor.dtype), tensor), name
    assert loaded_model.dtype == torch.float32
    assert loaded_model.device.type == "cpu"

    tokenizer = loaded_model.tokenizer
    assert tokenizer.pad_token == "[PAD]"
    assert tokenizer.pad_token_id == len(tokenizer) - 1 == published["llama_embed_tokens.weight"].shape[0] - 1
    lm_head = loaded_model.llm.get_output_embeddings().weight
    assert lm_head.shape[0] == len(tokenizer)
    llama_folder = load_file(str(tiny_dir / "llm" / "model.safetensors"))
    assert torch.equal(lm_head[:-1], llama_folder["lm_head.weight"])
    assert torch.allclose(lm_head[-1], llama_folder["lm_head.weight"].mean(dim=0))
    q_proj = loaded_model.llm.model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(q_proj, llama_folder["model.layers.0.self_attn.q_proj.weight"])

    answers = loaded_model.generate([_audio()], PROMPT, 0.5, num_beams=2, max_new_tokens=6)
    assert len(answers) == 1
    assert isinstance(answers[0], str)
    embeds = loaded_model.encode_audio(_audio()[None])
    ids = loaded_model.generate_ids_from_embeddings([[embeds[0]]], PROMPT, 0.5, num_beams=1, max_new_tokens=6)
    assert 1 <= len(ids[0]) <= 6


def test_two_loads_give_identical_logits_pad_row_included(tiny_dir, loaded_model):
    """Upstream draws the lm_head [PAD] row at random on every load; ours must not change between loads."""
    again = load_model(tiny_dir, device="cpu")
    embeds = loaded_model.encode_audio(_audio()[None])
    first = loaded_model.next_token_logits([[embeds[0]]], PROMPT, [0.5])
    second = again.next_token_logits([[embeds[0]]], PROMPT, [0.5])
    assert torch.equal(first, second)


def test_llm_override_takes_the_llama_from_another_folder(tiny_dir, tmp_path):
    other_llm = write_tiny_checkpoint(tmp_path / "other", seed=1) / "llm"
    checkpoint_only = tmp_path / "checkpoint"
    checkpoint_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / name, checkpoint_only / name)

    with pytest.raises(CheckpointNotFoundError, match="Llama folder"):
        load_model(checkpoint_only, device="cpu")  # config.json says "llm", which is not beside it here
    model = load_model(checkpoint_only, llm=other_llm, device="cpu")
    other_weights = load_file(str(other_llm / "model.safetensors"))
    q_proj = model.llm.model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(q_proj, other_weights["model.layers.0.self_attn.q_proj.weight"])
    # The checkpoint's own audio stack, LoRA and embedding still apply on top of the other Llama.
    published = load_file(str(tiny_dir / "model.safetensors"))
    assert torch.equal(
        model.llm.get_input_embeddings().weight.to(torch.bfloat16), published["llama_embed_tokens.weight"]
    )


def test_missing_lora_tensor_is_refused_by_name(tiny_dir, tmp_path):
    def drop(tensors):
        del tensors[V_PROJ_LORA_B]
        return tensors

    folder = _edited_copy(tiny_dir, tmp_path / "ckpt", drop)
    with pytest.raises(CheckpointMismatchError, match=r"missing: .*layers\.1\.self_attn\.v_proj\.lora_B") as caught:
        load_model(folder, device="cpu")
    assert caught.value.report.missing == [V_PROJ_LORA_B]


def test_wrong_shapes_are_refused_with_both_shapes(tiny_dir, tmp_path):
    def reshape(tensors):
        tensors["audio_llama_proj.weight"] = tensors["audio_llama_proj.weight"][:, :-1].contiguous()
        tensors["llama_embed_tokens.weight"] = tensors["llama_embed_tokens.weight"][:-1].contiguous()  # no [PAD] row
        return tensors

    folder = _edited_copy(tiny_dir, tmp_path / "ckpt", reshape)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_model(folder, device="cpu")
    message = str(caught.value)
    assert "audio_llama_proj.weight (checkpoint [64, 47], model [64, 48])" in message
    assert "llama_embed_tokens.weight (checkpoint [528, 64], model [529, 64])" in message


def test_shared_beats_table_needs_one_of_its_names(tiny_dir, tmp_path):
    def rename(tensors):
        tensors[RELATIVE_BIAS.format(1)] = tensors.pop(RELATIVE_BIAS.format(0))
        return tensors

    def drop(tensors):
        del tensors[RELATIVE_BIAS.format(0)]
        return tensors

    model = load_model(_edited_copy(tiny_dir, tmp_path / "renamed", rename), device="cpu")
    assert model.load_report.missing == []
    with pytest.raises(CheckpointMismatchError, match=r"missing: beats\.encoder\.layers\.0\.self_attn\.relative"):
        load_model(_edited_copy(tiny_dir, tmp_path / "dropped", drop), device="cpu")


def test_unexpected_keys_are_reported_and_logged(tiny_dir, tmp_path, caplog):
    def add(tensors):
        tensors["decoder.extra_head.weight"] = torch.ones(3, 3)
        return tensors

    folder = _edited_copy(tiny_dir, tmp_path / "ckpt", add)
    with caplog.at_level(logging.WARNING, logger="naturelm_core.loading"):
        model = load_model(folder, device="cpu")
    assert model.load_report.unexpected == ["decoder.extra_head.weight"]
    assert model.load_report.missing == []
    assert "decoder.extra_head.weight" in caplog.text


def test_folder_without_its_files_is_a_clear_error(tiny_dir, tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    shutil.copy(tiny_dir / "config.json", folder / "config.json")
    with pytest.raises(CheckpointNotFoundError, match=r"lacks model\.safetensors"):
        load_model(folder, device="cpu")
    with pytest.raises(CheckpointNotFoundError, match="checkpoint folder not found"):
        load_model(tmp_path / "does-not-exist", device="cpu")


def test_corrupt_checkpoint_file_is_a_clear_error(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(b"truncated download")
    with pytest.raises(ModelLoadError, match="is not a readable safetensors file"):
        load_model(folder, device="cpu")


def test_no_network_says_so_and_never_shows_the_token(tiny_dir, hub_offline, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(HubUnreachableError, match="cannot reach the Hugging Face Hub") as caught:
        load_model("EarthSpeciesProject/NatureLM-audio", device="cpu")
    assert SECRET not in "".join(traceback.format_exception(caught.value))
    with pytest.raises(HubUnreachableError, match=r"meta-llama/Llama-3\.1-8B-Instruct"):
        load_model(tiny_dir, llm="meta-llama/Llama-3.1-8B-Instruct", device="cpu", token=SECRET)


def test_gated_repo_asks_for_hf_token_without_showing_it(monkeypatch):
    def refuse(repo_id, filename, token=None, local_files_only=False):
        request = httpx.Request("GET", f"https://huggingface.co/{repo_id}/resolve/main/{filename}")
        response = httpx.Response(403, request=request)
        raise GatedRepoError(f"Access to {repo_id} is restricted (sent token {token})", response=response)

    monkeypatch.setattr(loading, "hf_hub_download", refuse)
    monkeypatch.setattr(loading, "hub_reachable", lambda: True)
    with pytest.raises(HubAccessError, match="set HF_TOKEN") as caught:
        load_model("EarthSpeciesProject/NatureLM-audio", device="cpu")
    with pytest.raises(HubAccessError, match="has no access") as caught:
        load_model("EarthSpeciesProject/NatureLM-audio", device="cpu", token=SECRET)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_bad_device_and_dtype_are_refused(tiny_dir):
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        load_model(tiny_dir, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="not a torch device"):
        load_model(tiny_dir, device="gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(tiny_dir, device="cuda")


def test_bfloat16_llm_keeps_float32_audio_stack_and_adapters(tiny_dir):
    model = load_model(tiny_dir, device="cpu", dtype="bfloat16")
    published = load_file(str(tiny_dir / "model.safetensors"))
    assert model.dtype == torch.bfloat16
    assert model.llm.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    # peft keeps adapters in float32 (as upstream's did); the published bf16 values arrive unchanged.
    assert torch.equal(published_targets(model)[V_PROJ_LORA_B].detach().to(torch.bfloat16), published[V_PROJ_LORA_B])
    assert model.audio_encoder.audio_llama_proj.weight.dtype == torch.float32
    embeds = model.encode_audio(_audio()[None])
    assert embeds.dtype == torch.bfloat16
    assert torch.isfinite(model.next_token_logits([[embeds[0]]], PROMPT, [1.0])).all()


def test_published_key_set_loads_with_nothing_missing(shared_dir):
    """The full-size model, built on the meta device (no memory), accepts exactly the published names and shapes."""
    hub = json.loads((shared_dir / "reference" / "naturelm_hub_keys.json").read_text())
    shapes = {tensor["name"]: tuple(tensor["shape"]) for tensor in hub["tensors"]}
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    llama_config = LlamaConfig(
        vocab_size=128257,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    )
    config = NatureLMConfig.full()
    with torch.device("meta"):
        model = NatureLM(config, AudioEncoder(config, 4096), LlamaForCausalLM(llama_config), tokenizer)
    report = load_published_state(model, shapes, lambda name: torch.empty(shapes[name], device="meta"))
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert sorted(report.loaded) == sorted(shapes)
    assert len(report.loaded) == hub["count"] == 558


def test_an_unreachable_hub_is_found_in_seconds_and_only_the_cache_is_asked(tiny_dir, monkeypatch, tmp_path):
    """Without a network huggingface_hub retries for ~30 s; a failed probe sends every request to the cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    asked = []
    real_download = loading.hf_hub_download

    def download(*args, **kwargs):
        asked.append(kwargs.get("local_files_only"))
        return real_download(*args, **kwargs)

    monkeypatch.setattr(loading, "hf_hub_download", download)
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match="not in the local cache"):
        load_model("EarthSpeciesProject/NatureLM-audio", device="cpu")
    with pytest.raises(HubUnreachableError, match=r"meta-llama/Llama-3\.1-8B-Instruct"):
        load_model(tiny_dir, llm="meta-llama/Llama-3.1-8B-Instruct", device="cpu")
    assert asked == [True]
    assert time.monotonic() - started < 10


def test_the_hub_probe_connects_to_the_endpoint_and_respects_offline_mode_and_proxies(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert loading.hub_reachable(timeout_s=1.0)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")  # closed now
    assert not loading.hub_reachable(timeout_s=1.0)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert loading.hub_reachable(timeout_s=1.0)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert not loading.hub_reachable(timeout_s=1.0)
