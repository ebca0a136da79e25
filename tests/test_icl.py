"""In-context audio examples: one recording per placeholder, never the one under test, seeded, within the context."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.icl import (
    AUDIO_TAG,
    ContextLengthError,
    ExampleBank,
    ExtendedPrompt,
    InContextError,
)
from evaluation.prompts import PromptTemplateError
from evaluation.sweep import (
    EngineBackend,
    SubsetPlan,
    SweepFolder,
    SweepSpec,
    SweepState,
    load_examples,
    model_window,
    plan_sweep,
    run_sweep,
    sample_items,
)
from evaluation.synthetic import SCHEMA, write_synthetic_beans_zero
from naturelm_core.cache import content_key
from naturelm_core.config import AUDIO_PLACEHOLDER
from naturelm_core.engine import Engine
from naturelm_core.prompting import apply_template

SPECIES = ["Spotted Elachura", "Dall's Porpoise", "Rare Bird"]
ICL_QUERY = (
    "Identify the common name for the focal species in the audio.\nOutput exactly one of: {species_list}\n\n"
    "{audio_examples}\n\nAudio: <Audio><AudioHere></Audio>\nLabel:{randomize}"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """7 recordings of each of 3 species: the 2 kept by top_k_classes have 6 class-mates each, enough for k = 5."""
    folder = tmp_path_factory.mktemp("beans_zero")
    write_synthetic_beans_zero(folder, {"unseen-family-cmn": 21}, labels={"unseen-family-cmn": SPECIES})
    # One tone per species: give each recording its own loudness so that no two recordings are the same.
    for number, shard in enumerate(sorted(folder.glob("*.parquet"))):
        rows = pq.read_table(shard).to_pylist()
        for index, row in enumerate(rows):
            row["audio"] = [value * (0.9 - 0.02 * index - 0.3 * number) for value in row["audio"]]
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), shard)
    return folder


def _spec(data_dir, **overrides) -> SweepSpec:
    values = {
        "name": "icl",
        "source": "parquet",
        "path": str(data_dir),
        "subsets": ["unseen-family-cmn"],
        "top_k_classes": 2,
        "prompts": [
            {"name": "k=1", "template": ICL_QUERY, "examples_per_class": 1},
            {"name": "k=5", "template": ICL_QUERY, "examples_per_class": 5},
        ],
        "alphas": [0.0, 1.0],
        "num_beams": 1,
        "max_new_tokens": 4,
    }
    values.update(overrides)
    return SweepSpec.from_dict(values)


def _rendered(spec: SweepSpec) -> tuple[SubsetPlan, dict, dict[tuple[str, str], tuple[str, tuple[str, ...]]]]:
    """(the plan, sample id -> label, (sample id, prompt) -> (text, example ids)) for every sample of the plan."""
    (plan,) = plan_sweep(spec)
    load_examples(spec, plan)
    labels = {sample.id: sample.label for sample in plan.subset}
    rendered = {}
    for sample_id in plan.sample_ids:
        for item in sample_items(spec, plan, sample_id):
            rendered[(sample_id, item.prompt_name)] = (item.prompt_text, item.example_ids)
    return plan, labels, rendered


def test_two_classes_give_3_placeholders_for_k_1_and_11_for_k_5_each_a_distinct_recording_never_the_test_one(
    data_dir,
):
    plan, labels, rendered = _rendered(_spec(data_dir))
    assert len(plan.labels) == 2 and len(rendered) == 14 * 2  # 14 samples of the 2 kept species, 2 prompts
    for (sample_id, prompt), (text, example_ids) in rendered.items():
        k = 1 if prompt == "k=1" else 5
        templated = apply_template(text, "{}")  # what the model is given: no placeholder may be added
        assert templated.count(AUDIO_PLACEHOLDER) == text.count(AUDIO_PLACEHOLDER) == 2 * k + 1 == len(example_ids) + 1
        assert len(set(example_ids)) == len(example_ids) and sample_id not in example_ids
        # k examples of each species, and each block is labelled with its own recording's species.
        example_labels = [labels[i] for i in example_ids]
        assert sorted(example_labels) == sorted(plan.labels * k)
        blocks = text.split(AUDIO_TAG)[1:]
        assert [block.split("Label: ")[1].split("\n")[0] for block in blocks[:-1]] == example_labels
        assert blocks[-1].strip() == "Label:"  # the recording under test is the last one


def test_a_spec_round_trips_its_in_context_prompts_and_one_without_them_serialises_as_before(data_dir):
    spec = _spec(data_dir, max_context_tokens=4096)
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    assert [type(p) for p in spec.prompts] == [ExtendedPrompt, ExtendedPrompt]
    plain = _spec(data_dir, prompts=["common", {"name": "list", "template": "One of: {species_list}"}])
    assert "species" not in plain.to_dict() and "max_context_tokens" not in plain.to_dict()  # older sweep ids stay
    assert plain.to_dict()["prompts"][1] == {"name": "list", "template": "One of: {species_list}"}


def test_the_same_seed_gives_the_same_prompts_and_examples_another_seed_others(data_dir):
    first = _rendered(_spec(data_dir))[2]
    assert _rendered(_spec(data_dir))[2] == first
    assert _rendered(_spec(data_dir, seed=1))[2] != first


def test_the_runner_gives_every_placeholder_its_own_recording_and_the_sample_its_last(tiny_model, data_dir, tmp_path):
    spec = _spec(data_dir, limit=3)
    engine = Engine(tiny_model, max_batch_rows=8).start()
    backend = RecordingBackend(engine)
    try:
        status = run_sweep(backend, spec, tmp_path)
    finally:
        engine.stop()
    assert status.state is SweepState.COMPLETE and status.done == 3 * 2 * 2
    (plan,) = plan_sweep(spec)
    windows = {sample.id: content_key(model_window(sample)) for sample in plan.subset}
    assert len(set(windows.values())) == len(windows)  # every recording of the data set is a different one
    sample_of = {key: sample_id for sample_id, key in windows.items()}
    records = {(r["id"], r["prompt"], r["alpha"]): r for r in SweepFolder(tmp_path, spec.sweep_id).results.read()}
    assert len(backend.rows) == len(records) == 12
    for row_windows, prompt, alpha in backend.rows:
        keys = [content_key(window) for window in row_windows]
        record = records[(sample_of[keys[-1]], prompt, alpha)]  # the last window is the sample under test
        assert keys == [windows[i] for i in record["examples"]] + [windows[record["id"]]]
        assert len(set(keys)) == len(keys) == prompt.count(AUDIO_PLACEHOLDER)


def test_a_prompt_too_long_for_the_context_is_refused_before_anything_is_answered(tiny_model, data_dir, tmp_path):
    spec = _spec(data_dir, limit=2, max_context_tokens=300)  # k = 1 fits; k = 5 brings 11 x 29 audio embeddings
    engine = Engine(tiny_model, max_batch_rows=8).start()
    try:
        with pytest.raises(ContextLengthError, match=r"needs \d+ positions .* 11 recording\(s\).* is 300"):
            run_sweep(engine, spec, tmp_path)
    finally:
        engine.stop()
    folder = SweepFolder(tmp_path, spec.sweep_id)
    assert folder.read_status().state is SweepState.FAILED
    assert "max_context_tokens" in folder.read_status().message
    assert folder.results.read() == [] and engine.stats.requests == 0


def test_too_few_recordings_of_a_class_for_k_examples_is_refused(data_dir):
    spec = _spec(data_dir, prompts=[{"name": "k=7", "template": ICL_QUERY, "examples_per_class": 7}])
    (plan,) = plan_sweep(spec)
    with pytest.raises(InContextError, match=r"7 in-context example\(s\) per class .* need k \+ 1"):
        load_examples(spec, plan)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Audio: <Audio><AudioHere></Audio>\nLabel:\n\n{audio_examples}", "must come after the examples"),
        ("{audio_examples} and again {audio_examples}", "only once"),
        ("{species_list} {colour}", "unknown placeholder"),
        ("<AudioHere> then <AudioHere>", "placeholder as <Audio><AudioHere></Audio>"),
        ("<Audio><AudioHere></Audio> and <Audio><AudioHere></Audio>", "2 <AudioHere> placeholders of its own"),
    ],
)
def test_templates_that_cannot_place_the_recordings_are_refused(template, message):
    with pytest.raises(PromptTemplateError, match=message):
        ExtendedPrompt("bad", template, examples_per_class=1)


def test_without_a_placeholder_of_its_own_the_recording_under_test_is_appended_last():
    bank = ExampleBank({"A": ["a1", "a2"], "B": ["b1", "b2"]}, {}, seed=0)
    rendered = ExtendedPrompt("p", "Which? {audio_examples}", 1).render_for_sample("a1", ["A", "B"], 0, bank=bank)
    assert rendered.example_ids in {("a2", "b1"), ("a2", "b2"), ("b1", "a2"), ("b2", "a2")}
    assert rendered.text.endswith("\n\nAudio: <Audio><AudioHere></Audio>\nLabel:")
    assert rendered.text.count(AUDIO_PLACEHOLDER) == 3


class RecordingBackend(EngineBackend):
    """The local backend, keeping every row it is given so a test can look at the windows."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.rows: list = []

    def submit_group(self, rows, settings):
        self.rows.extend(rows)
        return super().submit_group(rows, settings)


def test_a_budget_tokenizes_each_prompt_text_once_however_many_rows_ask(tiny_model, monkeypatch):
    import naturelm_core.prompting as prompting
    from evaluation.icl import AnswerRoom, ContextBudget

    calls: list[str] = []
    original = prompting.tokenize_prompt
    monkeypatch.setattr(prompting, "tokenize_prompt", lambda t, text, tpl: calls.append(text) or original(t, text, tpl))
    budget = ContextBudget.of_model(tiny_model)
    first = budget.positions("<Audio><AudioHere></Audio> What is it?", [160_000])
    for _ in range(3):
        budget.check("<Audio><AudioHere></Audio> What is it?", [160_000], AnswerRoom.generated(8), "row")
    assert budget.positions("<Audio><AudioHere></Audio> What is it?", [160_000]) == first
    assert calls == ["<Audio><AudioHere></Audio> What is it?"]
