"""Start-up: the real model when it loads, else a labelled demo with the reason, never a token, no network."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from naturelm_core.startup import DEMO_BANNER, load_served_model


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NATURELM_DEMO_DIR", str(tmp_path / "demo"))
    return tmp_path / "demo"


@pytest.fixture
def no_network(monkeypatch):
    """Any connection to a host other than this machine fails the test."""
    real_connect = socket.socket.connect

    def local_only(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"network call to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)


def test_unloadable_model_falls_back_to_the_demo_and_says_why_without_the_token(demo_dir, monkeypatch, no_network):
    monkeypatch.setenv("HF_TOKEN", "hf_DoNotShowThisSecret123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    served = load_served_model("EarthSpeciesProject/NatureLM-audio", device="cpu")
    assert served.demo
    assert served.fallback_reason
    assert "hf_DoNotShowThisSecret123" not in served.fallback_reason + served.header
    assert "OFFLINE DEMO" in served.header
    assert (demo_dir / "model.safetensors").is_file()


def test_missing_local_folder_is_named_in_the_reason(demo_dir, tmp_path, no_network):
    served = load_served_model(str(tmp_path / "no-such-checkpoint"))
    assert served.demo
    assert "no-such-checkpoint" in served.fallback_reason


def test_demo_flag_serves_the_tiny_model_and_the_app_starts_without_network(demo_dir, no_network):
    from app import build_app, create_engine

    served = load_served_model(demo=True)
    assert served.demo and served.fallback_reason == "--demo was given"
    app = build_app(served, create_engine(served.model))
    app.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        html = urllib.request.urlopen(app.local_url, timeout=30).read().decode()
    finally:
        app.close()
    assert "NatureLM-audio merging explorer" in html
    assert DEMO_BANNER.split(":")[0] in html
