"""The paper's released formats: one predictions jsonl per (dataset, query, alpha), and its label mapping.

Reading them lets any folder the paper's code produced be scored and plotted beside our sweeps;
writing them lets our sweeps be handed to the paper's own scripts. File names follow
`beans_zero_eval_{dataset}_query{q}_lora{round(100*alpha):03d}.jsonl`; rows are
`{"prediction", "label", "id", "dataset_name", "prompt", "lora_scale"}`. A query index becomes
the prompt name (its decimal string), so `query0` reads back as prompt "0" and writes out again
as `query0`.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.results import ResultRow, iter_jsonl_objects

FILE_PATTERN = re.compile(r"^beans_zero_eval_(?P<dataset>.+)_query(?P<query>\d+)_lora(?P<scale>\d{3,})\.jsonl$")
ROW_KEYS = ("prediction", "label", "id", "dataset_name", "prompt", "lora_scale")
SCIENTIFIC_NAME_NOT_FOUND = "Scientific name not found"


class ReferenceFormatError(ValueError):
    """A file or row does not follow the paper's released layout."""


class MappingError(ValueError):
    """A label mapping file is malformed, or lacks labels that are being scored."""


@dataclass(frozen=True)
class ReferenceFile:
    """What a released file's name says about its rows."""

    path: Path
    dataset: str
    query: int
    alpha: float

    @property
    def prompt_name(self) -> str:
        return str(self.query)


def reference_file_name(dataset: str, query: int, alpha: float) -> str:
    return f"beans_zero_eval_{dataset}_query{query}_lora{alpha_to_scale(alpha):03d}.jsonl"


def alpha_to_scale(alpha: float) -> int:
    """round(100 * alpha), refusing alphas the two-decimal file name cannot hold without loss."""
    scale = round(100 * alpha)
    if not math.isclose(scale, 100 * alpha, abs_tol=1e-6) or scale < 0:
        raise ReferenceFormatError(f"alpha {alpha} is not a non-negative multiple of 0.01, which the file name needs")
    return scale


def parse_reference_name(path: str | Path) -> ReferenceFile:
    path = Path(path)
    match = FILE_PATTERN.match(path.name)
    if match is None:
        raise ReferenceFormatError(
            f"{path.name} is not named beans_zero_eval_{{dataset}}_query{{q}}_lora{{100*alpha:03d}}.jsonl"
        )
    return ReferenceFile(path, match["dataset"], int(match["query"]), int(match["scale"]) / 100)


def find_reference_files(folder: str | Path) -> list[ReferenceFile]:
    """The released files of a folder, sorted by (dataset, query, alpha); other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = [parse_reference_name(path) for path in folder.iterdir() if FILE_PATTERN.match(path.name)]
    return sorted(files, key=lambda f: (f.dataset, f.query, f.alpha))


def read_reference_file(reference: ReferenceFile) -> list[ResultRow]:
    """Rows of one released file; the alpha comes from the name and must agree with each row's lora_scale."""
    rows = []
    for where, data in iter_jsonl_objects(reference.path, ReferenceFormatError):
        missing = [key for key in ("prediction", "label", "id") if key not in data]
        if missing:
            raise ReferenceFormatError(f"{where}: row lacks {missing}")
        scale = data.get("lora_scale")
        if scale is not None and not math.isclose(float(scale), reference.alpha, abs_tol=5e-3):
            raise ReferenceFormatError(f"{where}: lora_scale {scale} disagrees with the file name's alpha")
        rows.append(
            ResultRow(
                id=str(data["id"]),
                dataset=str(data.get("dataset_name") or reference.dataset),
                prompt_name=reference.prompt_name,
                prompt=str(data.get("prompt", "")),
                alpha=reference.alpha,
                prediction=str(data["prediction"] if data["prediction"] is not None else ""),
                label=str(data["label"]),
            )
        )
    return rows


def read_reference_folder(folder: str | Path) -> list[ResultRow]:
    files = find_reference_files(folder)
    if not files:
        raise ReferenceFormatError(f"{folder} holds no beans_zero_eval_*_query*_lora*.jsonl files")
    return [row for reference in files for row in read_reference_file(reference)]


def write_reference_folder(
    rows: Iterable[ResultRow],
    folder: str | Path,
    query_of_prompt: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Write rows in the released layout and return the prompt-name -> query-index map used.

    Prompt names that are decimal strings keep their number; the others get the next free indexes in
    sorted order unless `query_of_prompt` fixes them.
    """
    groups: dict[tuple[str, str, float], list[ResultRow]] = defaultdict(list)
    for row in rows:
        groups[(row.dataset, row.prompt_name, row.alpha)].append(row)
    queries = _assign_queries(sorted({name for _, name, _ in groups}), query_of_prompt or {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for (dataset, prompt_name, alpha), group in sorted(groups.items()):
        path = folder / reference_file_name(dataset, queries[prompt_name], alpha)
        with path.open("w", encoding="utf-8") as handle:
            for row in group:
                record = {
                    "prediction": row.prediction,
                    "label": row.label,
                    "id": row.id,
                    "dataset_name": row.dataset,
                    "prompt": row.prompt,
                    "lora_scale": row.alpha,
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return queries


def _assign_queries(prompt_names: list[str], fixed: Mapping[str, int]) -> dict[str, int]:
    queries = {name: fixed[name] for name in prompt_names if name in fixed}
    queries.update({name: int(name) for name in prompt_names if name not in queries and name.isdecimal()})
    next_free = 0
    for name in prompt_names:
        if name in queries:
            continue
        while next_free in queries.values():
            next_free += 1
        queries[name] = next_free
    if len(set(queries.values())) != len(queries):
        raise ReferenceFormatError(f"two prompts would share a query index: {queries}")
    return queries


@dataclass(frozen=True)
class LabelMapping:
    """Common name -> scientific name, with accepted synonyms; the paper's literal "not found" is kept."""

    scientific: Mapping[str, str]
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def scientific_name(self, common: str) -> str:
        """The mapped value as the paper uses it (possibly the literal "Scientific name not found")."""
        try:
            return self.scientific[common]
        except KeyError:
            raise MappingError(f"the label mapping has no entry for {common!r}") from None

    def known_scientific_name(self, common: str) -> str | None:
        """The scientific name, or None where the mapping admits it has none."""
        name = self.scientific_name(common)
        return None if name == SCIENTIFIC_NAME_NOT_FOUND else name

    def accepted_names(self, common: str) -> tuple[str, ...]:
        """The scientific name and its synonyms; empty where the mapping has no name."""
        name = self.known_scientific_name(common)
        return () if name is None else (name, *self.synonyms.get(common, ()))

    def missing(self, labels: Iterable[str]) -> list[str]:
        return sorted({label for label in labels if label not in self.scientific})

    def merged(self, other: LabelMapping) -> LabelMapping:
        return LabelMapping({**self.scientific, **other.scientific}, {**self.synonyms, **other.synonyms})


def load_label_mapping(path: str | Path) -> LabelMapping:
    """Read a mapping: the paper's jsonl (`label`, `scientific_name`[, `synonyms` list]) or a CSV with
    columns `label,scientific_name[,synonyms]` (synonyms separated by `|`)."""
    path = Path(path)
    if not path.is_file():
        raise MappingError(f"label mapping {path} does not exist")
    records = _read_csv_records(path) if path.suffix.lower() == ".csv" else _read_jsonl_records(path)
    scientific: dict[str, str] = {}
    synonyms: dict[str, tuple[str, ...]] = {}
    for where, record in records:
        label, name = record.get("label"), record.get("scientific_name")
        if not isinstance(label, str) or not isinstance(name, str) or not label or not name:
            raise MappingError(f"{where}: needs string fields 'label' and 'scientific_name'")
        if label in scientific and scientific[label] != name:
            raise MappingError(f"{where}: {label!r} is mapped twice, to {scientific[label]!r} and {name!r}")
        scientific[label] = name
        extra = record.get("synonyms") or ()
        if isinstance(extra, str):
            extra = extra.split("|")
        synonyms[label] = tuple(part.strip() for part in extra if part.strip())
    if not scientific:
        raise MappingError(f"label mapping {path} is empty")
    return LabelMapping(scientific, {label: names for label, names in synonyms.items() if names})


def _read_jsonl_records(path: Path) -> list[tuple[str, dict]]:
    return list(iter_jsonl_objects(path, MappingError))


def _read_csv_records(path: Path) -> list[tuple[str, dict]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"label", "scientific_name"} - set(reader.fieldnames or ())
        if missing:
            raise MappingError(f"{path.name}: CSV lacks columns {sorted(missing)}")
        return [(f"{path.name}:{number}", dict(record)) for number, record in enumerate(reader, start=2)]


def find_mapping_beside(path: str | Path, datasets: Iterable[str]) -> LabelMapping | None:
    """The paper ships `{dataset}_vernacular_scientific_mapping.jsonl` beside its result folders."""
    path = Path(path)
    folders = [path, path.parent] if path.is_dir() else [path.parent, path.parent.parent]
    found: LabelMapping | None = None
    for dataset in sorted(set(datasets)):
        for folder in folders:
            candidate = folder / f"{dataset}_vernacular_scientific_mapping.jsonl"
            if candidate.is_file():
                mapping = load_label_mapping(candidate)
                found = mapping if found is None else found.merged(mapping)
                break
    return found
