"""The Sweeps tab's Export and import panel: a sweep as CSV, JSON or the paper's layout, and paper folders in.

Widgets and wiring only; the files are written and kept by the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.errors import user_facing
from ui.sweeps_runs import Runs
from ui.sweeps_service import SweepsService
from ui.text import imported_markdown

EXPORTS = (("csv", "Export CSV"), ("json", "Export JSON"), ("paper", "Export paper layout (zip)"))


@dataclass(frozen=True)
class Files:
    export_buttons: dict[str, gr.Button]
    export_file: gr.File
    import_files: gr.File
    import_name: gr.Textbox
    import_button: gr.Button


def files_section() -> Files:
    with gr.Accordion("Export and import", open=False):
        with gr.Row():
            buttons = {fmt: gr.Button(label, elem_id=f"sweep-export-{fmt}") for fmt, label in EXPORTS}
        export_file = gr.File(label="Download", interactive=False, elem_id="sweep-export-file")
        with gr.Row():
            import_files = gr.File(
                label="Paper-layout files: beans_zero_eval_*.jsonl (+ prompt_names.json, mappings) or a zip",
                file_count="multiple",
                type="filepath",
                elem_id="sweep-import-files",
            )
            import_name = gr.Textbox(value="imported", label="Name", elem_id="sweep-import-name")
            import_button = gr.Button("Import", elem_id="sweep-import")
    return Files(buttons, export_file, import_files, import_name, import_button)


def _exporter(service: SweepsService, fmt: str) -> Callable[[str | None, str], str]:
    def export(key: str | None, mode: str) -> str:
        return str(service.export(key, mode, fmt))

    export.__name__ = f"export_{fmt}"
    return user_facing(export)


def wire_files(service: SweepsService, panel: Files, runs: Runs, message: gr.Markdown) -> Any:
    """`/export_csv`, `/export_json`, `/export_paper` of the selected sweep, and `/import_paper`.

    Returns the import's event, so the tab can refresh its sweep choosers after it.
    """

    @user_facing
    def import_paper(files: list[str] | None, name: str) -> tuple[str, str]:
        key = service.import_uploads(files, name)
        return key, imported_markdown(key)

    for fmt, button in panel.export_buttons.items():
        button.click(
            _exporter(service, fmt), [runs.selected, runs.view_mode], panel.export_file, api_name=f"export_{fmt}"
        )
    return panel.import_button.click(
        import_paper, [panel.import_files, panel.import_name], [runs.selected, message], api_name="import_paper"
    )
