"""NatureLM-audio with a per-request LoRA interpolation weight (alpha), and nothing about the UI."""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    """`naturelm_core.load_model` without importing transformers for every `import naturelm_core.audio`."""
    if name == "load_model":
        from naturelm_core.loading import load_model

        return load_model
    raise AttributeError(f"module 'naturelm_core' has no attribute {name!r}")
