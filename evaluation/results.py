"""One row of a sweep's results file, the single definition shared by the writer and every reader.

A sweep appends one JSON object per (sample, prompt, alpha) to `results.jsonl`; scoring, plots and
the export to the paper's layout all read these rows back, so the schema lives here only.

A row merged by a recipe (naturelm_core.recipes) keeps the recipe's canonical name in `alpha`, its
grid key, so every reader that groups by alpha groups recipes too, and the recipe itself, as its JSON
object, in `recipe`, so the numbers it ran with are never lost to the rounding of its name. Rows of
plain alphas are written exactly as before (no `recipe` key).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from naturelm_core.alphas import AlphaError, GridPoint, MergeRecipe, grid_key

GridKey = float | str  # a float alpha, or a recipe's canonical name


class ResultsFormatError(ValueError):
    """A results row lacks a field, or has one of the wrong type."""


@dataclass(frozen=True)
class ResultRow:
    """The model's answer to one prompt for one sample at one grid point, beside the true label.

    `alpha` is the grid point's key (naturelm_core.alphas.grid_key): the float, or the name of `recipe`.
    """

    id: str
    dataset: str
    prompt_name: str
    prompt: str
    alpha: GridKey
    prediction: str
    label: str
    recipe: MergeRecipe | None = None

    @classmethod
    def at(cls, point: GridPoint, **fields_: str) -> ResultRow:
        """A row answered at `point`: a float alpha as given, a recipe by its name and its JSON."""
        if isinstance(point, MergeRecipe):
            return cls(alpha=grid_key(point), recipe=point, **fields_)
        return cls(alpha=point, **fields_)

    @property
    def point(self) -> GridPoint:
        """What the row was merged by: the recipe, or the float alpha."""
        return self.recipe if self.recipe is not None else float(self.alpha)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["recipe"]
        return data if self.recipe is None else {**data, "recipe": self.recipe.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        """Build a row, ignoring unknown keys so later writers may add fields without breaking readers."""
        missing = [f.name for f in fields(cls) if f.name not in data and f.name != "recipe"]
        if missing:
            raise ResultsFormatError(f"results row lacks {missing}: {_preview(data)}")
        point = row_point(data)
        text_fields = ("id", "dataset", "prompt_name", "prompt", "prediction", "label")
        wrong = [name for name in text_fields if not isinstance(data[name], str)]
        if wrong:
            raise ResultsFormatError(f"results row fields {wrong} must be strings: {_preview(data)}")
        return cls.at(point, **{name: data[name] for name in text_fields})


def row_point(data: dict[str, Any]) -> GridPoint:
    """The grid point of a stored row: its `recipe` where it has one (the name in `alpha` is only its key), else
    its numeric `alpha`."""
    if data.get("recipe") is not None:
        try:
            recipe = MergeRecipe.from_dict(data["recipe"])
        except AlphaError as error:
            raise ResultsFormatError(f"results row has an unusable recipe ({error}): {_preview(data)}") from error
        return recipe if not recipe.is_plain else recipe.alpha
    try:
        return float(data["alpha"])
    except (TypeError, ValueError) as error:
        raise ResultsFormatError(f"results row has a non-numeric alpha and no recipe: {_preview(data)}") from error


def grid_order(key: GridKey) -> tuple[int, float, str]:
    """A sort key over grid keys: plain alphas first, by value, then recipes by name (floats and names do not
    compare, and every table and figure sorts by alpha)."""
    return (1, 0.0, key) if isinstance(key, str) else (0, float(key), "")


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
