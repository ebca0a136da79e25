"""The request vocabulary shared by the engine and its callers, without importing torch.

Why apart from engine.py: the evaluation side (sweeps, Ray, the UI's service layer) builds requests
and catches engine errors, and must be importable (and testable) without loading torch first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

MAX_BEAMS = 16
MAX_NEW_TOKENS = 1024


class EngineError(RuntimeError):
    """A request could not be answered; the message is meant for the user, never a stack trace."""


class EngineBusy(EngineError):
    """The queue is full: the caller should try again in a moment."""


class RequestTimeout(EngineError):
    """The request waited longer than its timeout before the model could start on it."""


class Priority(IntEnum):
    INTERACTIVE = 0
    SWEEP = 1


@dataclass(frozen=True)
class GenerationSettings:
    """Settings that must be equal for rows to share one `generate` call."""

    num_beams: int = 2
    max_new_tokens: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.num_beams <= MAX_BEAMS:
            raise ValueError(f"num_beams must be between 1 and {MAX_BEAMS}, got {self.num_beams}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
