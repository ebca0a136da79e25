"""Synthetic BEANS-Zero: parquet shards with the real columns and types, for tests and offline demos.

BEANS-Zero itself cannot be reached from here (and is 100+ GB), so every data path is exercised on
these instead: several subsets interleaved across shards in small row groups (so filtering on
`dataset_name` really has to skip data), a different sample rate per row (so the rate must be read
from each row's `metadata`), and optionally rows whose audio or metadata is unusable. Each label has
its own tone frequency, so a test can tell from the audio alone that rows and labels stayed paired.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from evaluation.datasets import BEANS_ZERO_COLUMNS, task_of, window_of

SAMPLE_RATES = (16_000, 22_050, 32_000, 44_100)
DEFECTS = ("empty audio", "metadata without sample_rate", "NaN samples", "null audio", "metadata not JSON")
SCHEMA = pa.schema([(name, pa.list_(pa.float32()) if name == "audio" else pa.string()) for name in BEANS_ZERO_COLUMNS])
DEFAULT_ROWS = {"watkins": 12, "esc50": 8, "enabirds": 6}


@dataclass(frozen=True)
class SyntheticRow:
    """What was written for one row, to check a loader against."""

    id: str
    dataset: str
    label: str
    sample_rate: int
    n_samples: int
    defect: str | None = None


def label_frequency(label_index: int) -> float:
    """The tone that encodes a label: 220 Hz apart, well inside every sample rate's band."""
    return 220.0 * (label_index + 1)


def synthetic_labels(dataset: str, count: int = 4) -> list[str]:
    """Made-up labels; the first one has a comma, as several real Watkins labels do."""
    return [f"{dataset} Finback, Whale"] + [f"{dataset} species {i}" for i in range(1, count)]


def write_synthetic_beans_zero(
    folder: str | Path,
    rows_per_subset: Mapping[str, int] = DEFAULT_ROWS,
    *,
    shards: int = 2,
    seed: int = 0,
    labels: Mapping[str, Sequence[str]] | None = None,
    unreadable: Mapping[str, int] | None = None,
    row_group_rows: int = 4,
) -> list[SyntheticRow]:
    """Write `shard-00000.parquet`, ... into `folder` and return what each row holds.

    `unreadable[name] = k` gives the first k rows of that subset one defect each (cycling DEFECTS).
    """
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, object]] = []
    manifest: list[SyntheticRow] = []
    for dataset, count in rows_per_subset.items():
        names = list((labels or {}).get(dataset) or synthetic_labels(dataset))
        defects = (unreadable or {}).get(dataset, 0)
        for i in range(count):
            label_index = i % len(names)
            rate = SAMPLE_RATES[rng.randrange(len(SAMPLE_RATES))]
            duration = window_of(dataset) * rng.uniform(0.6, 1.2)
            audio = _tone(label_frequency(label_index), rate, duration)
            defect = DEFECTS[i % len(DEFECTS)] if i < defects else None
            row_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            record = _record(row_id, dataset, names[label_index], audio, rate, i)
            _apply_defect(record, defect)
            records.append(record)
            manifest.append(SyntheticRow(row_id, dataset, names[label_index], rate, len(audio), defect))
    rng.shuffle(records)
    bounds = np.linspace(0, len(records), shards + 1).astype(int)
    for shard, (start, stop) in enumerate(itertools.pairwise(bounds)):
        table = pa.Table.from_pylist(records[start:stop], schema=SCHEMA)
        pq.write_table(table, folder / f"shard-{shard:05d}.parquet", row_group_size=row_group_rows)
    return manifest


def _tone(frequency: float, rate: int, duration_s: float) -> np.ndarray:
    t = np.arange(int(rate * duration_s)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def _record(row_id: str, dataset: str, label: str, audio: np.ndarray, rate: int, index: int) -> dict[str, object]:
    question = "What is the common name for the focal species in the audio?"
    return {
        "source_dataset": dataset,
        "audio": audio.tolist(),
        "id": row_id,
        "created_at": "2025-03-13T17:58:52+00:00",
        "metadata": json.dumps({"sample_rate": rate, "duration": len(audio) / rate}),
        "file_name": f"{dataset}_{index:05d}.wav",
        "instruction": f"<Audio><AudioHere></Audio> {question}",
        "instruction_text": question,
        "output": label,
        "task": task_of(dataset),
        "dataset_name": dataset,
        "license": "CC-BY-NC",
    }


def _apply_defect(record: dict[str, object], defect: str | None) -> None:
    if defect == "empty audio":
        record["audio"] = []
    elif defect == "metadata without sample_rate":
        record["metadata"] = json.dumps({"duration": 1.0})
    elif defect == "NaN samples":
        record["audio"] = [float("nan")] * 16
    elif defect == "null audio":
        record["audio"] = None
    elif defect == "metadata not JSON":
        record["metadata"] = "{sample_rate: 16000"
