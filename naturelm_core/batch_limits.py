"""How many rows fit in one batch, learned per batch shape from real out-of-memory errors only.

Why per shape: memory grows with rows x beams x (prompt + new tokens), so a size that ran out of memory
for 8 beams and 1000 new tokens says nothing about greedy 20-token answers. Why only on a real
`torch.OutOfMemoryError`: a batch is small for many harmless reasons (one Explore answer, the tail
of a sweep), and an earlier version that treated every small batch as a limit turned the engine
into a one-row engine for the rest of the process.

Why probe upward again: an out-of-memory error can be transient (another process held memory, the
allocator was fragmented), so after `probe_after` batches that fitted at the lowered size the limit
doubles again. A probe that runs out of memory halves it back and doubles the wait before the next
probe, so a real limit costs a vanishing share of batches (one in 8, then 16, 32, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

FIRST_PROBE_AFTER = 8


@dataclass
class _ShapeLimit:
    rows: int
    probe_after: int = FIRST_PROBE_AFTER
    fitted_since_change: int = 0
    probing: bool = False


class BatchLimits:
    """The largest batch to try per shape; `max_rows` for every shape that never ran out of memory."""

    def __init__(self, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"a batch needs at least one row, got max_rows={max_rows}")
        self.max_rows = max_rows
        self._limits: dict[Hashable, _ShapeLimit] = {}

    def rows_for(self, shape: Hashable) -> int:
        limit = self._limits.get(shape)
        return self.max_rows if limit is None else min(limit.rows, self.max_rows)

    def lowered(self) -> dict[Hashable, int]:
        """The shapes that run below `max_rows` now, and at how many rows (for logs and the UI)."""
        return {shape: limit.rows for shape, limit in self._limits.items() if limit.rows < self.max_rows}

    def ran_out_of_memory(self, shape: Hashable, rows: int) -> int:
        """A batch of `rows` did not fit: the next try of this shape takes half. Returns that size."""
        limit = self._limits.setdefault(shape, _ShapeLimit(rows=rows))
        if limit.probing:
            limit.probe_after *= 2
            limit.probing = False
        limit.rows = max(1, min(limit.rows, rows) // 2)
        limit.fitted_since_change = 0
        return limit.rows

    def fitted(self, shape: Hashable, rows: int) -> None:
        """A batch of `rows` ran: at the lowered limit it counts toward the next upward probe."""
        limit = self._limits.get(shape)
        if limit is None or rows < limit.rows:
            return  # a small batch (one Explore answer, a sweep's tail) says nothing about the limit
        limit.probing = False
        if rows >= self.max_rows:
            del self._limits[shape]
            return
        limit.fitted_since_change += 1
        if limit.fitted_since_change >= limit.probe_after:
            limit.rows = min(self.max_rows, 2 * limit.rows)
            limit.fitted_since_change = 0
            limit.probing = True
            logger.info("batches of shape %s: trying %d rows again after batches that fitted", shape, limit.rows)
