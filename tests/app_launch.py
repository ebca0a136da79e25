"""Test support for launching the Gradio app in-process on a port nobody else holds."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it), so parallel app tests never collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
