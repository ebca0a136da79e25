"""Where a swept sample's audio is, read back for listening: a file of a recordings folder, or a parquet row.

Why apart from the sweep engine: the Sweeps tab plays one sample a click, long after (or while) the
sweep ran, so only that sample is read: one file, or the one row of the subset whose id matches
(its audio column only). Nothing is downloaded here: a BEANS-Zero subset is read from the cache the
sweep filled. Every failure is a SampleAudioError whose message says which sample and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from evaluation.datasets import DatasetError, Subset, cached_subset_path, open_local_source
from evaluation.sweep import DataSource, SweepSpec
from naturelm_core.config import SAMPLE_RATE


class SampleAudioError(ValueError):
    """A sample whose audio cannot be found or read; the message names it and says why."""


@dataclass(frozen=True, eq=False)  # numpy audio has no single truth value to compare by
class SampleAudio:
    """One sample's audio as the model hears it (16 kHz mono) and where it was read from."""

    dataset: str
    sample_id: str
    waveform: np.ndarray
    source: str

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE


def sample_audio(spec: SweepSpec, dataset: str, sample_id: str) -> SampleAudio:
    """The audio of sample `sample_id` of `dataset` in the sweep's data, decoded to 16 kHz mono."""
    if dataset not in spec.subsets:
        raise SampleAudioError(f"the sweep has no data set {dataset!r} (it has {list(spec.subsets)})")
    if spec.source is DataSource.RECORDINGS:
        path = recording_path(spec, sample_id)
        return SampleAudio(dataset, sample_id, _decode(path, None, sample_id), str(path))
    source = _parquet_source(spec, dataset)
    audio, rate = _parquet_row_audio(source, dataset, sample_id)
    return SampleAudio(dataset, sample_id, _decode(audio, rate, sample_id), f"{dataset} row {sample_id}")


def recording_path(spec: SweepSpec, sample_id: str) -> Path:
    """The file of a recordings sweep's sample: its id is the labels CSV's `file`, relative to the folder.

    An id that would lead out of the folder (`..`, an absolute path) is refused, since ids arrive from the page.
    """
    folder = Path(spec.path or "").resolve()
    path = (folder / sample_id).resolve()
    if not path.is_relative_to(folder):
        raise SampleAudioError(f"{sample_id!r} is not a file inside the sweep's folder {folder}")
    if not path.is_file():
        raise SampleAudioError(f"recording {sample_id!r} is no longer in {folder} (moved or deleted?)")
    return path


def _parquet_source(spec: SweepSpec, dataset: str) -> pads.Dataset:
    """The sweep's parquet source; for BEANS-Zero, the subset's cache (never a download on a click)."""
    if spec.source is DataSource.BEANS_ZERO:
        cached = cached_subset_path(dataset)
        if not cached.is_file():
            raise SampleAudioError(
                f"{dataset} is not in the BEANS-Zero cache ({cached}); run a sweep on it to fetch it"
            )
        return pads.dataset(cached, format="parquet")
    try:
        return open_local_source(spec.path or "")
    except (OSError, DatasetError) as error:
        raise SampleAudioError(f"cannot open the sweep's data {spec.path}: {error}") from error


def _parquet_row_audio(source: pads.Dataset, dataset: str, sample_id: str) -> tuple[np.ndarray, int]:
    """The one row with this id, read (filtered by data set and id) and decoded by the sweep's own Subset."""
    if "id" not in source.schema.names:
        raise SampleAudioError(f"the sweep's data has no id column (it has {source.schema.names})")
    wanted = (pc.field("dataset_name") == dataset) & (pc.field("id").cast(pa.string()) == sample_id)
    table = source.to_table(filter=wanted)
    if table.num_rows == 0:
        raise SampleAudioError(f"no sample {sample_id!r} of {dataset} in the sweep's data")
    try:
        subset = Subset(dataset, pads.dataset(table.slice(0, 1)))
        sample = subset.decode(next(subset.rows()))
    except DatasetError as error:
        raise SampleAudioError(f"sample {sample_id!r} of {dataset} cannot be read: {error}") from error
    return sample.audio, sample.sample_rate


def _decode(source: Path | np.ndarray, rate: int | None, sample_id: str) -> np.ndarray:
    from naturelm_core.audio import AudioError, load_audio  # imports torch

    try:
        waveform, _ = load_audio(source if isinstance(source, np.ndarray) else str(source), rate)
    except AudioError as error:
        raise SampleAudioError(f"sample {sample_id!r} cannot be decoded: {error}") from error
    return waveform
