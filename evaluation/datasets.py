"""Evaluation data: BEANS-Zero subsets (from the Hub, a local copy, or our cache) and a user's own recordings.

BEANS-Zero is 100+ GB, so a subset is fetched by streaming with a filter on `dataset_name` and only
the columns a sweep needs, then cached as one parquet file per subset so the next sweep starts
offline at once. Rows are read lazily, a batch at a time: a subset's audio never has to fit in
memory, and listing its labels reads only the `output` column. A row whose audio cannot be used is
skipped and reported, never allowed to abort a sweep of thousands.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from naturelm_core.config import SAMPLE_RATE, WINDOW_SECONDS

logger = logging.getLogger(__name__)

BEANS_ZERO_REPO = "EarthSpeciesProject/BEANS-Zero"
BEANS_ZERO_SPLIT = "test"
BEANS_ZERO_COLUMNS = (
    "source_dataset",
    "audio",
    "id",
    "created_at",
    "metadata",
    "file_name",
    "instruction",
    "instruction_text",
    "output",
    "task",
    "dataset_name",
    "license",
)
# What a sweep needs of a row; the projection the Hub fetch asks for and the cache holds.
SAMPLE_COLUMNS = (
    "id",
    "dataset_name",
    "task",
    "audio",
    "metadata",
    "output",
    "instruction_text",
    "file_name",
    "license",
)
LISTING_COLUMNS = ("id", "dataset_name", "output")
READ_BATCH_ROWS = 64


@dataclass(frozen=True)
class SubsetInfo:
    """What BEANS_ZERO.md records of a subset; rows and label counts are for checks and progress bars."""

    task: str
    rows: int
    n_labels: int | None
    window_s: float = WINDOW_SECONDS


SUBSETS: dict[str, SubsetInfo] = {
    "esc50": SubsetInfo("classification", 400, 50, 5.0),
    "watkins": SubsetInfo("classification", 339, 31, 3.0),
    "cbi": SubsetInfo("classification", 3620, 264),
    "humbugdb": SubsetInfo("classification", 1859, 14, 3.0),
    "enabirds": SubsetInfo("detection", 4543, 34),
    "hiceas": SubsetInfo("detection", 1485, 2),
    "rfcx": SubsetInfo("detection", 10406, 25),
    "gibbons": SubsetInfo("detection", 18560, 4),
    "dcase": SubsetInfo("detection", 13688, 18),
    "lifestage": SubsetInfo("classification", 466, 3),
    "call-type": SubsetInfo("classification", 1000, 2),
    **{f"unseen-species-{suffix}": SubsetInfo("classification", 1255, 40) for suffix in ("cmn", "sci", "tax")},
    **{f"unseen-genus-{suffix}": SubsetInfo("classification", 951, 36) for suffix in ("cmn", "sci", "tax")},
    **{f"unseen-family-{suffix}": SubsetInfo("classification", 451, 36) for suffix in ("cmn", "sci", "tax")},
    "captioning": SubsetInfo("captioning", 26468, None),
    "zf-indiv": SubsetInfo("classification", 1160, 2),
}


def task_of(dataset: str) -> str:
    """The task of a subset; anything not in BEANS-Zero (a user's own data) is classification."""
    info = SUBSETS.get(dataset)
    return info.task if info else "classification"


def window_of(dataset: str) -> float:
    """The model window the paper used for a subset: watkins 3 s, esc50 5 s, humbugdb 3 s, else 10 s."""
    info = SUBSETS.get(dataset)
    return info.window_s if info else WINDOW_SECONDS


class DatasetError(ValueError):
    """Base of the data errors, so a caller can report any of them the same way."""


class UnknownSubsetError(DatasetError):
    """No subset of that name (in BEANS-Zero, or in the given source)."""


class MissingColumnsError(DatasetError):
    """A parquet/arrow source or a labels CSV lacks columns that are needed."""


class LabelsFileError(DatasetError):
    """A user's labels CSV is unreadable or has rows without a file or a label."""


@dataclass(frozen=True, eq=False)  # numpy audio has no single truth value to compare by
class Sample:
    """One recording to ask the model about: audio at its own rate (the model's front end resamples)."""

    id: str
    dataset: str
    audio: np.ndarray
    sample_rate: int
    label: str
    window_s: float
    task: str = "classification"
    instruction: str = ""
    scientific_label: str | None = None
    file_name: str = ""
    # The audio is naturelm_core.audio's own output (16 kHz mono float32, checked and clamped): a recording file
    # decoded by Subset.decode. `evaluation.sweep.model_window` then only pads it, without checking it again.
    model_ready: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class SkippedRow:
    """A row left out of a sweep, and why."""

    id: str
    reason: str


@dataclass(frozen=True, eq=False)  # arrow columns have no single truth value to compare by
class SampleRow:
    """A row read but not decoded: everything a Sample holds except its audio, which `Subset.decode` reads.

    For parquet sources the audio stays in its arrow batch (`audio_column` at `position`); for a
    folder of recordings `audio_column` is None and `file_name` names the file.
    """

    id: str
    label: str
    task: str
    instruction: str
    scientific_label: str | None
    file_name: str
    metadata: Any
    audio_column: pa.Array | None
    position: int


class UnreadableRowError(DatasetError):
    """One row's audio or metadata cannot be used; caught per row and turned into a SkippedRow."""


class Subset:
    """One subset's rows, read lazily from an arrow dataset (parquet shards, our cache, a saved_to_disk copy,
    or a user's CSV of recordings). Iterating yields Samples; rows that cannot be used land in `skipped`.
    """

    def __init__(
        self,
        name: str,
        source: pads.Dataset,
        *,
        window_s: float | None = None,
        classes: Sequence[str] | None = None,
        audio_root: Path | None = None,
        max_duration_s: float = 600.0,
    ):
        self.name = name
        self.window_s = window_of(name) if window_s is None else window_s
        self._source = source
        self._classes = None if classes is None else tuple(sorted(set(classes)))
        self._audio_root = audio_root
        self._max_duration_s = max_duration_s
        self.skipped: list[SkippedRow] = []
        needed = set(LISTING_COLUMNS) | ({"file_name"} if audio_root is not None else {"audio", "metadata"})
        missing = sorted(needed - set(source.schema.names))
        if missing:
            raise MissingColumnsError(f"{name}: the source lacks columns {missing} (it has {source.schema.names})")
        if audio_root is None:
            _check_audio_type(name, source.schema.field("audio").type)
        if source.count_rows(filter=pc.field("dataset_name") == name) == 0:
            available = sorted(pc.unique(source.to_table(columns=["dataset_name"]).column(0)).to_pylist())
            raise UnknownSubsetError(f"no rows of subset {name!r} in this source; it holds {available}")

    @property
    def _filter(self) -> pc.Expression:
        expression = pc.field("dataset_name") == self.name
        if self._classes is not None:
            expression &= pc.field("output").isin(list(self._classes))
        return expression

    @property
    def task(self) -> str:
        if "task" in self._source.schema.names:
            tasks = self._source.head(1, columns=["task"], filter=self._filter).column(0).to_pylist()
            if tasks and tasks[0]:
                return str(tasks[0])
        return task_of(self.name)

    def __len__(self) -> int:
        return self._source.count_rows(filter=self._filter)

    def label_counts(self) -> dict[str, int]:
        """Rows per label, most frequent first (ties in label order); reads only the `output` column."""
        outputs = self._source.to_table(columns=["output"], filter=self._filter).column(0).to_pylist()
        counts = Counter(outputs)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def labels(self) -> list[str]:
        """The label set: the distinct `output` values, sorted."""
        return sorted(self.label_counts())

    def with_classes(self, classes: Sequence[str]) -> Subset:
        """The rows of the given labels only (e.g. for a quick sweep on a few well-populated classes)."""
        unknown = sorted(set(classes) - set(self.labels()))
        if unknown:
            raise DatasetError(f"{self.name} has no label(s) {unknown}")
        return Subset(
            self.name,
            self._source,
            window_s=self.window_s,
            classes=classes,
            audio_root=self._audio_root,
            max_duration_s=self._max_duration_s,
        )

    def top_k_classes(self, k: int) -> Subset:
        """The rows of the k most frequent labels (ties broken by label order, so the choice is reproducible)."""
        if k < 1:
            raise ValueError(f"top_k_classes needs k >= 1, got {k}")
        return self.with_classes(list(self.label_counts())[:k])

    def ids(self) -> list[str]:
        return [str(i) for i in self._source.to_table(columns=["id"], filter=self._filter).column(0).to_pylist()]

    def labels_of(self, ids: Iterable[str]) -> set[str]:
        """The labels of the rows with these ids; reads the `id` and `output` columns only."""
        wanted = set(ids)
        table = self._source.to_table(columns=["id", "output"], filter=self._filter)
        pairs = zip(table.column("id").to_pylist(), table.column("output").to_pylist(), strict=True)
        return {str(label) for row_id, label in pairs if str(row_id) in wanted}

    def __iter__(self) -> Iterator[Sample]:
        """Samples in source order; `skipped` is refilled on every pass."""
        return self.samples()

    def samples(self, head_s: float | None = None) -> Iterator[Sample]:
        """Samples in source order, each decoded by `decode(row, head_s)`; `skipped` is refilled on every pass."""
        self.skipped = []
        for row in self.rows():
            try:
                sample = self.decode(row, head_s)
            except UnreadableRowError as error:
                self._skip(row.id, str(error))
                continue
            yield sample

    def rows(self) -> Iterator[SampleRow]:
        """The rows in source order with their audio still encoded, for callers that decode them elsewhere.

        Reading rows is cheap and stays on the caller's thread; `decode` is the costly part and may run on
        any thread. Nothing is recorded in `skipped` here: the caller handles each row's decode error.
        """
        columns = [name for name in (*SAMPLE_COLUMNS, "scientific_label") if name in self._source.schema.names]
        if self._audio_root is not None:
            columns = [name for name in columns if name not in ("audio", "metadata")]
        for batch in self._source.to_batches(columns=columns, filter=self._filter, batch_size=READ_BATCH_ROWS):
            audio_column = batch.column("audio") if "audio" in batch.schema.names else None
            # The audio is sliced as numpy by `decode` rather than boxed into Python floats with the other fields.
            fields = batch if audio_column is None else batch.drop_columns(["audio"])
            for position, row in enumerate(fields.to_pylist()):
                yield SampleRow(
                    id=str(row["id"]),
                    label=str(row["output"]),
                    task=str(row.get("task") or task_of(self.name)),
                    instruction=str(row.get("instruction_text") or ""),
                    scientific_label=row.get("scientific_label") or None,
                    file_name=str(row.get("file_name") or ""),
                    metadata=row.get("metadata"),
                    audio_column=audio_column,
                    position=position,
                )

    def decode(self, row: SampleRow, head_s: float | None = None) -> Sample:
        """The row's Sample with its audio decoded; raises UnreadableRowError. Safe to call from any thread.

        `head_s`: the caller needs the first `head_s` seconds only (a sweep's model window), so a recording file
        is read and resampled only as far as those need (naturelm_core.audio.load_audio_head, which says how its
        checks differ) and the Sample's audio, and duration, are that head. A parquet row's audio is decoded
        samples already, kept whole: `evaluation.sweep.model_window` resamples only its head.
        """
        if row.audio_column is None:
            audio, rate = self._decode_file(row.file_name, head_s)
        else:
            audio, rate = _row_audio(row.audio_column, row.position, row.metadata)
        return Sample(
            id=row.id,
            dataset=self.name,
            audio=audio,
            sample_rate=rate,
            label=row.label,
            window_s=self.window_s,
            task=row.task,
            instruction=row.instruction,
            scientific_label=row.scientific_label,
            file_name=row.file_name,
            model_ready=row.audio_column is None,
        )

    def _skip(self, row_id: str, reason: str) -> None:
        self.skipped.append(SkippedRow(row_id, reason))
        logger.warning("%s: skipping row %s: %s", self.name, row_id, reason)

    def _decode_file(self, file_name: str, head_s: float | None) -> tuple[np.ndarray, int]:
        from naturelm_core.audio import AudioError, load_audio, load_audio_head  # imports torch

        path = self._audio_root / file_name
        try:
            if head_s is None:
                audio, _ = load_audio(path, max_duration_s=self._max_duration_s)
            else:
                audio = load_audio_head(path, head_s, max_duration_s=self._max_duration_s)
        except AudioError as error:
            raise UnreadableRowError(str(error)) from error
        return audio, SAMPLE_RATE


def _check_audio_type(name: str, audio_type: pa.DataType) -> None:
    is_list = pa.types.is_list(audio_type) or pa.types.is_large_list(audio_type)
    if not (is_list and (pa.types.is_floating(audio_type.value_type) or pa.types.is_integer(audio_type.value_type))):
        raise MissingColumnsError(f"{name}: the audio column must be a list of numbers, got {audio_type}")


def _row_audio(column: pa.Array, position: int, metadata: Any) -> tuple[np.ndarray, int]:
    """One row's waveform as float32 and its own sample rate from the `metadata` JSON."""
    try:
        fields = json.loads(metadata) if isinstance(metadata, str) else None
    except json.JSONDecodeError as error:
        raise UnreadableRowError(f"metadata is not JSON ({error.msg})") from error
    if not isinstance(fields, dict):
        raise UnreadableRowError("metadata is missing or not a JSON object")
    rate = fields.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise UnreadableRowError(f"metadata has no usable sample_rate (got {rate!r})")
    if not column[position].is_valid:
        raise UnreadableRowError("audio is null")
    offsets = column.offsets.to_numpy()
    values = column.values.slice(offsets[position], offsets[position + 1] - offsets[position])
    audio = values.to_numpy(zero_copy_only=False).astype(np.float32)
    if audio.size == 0:
        raise UnreadableRowError("audio is empty")
    if not np.isfinite(audio).all():
        raise UnreadableRowError("audio has NaN, infinite or null samples")
    return audio, int(rate)


# ----------------------------------------------------------------------------------------------
# Sources


def default_cache_dir() -> Path:
    return Path(os.environ.get("BEANS_ZERO_CACHE", Path.home() / ".cache" / "naturelm-explorer" / "beans-zero"))


def cached_subset_path(name: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{name}.parquet"


Loader = Callable[..., Any]


def _load_dataset(*args: Any, **kwargs: Any) -> Any:
    import datasets

    return datasets.load_dataset(*args, **kwargs)


def fetch_subset(
    name: str,
    cache_dir: str | Path | None = None,
    *,
    loader: Loader | None = None,
    repo: str = BEANS_ZERO_REPO,
    refresh: bool = False,
) -> Path:
    """Stream one subset from the Hub into `<cache>/<name>.parquet` (once) and return that path.

    Only rows whose `dataset_name` is `name` and only SAMPLE_COLUMNS are read; parquet statistics let
    whole row groups of other subsets be skipped. The file is written under a temporary name and
    renamed when complete, so an interrupted fetch never leaves a truncated cache behind.
    `loader` stands in for `datasets.load_dataset` (tests point it at local parquet).
    """
    if name not in SUBSETS:
        raise UnknownSubsetError(f"BEANS-Zero has no subset {name!r}; its subsets are {sorted(SUBSETS)}")
    path = cached_subset_path(name, cache_dir)
    if path.exists() and not refresh:
        return path
    stream = (loader or _load_dataset)(
        repo,
        split=BEANS_ZERO_SPLIT,
        streaming=True,
        filters=[("dataset_name", "==", name)],
        columns=list(SAMPLE_COLUMNS),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".parquet.partial")
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for table in stream.with_format("arrow").iter(batch_size=256):
            if writer is None:
                missing = sorted(set(SAMPLE_COLUMNS) - set(table.schema.names))
                if missing:
                    raise MissingColumnsError(f"{repo} rows lack columns {missing}")
                writer = pq.ParquetWriter(partial, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if rows == 0:
        partial.unlink(missing_ok=True)
        raise UnknownSubsetError(f"{repo} returned no rows for subset {name!r}")
    partial.replace(path)
    logger.info("cached %d rows of %s at %s", rows, name, path)
    return path


def fetch_label_counts(name: str, *, loader: Loader | None = None, repo: str = BEANS_ZERO_REPO) -> dict[str, int]:
    """A subset's label counts from the Hub, reading only `dataset_name` and `output` (no audio)."""
    if name not in SUBSETS:
        raise UnknownSubsetError(f"BEANS-Zero has no subset {name!r}; its subsets are {sorted(SUBSETS)}")
    stream = (loader or _load_dataset)(
        repo,
        split=BEANS_ZERO_SPLIT,
        streaming=True,
        filters=[("dataset_name", "==", name)],
        columns=["dataset_name", "output"],
    )
    counts: Counter[str] = Counter()
    for table in stream.with_format("arrow").iter(batch_size=4096):
        counts.update(table.column("output").to_pylist())
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def load_subset(
    name: str,
    source: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    loader: Loader | None = None,
    window_s: float | None = None,
) -> Subset:
    """A BEANS-Zero subset from the Hub (through the cache), or from a local source.

    `source` may be a parquet file, a folder of BEANS-Zero parquet shards, or a folder written by
    `datasets.Dataset.save_to_disk`.
    """
    if source is None:
        return Subset(name, pads.dataset(fetch_subset(name, cache_dir, loader=loader)), window_s=window_s)
    return Subset(name, open_local_source(source), window_s=window_s)


def open_local_source(source: str | Path) -> pads.Dataset:
    """An arrow dataset over a local BEANS-Zero copy, without reading its audio."""
    source = Path(source)
    if source.is_file():
        return pads.dataset(source, format="parquet")
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is neither a parquet file nor a folder")
    if (source / "state.json").is_file() and any(source.glob("*.arrow")):
        import datasets

        return pads.dataset(datasets.load_from_disk(str(source)).data.table)
    shards = sorted(path for path in source.rglob("*") if path.is_file() and _looks_like_shard(path))
    if not shards:
        raise DatasetError(f"{source} holds no parquet shards and is not a save_to_disk folder")
    return pads.dataset(shards, format="parquet")


def _looks_like_shard(path: Path) -> bool:
    return path.suffix == ".parquet" or (path.name.startswith("shard") and not path.suffix.endswith("partial"))


def load_recordings(
    folder: str | Path,
    labels_csv: str | Path | None = None,
    *,
    name: str | None = None,
    window_s: float = WINDOW_SECONDS,
    max_duration_s: float = 600.0,
) -> Subset:
    """A user's own data: a folder of recordings plus a CSV `file,label[,scientific_label]`.

    `file` is relative to the folder (subfolders allowed). The CSV defaults to `<folder>/labels.csv`.
    Recordings are decoded when iterated, to 16 kHz mono by naturelm_core.audio; unreadable ones are
    skipped and reported.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    labels_csv = Path(labels_csv) if labels_csv is not None else folder / "labels.csv"
    if not labels_csv.is_file():
        raise LabelsFileError(f"labels file {labels_csv} does not exist (columns: file,label[,scientific_label])")
    name = name or folder.name
    with labels_csv.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [column.strip() for column in reader.fieldnames or ()]
        missing = sorted({"file", "label"} - set(header))
        if missing:
            raise MissingColumnsError(f"{labels_csv.name} lacks columns {missing} (it has {header})")
        records = [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]
    blank = [number for number, row in enumerate(records, start=2) if not row["file"] or not row["label"]]
    if blank:
        raise LabelsFileError(f"{labels_csv.name}: rows {blank[:10]} have no file or no label")
    if not records:
        raise LabelsFileError(f"{labels_csv.name} has no rows")
    table = pa.table(
        {
            "id": [row["file"] for row in records],
            "dataset_name": [name] * len(records),
            "task": ["classification"] * len(records),
            "output": [row["label"] for row in records],
            "scientific_label": [row.get("scientific_label") or None for row in records],
            "file_name": [row["file"] for row in records],
        },
        schema=pa.schema(
            [
                ("id", pa.string()),
                ("dataset_name", pa.string()),
                ("task", pa.string()),
                ("output", pa.string()),
                ("scientific_label", pa.string()),
                ("file_name", pa.string()),
            ]
        ),
    )
    return Subset(name, pads.dataset(table), window_s=window_s, audio_root=folder, max_duration_s=max_duration_s)
