"""The per-row LoRA scale: every batch row carries its own alpha, and no alpha outlives a call.

peft's LoRA Linear computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`. The LoRA path is linear
in its input, so scaling the input of the dropout slot by a row's alpha scales that row's LoRA term:
W x + alpha * s * B A x, i.e. the weights (1 - alpha) * W_base + alpha * W_ft. We swap each adapter's
dropout module for `RowScaledDropout`, which owns no parameters, so checkpoint names do not change.

The alphas live in one `RowAlphas` per model: a preallocated buffer that a call fills for exactly its
own duration (`with row_alphas.applied(values): ...`), under a lock. Outside a call the LoRA layers
refuse to run, so a forgotten or stale alpha cannot silently leak from one request into the next (the
public code's defect). A fixed buffer that is copied into is also what a captured CUDA graph needs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

ADAPTER_NAME = "default"


class RowAlphas:
    """The alphas of the call in progress, one per batch row, in a buffer reused across calls."""

    def __init__(self, capacity: int = 64, device: torch.device | str = "cpu") -> None:
        self._buffer = torch.zeros(capacity, dtype=torch.float32, device=device)
        self._rows: int | None = None
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __deepcopy__(self, memo: dict) -> RowAlphas:
        """A copied model gets its own, empty alpha state (a lock cannot be copied, and must not be shared)."""
        return RowAlphas(self._buffer.shape[0], self._buffer.device)

    @property
    def buffer(self) -> torch.Tensor:
        """The persistent storage a CUDA graph would capture; valid rows are the first `rows`."""
        return self._buffer

    @contextlib.contextmanager
    def applied(self, values: torch.Tensor) -> Iterator[None]:
        """Install one alpha per row for the duration of a forward or generate call, then clear it.

        The lock spans the whole call: a generate runs many forwards that must all see the same alphas,
        so a second thread waits rather than interleaving its own rows into them.
        """
        if self._owner == threading.get_ident():
            raise RuntimeError("alphas are already applied by this thread; calls on one model cannot nest")
        if values.dim() != 1:
            raise ValueError(f"alphas must be a 1-D tensor of one value per row, got shape {tuple(values.shape)}")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                rows = values.shape[0]
                if rows > self._buffer.shape[0] or self._buffer.device != values.device:
                    self._buffer = torch.zeros(max(rows, self._buffer.shape[0]), device=values.device)
                self._buffer[:rows].copy_(values)
                self._rows = rows
                yield
            finally:
                self._rows = None
                self._owner = None

    def scale_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x * alpha of its row; the product is formed in float32 so bf16 inputs lose nothing extra."""
        if self._rows is None:
            raise RuntimeError(
                "the LoRA layers ran without an alpha: run the LLM inside `RowAlphas.applied(...)` "
                "(NatureLM.generate does this), never with an alpha left over from another call"
            )
        if x.shape[0] != self._rows:
            raise RuntimeError(f"LoRA input has {x.shape[0]} rows but {self._rows} alphas were applied")
        alphas = self._buffer[: self._rows].view(-1, *([1] * (x.dim() - 1)))
        return (x * alphas).to(x.dtype)


class RowScaledDropout(nn.Module):
    """Takes the place of peft's `lora_dropout`: dropout as configured, then each row times its alpha."""

    def __init__(self, row_alphas: RowAlphas, dropout: float) -> None:
        super().__init__()
        self.row_alphas = row_alphas
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.dropout(x, self.dropout, self.training)
        return self.row_alphas.scale_rows(x)

    def extra_repr(self) -> str:
        return f"p={self.dropout}, scaled per row by alpha"


def install_row_alphas(model: nn.Module, dropout: float, capacity: int = 64) -> RowAlphas:
    """Route every LoRA adapter of `model` through one shared `RowAlphas`; returns it."""
    device = next(model.parameters()).device
    row_alphas = RowAlphas(capacity, device)
    adapted = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_dropout:
            module.lora_dropout[ADAPTER_NAME] = RowScaledDropout(row_alphas, dropout)
            adapted += 1
    if adapted == 0:
        raise ValueError("the model has no LoRA adapter named 'default' to scale per row")
    return row_alphas
