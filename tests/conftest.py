"""Shared fixtures: where ../shared lives, and offline switches every test run needs."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class FramesRead:
    """Frames soundfile decoded while the `frames_read` fixture was on: that a file was not read whole, without
    timing anything. Reads may come from several decoding threads at once."""

    frames: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def frames_read(monkeypatch) -> FramesRead:
    import soundfile as sf

    counter = FramesRead()
    original = sf.SoundFile.read

    def counting(sound_file, *args, **kwargs):
        block = original(sound_file, *args, **kwargs)
        with counter.lock:
            counter.frames += len(block)
        return block

    monkeypatch.setattr(sf.SoundFile, "read", counting)
    return counter


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


@pytest.fixture(scope="module")
def static_tiny_model(tiny_model):
    """The session's tiny model for a module that sets its decoding path and states: both restored after it."""
    from naturelm_core.static_decoding import StaticDecoding

    yield tiny_model
    tiny_model.decode_with_static_cache = None
    tiny_model.static_decoding = StaticDecoding()


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

    def check_grid_point(self, *args, **kwargs):
        """The tiny model's own check (its layers and LoRA rank): a recipe it cannot run is refused as it would be."""
        return self.model.check_grid_point(*args, **kwargs)


# --- the served app and its client, shared by the UI tests ---


@dataclass
class ServedApp:
    """The app launched on a free loopback port: its Blocks, engine, sweep queue, runs folder and URL."""

    blocks: Any
    engine: Any
    queue: Any
    runs_dir: Path
    url: str

    def client(self) -> Any:
        """A new gradio_client.Client of the app (one per thread when clients run concurrently)."""
        import gradio_client

        return gradio_client.Client(self.url, verbose=False)

    def close(self) -> None:
        self.blocks.close()
        self.queue.close()
        self.engine.stop()


@pytest.fixture(scope="module")
def launch_app(tiny_model, tiny_checkpoint, tmp_path_factory):
    """launch_app(model=None, max_batch_rows=32, sweep_wait_ms=20) -> ServedApp, served as `python app.py --demo`
    serves it; everything launched is closed after the test module.

    `model` wraps the tiny model (e.g. to pace its batches); the header always names the tiny model.
    Each app gets its own runs folder, so sweeps of one test module never show in another's.
    """
    from app import build_app
    from evaluation.sweep import SweepQueue
    from naturelm_core.engine import Engine
    from naturelm_core.startup import ServedModel
    from tests.app_launch import free_port

    launched: list[ServedApp] = []

    def launch(model: Any = None, max_batch_rows: int = 32, sweep_wait_ms: int = 20) -> ServedApp:
        runs_dir = tmp_path_factory.mktemp("runs")
        engine = Engine(model or tiny_model, max_batch_rows=max_batch_rows, sweep_wait_ms=sweep_wait_ms)
        queue = SweepQueue(engine, runs_dir)
        served = ServedModel(tiny_model, str(tiny_checkpoint), "cpu", "float32", demo=True, fallback_reason="tests")
        blocks = build_app(served, engine, queue)
        blocks.queue(default_concurrency_limit=16).launch(
            server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True
        )
        launched.append(ServedApp(blocks, engine, queue, runs_dir, blocks.local_url))
        return launched[-1]

    try:
        yield launch
    finally:
        for served_app in reversed(launched):
            served_app.close()


@pytest.fixture(scope="module")
def served_app(launch_app):
    """The app as `python app.py --demo` serves it, once per test module (a module may define its own)."""
    return launch_app()


@pytest.fixture(scope="module")
def client(served_app):
    return served_app.client()
