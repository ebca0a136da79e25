"""NatureLM-audio merging explorer: the Gradio UI. It builds the tabs and wires events, nothing more.

Model work goes through naturelm_core.engine (one worker owns the model; alpha travels with each
request); explore logic lives in naturelm_core.explore, figures in evaluation.plots.
Run `python app.py --help` for the flags.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # analytics must be off before gradio is imported
import pandas as pd

from evaluation.plots import alpha_scan_figure, spectrogram_figure
from evaluation.prompts import PAPER_PROMPTS, SPECIES_LIST_FIELD
from naturelm_core.audio import AudioError, describe_audio, load_audio
from naturelm_core.config import PUBLISHED_REPO_ID
from naturelm_core.engine import Engine, EngineError, GenerationSettings
from naturelm_core.explore import (
    DEFAULT_ALPHA_GRID,
    ScanRow,
    WindowAnswer,
    answer_recording,
    format_answers,
    parse_alpha_grid,
    scan_summary,
)
from naturelm_core.startup import DEMO_BANNER, ServedModel, load_served_model

logger = logging.getLogger("naturelm_app")

ALPHA_LABEL = "alpha (0 = Llama-3.1-8B-Instruct, 1 = NatureLM-audio)"
DEFAULT_SPECIES = "Humpback Whale, Killer Whale, Bearded Seal, Walrus"
MAX_UPLOAD = "200mb"


def _user_facing(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every expected failure into a gr.Error with its message: the user sees a sentence, not a trace."""

    @functools.wraps(handler)
    def wrapped(*args: Any) -> Any:
        try:
            return handler(*args)
        except (AudioError, EngineError, ValueError, TypeError) as error:
            raise gr.Error(str(error)) from None
        except TimeoutError:
            raise gr.Error("The model took too long to answer; try again or lower max new tokens.") from None
        except Exception as error:
            logger.exception("unexpected failure in %s", handler.__name__)
            raise gr.Error(f"Unexpected error ({type(error).__name__}); the app is still running.") from None

    return wrapped


def _zero_gpu() -> Any:
    """The `spaces` package on Hugging Face ZeroGPU hardware, else None."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces


def _on_gpu(handler: Callable[..., Any]) -> Callable[..., Any]:
    """On ZeroGPU, model work must run inside a @spaces.GPU call of the request's own thread."""
    spaces = _zero_gpu()
    return spaces.GPU(handler) if spaces is not None else handler


def _recording(audio_path: str | None) -> Any:
    if not audio_path:
        raise ValueError("No recording: upload a file or record with the microphone first.")
    waveform, _ = load_audio(audio_path)
    return waveform


def build_prompt(preset: str, species: str) -> str:
    """The preset's text, with an editable species list filled into closed-set presets."""
    template = PAPER_PROMPTS[preset].template
    if "{" + SPECIES_LIST_FIELD + "}" in template:
        names = [s.strip() for s in species.split(",") if s.strip()]
        return template.replace("{" + SPECIES_LIST_FIELD + "}", ", ".join(names))
    return template


def create_engine(model: Any) -> Engine:
    """The process's one engine; on ZeroGPU it runs in the callers' (GPU-decorated) threads."""
    return Engine(model, inline=_zero_gpu() is not None)


def build_app(served: ServedModel, engine: Engine) -> gr.Blocks:
    """The Blocks app; handlers close over this process's one engine."""

    @_user_facing
    def describe(audio_path: str | None) -> tuple[str, Any]:
        if not audio_path:
            return "", None
        info = describe_audio(audio_path)
        waveform, duration_s = load_audio(audio_path)  # decoded length; mp3 headers can overstate it
        text = (
            f"**{info['format']}**, {duration_s:.2f} s, {info['sample_rate']} Hz, "
            f"{info['channels']} channel(s); the model hears it as 16 kHz mono"
        )
        return text, spectrogram_figure(waveform)

    @_user_facing
    @_on_gpu
    def explore(
        audio_path: str | None, prompt: str, alpha: float, num_beams: int = 2, max_new_tokens: int = 100
    ) -> str:
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        [row] = answer_recording(engine, _recording(audio_path), prompt, [float(alpha)], settings)
        return row.text

    @_user_facing
    @_on_gpu
    def alpha_scan(
        audio_path: str | None, prompt: str, alphas: str, num_beams: int = 2, max_new_tokens: int = 100
    ) -> pd.DataFrame:
        settings = GenerationSettings(num_beams=int(num_beams), max_new_tokens=int(max_new_tokens))
        rows = answer_recording(engine, _recording(audio_path), prompt, parse_alpha_grid(alphas), settings)
        return pd.DataFrame({"alpha": [r.alpha for r in rows], "answer": [format_answers(r.answers) for r in rows]})

    @_user_facing
    def scan_chart(table: pd.DataFrame, expected_label: str) -> Any:
        if table is None or len(table) == 0:
            return None
        rows = [
            ScanRow(float(a), (WindowAnswer(0.0, 0.0, str(t)),))
            for a, t in zip(table["alpha"], table["answer"], strict=True)
        ]
        return alpha_scan_figure(scan_summary(rows, expected_label or None))

    with gr.Blocks(title="NatureLM-audio merging explorer") as app:
        gr.Markdown(f"# NatureLM-audio merging explorer\n**Model:** {served.header}", elem_id="model-header")
        if served.demo:
            reason = f"\n\n_Why: {served.fallback_reason}_" if served.fallback_reason else ""
            gr.Markdown(f"⚠️ **{DEMO_BANNER}**{reason}", elem_id="demo-banner")
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column():
                    audio = gr.Audio(
                        sources=["upload", "microphone"], type="filepath", label="Recording", elem_id="audio-input"
                    )
                    audio_info = gr.Markdown(elem_id="audio-info")
                    spectrogram = gr.Plot(label="Spectrogram")
                with gr.Column():
                    preset = gr.Dropdown(
                        choices=list(PAPER_PROMPTS), value="common", label="Prompt preset (from the paper)"
                    )
                    species = gr.Textbox(value=DEFAULT_SPECIES, label="Species list (closed-set presets)")
                    prompt = gr.Textbox(
                        value=PAPER_PROMPTS["common"].template, label="Prompt", lines=3, elem_id="prompt"
                    )
                    alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=ALPHA_LABEL, elem_id="alpha")
                    with gr.Accordion("Generation settings", open=False):
                        num_beams = gr.Slider(1, 8, value=2, step=1, label="beams")
                        max_new_tokens = gr.Slider(1, 300, value=100, step=1, label="max new tokens")
                    run = gr.Button("Run", variant="primary", elem_id="run")
                    answer = gr.Textbox(label="Answer (per 10 s window for long recordings)", lines=4, elem_id="answer")
            with gr.Accordion("Alpha scan: one recording and prompt across alphas, one batched call", open=True):
                with gr.Row():
                    alphas = gr.Textbox(value=", ".join(f"{a:g}" for a in DEFAULT_ALPHA_GRID), label="alphas")
                    expected = gr.Textbox(label="Expected label (optional, for the similarity curve)")
                    scan = gr.Button("Scan alphas", elem_id="scan")
                scan_table = gr.Dataframe(headers=["alpha", "answer"], label="Answers by alpha", wrap=True)
                scan_plot = gr.Plot(label="Answers vs alpha")

        audio.change(describe, audio, [audio_info, spectrogram], api_visibility="private")
        preset.change(build_prompt, [preset, species], prompt, api_visibility="private")
        species.submit(build_prompt, [preset, species], prompt, api_visibility="private")
        run.click(explore, [audio, prompt, alpha, num_beams, max_new_tokens], answer, api_name="explore")
        scan.click(
            alpha_scan, [audio, prompt, alphas, num_beams, max_new_tokens], scan_table, api_name="alpha_scan"
        ).then(scan_chart, [scan_table, expected], scan_plot, api_visibility="private")
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=PUBLISHED_REPO_ID, help="Hub repo id or folder with config.json")
    parser.add_argument("--llm", default=None, help="Llama override: Hub id or folder (default: from config)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bf16 on GPU")
    parser.add_argument("--demo", action="store_true", help="serve the tiny random model (offline demo)")
    parser.add_argument("--host", default=None, help="default: Gradio's (GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="default: Gradio's (GRADIO_SERVER_PORT or 7860)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    served = load_served_model(args.model, llm=args.llm, device=args.device, dtype=args.dtype, demo=args.demo)
    if served.demo:
        logger.warning("%s (reason: %s)", DEMO_BANNER, served.fallback_reason)
    app = build_app(served, create_engine(served.model))
    app.queue(default_concurrency_limit=16).launch(
        server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True
    )


if __name__ == "__main__":
    main()
