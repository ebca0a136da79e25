"""Stopping the app (Ctrl-C, the Space shutting down) ends the Ray pool the Sweeps tab started and the sweep queue."""

from __future__ import annotations

import gradio as gr
import pytest

import app as app_module
from evaluation.backend_choice import SweepBackends
from evaluation.sweep import SweepQueue
from naturelm_core.startup import ServedModel


def test_main_stops_the_sweep_backends_and_the_queue_when_the_server_ends(monkeypatch, tiny_model, tmp_path):
    served = ServedModel(tiny_model, "tiny", "cpu", "float32", demo=True)
    monkeypatch.setattr(app_module, "load_served_model", lambda *args, **kwargs: served)
    stopped: list[str] = []
    monkeypatch.setattr(SweepBackends, "stop", lambda self: stopped.append("backends"))
    monkeypatch.setattr(SweepQueue, "close", lambda self: stopped.append("queue"))

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gr.Blocks, "launch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        app_module.main(["--demo", "--runs-dir", str(tmp_path / "runs")])
    assert stopped == ["backends", "queue"]
