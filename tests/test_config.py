"""The config object reads and writes the published checkpoint's config.json layout."""

from __future__ import annotations

import json

import pytest

from naturelm_core.config import BEATsConfig, NatureLMConfig


def test_full_config_round_trips_in_the_published_layout(tmp_path, shared_dir):
    manifest = json.loads((shared_dir / "reference" / "naturelm_state_dict_manifest.json").read_text())
    published = manifest["hub_mixin_config_json"]
    config = NatureLMConfig.from_dict(published)
    assert config == NatureLMConfig.full()
    path = tmp_path / "config.json"
    config.to_json_file(path)
    assert json.loads(path.read_text()) == published


def test_golden_config_reads_with_relative_llama_path(shared_dir):
    golden = shared_dir / "reference" / "golden"
    config = NatureLMConfig.from_json_file(golden / "naturelm_config.json")
    assert config.beats_cfg.encoder_layers == 2
    assert config.resolved_llama_path() == str((golden / "llm").resolve())
    assert config.qformer_window_tokens == 17 and config.qformer_window_stride == 17
    assert config.lora_scaling == 1.0


def test_tiny_config_keeps_its_qformer_sizes_through_json(tmp_path):
    tiny = NatureLMConfig.tiny()
    tiny.to_json_file(tmp_path / "config.json")
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["qformer_hidden_size"] == tiny.qformer_hidden_size != 768
    again = NatureLMConfig.from_json_file(tmp_path / "config.json")
    assert again == tiny
    assert again.beats_cfg == tiny.beats_cfg != BEATsConfig()


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(ValueError, match="lora_rnak"):
        NatureLMConfig.from_dict({"lora_rnak": 8})
