"""Hugging Face ZeroGPU hardware: a GPU is lent per decorated call, so model work must run inside one.

Checked when the app is built, not when this module is imported, so a test (or a Space) that makes
`spaces` importable before building the app gets the ZeroGPU behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

Handler = TypeVar("Handler", bound=Callable[..., Any])


def zero_gpu() -> Any:
    """The `spaces` package on Hugging Face ZeroGPU hardware, else None."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces


def on_gpu(handler: Handler) -> Handler:
    """On ZeroGPU, model work must run inside a @spaces.GPU call of the request's own thread."""
    spaces = zero_gpu()
    return spaces.GPU(handler) if spaces is not None else handler
