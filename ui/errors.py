"""How a handler's failure reaches the user: a sentence for their mistakes, "unexpected error" for our bugs.

Why two paths: a bad file, an alpha out of range or a busy queue is the user's to fix, so it is one
toast with the message and one log line (no traceback: nothing to debug). Anything else (a
TypeError, a KeyError) is a bug: it is logged with its traceback so it can be fixed, and the user
is told it was unexpected, not shown an internal message as if it were advice.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from evaluation.sweep import RunsStorageError, SweepLockedError
from naturelm_core.requests import EngineError

logger = logging.getLogger("naturelm_app")

# ValueError covers every "this input cannot be used" error of the code base (AlphaError, AudioError,
# SweepFormError, SweepSpecError, DatasetError, BackendChoiceError, ...); the rest are states the user
# can act on (a busy or closed engine, a full disk, a sweep already running, a path that is gone).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    EngineError,
    RunsStorageError,
    SweepLockedError,
    FileNotFoundError,
)
TIMEOUT_MESSAGE = "The model took too long to answer; try again or lower max new tokens."

Handler = TypeVar("Handler", bound=Callable[..., Any])


def user_facing(handler: Handler) -> Handler:
    """Turn the handler's expected failures into a toast with their message, and bugs into "unexpected error"."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except EXPECTED_ERRORS as error:
            logger.info("%s refused: %s: %s", handler.__name__, type(error).__name__, error)
            raise gr.Error(str(error)) from None
        except TimeoutError:
            logger.info("%s timed out", handler.__name__)
            raise gr.Error(TIMEOUT_MESSAGE) from None
        except Exception as error:
            logger.exception("unexpected error in %s", handler.__name__)
            raise gr.Error(f"Unexpected error ({type(error).__name__}); the app is still running.") from None

    return wrapped  # type: ignore[return-value]
