"""One row of a sweep's results file, the single definition shared by the writer and every reader.

A sweep appends one JSON object per (sample, prompt, alpha) to `results.jsonl`; scoring, plots and
the export to the paper's layout all read these rows back, so the schema lives here only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


class ResultsFormatError(ValueError):
    """A results row lacks a field, or has one of the wrong type."""


@dataclass(frozen=True)
class ResultRow:
    """The model's answer to one prompt for one sample at one alpha, beside the true label."""

    id: str
    dataset: str
    prompt_name: str
    prompt: str
    alpha: float
    prediction: str
    label: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        """Build a row, ignoring unknown keys so later writers may add fields without breaking readers."""
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ResultsFormatError(f"results row lacks {missing}: {_preview(data)}")
        try:
            alpha = float(data["alpha"])
        except (TypeError, ValueError) as error:
            raise ResultsFormatError(f"results row has a non-numeric alpha: {_preview(data)}") from error
        text_fields = ("id", "dataset", "prompt_name", "prompt", "prediction", "label")
        wrong = [name for name in text_fields if not isinstance(data[name], str)]
        if wrong:
            raise ResultsFormatError(f"results row fields {wrong} must be strings: {_preview(data)}")
        return cls(alpha=alpha, **{name: data[name] for name in text_fields})


def _preview(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:200] + "..."


def iter_jsonl_objects(path: str | Path, error: type[Exception]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", object) for each non-blank line; a line that is not a JSON object raises `error` naming it."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as decode_error:
                raise error(f"{where}: not JSON ({decode_error.msg})") from decode_error
            if not isinstance(data, dict):
                raise error(f"{where}: not a JSON object")
            yield where, data


def read_results(path: str | Path) -> Iterator[ResultRow]:
    """Rows of a results.jsonl; a malformed line names its line number (a crash can leave a torn last line)."""
    for where, data in iter_jsonl_objects(path, ResultsFormatError):
        try:
            yield ResultRow.from_dict(data)
        except ResultsFormatError as error:
            raise ResultsFormatError(f"{where}: {error}") from error


def write_results(rows: Iterable[ResultRow], path: str | Path) -> None:
    """Write rows as jsonl (a whole file at once; a sweep that appends does so itself)."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
