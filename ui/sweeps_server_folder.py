"""Starting a sweep on a folder of recordings already on the server, chosen within `--data-root`.

Widgets and wiring only. Why beside the New sweep form rather than in it: the form's questions, alpha
grid and decoding are reused as they are, and only the data differs (a folder in place instead of
uploads), so `/start_server_sweep` takes the form's fields plus the chosen labels CSV. The service
checks the choice against the root (evaluation.server_data); without the flag the picker says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from evaluation.backend_choice import THIS_MACHINE
from evaluation.server_data import DATA_ROOT_OFF, DataRoot
from evaluation.sweep_forms import SweepForm
from ui.errors import user_facing
from ui.sweeps_new import NewSweep
from ui.sweeps_service import SweepsService
from ui.text import queued_markdown


@dataclass(frozen=True)
class ServerFolder:
    choice: gr.Dropdown
    rescan: gr.Button
    start: gr.Button
    message: gr.Markdown


def server_folder_section(data_root: DataRoot, zero_gpu: bool) -> ServerFolder:
    """A dropdown of the labels CSVs under the root (a typed path is checked too), Rescan and Start."""
    with gr.Accordion("Recordings already on the server", open=data_root.enabled):
        if data_root.enabled:
            gr.Markdown(
                f"Folders of recordings with a labels CSV under `{data_root.root}`; the questions, alphas "
                "and decoding are the New sweep form's."
            )
        else:
            gr.Markdown(DATA_ROOT_OFF, elem_id="sweep-server-off")
        with gr.Row():
            choices = data_root.choices()
            choice = gr.Dropdown(
                choices,
                value=choices[0] if choices else None,
                allow_custom_value=True,
                interactive=data_root.enabled,
                label="Labels CSV (relative to the data root)",
                scale=3,
                elem_id="sweep-server-csv",
            )
            rescan = gr.Button("Rescan", interactive=data_root.enabled, elem_id="sweep-server-rescan")
            start = gr.Button(
                "Start on this folder",
                variant="primary",
                interactive=data_root.enabled and not zero_gpu,
                elem_id="sweep-server-start",
            )
        message = gr.Markdown(elem_id="sweep-server-message")
    return ServerFolder(choice, rescan, start, message)


def wire_server_folder(service: SweepsService, picker: ServerFolder, form: NewSweep, selected: gr.Dropdown) -> Any:
    """Rescan, and Start (`/start_server_sweep`): returns Start's event, so the tab refreshes its choosers."""

    @user_facing
    def start_server_sweep(
        choice: str | None = None, run_on: str = THIS_MACHINE, ray_address: str = "", **fields: Any
    ) -> tuple[str, str]:
        queued = service.start_server_folder(SweepForm.from_widgets(fields), choice, run_on, ray_address)
        return queued.sweep_id, queued_markdown(queued)

    def rescan() -> Any:
        return gr.update(choices=service.data_root.choices())

    picker.rescan.click(rescan, None, picker.choice, api_visibility="private")
    inputs = {**form.fields, "choice": picker.choice, "run_on": form.run_on, "ray_address": form.ray_address}
    return picker.start.click(
        start_server_sweep, inputs_kwargs=inputs, outputs=[selected, picker.message], api_name="start_server_sweep"
    )
