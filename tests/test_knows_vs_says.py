"""A likelihood sweep is drawn beside its generation twin (same data, prompts, grid; any name): knows vs says."""

from __future__ import annotations

import pytest

from evaluation.sweep import SweepSpec, run_sweep
from evaluation.sweep_views import SweepViews
from naturelm_core.engine import Engine
from tests.sweep_helpers import spec_dict, write_sweep_data
from ui.sweep_display import view_figures


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("beans_zero")
    write_sweep_data(data)
    runs_dir = tmp_path_factory.mktemp("runs")
    common = {"limit": 3, "prompts": ["common"], "alphas": [0.0, 1.0]}
    knows = SweepSpec.from_dict(spec_dict(data, name="knows", answer_mode="likelihood", **common))
    says = SweepSpec.from_dict(spec_dict(data, name="what it says", **common))
    alone = SweepSpec.from_dict(spec_dict(data, name="alone", answer_mode="likelihood", **{**common, "limit": 2}))
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        for spec in (knows, says, alone):
            run_sweep(engine, spec, runs_dir)
    finally:
        engine.stop()
    return SweepViews(runs_dir), knows.sweep_id, says.sweep_id, alone.sweep_id


def test_the_generation_twin_is_found_by_what_it_asks_not_by_its_name(runs):
    views, knows, says, alone = runs
    assert views.generation_twin(knows) == says
    assert views.generation_twin(alone) is None  # another sample limit: another question
    assert views.generation_twin(says) is None  # a generation sweep has no twin to draw


def test_the_accuracy_figure_draws_knows_and_says_when_the_twin_exists(runs):
    views, knows, says, alone = runs
    paired = view_figures(views.load(knows), says=views.load(says)).accuracy
    assert sorted(trace.name.split(" · ")[0] for trace in paired.data) == ["knows", "says"]
    assert "vs says" in paired.layout.title.text
    single = view_figures(views.load(alone)).accuracy
    assert [trace.name.split(" · ")[0] for trace in single.data] == ["knows"]
