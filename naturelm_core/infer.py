"""Command line: one recording, one prompt, one alpha -> an answer per window, with its time span.

    python -m naturelm_core.infer --audio FILE --prompt TEXT --alpha 0.5 [--model SRC] [--llm SRC] [--device cpu]
    python -m naturelm_core.infer --audio FILE --prompt TEXT --alpha 0.5 --demo   # offline: the tiny random model
    python -m naturelm_core.infer ... --candidates "Humpback Whale, Walrus" [--score-only]

With --candidates, each window's answer line is followed by one line per candidate, most probable
first: two spaces, P(label | one of the candidates) to 4 decimals, a tab, the label. --score-only
prints the window's span alone, then its candidates, without generating. Without --candidates the
output is one line per window, as always.

Bad input (unreadable audio, an alpha out of range, a checkpoint that does not load) ends with one
line on stderr and exit code 2, never a traceback: the user can act on the line, not on a stack.
The settings and the recording are checked first (neither needs peft nor transformers, so a bad
file fails in seconds), then the alpha, and only then is the model loaded, which can take minutes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from naturelm_core.audio import AudioError, Window, load_recording, windows
from naturelm_core.config import WINDOW_SECONDS
from naturelm_core.events import parse_candidates
from naturelm_core.startup import add_model_arguments

if TYPE_CHECKING:
    from naturelm_core.model import NatureLM

EXIT_BAD_INPUT = 2
# Windows per generate call: bounds memory for long recordings while still batching.
WINDOWS_PER_BATCH = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m naturelm_core.infer",
        description="Ask NatureLM-audio about a recording, window by window, at a LoRA interpolation weight alpha.",
    )
    parser.add_argument("--audio", required=True, help="recording to analyse (wav, flac, ogg, mp3)")
    parser.add_argument("--prompt", required=True, help="question or instruction, e.g. 'What is the common name ...?'")
    parser.add_argument("--alpha", required=True, type=float, help="0 = base Llama, 1 = NatureLM-audio")
    add_model_arguments(parser)
    parser.add_argument("--window-s", type=float, default=WINDOW_SECONDS, help="window length in seconds")
    parser.add_argument("--hop-s", type=float, default=WINDOW_SECONDS, help="seconds between window starts")
    parser.add_argument("--candidates", default="", help="closed set of labels, comma-separated, to score")
    parser.add_argument("--score-only", action="store_true", help="with --candidates: score them, answer nothing")
    return parser


def format_answer(window: Window, answer: str) -> str:
    """One line per window, so the output stays greppable: runs of whitespace (newlines too) become one space."""
    return f"[{window.start_s:.1f} s - {window.end_s:.1f} s] {' '.join(answer.split())}"


def format_candidate(label: str, probability: float) -> str:
    """One candidate under its window, indented: a grep for lines starting with '[' still finds the answers alone."""
    return f"  {probability:.4f}\t{label}"


def checked_candidates(args: argparse.Namespace) -> list[str]:
    """The candidate labels, with what can be refused before the model loads (repeats, --score-only alone)."""
    labels = parse_candidates(args.candidates)
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"--candidates lists {', '.join(repeated)} twice")
    if args.score_only and not labels:
        raise ValueError("--score-only needs --candidates: the labels to score")
    return labels


def checked_windows(args: argparse.Namespace) -> list[Window]:
    """Everything that can be checked without the model: the settings, the recording, the alpha."""
    if args.num_beams < 1 or args.max_new_tokens < 1:
        raise ValueError("--num-beams and --max-new-tokens must be at least 1")
    if args.window_s > WINDOW_SECONDS:
        raise ValueError(f"--window-s must be at most {WINDOW_SECONDS:g} s, the model's window; got {args.window_s:g}")
    recording = load_recording(args.audio)
    for warning in recording.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    pieces = windows(recording.waveform, window_s=args.window_s, hop_s=args.hop_s)
    # Imported late: naturelm_core.alpha pulls in peft and transformers, seconds a bad file need not wait.
    from naturelm_core.alphas import validate_alphas

    validate_alphas(args.alpha, 1)
    return pieces


def answer_windows(model: NatureLM, pieces: list[Window], args: argparse.Namespace, labels: Sequence[str] = ()) -> None:
    """Print each window's answer (and its candidates' probabilities, when labels are given) as its batch is done."""
    candidates = model.label_candidates(list(labels)) if labels else None  # tokenized once; LabelError here
    for start in range(0, len(pieces), WINDOWS_PER_BATCH):
        batch = pieces[start : start + WINDOWS_PER_BATCH]
        samples = [window.samples for window in batch]
        if args.score_only:
            answers = [""] * len(batch)
        else:
            answers = model.generate(
                samples, args.prompt, args.alpha, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens
            )
        scores = model.score_labels(samples, args.prompt, candidates, args.alpha) if candidates else [None] * len(batch)
        for window, answer, scored in zip(batch, answers, scores, strict=True):
            line = format_answer(window, answer)
            print(line.rstrip() if args.score_only else line, flush=True)
            if scored is not None:
                ranked = sorted(scored.probabilities.items(), key=lambda item: -item[1])
                print("\n".join(format_candidate(label, p) for label, p in ranked), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        labels = checked_candidates(args)
        pieces = checked_windows(args)
    except (AudioError, ValueError) as error:
        return _fail(error)
    # Imported only now, so that bad input is reported before transformers and the model load.
    from naturelm_core.loading import ModelLoadError
    from naturelm_core.startup import load_command_line_model

    try:
        model = load_command_line_model(args.model, args.llm, args.device, args.dtype, args.demo, args.audio_precision)
        answer_windows(model, pieces, args, labels)
    except (ModelLoadError, AudioError, ValueError, TypeError) as error:
        return _fail(error)
    return 0


def _fail(error: Exception) -> int:
    message = " ".join(str(error).split())  # one line, whatever the exception's formatting
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
