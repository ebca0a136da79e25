"""Formula-defined weights of the golden target's audio stack, ready for AudioEncoder.load_state_dict.

Test support only. Names and shapes come from our AudioEncoder built on the meta device (the key
test pins those to the published manifest); values come from the README's formula, keyed by the
published names, so a misnamed tensor gets different values and the golden comparison fails.
"""

from __future__ import annotations

import re

import torch

from naturelm_core.config import NatureLMConfig
from naturelm_core.encoder import AudioEncoder
from tests.golden_formula import GOLDEN_DIR, formula_tensor

GOLDEN_CONFIG_PATH = GOLDEN_DIR / "naturelm_config.json"
GOLDEN_LLM_HIDDEN_SIZE = 64
SHARED_RELATIVE_BIAS = re.compile(r"^beats\.encoder\.layers\.\d+\.self_attn\.relative_attention_bias\.weight$")
RELATIVE_BIAS_SOURCE = "beats.encoder.layers.0.self_attn.relative_attention_bias.weight"


def golden_config() -> NatureLMConfig:
    return NatureLMConfig.from_json_file(GOLDEN_CONFIG_PATH)


def golden_audio_state_dict(
    config: NatureLMConfig, llm_hidden_size: int = GOLDEN_LLM_HIDDEN_SIZE
) -> dict[str, torch.Tensor]:
    """Every audio-stack tensor (beats, ln_audio, audio_Qformer, audio_query_tokens, audio_llama_proj).

    The relative-position table, one tensor shared by all BEATs layers, is generated once under
    layer 0's name and given under every layer's name.
    """
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in AudioEncoder(config, llm_hidden_size).state_dict().items()}
    relative_bias = torch.from_numpy(formula_tensor(RELATIVE_BIAS_SOURCE, shapes[RELATIVE_BIAS_SOURCE]))
    return {
        name: relative_bias if SHARED_RELATIVE_BIAS.match(name) else torch.from_numpy(formula_tensor(name, shape))
        for name, shape in shapes.items()
    }
