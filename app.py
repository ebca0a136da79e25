"""NatureLM-audio merging explorer: flags, the model, the page's tabs, launch and shutdown.

Model work goes through naturelm_core.engine (one worker owns the model; alpha travels with each
request); the tabs live in ui/ (ui.explore_tab, ui.sweeps_tab), and sweeps run in evaluation.sweep's
queue on that same engine. Run `python app.py --help` for the flags.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # analytics must be off before gradio is imported

from evaluation.backend_choice import SweepBackends
from evaluation.server_data import DataRoot
from evaluation.sweep import SweepQueue
from naturelm_core.engine import Engine, default_batch_rows
from naturelm_core.startup import DEMO_BANNER, ServedModel, add_model_source_arguments, load_served_model
from ui.explore_tab import explore_tab
from ui.sweeps_service import SweepsService
from ui.sweeps_tab import sweeps_tab
from ui.text import demo_banner_markdown, header_markdown
from ui.zero_gpu import zero_gpu

logger = logging.getLogger("naturelm_app")

MAX_UPLOAD = "200mb"


def create_engine(model: Any) -> Engine:
    """The process's one engine; on ZeroGPU it runs in the callers' (GPU-decorated) threads."""
    return Engine(model, max_batch_rows=default_batch_rows(model), inline=zero_gpu() is not None)


def build_app(
    served: ServedModel, engine: Engine, sweeps: SweepQueue | None = None, data_root: Path | None = None
) -> gr.Blocks:
    """The Blocks app; handlers close over this process's one engine, and sweeps queue on that same engine.

    `data_root` is the one folder whose recordings the Sweeps tab may choose on the server (None: off).
    """
    sweeps = sweeps if sweeps is not None else SweepQueue(engine)
    backends = SweepBackends(
        sweeps,
        source=served.source,
        dtype=served.dtype,
        demo=served.demo,
        audio_precision=getattr(served.model, "audio_precision", None),
        on_progress=sweeps.on_progress,
    )
    with gr.Blocks(title="NatureLM-audio merging explorer") as app:
        gr.Markdown(header_markdown(served), elem_id="model-header")
        if served.demo:
            gr.Markdown(demo_banner_markdown(served), elem_id="demo-banner")
        explore_tab(engine)
        sweeps_tab(SweepsService(backends, zero_gpu=zero_gpu() is not None, data_root=DataRoot(data_root)))
    app.sweep_backends = backends  # main() ends a Ray pool the Sweeps tab started
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_source_arguments(parser, "serve the tiny random model (offline demo)")
    parser.add_argument("--host", default=None, help="default: Gradio's (GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="default: Gradio's (GRADIO_SERVER_PORT or 7860)")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="where sweeps are kept (default: $NATURELM_RUNS_DIR, /data/runs or runs/)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="let the Sweeps tab choose folders of recordings + labels CSV already on the server, inside DIR only",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    served = load_served_model(
        args.model,
        llm=args.llm,
        device=args.device,
        dtype=args.dtype,
        demo=args.demo,
        audio_precision=args.audio_precision,
    )
    if served.demo:
        logger.warning("%s (reason: %s)", DEMO_BANNER, served.fallback_reason)
    engine = create_engine(served.model)
    sweeps = SweepQueue(engine, args.runs_dir)
    app = build_app(served, engine, sweeps, data_root=args.data_root)
    try:
        app.queue(default_concurrency_limit=16).launch(
            server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True
        )
    finally:
        app.sweep_backends.stop()  # a Ray sweep stops after its batch in flight, and the pool's actors end
        sweeps.close()  # the running sweep stops after its batch in flight; resume it on the next start


if __name__ == "__main__":
    main()
