"""Shared fixtures: where ../shared lives, and offline switches every test run needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout; tests that need it skip cleanly where it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared is not present in this checkout")
    return SHARED_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny random model in the published layout, written once per test session."""
    from naturelm_core.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_naturelm"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The tiny model loaded through the same code path as the real one (float32, CPU)."""
    from naturelm_core.loading import load_model

    return load_model(str(tiny_checkpoint), device="cpu")


# --- model stubs shared by the sweep and engine tests ---

import time  # noqa: E402  (kept inside this section, which is appended as one block)


class PacedModel:
    """A model (the tiny one) made slower per batch, so that a sweep is still running while a test acts on it.

    Import it where needed (`from tests.conftest import PacedModel`); module-scoped fixtures build it.
    """

    def __init__(self, model, seconds: float) -> None:
        self.model = model
        self.seconds = seconds

    def encode_audio(self, windows):
        return self.model.encode_audio(windows)

    def generate_from_embeddings(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.model.generate_from_embeddings(*args, **kwargs)
