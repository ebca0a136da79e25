"""The Sweeps tab end to end through gradio_client: start, watch, cancel, resume, figures, export, import.

The app serves the tiny model through a paced wrapper (each batch takes a few tenths of a second
longer), so a sweep of a few dozen items runs long enough to watch its progress, to cancel it half
way and to ask the Explore tab something in the middle. Expected figure values are recomputed here
from the results file on disk with the scoring module, so the test checks that the tab shows what
the sweep wrote, not just that a figure came back.
"""

from __future__ import annotations

import json
import sys
import time
import types
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

gradio_client = pytest.importorskip("gradio_client")

import app as app_module  # noqa: E402  (after the importorskip)
from evaluation.prompts import PAPER_PROMPTS  # noqa: E402
from evaluation.results import read_results  # noqa: E402
from evaluation.scoring import score_rows  # noqa: E402
from evaluation.sweep import SweepFolder, SweepQueue  # noqa: E402
from naturelm_core.audio import load_audio  # noqa: E402
from naturelm_core.startup import ServedModel  # noqa: E402
from tests.app_launch import free_port  # noqa: E402
from tests.conftest import PacedModel  # noqa: E402
from tests.sweep_helpers import write_sweep_data  # noqa: E402
from ui.sweep_display import ALL  # noqa: E402

PROMPTS = ["common", "scientific", "combined"]
ALPHAS = [0.0, 1.0]
SAMPLES = 6  # 3 prompts x 2 alphas x 6 samples = 36 items, one engine batch of 6 rows per sample
ITEMS = len(PROMPTS) * len(ALPHAS) * SAMPLES
BATCH_PAUSE_S = 0.3
EXPLORE_PROMPT = "What is the common name for the focal species in the audio?"
MODE = "official"
POLL_S = 0.1
TIMEOUT_S = 60.0
BROWSER_TIMEOUT_MS = 20_000
CHROMIUM = Path("/usr/bin/chromium")


def _form(**fields) -> dict:
    """Every field of /start_sweep (gradio_client needs them all), with the test's small settings by default."""
    return {
        "name": "tab sweep",
        "source": "parquet",
        "subsets": ["watkins"],
        "local_path": "",
        "labels_csv": None,
        "recordings": None,
        "recordings_name": "",
        "presets": PROMPTS,
        "custom_prompts": "",
        "alphas": ", ".join(f"{a:g}" for a in ALPHAS),
        "recipes": "",
        "limit": SAMPLES,
        "top_k_classes": 0,
        "seed": 0,
        "num_beams": 1,
        "max_new_tokens": 6,
        "scoring_mode": MODE,
        "mapping_file": None,
        **fields,
    }


def _launch(blocks) -> None:
    blocks.queue(default_concurrency_limit=16).launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(folder)
    return folder


@pytest.fixture(scope="module")
def served(tiny_model, launch_app):
    """The app with its own runs folder: (client, runs dir, paced model, url)."""
    paced = PacedModel(tiny_model, BATCH_PAUSE_S)
    app = launch_app(paced, max_batch_rows=6)
    return app.client(), app.runs_dir, paced, app.url


@pytest.fixture(scope="module")
def client(served):
    return served[0]


@pytest.fixture(scope="module")
def runs_dir(served) -> Path:
    return served[1]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> str:
    t = np.arange(16000 * 2) / 16000
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 660 * t), 16000)
    return str(path)


def _start(client, data_dir: Path, name: str, limit: int = SAMPLES) -> tuple[str, str]:
    return client.predict(**_form(name=name, local_path=str(data_dir), limit=limit), api_name="/start_sweep")


def _status_row(client, sweep_id: str) -> dict:
    table = client.predict(api_name="/sweep_status")
    rows = [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]
    return next(row for row in rows if row["sweep"] == sweep_id)


def _poll_until(client, sweep_id: str, states: set[str], on_row=None) -> list[dict]:
    """Every status row seen until the sweep reaches one of `states`."""
    seen = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        row = _status_row(client, sweep_id)
        seen.append(row)
        if on_row is not None:
            on_row(row)
        if row["state"] in states:
            return seen
        time.sleep(POLL_S)
    raise AssertionError(f"{sweep_id} did not reach {states}; last status {seen[-1]}")


def _plot(value: dict) -> dict:
    assert value["type"] == "plotly"
    return json.loads(value["plot"])


def _traces_by_prompt(figure: dict) -> dict[str, dict]:
    return {trace["meta"]["prompt"]: trace for trace in figure["data"]}


def _figures(client, key: str, dataset: str = ALL, prompt: str = ALL, correct: str = ALL, mode: str = MODE):
    progress, accuracy, f1, tradeoff, breakdown, answers, *_ = client.predict(
        key, dataset, prompt, correct, mode, api_name="/sweep_figures"
    )
    return progress, _plot(accuracy), _plot(f1), _plot(tradeoff), _plot(breakdown), answers


def _scores_on_disk(runs_dir: Path, sweep_id: str):
    """(rows, {(prompt, alpha): GroupScore}) straight from results.jsonl, as an independent reference."""
    rows = list(read_results(SweepFolder(runs_dir, sweep_id).results_path))
    with pytest.warns(UserWarning):  # scientific and combined prompts without a mapping
        scores = score_rows(rows, MODE)
    return rows, {(score.prompt_name, score.alpha): score for score in scores}


@pytest.fixture(scope="module")
def finished_sweep(client, data_dir, tiny_model, recording):
    """Start a sweep from the tab, poll its status to the end, and ask Explore something while it runs."""
    sweep_id, message = _start(client, data_dir, "tab sweep")
    explored: dict = {}

    def explore_once_running(row: dict) -> None:
        if row["state"] == "running" and not explored:
            answer = client.predict(
                gradio_client.handle_file(recording), EXPLORE_PROMPT, 0.5, 1, 6, api_name="/explore"
            )
            explored.update(answer=answer, at=time.time(), status_after=_status_row(client, sweep_id))

    seen = _poll_until(client, sweep_id, {"complete", "failed"}, explore_once_running)
    return sweep_id, message, seen, explored


def test_a_started_sweep_shows_moving_progress_and_completes(client, runs_dir, finished_sweep):
    sweep_id, message, seen, _ = finished_sweep
    assert f"{ITEMS} items" in message
    done = [row["done"] for row in seen]
    assert done == sorted(done), "progress went backwards"
    assert any(0 < d < ITEMS for d in done), f"never saw the sweep part-way: {done}"
    assert {row["total"] for row in seen if row["state"] == "running"} == {ITEMS}
    assert any(row["rate"] != "-" and row["ETA"] != "-" for row in seen if 0 < row["done"] < ITEMS)
    final = seen[-1]
    assert (final["state"], final["done"], final["total"], final["progress"]) == ("complete", ITEMS, ITEMS, "100%")
    assert len(list(read_results(SweepFolder(runs_dir, sweep_id).results_path))) == ITEMS


def test_explore_is_answered_while_a_sweep_runs(tiny_model, recording, finished_sweep, runs_dir):
    sweep_id, _, _, explored = finished_sweep
    waveform, _ = load_audio(recording)
    [direct] = tiny_model.generate([waveform], [EXPLORE_PROMPT], [0.5], num_beams=1, max_new_tokens=6)
    assert explored["answer"] == direct
    assert explored["status_after"]["state"] == "running" and explored["status_after"]["done"] < ITEMS
    assert explored["at"] < SweepFolder(runs_dir, sweep_id).read_status().finished_at


def test_figures_show_the_scores_of_the_results_on_disk(client, runs_dir, finished_sweep):
    sweep_id = finished_sweep[0]
    rows, scores = _scores_on_disk(runs_dir, sweep_id)
    progress, accuracy, f1, tradeoff, breakdown, answers = _figures(client, sweep_id)
    assert "complete" in progress and f"{ITEMS}/{ITEMS} items" in progress

    for figure, metric in ((accuracy, "accuracy"), (f1, "f1_weighted")):
        traces = _traces_by_prompt(figure)
        assert sorted(traces) == sorted(PROMPTS)
        for prompt, trace in traces.items():
            assert trace["x"] == ALPHAS
            assert trace["y"] == pytest.approx([getattr(scores[(prompt, a)].metrics, metric) for a in ALPHAS])
            assert trace["customdata"] == [SAMPLES] * len(ALPHAS)
    accuracies = {key: score.metrics.accuracy for key, score in scores.items()}

    [curve] = tradeoff["data"]
    assert curve["text"] == ["0", "1"]
    assert curve["x"] == pytest.approx(
        [(accuracies[("common", a)] + accuracies[("scientific", a)]) / 2 for a in ALPHAS]
    )
    assert curve["y"] == pytest.approx([accuracies[("combined", a)] for a in ALPHAS])

    shares = np.array([trace["y"] for trace in breakdown["data"]])
    np.testing.assert_allclose(shares.sum(axis=0), 1.0)
    correct = next(trace for trace in breakdown["data"] if trace["meta"]["outcome"] == "correct")
    assert correct["y"] == pytest.approx([accuracies[("combined", a)] for a in ALPHAS])  # first prompt by name

    table = pd.DataFrame(answers["data"], columns=answers["headers"])
    assert len(table) == SAMPLES * len(PROMPTS)
    predictions = {(row.id, row.prompt_name, row.alpha): row.prediction for row in rows}
    for record in table.to_dict("records"):
        for alpha in ALPHAS:
            cell = record[f"α={alpha:g}"]  # short headers: the table fits without wrapping them
            assert cell[0] in "✓✗" and cell[2:] == predictions[(record["id"], record["prompt"], alpha)]


def test_answer_filters_and_the_breakdown_follow_the_chosen_prompt(client, runs_dir, finished_sweep):
    sweep_id = finished_sweep[0]
    _, scores = _scores_on_disk(runs_dir, sweep_id)
    *_, breakdown, answers = _figures(client, sweep_id, "watkins", "common", "never")
    correct = next(trace for trace in breakdown["data"] if trace["meta"]["outcome"] == "correct")
    assert correct["y"] == pytest.approx([scores[("common", a)].metrics.accuracy for a in ALPHAS])
    hits = Counter(
        answer.id
        for (prompt, _), score in scores.items()
        if prompt == "common"
        for answer in score.answers
        if answer.outcome.value == "correct"
    )
    table = pd.DataFrame(answers["data"], columns=answers["headers"])
    assert set(table["prompt"]) <= {"common"}
    assert len(table) == SAMPLES - len(hits) and not set(table["id"]) & set(hits)


def test_export_csv_holds_every_answer_with_its_outcome(client, runs_dir, finished_sweep):
    sweep_id = finished_sweep[0]
    rows, scores = _scores_on_disk(runs_dir, sweep_id)
    exported = pd.read_csv(client.predict(sweep_id, MODE, api_name="/export_csv"), keep_default_na=False)
    assert len(exported) == ITEMS
    as_exported = {
        (r["id"], r["prompt_name"], float(r["alpha"])): (r["prediction"], r["outcome"])
        for r in exported.to_dict("records")
    }
    outcomes = {(a.id, s.prompt_name, s.alpha): a.outcome.value for s in scores.values() for a in s.answers}
    assert as_exported == {
        (r.id, r.prompt_name, r.alpha): (r.prediction, outcomes[(r.id, r.prompt_name, r.alpha)]) for r in rows
    }


def test_a_paper_layout_import_gives_the_same_figures_and_overlays(client, runs_dir, finished_sweep, tmp_path):
    sweep_id = finished_sweep[0]
    archive = Path(client.predict(sweep_id, MODE, api_name="/export_paper"))
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(tmp_path)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert sum(p.name.startswith("beans_zero_eval_watkins_query") for p in files) == len(PROMPTS) * len(ALPHAS)

    key, message = client.predict(
        [gradio_client.handle_file(str(p)) for p in files], "round trip", api_name="/import_paper"
    )
    assert key.startswith("import:round-trip-") and "Imported" in message
    _, imported, *_ = _figures(client, key)
    _, original, *_ = _figures(client, sweep_id)
    assert {p: (t["x"], t["y"]) for p, t in _traces_by_prompt(imported).items()} == {
        p: (t["x"], t["y"]) for p, t in _traces_by_prompt(original).items()
    }
    again, _ = client.predict([gradio_client.handle_file(str(archive))], "round trip", api_name="/import_paper")
    assert again == key  # the same content imported as a zip lands in the same folder

    overlay = _plot(client.predict(sweep_id, key, "accuracy", MODE, api_name="/overlay"))
    by_name = {trace["name"]: trace["y"] for trace in overlay["data"]}
    assert len(by_name) == 2 * len(PROMPTS)
    for prompt in PROMPTS:
        assert by_name[f"{sweep_id} · {prompt}"] == by_name[f"{key.removeprefix('import:')} · {prompt}"]


DESIGNED_ALPHAS = [0.0, 0.5, 1.0]
DESIGNED_LABELS = ["Robin", "Wren", "Blackbird", "Song Thrush", "Chaffinch"]
DESIGNED_RIGHT = {"common": (1, 3, 5), "scientific": (0, 2, 4), "combined": (5, 4, 2)}  # of 5, per alpha


def _write_designed_paper_folder(folder: Path) -> dict[tuple[str, float], float]:
    """A paper-layout folder whose accuracy per (prompt, alpha) is chosen here; wrong answers are other labels."""
    accuracy = {}
    for query, prompt in enumerate(PROMPTS):
        for alpha, right in zip(DESIGNED_ALPHAS, DESIGNED_RIGHT[prompt], strict=True):
            accuracy[(prompt, alpha)] = right / len(DESIGNED_LABELS)
            records = [
                {
                    "prediction": label if i < right else DESIGNED_LABELS[(i + 1) % len(DESIGNED_LABELS)],
                    "label": label,
                    "id": f"s{i}",
                    "dataset_name": "garden",
                    "prompt": PAPER_PROMPTS[prompt].template,
                    "lora_scale": alpha,
                }
                for i, label in enumerate(DESIGNED_LABELS)
            ]
            path = folder / f"beans_zero_eval_garden_query{query}_lora{round(100 * alpha):03d}.jsonl"
            path.write_text("".join(json.dumps(record) + "\n" for record in records))
    (folder / "prompt_names.json").write_text(json.dumps({str(q): p for q, p in enumerate(PROMPTS)}))
    return accuracy


def test_an_imported_paper_folder_shows_its_accuracies(client, tmp_path):
    accuracy = _write_designed_paper_folder(tmp_path)
    files = [gradio_client.handle_file(str(p)) for p in sorted(tmp_path.iterdir())]
    key, _ = client.predict(files, "designed", api_name="/import_paper")
    _, curves, _, tradeoff, breakdown, answers = _figures(client, key, mode="paper")
    traces = _traces_by_prompt(curves)
    assert sorted(traces) == sorted(PROMPTS)
    for prompt, trace in traces.items():
        assert trace["x"] == DESIGNED_ALPHAS
        assert trace["y"] == pytest.approx([accuracy[(prompt, a)] for a in DESIGNED_ALPHAS])
    [curve] = tradeoff["data"]
    assert curve["text"] == ["0", "0.5", "1"]
    individual = [(accuracy[("common", a)] + accuracy[("scientific", a)]) / 2 for a in DESIGNED_ALPHAS]
    combined = [accuracy[("combined", a)] for a in DESIGNED_ALPHAS]
    assert curve["x"] == pytest.approx(individual) and curve["y"] == pytest.approx(combined)
    bars = {trace["meta"]["outcome"]: trace["y"] for trace in breakdown["data"]}  # first prompt by name: combined
    assert bars["correct"] == pytest.approx(combined)
    assert bars["in_set_confusion"] == pytest.approx([1 - value for value in combined])
    assert len(answers["data"]) == len(DESIGNED_LABELS) * len(PROMPTS)


def test_an_import_without_prompt_names_is_labelled_by_prompt_kind(client, tmp_path):
    """The paper's own folders number their queries; the legend must say what each asked, not "0, 1, 2"."""
    _write_designed_paper_folder(tmp_path)
    (tmp_path / "prompt_names.json").unlink()
    key, _ = client.predict([gradio_client.handle_file(str(p)) for p in sorted(tmp_path.iterdir())], "numbered",
                            api_name="/import_paper")  # fmt: skip
    _, curves, *_ = _figures(client, key, mode="paper")
    assert sorted(trace["name"] for trace in curves["data"]) == sorted(PROMPTS)


def test_per_class_figures_show_the_per_class_accuracy_of_the_results_on_disk(client, runs_dir, finished_sweep):
    sweep_id = finished_sweep[0]
    _, scores = _scores_on_disk(runs_dir, sweep_id)
    alpha, table, heatmap, confusion = client.predict(sweep_id, ALL, "common", MODE, "0", 3, api_name="/class_figures")
    assert (alpha["value"] if isinstance(alpha, dict) else alpha) == "0"
    rows = pd.DataFrame(table["data"], columns=table["headers"])
    assert list(rows.columns[:2]) == ["class", "n"] and [f"α={a:g}" for a in ALPHAS] == list(rows.columns[2:])
    for record in rows.to_dict("records"):
        answers = [a for a in scores[("common", 0.0)].answers if a.label == record["class"]]
        right = sum(a.outcome.value == "correct" for a in answers)
        assert record["α=0"] == f"{100 * right / len(answers):.0f}%"
    matrix = _plot(confusion)["data"][0]
    assert sum(map(sum, matrix["z"])) == SAMPLES and len(matrix["y"]) <= 4  # 3 classes and "other"
    assert _plot(heatmap)["data"][0]["x"] == [f"{a:g}" for a in ALPHAS]


def test_cancel_stops_a_sweep_part_way_and_resume_completes_it(served, data_dir):
    client, runs_dir, paced, _ = served
    sweep_id, _ = _start(client, data_dir, "tab cancel", limit=12)
    total = len(PROMPTS) * len(ALPHAS) * 12
    cancelled: list[str] = []

    def cancel_once_running(row: dict) -> None:
        if row["done"] > 0 and not cancelled:
            cancelled.append(client.predict(sweep_id, api_name="/cancel_sweep"))

    final = _poll_until(client, sweep_id, {"cancelled", "complete", "failed"}, cancel_once_running)[-1]
    assert "Cancelling" in cancelled[0]
    assert final["state"] == "cancelled" and 0 < final["done"] < total
    written = list(read_results(SweepFolder(runs_dir, sweep_id).results_path))
    assert len(written) == final["done"]
    assert set(Counter(row.id for row in written).values()) == {len(PROMPTS) * len(ALPHAS)}  # whole samples

    paced.seconds = 0.0  # the rest needs no watching
    try:
        assert "Queued" in client.predict(sweep_id, api_name="/resume_sweep")
        final = _poll_until(client, sweep_id, {"complete", "failed"})[-1]
    finally:
        paced.seconds = BATCH_PAUSE_S
    assert (final["state"], final["done"]) == ("complete", total)
    keys = [(r.id, r.prompt_name, r.alpha) for r in read_results(SweepFolder(runs_dir, sweep_id).results_path)]
    assert len(keys) == len(set(keys)) == total


def test_uploaded_recordings_and_labels_csv_are_swept(client, runs_dir, tmp_path):
    labels = {"bird_a.wav": "Robin", "bird_b.wav": "Wren", "frog.flac": "Bullfrog"}
    for index, name in enumerate(labels):
        t = np.arange(16000) / 16000
        sf.write(tmp_path / name, 0.3 * np.sin(2 * np.pi * 300 * (index + 1) * t), 16000)
    csv = tmp_path / "my labels.csv"
    csv.write_text("file,label\n" + "".join(f"{name},{label}\n" for name, label in labels.items()))
    form = _form(
        name="my recordings",
        source="recordings",
        labels_csv=gradio_client.handle_file(str(csv)),
        recordings=[gradio_client.handle_file(str(tmp_path / name)) for name in labels],
        recordings_name="garden",
        presets=["common"],
        alphas="1",
    )
    sweep_id, message = client.predict(**form, api_name="/start_sweep")
    assert "3 items" in message
    assert _poll_until(client, sweep_id, {"complete", "failed"})[-1]["state"] == "complete"
    rows = list(read_results(SweepFolder(runs_dir, sweep_id).results_path))
    assert {(row.dataset, row.id, row.label) for row in rows} == {("garden", n, label) for n, label in labels.items()}


def test_bad_data_is_refused_before_a_ray_cluster_is_contacted(client, data_dir):
    """A Ray pool takes seconds to start (30 s to give up on a dead address): the data is checked first."""
    form = _form(name="bad", local_path="/no/such/folder", limit=2)
    started = time.monotonic()
    with pytest.raises(Exception, match="does not exist"):
        client.predict(**form, run_on="Ray cluster", ray_address="ray://127.0.0.1:1", api_name="/start_sweep")
    assert time.monotonic() - started < 20


def test_resume_runs_where_run_on_says_and_refuses_a_ray_choice_without_an_address(client):
    before = client.predict(api_name="/sweep_status")["data"]
    with pytest.raises(Exception, match=r"Give the Ray cluster's address") as caught:
        client.predict("any-sweep", "Ray cluster", "", api_name="/resume_sweep")
    assert "Traceback" not in str(caught.value)
    assert client.predict(api_name="/sweep_status")["data"] == before


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alphas": "0, 1.5"}, r"must lie in \[0, 1\]"),
        ({"alphas": "0:1:0"}, "positive step"),
        ({"alphas": "zero"}, "not a number"),
        ({"presets": [], "custom_prompts": ""}, "at least one"),
        ({"custom_prompts": "Name it: {species}"}, "unknown placeholder"),
        ({"local_path": "/no/such/folder"}, "does not exist"),
        ({"subsets": ["esc50", "nope"]}, "nope"),
        ({"recipes": '[{"layers": [1, 1, 1]}]'}, "layers lists 3 multipliers but the model has 2 decoder layers"),
    ],
)
def test_bad_form_input_gets_a_clear_message_and_queues_nothing(client, data_dir, runs_dir, fields, message):
    before = client.predict(api_name="/sweep_status")["data"]
    form = _form(**{"name": "bad", "local_path": str(data_dir), "limit": 2, **fields})
    with pytest.raises(Exception, match=message) as caught:
        client.predict(**form, api_name="/start_sweep")
    assert "Traceback" not in str(caught.value)
    assert client.predict(api_name="/sweep_status")["data"] == before


def test_on_zero_gpu_start_is_disabled_and_refused(monkeypatch, tiny_model, tiny_checkpoint, tmp_path, data_dir):
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=lambda handler: handler))
    engine = app_module.create_engine(tiny_model)
    model = ServedModel(tiny_model, str(tiny_checkpoint), "cpu", "float32", demo=True)
    blocks = app_module.build_app(model, engine, SweepQueue(engine, tmp_path / "runs"))
    by_id = {c.get("props", {}).get("elem_id"): c["props"] for c in blocks.config["components"]}
    assert by_id["sweep-start"]["interactive"] is False and by_id["sweep-resume"]["interactive"] is False
    assert "dedicated GPU" in by_id["sweeps-zero-gpu"]["value"]
    _launch(blocks)
    try:
        client = gradio_client.Client(blocks.local_url, verbose=False)
        with pytest.raises(Exception, match="dedicated GPU"):
            _start(client, data_dir, "zero gpu")
    finally:
        blocks.close()
    assert not (tmp_path / "runs").exists()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_in_a_browser_the_tab_starts_a_sweep_refreshes_itself_and_survives_a_reload(served, data_dir):
    """Only a browser runs the page's timer and load events: the progress must reach 'complete' with no click."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    from tests.test_browser import ARTIFACTS, CHROMIUM_ARGS

    expect = playwright_sync.expect
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            page.goto(served[3])
            page.get_by_role("tab", name="Sweeps", exact=True).click()
            page.get_by_role("tab", name="New sweep").click()
            page.get_by_label("A local parquet file or folder (BEANS-Zero columns)").check()
            page.locator("#sweep-local-path textarea").fill(str(data_dir))
            page.locator("#sweep-name textarea").fill("browser sweep")
            page.locator("#sweep-alphas textarea").fill("0, 1")
            page.locator("#sweep-limit input").fill("2")
            for slider, value in (("#sweep-beams", "1"), ("#sweep-max-new-tokens", "6")):
                page.locator(f"{slider} input[type=number]").fill(value)
                page.locator(f"{slider} input[type=number]").press("Enter")
            page.locator("#sweep-start").click()
            progress = page.locator("#sweep-progress")  # a start shows the results sub-tab
            expect(progress).to_contain_text("browser sweep")
            expect(progress).to_contain_text("complete", timeout=BROWSER_TIMEOUT_MS)  # only the timer can say so
            expect(page.locator("#sweeps-table")).to_contain_text("browser sweep")
            expect(page.locator("#sweep-accuracy .js-plotly-plot")).to_be_visible()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "sweeps.png", full_page=True)
            page.get_by_role("tab", name="New sweep").click()
            message = page.locator("#sweep-message")
            expect(message).to_contain_text("Queued")
            expect(message).to_contain_text("12 items")
            page.locator("#sweep-alphas textarea").fill("0, 1.5")
            page.locator("#sweep-start").click()
            expect(message).to_contain_text("Not started", timeout=BROWSER_TIMEOUT_MS)  # not "Error" over "Queued"
            expect(message).not_to_contain_text("Queued")
            page.get_by_role("tab", name="Sweeps and results").click()

            page.reload()
            page.get_by_role("tab", name="Sweeps", exact=True).click()
            expect(page.locator("#sweeps-table")).to_contain_text("browser sweep")
            expect(page.locator("#sweep-progress")).to_contain_text("12/12 items")  # the newest sweep, reselected
            expect(page.locator("#sweep-accuracy .js-plotly-plot")).to_be_visible()
        finally:
            browser.close()


BAD_YAML = "generate:\n  num_beam: 3\nextended:\n  datasets: [watkins]\n  queries: ['Name it']\n  lora_scales: [0.0]\n"


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_in_a_browser_the_tab_is_short_leads_with_the_runs_and_names_a_yaml_unknown_key(served, tmp_path):
    """The tab was 3.5k px of forms before any result; a bad fork config named its key only on the command line."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    from tests.test_browser import ARTIFACTS, CHROMIUM_ARGS

    expect = playwright_sync.expect
    config = tmp_path / "bad.yml"
    config.write_text(BAD_YAML)
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            page.goto(served[3])
            page.get_by_role("tab", name="Sweeps", exact=True).click()
            expect(page.locator("#sweeps-table")).to_be_visible()
            height = page.evaluate("document.documentElement.scrollHeight")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "sweeps-first-look.png", full_page=True)
            assert height < 2500, f"the Sweeps tab is {height} px tall"
            runs_top = page.locator("#sweeps-table").bounding_box()["y"]
            page.get_by_role("tab", name="New sweep").click()
            assert page.locator("#sweep-name").bounding_box()["y"] > runs_top
            assert "What is the common name" in page.locator("#sweep-presets").inner_text()

            page.get_by_role("tab", name="Paper experiments").click()
            page.locator("#sweep-yaml-file input[type=file]").set_input_files(str(config))
            expect(page.locator("#sweep-yaml-info")).to_contain_text("generate.num_beam")
            page.locator("#sweep-run-yaml").click()
            expect(page.locator("#sweep-paper-message")).to_contain_text("generate.num_beam")
        finally:
            browser.close()
