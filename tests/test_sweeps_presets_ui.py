"""The Sweeps tab's paper experiments and fork YAML configs, driven through gradio_client as a user would.

The app serves the tiny model on synthetic BEANS-Zero data (unseen-family-cmn with 3 species, 7, 7
and 6 recordings, so its 2 most frequent classes are the first two). Expected values are recomputed
here from what the sweep wrote (results.jsonl and status.json) with the scoring module, so the tests
check that the tab shows what ran, not merely that a figure came back.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")

from evaluation.presets import PRESETS  # noqa: E402  (after the importorskip)
from evaluation.results import read_results  # noqa: E402
from evaluation.scoring import score_rows  # noqa: E402
from evaluation.sweep import SweepFolder  # noqa: E402
from evaluation.sweep_metrics import class_baselines  # noqa: E402
from evaluation.synthetic import write_synthetic_beans_zero  # noqa: E402
from ui.sweep_display import PAPER_METRIC  # noqa: E402
from ui.text import RATE_UNKNOWN, format_duration  # noqa: E402

SPECIES = ["Spotted Elachura", "Dall's Porpoise", "Rare Bird"]
TOP_2 = SPECIES[:2]
LIMIT = 4
PRESET = "closed-set-2"
PRESET_ALPHAS = [0.0, 0.5, 1.0]
TIMEOUT_S = 60.0
POLL_S = 0.1
YAML_ALPHAS = [0.0, 1.0]
CLOSED_SET_QUERY = (
    "What is the common name for the focal species in the audio?{randomize}\\nOutput one of: {species_list}"
)
ICL_QUERY = (
    "Output exactly one of: {species_list}\\n\\n{audio_examples}\\n\\nAudio: <Audio><AudioHere></Audio>\\nLabel:"
)
FORK_YAML = f"""\
model:
  llama_path: "meta-llama/Meta-Llama-3.1-8B-Instruct"
  lora_rank: 32
generate:
  max_new_tokens: 4
  num_beams: 1
  do_sample: False
  temperature: 0.1
extended:
  datasets: ["unseen-family-cmn"]
  lora_scales: {YAML_ALPHAS}
  top_k_species: 2
  n_examples: 1
  queries:
    - "{CLOSED_SET_QUERY}"
    - "{ICL_QUERY}"
"""
CONFLICTING_YAML = """\
extended:
  datasets: ["unseen-family-cmn"]
  lora_scales: [0.0, 1.0]
  species:
    - {name: "Spotted Elachura", description: "a small brown bird"}
  top_k_species: 2
  queries: ["Which of {species_list}?"]
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("beans_zero")
    write_synthetic_beans_zero(folder, {"unseen-family-cmn": 20, "watkins": 4}, labels={"unseen-family-cmn": SPECIES})
    return folder


@pytest.fixture(scope="module")
def served(launch_app):
    """(client, runs dir, the /presets answer on a runs folder where no sweep has run yet)."""
    app = launch_app(max_batch_rows=16)
    client = app.client()
    return client, app.runs_dir, client.predict(LIMIT, api_name="/presets")


@pytest.fixture(scope="module")
def client(served):
    return served[0]


@pytest.fixture(scope="module")
def runs_dir(served) -> Path:
    return served[1]


def _data_fields(data_dir: Path, **fields) -> dict:
    """The New sweep fields a preset runs on, with the test's small settings."""
    return {
        "source": "parquet",
        "local_path": str(data_dir),
        "limit": LIMIT,
        "seed": 0,
        "num_beams": 1,
        "max_new_tokens": 4,
        "scoring_mode": "official",
        "mapping_file": None,
        **fields,
    }


def _yaml_fields(data_dir: Path, upload, **fields) -> dict:
    data = _data_fields(data_dir, **fields)
    del data["num_beams"], data["max_new_tokens"]  # a fork config brings its own decoding
    return {"upload": upload, **data}


def _table(value: dict) -> list[dict]:
    return [dict(zip(value["headers"], row, strict=True)) for row in value["data"]]


def _wait_until_finished(client, sweep_id: str) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        row = next(r for r in _table(client.predict(api_name="/sweep_status")) if r["sweep"] == sweep_id)
        if row["state"] in {"complete", "failed", "cancelled"}:
            return row
        time.sleep(POLL_S)
    raise AssertionError(f"{sweep_id} did not finish in {TIMEOUT_S} s")


def _plot(value: dict) -> dict:
    assert value["type"] == "plotly"
    return json.loads(value["plot"])


def _shown(update: dict) -> tuple[str, dict]:
    """(caption, figure) of a paper-figure slot the handler filled: it comes back as a visible update."""
    assert update["visible"] is True
    return update["label"], _plot(update["value"])


def _hidden(updates: list[dict]) -> bool:
    return all(update["visible"] is False and update.get("value") is None for update in updates)


def _upload(tmp_path: Path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return gradio_client.handle_file(str(path))


@pytest.fixture(scope="module")
def preset_sweep(client, data_dir):
    """The 2-class closed-set preset run from the tab on a 3-alpha grid: (sweep id, message, final status row)."""
    sweep_id, message = client.predict(
        key=PRESET, preset_alphas="0, 0.5, 1", **_data_fields(data_dir), api_name="/run_preset"
    )
    return sweep_id, message, _wait_until_finished(client, sweep_id)


def test_before_any_sweep_each_preset_is_listed_with_its_answers_and_an_unknown_rate(served):
    table, rate_text = served[2]
    rows = {row["preset"]: row for row in _table(table)}
    assert sorted(rows) == sorted(PRESETS)
    for key, preset in PRESETS.items():
        row = rows[key]
        assert (row["experiment"], row["figures"]) == (preset.title, preset.figures_label)
        assert row["answers"] == preset.answers_needed()
        assert row["answers at the sample limit"] == preset.answers_needed(limit=LIMIT)
        assert row["time"] == row["time at the sample limit"] == "unknown"
    assert RATE_UNKNOWN in rate_text


def test_a_preset_runs_from_the_tab_on_the_forms_data_and_settings(runs_dir, data_dir, preset_sweep):
    sweep_id, message, final = preset_sweep
    expected = PRESETS[PRESET].answers_needed(limit=LIMIT, alphas=PRESET_ALPHAS)
    assert expected == LIMIT * len(PRESET_ALPHAS)
    assert f"{expected} items" in message
    assert (final["state"], final["done"], final["total"]) == ("complete", expected, expected)
    spec = SweepFolder(runs_dir, sweep_id).read_spec()
    assert (spec["limit"], spec["top_k_classes"], spec["alphas"]) == (LIMIT, 2, PRESET_ALPHAS)
    assert (spec["num_beams"], spec["max_new_tokens"], spec["path"]) == (1, 4, str(data_dir.resolve()))
    rows = list(read_results(SweepFolder(runs_dir, sweep_id).results_path))
    assert {row.label for row in rows} <= set(TOP_2) and len(rows) == expected


def test_after_a_sweep_the_estimates_use_its_measured_rate(client, runs_dir, preset_sweep):
    sweep_id = preset_sweep[0]
    rate = SweepFolder(runs_dir, sweep_id).read_status().rate_per_s
    assert rate and rate > 0
    table, rate_text = client.predict(0, api_name="/presets")  # 0 = no sample limit: the whole experiment
    assert sweep_id in rate_text and f"{rate:.2f} answers/s" in rate_text
    for row in _table(table):
        answers = PRESETS[row["preset"]].answers_needed()
        if answers is None:  # a merge-recipe grid on the form's data: its size is not known before Start
            assert row["time"] == "unknown"
            continue
        assert row["answers"] == row["answers at the sample limit"] == answers
        assert row["time"] == row["time at the sample limit"] == format_duration(answers / rate)


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_the_preset_figures_show_the_scores_of_its_results(client, runs_dir, preset_sweep, mode):
    sweep_id = preset_sweep[0]
    rows = list(read_results(SweepFolder(runs_dir, sweep_id).results_path))
    scores = {score.alpha: score for score in score_rows(rows, mode)}
    assert sorted(scores) == PRESET_ALPHAS
    counts = Counter(answer.label for answer in scores[0.0].answers)
    for metric, chosen in ((PAPER_METRIC, "f1_weighted"), ("accuracy", "accuracy"), ("f1_macro", "f1_macro")):
        text, *slots = client.predict(sweep_id, mode, metric, api_name="/preset_figures")
        assert PRESETS[PRESET].title in text and "Figures 5, 7" in text
        (curves_caption, curves), (breakdown_caption, breakdown) = _shown(slots[0]), _shown(slots[1])
        assert [curves_caption, breakdown_caption] == [figure.caption for figure in PRESETS[PRESET].figures]
        assert _hidden(slots[2:])  # this preset draws two figures; the other slots stay hidden
        measured = [trace for trace in curves["data"] if "baseline" not in trace["meta"]]
        baselines = {trace["meta"]["baseline"]: trace["y"] for trace in curves["data"] if "baseline" in trace["meta"]}
        [curve] = measured
        assert curve["x"] == PRESET_ALPHAS
        assert curve["y"] == pytest.approx([getattr(scores[a].metrics, chosen) for a in PRESET_ALPHAS])
        expected_baselines = class_baselines(counts, chosen)
        assert baselines == {name: pytest.approx([value, value]) for name, value in expected_baselines.items()}
        shares = {trace["meta"]["outcome"]: trace["y"] for trace in breakdown["data"]}
        assert shares["correct"] == pytest.approx([scores[a].metrics.accuracy for a in PRESET_ALPHAS])


def test_a_fork_yaml_is_previewed_with_its_notes_and_runs(client, runs_dir, data_dir, tmp_path):
    upload = _upload(tmp_path, "closed_set_icl.yml", FORK_YAML)
    preview = client.predict(**_yaml_fields(data_dir, upload), api_name="/check_yaml")
    assert "closed_set_icl" in preview and "2 queries" in preview and "the 2 most frequent classes" in preview
    assert "generate.temperature" in preview  # read, but changes nothing: said so
    sweep_id, message = client.predict(**_yaml_fields(data_dir, upload), api_name="/run_yaml")
    items = LIMIT * 2 * len(YAML_ALPHAS)
    assert f"{items} items" in message and "generate.temperature" in message
    final = _wait_until_finished(client, sweep_id)
    assert (final["state"], final["done"]) == ("complete", items)
    spec = SweepFolder(runs_dir, sweep_id).read_spec()
    assert (spec["num_beams"], spec["max_new_tokens"], spec["top_k_classes"], spec["limit"]) == (1, 4, 2, LIMIT)
    rows = list(read_results(SweepFolder(runs_dir, sweep_id).results_path))
    assert {(row.prompt_name, row.alpha) for row in rows} == {(q, a) for q in ("0", "1") for a in YAML_ALPHAS}
    assert {row.label for row in rows} <= set(TOP_2)
    text, *slots = client.predict(sweep_id, "official", PAPER_METRIC, api_name="/preset_figures")
    assert "not started from a paper experiment" in text and _hidden(slots)


def test_a_yaml_with_species_and_top_k_species_is_refused_with_a_clear_message(client, data_dir, tmp_path):
    upload = _upload(tmp_path, "conflict.yaml", CONFLICTING_YAML)
    before = client.predict(api_name="/sweep_status")["data"]
    preview = client.predict(**_yaml_fields(data_dir, upload), api_name="/check_yaml")
    assert "cannot run" in preview and "mutually exclusive" in preview
    with pytest.raises(Exception, match=r"species and extended\.top_k_species are mutually exclusive") as caught:
        client.predict(**_yaml_fields(data_dir, upload), api_name="/run_yaml")
    assert "Traceback" not in str(caught.value)
    assert client.predict(api_name="/sweep_status")["data"] == before


@pytest.mark.parametrize(
    ("key", "alphas", "fields", "message"),
    [
        (None, "", {}, "choose a paper experiment"),
        ("fig-11", "", {}, "fig-11 is not in the list of choices"),
        (PRESET, "0, 1.5", {}, r"must lie in \[0, 1\]"),
        (PRESET, "", {"source": "recordings"}, "names BEANS-Zero data sets"),
        (PRESET, "", {"local_path": "/no/such/folder"}, "does not exist"),
    ],
)
def test_a_bad_preset_run_gets_a_clear_message_and_queues_nothing(client, data_dir, key, alphas, fields, message):
    before = client.predict(api_name="/sweep_status")["data"]
    with pytest.raises(Exception, match=message) as caught:
        client.predict(key=key, preset_alphas=alphas, **_data_fields(data_dir, **fields), api_name="/run_preset")
    assert "Traceback" not in str(caught.value)
    assert client.predict(api_name="/sweep_status")["data"] == before
