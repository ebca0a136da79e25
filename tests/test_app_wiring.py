"""The app's wiring without a server: how failures reach the user, one look at the runs folder per refresh,
the New sweep form's widgets checked against SweepForm, and the Explore presets' prompts."""

from __future__ import annotations

import logging

import pytest

gr = pytest.importorskip("gradio")

import ui.sweeps_service  # noqa: E402  (after the importorskip)
from app import build_app  # noqa: E402
from evaluation.backend_choice import SweepBackends  # noqa: E402
from evaluation.prompts import PAPER_PROMPTS, SPECIES_LIST_FIELD  # noqa: E402
from evaluation.sweep import SweepQueue, SweepSpec, SweepState, SweepStatus, prepare_folder  # noqa: E402
from naturelm_core.alphas import AlphaError  # noqa: E402
from naturelm_core.engine import Engine  # noqa: E402
from naturelm_core.startup import ServedModel  # noqa: E402
from tests.sweep_helpers import spec_dict, write_sweep_data  # noqa: E402
from ui.errors import user_facing  # noqa: E402
from ui.explore_tab import build_prompt  # noqa: E402
from ui.sweeps_new import NewSweep  # noqa: E402

LOGGER = "naturelm_app"


@pytest.fixture
def built(tiny_model, tiny_checkpoint, tmp_path):
    """(Blocks, runs dir) of an app that is built but not served: handlers are called directly."""
    engine = Engine(tiny_model, max_batch_rows=8, sweep_wait_ms=5)
    runs_dir = tmp_path / "runs"
    served = ServedModel(tiny_model, str(tiny_checkpoint), "cpu", "float32", demo=True, fallback_reason="tests")
    try:
        yield build_app(served, engine, SweepQueue(engine, runs_dir)), runs_dir
    finally:
        engine.stop()


def _endpoint(blocks, api_name: str):
    return next(fn for fn in blocks.fns.values() if fn.api_name == api_name)


def _app_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


def test_a_users_mistake_is_one_toast_and_one_log_line_without_a_traceback(caplog):
    @user_facing
    def scan(alphas: str) -> None:
        raise AlphaError("alpha is 1.5; it must lie in [0, 1]")

    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(gr.Error, match=r"alpha is 1.5; it must lie in \[0, 1\]"):
        scan("1.5")
    [record] = _app_records(caplog)
    assert record.exc_info is None and "must lie in" in record.getMessage()


def test_a_bug_is_logged_with_its_traceback_and_shown_as_an_unexpected_error(caplog):
    @user_facing
    def scan(alphas: str) -> None:
        return len(alphas) + "1"  # a TypeError: a bug, not advice for the user

    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(gr.Error, match=r"Unexpected error \(TypeError\)") as caught:
        scan("0, 1")
    assert "unsupported operand" not in str(caught.value)
    [record] = _app_records(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None and record.exc_info[0] is TypeError


def test_the_tabs_handlers_report_mistakes_and_bugs_apart(built, monkeypatch, caplog):
    blocks, _ = built
    cancel = _endpoint(blocks, "cancel_sweep").fn
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(gr.Error, match="Select a sweep to cancel"):
        cancel(None)
    assert [record.exc_info for record in _app_records(caplog)] == [None]

    caplog.clear()
    monkeypatch.setattr(SweepBackends, "cancel", lambda self, key: None + 1)
    with pytest.raises(gr.Error, match="Unexpected error"):
        cancel("some-sweep")
    [record] = _app_records(caplog)
    assert record.exc_info is not None and "cancel_sweep" in record.getMessage()


def test_one_refresh_lists_the_runs_folder_once_and_sends_only_what_changed(built, tmp_path, monkeypatch):
    blocks, runs_dir = built
    write_sweep_data(tmp_path / "data")
    spec = SweepSpec.from_dict(spec_dict(tmp_path / "data"))
    prepare_folder(runs_dir, spec).write_status(
        SweepStatus(spec.sweep_id, spec.name, SweepState.COMPLETE, total=spec.items_per_sample * 12)
    )
    scans: list[str] = []
    listing = ui.sweeps_service.list_sweeps
    monkeypatch.setattr(ui.sweeps_service, "list_sweeps", lambda folder: scans.append(folder) or listing(folder))

    timers = {block._id for block in blocks.blocks.values() if isinstance(block, gr.Timer)}
    [refresh] = [fn for fn in blocks.fns.values() if any(t in timers and event == "tick" for t, event in fn.targets)]
    values = {component: component.value for component in refresh.inputs}
    selected = next(c for c in refresh.inputs if getattr(c, "elem_id", None) == "sweep-selected")
    seen = next(c for c in refresh.inputs if isinstance(c, gr.State))
    values[selected] = spec.sweep_id

    first = refresh.fn(values)
    assert len(scans) == 1
    shown = {getattr(component, "elem_id", None) for component in first}
    assert {"sweeps-table", "sweep-progress", "sweep-accuracy", "sweep-presets-table"} <= shown
    assert spec.name in first[next(c for c in first if getattr(c, "elem_id", None) == "sweep-progress")]

    values[seen] = first[seen]
    second = refresh.fn(values)
    assert len(scans) == 2
    assert list(second) == [seen]  # nothing changed on disk: nothing is redrawn


def test_the_new_sweep_form_refuses_widgets_that_are_not_its_fields():
    with gr.Blocks(), pytest.raises(TypeError, match="SweepForm"):
        NewSweep({"nmae": gr.Textbox()}, gr.Radio(), gr.Textbox(), gr.Button(), gr.Markdown())


def test_a_closed_set_preset_lists_the_typed_species_as_a_sweep_asks():
    closed = next(name for name, prompt in PAPER_PROMPTS.items() if prompt.needs_species_list)
    text = build_prompt(closed, " Walrus, Bearded Seal ,, Killer Whale")
    assert "{" + SPECIES_LIST_FIELD + "}" not in text
    listed = text.split(": ")[-1]
    assert sorted(listed.split(", ")) == ["Bearded Seal", "Killer Whale", "Walrus"]
    assert build_prompt("common", "ignored") == PAPER_PROMPTS["common"].template
