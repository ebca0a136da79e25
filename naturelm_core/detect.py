"""Command line: detection over one recording or a folder of them, written as Raven / Audacity / CSV / JSON.

    python -m naturelm_core.detect FILE_OR_FOLDER --prompt TEXT --alpha 1 --out DIR [--window-s 10] [--hop-s 10]
    python -m naturelm_core.detect FOLDER --prompt TEXT --alpha "0, 0.5, 1" --out DIR --demo   # offline, tiny model
    python -m naturelm_core.detect FILE --prompt TEXT --alpha 1 --out DIR --candidates "Common Loon, Wolf"

A folder is searched recursively for wav, flac, ogg and mp3 files (and FFmpeg formats where FFmpeg
is installed); each recording's exports go to the same relative place under DIR, named
`<stem>.NatureLM.selection.table.txt` and so on (annotations.SUFFIXES).

As in `naturelm_core.infer`, bad input ends with one line on stderr and exit code 2, never a
traceback, and everything that can be checked from the settings and the file headers is checked
before the model loads. In a folder, a recording that cannot be used is named on one line and
skipped; the others are still analysed, and the exit code is 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tqdm import tqdm

from naturelm_core.alphas import GRID_EXAMPLE, parse_alpha_grid
from naturelm_core.annotations import FORMATS, NYQUIST_HZ, check_band, write_exports
from naturelm_core.audio import FFMPEG_ONLY_FORMATS, SOUNDFILE_FORMATS, AudioError, ffmpeg_available
from naturelm_core.config import WINDOW_SECONDS
from naturelm_core.detection import (
    DetectionPlan,
    check_alphas,
    check_detection_settings,
    check_prompt,
    detect,
    plan_detection,
)
from naturelm_core.events import DEFAULT_ABSENT_ANSWERS, DetectionResult, parse_candidates
from naturelm_core.requests import EngineError, GenerationSettings
from naturelm_core.startup import add_model_arguments

if TYPE_CHECKING:
    from naturelm_core.engine import Engine

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m naturelm_core.detect",
        description="Detect with NatureLM-audio over long recordings, window by window, and export the events.",
    )
    parser.add_argument("source", help="a recording, or a folder searched recursively for recordings")
    parser.add_argument("--prompt", required=True, help="question asked of every window")
    parser.add_argument("--alpha", required=True, help=f"one alpha or several: {GRID_EXAMPLE} (1 = NatureLM-audio)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the exports")
    parser.add_argument("--window-s", type=float, default=WINDOW_SECONDS, help="window length, 1-10 s")
    parser.add_argument("--hop-s", type=float, default=WINDOW_SECONDS, help="seconds between window starts, 1-10")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {', '.join(FORMATS)}")
    parser.add_argument(
        "--absent",
        action="append",
        default=None,
        help=f"an answer meaning 'nothing here' (repeat for several; default: {'; '.join(DEFAULT_ABSENT_ANSWERS)})",
    )
    parser.add_argument(
        "--candidates",
        default="",
        help="closed set of labels, comma-separated: each window is scored over them and each event's "
        "confidence is its label's mean probability (empty Confidence without them)",
    )
    parser.add_argument("--low-freq-hz", type=float, default=0.0, help="Raven selections' low frequency")
    parser.add_argument("--high-freq-hz", type=float, default=NYQUIST_HZ, help="Raven selections' high frequency")
    add_model_arguments(parser)
    return parser


def recordings(source: Path) -> list[Path]:
    """The file itself, or every recording under the folder in sorted order; refuses a folder with none."""
    if not source.exists():
        raise FileNotFoundError(f"not found: {source}")
    if source.is_file():
        return [source]
    suffixes = {f".{name}" for name in SOUNDFILE_FORMATS}
    if ffmpeg_available():
        suffixes |= {f".{name}" for name in FFMPEG_ONLY_FORMATS}
    found = sorted(path for path in source.rglob("*") if path.is_file() and path.suffix.lower() in suffixes)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(sorted(s.lstrip('.') for s in suffixes))} recordings in {source}")
    return found


def export_places(source: Path, files: Sequence[Path], out: Path) -> dict[Path, tuple[Path, str]]:
    """(folder, stem) of each recording's exports: its place relative to a source folder, under `out`.

    Two recordings with one stem in one folder (dawn.wav, dawn.flac) would overwrite each other's
    exports, so they are refused up front rather than discovered after hours of analysis.
    """
    places = {path: (out if path == source else out / path.parent.relative_to(source), path.stem) for path in files}
    seen: dict[tuple[Path, str], Path] = {}
    for path, place in places.items():
        if place in seen:
            raise ValueError(f"{seen[place]} and {path} would write the same exports; rename one")
        seen[place] = path
    return places


class Settings(NamedTuple):
    """The run's settings, checked: the same for every recording."""

    prompt: str
    alphas: list[float]
    formats: list[str]
    absent: tuple[str, ...]
    generation: GenerationSettings
    candidates: tuple[str, ...] = ()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = checked_settings(args)
        files = recordings(Path(args.source))
        places = export_places(Path(args.source), files, args.out)
    except (ValueError, OSError) as error:
        return _fail(error)
    named = len(files) > 1
    plans: dict[Path, DetectionPlan] = {}
    for path in files:
        try:
            plans[path] = plan_detection(path, args.window_s, args.hop_s, len(settings.alphas))
        except (AudioError, ValueError) as error:
            _fail(error, path.name if named else None)
    if not plans:
        return EXIT_BAD_INPUT
    engine = _start_engine(args)
    if engine is None:
        return EXIT_BAD_INPUT
    done = 0
    try:
        for path, plan in plans.items():
            folder, stem = places[path]
            try:
                result = _detect_one(engine, path, plan, settings, args)
                write_exports(result, folder, stem, settings.formats, args.low_freq_hz, args.high_freq_hz)
            except (AudioError, ValueError, EngineError, OSError) as error:
                _fail(error, path.name if named else None)
                continue
            print(f"{path}: {len(result.events)} events in {len(result.windows)} answers -> {folder / stem}.*")
            done += 1
    finally:
        engine.stop()
    return 0 if done == len(files) else EXIT_BAD_INPUT


def checked_settings(args: argparse.Namespace) -> Settings:
    """Everything checkable without audio or model: prompt, alphas, window and hop, formats, band, beams."""
    prompt = check_prompt(args.prompt)
    alphas = check_alphas(list(parse_alpha_grid(args.alpha)))
    check_detection_settings(args.window_s, args.hop_s)
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    if not formats or any(name not in FORMATS for name in formats):
        raise ValueError(f"--formats takes some of {', '.join(FORMATS)}, comma-separated; got {args.formats!r}")
    check_band(args.low_freq_hz, args.high_freq_hz)
    absent = tuple(args.absent) if args.absent else DEFAULT_ABSENT_ANSWERS
    candidates = tuple(parse_candidates(args.candidates))
    repeated = sorted({label for label in candidates if candidates.count(label) > 1})
    if repeated:  # the rest (a label too many tokens long) needs the tokenizer: detect() refuses it
        raise ValueError(f"--candidates lists {', '.join(repeated)} twice")
    generation = GenerationSettings(args.num_beams, args.max_new_tokens)
    return Settings(prompt, alphas, formats, absent, generation, candidates)


def _start_engine(args: argparse.Namespace) -> Engine | None:
    """The model (imported only now: bad input was reported before transformers loads) behind an engine."""
    from naturelm_core.engine import Engine, default_batch_rows
    from naturelm_core.loading import ModelLoadError
    from naturelm_core.startup import load_command_line_model

    try:
        model = load_command_line_model(args.model, args.llm, args.device, args.dtype, args.demo, args.audio_precision)
    except (ModelLoadError, ValueError, OSError) as error:
        _fail(error)
        return None
    return Engine(model, max_batch_rows=default_batch_rows(model)).start()


def _detect_one(
    engine: Engine, path: Path, plan: DetectionPlan, settings: Settings, args: argparse.Namespace
) -> DetectionResult:
    """One recording, with a progress bar on stderr and its warnings after it."""
    with tqdm(total=plan.windows, desc=path.name, unit="window", file=sys.stderr, dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = detect(
            engine, path, settings.prompt, settings.alphas, args.window_s, args.hop_s,
            settings=settings.generation, absent=settings.absent, progress=progress, candidates=settings.candidates,
        )  # fmt: skip
    for warning in result.warnings:
        print(f"warning: {path.name}: {warning}", file=sys.stderr)
    return result


def _fail(error: Exception, name: str | None = None) -> int:
    message = " ".join(str(error).split())  # one line, whatever the exception's formatting
    print(f"error: {f'{name}: ' if name else ''}{message}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
