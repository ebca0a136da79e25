"""On ZeroGPU hardware (the `spaces` package importable) model work runs inside @spaces.GPU calls only."""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest
import soundfile as sf

gradio_client = pytest.importorskip("gradio_client")

import app as app_module  # noqa: E402  (after the importorskip)
from naturelm_core.startup import ServedModel  # noqa: E402
from tests.app_launch import free_port  # noqa: E402


def test_zero_gpu_runs_model_work_inside_gpu_calls_and_holds_no_worker_thread(
    monkeypatch, tiny_model, tiny_checkpoint, tmp_path
):
    gpu_calls: list[str] = []

    def gpu(handler):
        def wrapped(*args):
            gpu_calls.append(handler.__name__)
            return handler(*args)

        return wrapped

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    engine = app_module.create_engine(tiny_model)
    assert engine.inline
    served = ServedModel(tiny_model, str(tiny_checkpoint), "cpu", "float32", demo=True)
    blocks = app_module.build_app(served, engine)
    blocks.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        path = tmp_path / "clip.wav"
        sf.write(path, 0.2 * np.sin(np.linspace(0, 3000, 32000)).astype(np.float32), 16000)
        client = gradio_client.Client(blocks.local_url, verbose=False)
        answer = client.predict(
            gradio_client.handle_file(str(path)), "Describe the audio.", 0.5, 1, 6, api_name="/explore"
        )
        table = client.predict(
            gradio_client.handle_file(str(path)), "Describe the audio.", "0, 1", 1, 6, api_name="/alpha_scan"
        )
    finally:
        blocks.close()
    assert isinstance(answer, str) and len(table["data"]) == 2
    assert gpu_calls == ["explore", "alpha_scan"]
    assert not any(t.name == "naturelm-engine" for t in threading.enumerate())
