"""Choose the model an app process serves: the real NatureLM-audio when it loads, else the demo.

The fallback is deliberate and loud: a researcher must never mistake the tiny random model's
answers for NatureLM's, so the reason for the fallback travels with the model to the UI banner.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from naturelm_core.config import PUBLISHED_REPO_ID

logger = logging.getLogger(__name__)

DEMO_BANNER = (
    "Offline demo: tiny random model, answers are meaningless. Set HF_TOKEN (with access to "
    "meta-llama/Llama-3.1-8B-Instruct) and run `python app.py` on a machine with a 24 GB GPU "
    "(or `--device cpu` with about 34 GB of RAM) to load NatureLM-audio."
)


@dataclass
class ServedModel:
    model: object
    source: str
    device: str
    dtype: str
    demo: bool
    fallback_reason: str | None = None

    @property
    def header(self) -> str:
        kind = "OFFLINE DEMO (tiny random model)" if self.demo else "NatureLM-audio"
        audio = getattr(self.model, "audio_precision", None)  # the numerics a user publishes: LLM and audio encoder
        encoder = f" · audio encoder {audio}" if audio else ""
        return f"{kind} · {self.source} · {self.device} · {self.dtype}{encoder}"


def demo_checkpoint_dir() -> Path:
    """Where the demo's tiny checkpoint is written once and reused; never inside the repository."""
    base = os.environ.get("NATURELM_DEMO_DIR") or os.path.join(tempfile.gettempdir(), "naturelm-demo")
    return Path(base)


def load_demo_model(reason: str | None = None) -> ServedModel:
    from naturelm_core.loading import load_model
    from naturelm_core.tiny import write_tiny_checkpoint

    folder = demo_checkpoint_dir()
    if not (folder / "model.safetensors").is_file():
        write_tiny_checkpoint(folder, seed=0)
    model = load_model(str(folder), device="cpu")
    model.demo = True
    return ServedModel(model, str(folder), "cpu", "float32", demo=True, fallback_reason=reason)


def load_served_model(
    source: str = PUBLISHED_REPO_ID,
    llm: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    demo: bool = False,
    audio_precision: str | None = None,
) -> ServedModel:
    """The real model when it loads; otherwise the demo, with the reason stated (never a token)."""
    if demo:
        return load_demo_model(reason="--demo was given")
    from naturelm_core.loading import load_model

    try:
        model = load_model(source, llm=llm, device=device, dtype=dtype, audio_precision=audio_precision)
    except Exception as error:  # any failure to load means: say why, then serve the demo
        reason = f"{type(error).__name__}: {error}"
        logger.warning("NatureLM-audio could not be loaded (%s); starting the offline demo", reason)
        return load_demo_model(reason=reason)
    return ServedModel(model, source, str(model.device), str(model.dtype).removeprefix("torch."), demo=False)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every command-line tool that answers with the model takes (read by load_command_line_model)."""
    add_model_source_arguments(parser, "answer with the tiny random model (offline; answers are meaningless)")
    parser.add_argument("--num-beams", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=100)


def add_model_source_arguments(parser: argparse.ArgumentParser, demo_help: str) -> None:
    """Which model to load and how, the same for the app, the command-line tools and headless sweeps:
    --model, --llm, --device, --dtype, --audio-precision and --demo (what the demo does, in `demo_help`)."""
    parser.add_argument("--model", default=PUBLISHED_REPO_ID, help="Hub repo id or checkpoint folder")
    parser.add_argument("--llm", default=None, help="Llama Hub id or folder (default: the checkpoint's llama_path)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="the LLM's (default: bfloat16 on a GPU, else float32)",
    )
    add_audio_precision_argument(parser)
    parser.add_argument("--demo", action="store_true", help=demo_help)


def add_audio_precision_argument(parser: argparse.ArgumentParser) -> None:
    """`--audio-precision`, the same for the app, the command-line tools and headless sweeps."""
    parser.add_argument(
        "--audio-precision",
        default=None,
        choices=["float32", "bfloat16"],
        help="the audio encoder's: default bfloat16 autocast with a bf16 LLM (as upstream), else float32",
    )


def load_command_line_model(
    source: str,
    llm: str | None,
    device: str | None,
    dtype: str | None,
    demo: bool,
    audio_precision: str | None = None,
) -> object:
    """The model a command-line tool answers with: the real one as asked, or with `--demo` the tiny random
    one, its banner written to stderr first so no output is mistaken for NatureLM's. Load errors propagate:
    a tool reports them as its one line of bad input (a command line never falls back silently)."""
    if demo:
        print(f"warning: {DEMO_BANNER}", file=sys.stderr)
        return load_demo_model(reason="--demo was given").model
    from naturelm_core.loading import load_model

    return load_model(source, llm=llm, device=device, dtype=dtype, audio_precision=audio_precision)
