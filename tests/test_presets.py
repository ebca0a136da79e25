"""The paper's presets: each runs end to end on the tiny model and draws its figures; costs and baselines are right."""

from __future__ import annotations

import json
import math

import pytest
from sklearn.metrics import f1_score

from evaluation.datasets import SUBSETS
from evaluation.presets import PRESETS, TOP_2_ROWS, PresetError, get_preset, list_presets, preset_of
from evaluation.sweep import SweepSpec, SweepState, run_sweep, score_sweep
from evaluation.sweep_metrics import class_baselines
from evaluation.synthetic import synthetic_labels, write_synthetic_beans_zero
from naturelm_core.engine import Engine
from ui.paper_figures import make_figures

# The paper's experiments; the merge-recipe grids run on the form's data (tests/test_sweep_recipes.py).
PAPER_PRESETS = {key: preset for key, preset in PRESETS.items() if not preset.on_form_data}
LIMIT = 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Every subset the presets ask about; unseen-family-cmn has 3 species, 7 recordings each (k = 5 needs 6)."""
    folder = tmp_path_factory.mktemp("beans_zero")
    rows = {"watkins": 4, "cbi": 4, "unseen-family-cmn": 21, "zf-indiv": LIMIT}  # zf-indiv: one One, one More
    labels = {"unseen-family-cmn": ["Spotted Elachura", "Dall's Porpoise", "Rare Bird"], "zf-indiv": ["One", "More"]}
    write_synthetic_beans_zero(folder, rows, labels=labels)
    return folder


@pytest.fixture(scope="module")
def mapping_file(tmp_path_factory):
    """A common -> scientific mapping for the synthetic Watkins and CBI labels, as the paper's jsonl files are."""
    path = tmp_path_factory.mktemp("mapping") / "mapping.jsonl"
    names = synthetic_labels("watkins") + synthetic_labels("cbi")
    path.write_text(
        "".join(json.dumps({"label": n, "scientific_name": f"Genus {i}"}) + "\n" for i, n in enumerate(names))
    )
    return path


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = Engine(tiny_model, max_batch_rows=16).start()
    yield engine
    engine.stop()


@pytest.mark.parametrize("key", sorted(PAPER_PRESETS))
def test_each_preset_runs_end_to_end_and_draws_its_figures(key, engine, data_dir, mapping_file, tmp_path):
    preset = PRESETS[key]
    spec = preset.spec(
        source="parquet", path=data_dir, limit=LIMIT, num_beams=1, max_new_tokens=4, mapping_file=mapping_file
    )
    status = run_sweep(engine, spec, tmp_path)
    assert status.state is SweepState.COMPLETE
    assert status.done == status.total == preset.answers_needed(limit=LIMIT)  # the estimate counts what runs
    scores = score_sweep(tmp_path, spec.sweep_id)
    assert sorted({s.prompt_name for s in scores}) == sorted(p.name for p in preset.prompts)
    for metric in ("accuracy", "f1_weighted"):
        figures = make_figures(preset, scores, metric)
        assert len(figures) == len(preset.figures)
        for caption, figure in figures:
            measured = [trace for trace in figure.data if not (trace.meta or {}).get("baseline")]
            assert caption and measured, f"{key}: {caption} has no data"
            values = [y for trace in measured for y in trace.y]
            assert values and all(0 <= y <= 1 for y in values)


def test_the_figures_have_the_papers_axes_and_series(engine, data_dir, mapping_file, tmp_path):
    results = {}
    for key in ("watkins-cbi", "closed-set-all", "zf-indiv", "icl"):
        spec = PRESETS[key].spec(
            source="parquet", path=data_dir, limit=LIMIT, num_beams=1, max_new_tokens=4, mapping_file=mapping_file
        )
        run_sweep(engine, spec, tmp_path)
        results[key] = dict(make_figures(PRESETS[key], score_sweep(tmp_path, spec.sweep_id)))
    # Figure 2: a panel per data set, the three prompts in each, over the whole alpha grid.
    panels = next(iter(results["watkins-cbi"].values()))
    assert {(t.meta["dataset"], t.name) for t in panels.data} == {
        (d, p) for d in ("watkins", "cbi") for p in ("common", "scientific", "combined")
    }
    assert all(list(t.x) == [round(0.1 * i, 1) for i in range(11)] for t in panels.data)
    # Figure 1: the merged model (alpha 0.4) beside NatureLM-audio (alpha 1), over a random baseline.
    bars = results["closed-set-all"]["merged (alpha 0.4) vs NatureLM-audio (alpha 1)"]
    assert [t.meta for t in bars.data] == [
        {"alpha": 0.4},
        {"alpha": 1.0},
        {"baseline": "majority class"},
        {"baseline": "random"},
    ]
    # Figure 9: the three zf-indiv prompts at alpha 1 and the random baseline (1/2, One or More).
    (zf,) = results["zf-indiv"].values()
    assert list(zf.data[0].x) == ["original", "reversed", "no classes"] and zf.data[0].meta == {"alpha": 1.0}
    assert zf.data[1].meta == {"baseline": "random"} and list(zf.data[1].y) == [0.5, 0.5]
    # Figure 10: one curve per k, with the majority-class and random baselines of the 2-class set.
    (icl,) = results["icl"].values()
    assert [t.name for t in icl.data] == ["k=0", "k=1", "k=5", "majority class baseline", "random baseline"]


def test_answers_and_durations_follow_beans_zero_and_the_measured_rate():
    rows = {name: info.rows for name, info in SUBSETS.items()}
    expected = {
        "watkins-cbi": (rows["watkins"] + rows["cbi"]) * 3 * 11,
        "closed-set-2": TOP_2_ROWS * 11,
        "closed-set-all": rows["unseen-family-cmn"] * 11,
        "zf-indiv": rows["zf-indiv"] * 3,
        "icl": TOP_2_ROWS * 3 * 11,
    }
    listed = {entry["key"]: entry for entry in list_presets(rate_per_s=20.0) if entry["key"] in PAPER_PRESETS}
    assert {key: entry["answers"] for key, entry in listed.items()} == expected
    assert all(math.isclose(entry["duration_s"], expected[key] / 20.0) for key, entry in listed.items())
    assert listed["watkins-cbi"]["figures"] == "Figures 2, 4, 6" and listed["zf-indiv"]["figures"] == "Figure 9"
    assert all(entry["duration_s"] is None for entry in list_presets())
    assert list_presets(limit=10)[0]["answers"] == 2 * 10 * 3 * 11
    with pytest.raises(PresetError, match="no preset 'fig-11'"):
        get_preset("fig-11")


def test_a_sweep_started_from_a_preset_is_recognised_whatever_its_data_and_alphas(tmp_path):
    for key, preset in PAPER_PRESETS.items():
        spec = preset.spec(source="parquet", path=tmp_path, limit=3, alphas=[0.5])
        assert preset_of(SweepSpec.from_dict(spec.to_dict())) is preset, key
    closed_set_2 = PRESETS["closed-set-2"].spec()
    assert preset_of(SweepSpec.from_dict({**closed_set_2.to_dict(), "top_k_classes": 3})) is None


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro", "f1_weighted"])
def test_baselines_are_what_a_majority_or_a_uniform_guesser_scores(metric):
    counts = {"Spotted Elachura": 40, "Dall's Porpoise": 20}
    truth = ["Spotted Elachura"] * 40 + ["Dall's Porpoise"] * 20
    majority = ["Spotted Elachura"] * 60
    # A uniform guesser's expected confusion, exactly: each class's samples spread evenly over both answers.
    uniform = (
        ["Spotted Elachura"] * 20 + ["Dall's Porpoise"] * 20 + ["Spotted Elachura"] * 10 + ["Dall's Porpoise"] * 10
    )

    def score(predicted: list[str]) -> float:
        if metric == "accuracy":
            return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
        return f1_score(truth, predicted, average=metric.removeprefix("f1_"), zero_division=0)

    baselines = class_baselines(counts, metric)
    assert baselines["majority class"] == pytest.approx(score(majority))
    assert baselines["random"] == pytest.approx(score(uniform))
