"""The paper fork's YAML configs read as sweep specs: every key, the fork's refusals, and the command line."""

from __future__ import annotations

import json

import pytest

from evaluation.fork_config import ForkConfigError, read_fork_config, spec_from_yaml
from evaluation.icl import ExtendedPrompt, Species
from evaluation.prompts import Prompt
from evaluation.scoring import ScoringMode
from evaluation.sweep import DataSource, SweepFolder, SweepSpec, plan_sweep, sample_items
from evaluation.sweep.cli import EXIT_BAD_INPUT, EXIT_COMPLETE, main
from evaluation.synthetic import write_synthetic_beans_zero
from naturelm_core.config import PROMPT_TEMPLATE

SPECIES = ["Spotted Elachura", "Dall's Porpoise", "Rare Bird"]
ICL_QUERY = (
    "Identify the common name for the focal species in the audio.\nOutput exactly one of: {species_list}\n\n"
    "{audio_examples}\n\nAudio: <Audio><AudioHere></Audio>\nLabel:{randomize}\n"
)
EXAMPLES_QUERY = "Output one of: {species_list}\n\n{examples}\n\nAudio: <Audio><AudioHere></Audio>\nLabel:\n"
PLAIN_QUERY = "What is the common name for the focal species in the audio?"

# Every key of the fork's format: the model section (abridged as the fork's own files are not), generate, extended.
FORK_YAML = """\
model:
  llama_path: "meta-llama/Meta-Llama-3.1-8B-Instruct"
  freeze_beats: True
  use_audio_Qformer: True
  window_level_Qformer: True
  num_audio_query_token: 1
  second_per_window: 0.333333
  second_stride: 0.333333
  audio_llama_proj_model: ""
  lora: True
  lora_rank: 32
  lora_alpha: 32
  lora_dropout: 0.1
  prompt_template: TEMPLATE
  max_txt_len: 160
  end_sym: <|end_of_text|>
  beats_cfg:
    input_patch_size: 16
    encoder_layers: 12
    predictor_class: 527

generate:
  max_new_tokens: 60
  num_beams: 3
  do_sample: False
  min_length: 1
  temperature: 0.1
  repetition_penalty: 1.0
  length_penalty: 1.0

extended:
  datasets:
    - "unseen-family-cmn"
  queries:
    - |
      Identify the common name for the focal species in the audio.
      Output exactly one of: {species_list}

      {audio_examples}

      Audio: <Audio><AudioHere></Audio>
      Label:{randomize}
    - |
      Output one of: {species_list}

      {examples}

      Audio: <Audio><AudioHere></Audio>
      Label:
    - "What is the common name for the focal species in the audio?"
  lora_scales:
    - 0.0
    - 0.4
    - 1.0
  species:
    - name: "Spotted Elachura"
      description: "[bird-like chirping and trilling]"
    - name: "Dall's Porpoise"
      description: "[high-pitched clicks and whistles]"
  n_examples: 5
""".replace("TEMPLATE", json.dumps(PROMPT_TEMPLATE))  # a JSON string is a valid YAML double-quoted string

TOP_K_YAML = """\
generate:
  num_beams: 2
extended:
  datasets: ["unseen-family-cmn"]
  queries:
    - "What is the common name for the focal species in the audio?{randomize}\\nOutput exactly one of: {species_list}"
  lora_scales: [0.0, 0.5]
  top_k_species: 2
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beans_zero")
    write_synthetic_beans_zero(folder, {"unseen-family-cmn": 10, "zf-indiv": 4}, labels={"unseen-family-cmn": SPECIES})
    return folder


def test_a_fork_config_with_every_key_becomes_the_equivalent_spec(tmp_path):
    path = tmp_path / "in_context_learning_5_examples.yml"
    path.write_text(FORK_YAML)
    config = read_fork_config(path, data_path=tmp_path, limit=7, seed=3, scoring_mode="robust")
    expected = SweepSpec(
        name="in_context_learning_5_examples",
        subsets=("unseen-family-cmn",),
        prompts=(
            ExtendedPrompt("0", ICL_QUERY, examples_per_class=5),
            ExtendedPrompt("1", EXAMPLES_QUERY),
            Prompt("2", PLAIN_QUERY),
        ),
        alphas=(0.0, 0.4, 1.0),
        source=DataSource.PARQUET,
        path=str(tmp_path.resolve()),
        limit=7,
        seed=3,
        num_beams=3,
        max_new_tokens=60,
        scoring_mode=ScoringMode.ROBUST,
        species=(
            Species("Spotted Elachura", "[bird-like chirping and trilling]"),
            Species("Dall's Porpoise", "[high-pitched clicks and whistles]"),
        ),
    )
    assert config.spec == expected
    assert config.model.lora_rank == 32 and config.model.beats_cfg.encoder_layers == 12
    assert [note.split(" = ")[0] for note in config.notes] == ["generate.temperature"]  # the model is the published
    changed = read_fork_config(FORK_YAML.replace("lora_rank: 32", "lora_rank: 16"))
    assert changed.spec.prompts == expected.prompts and "['lora_rank']" in changed.notes[0]
    # The spec survives spec.json, so a resumed sweep asks the same questions.
    assert SweepSpec.from_dict(json.loads(json.dumps(config.spec.to_dict()))) == expected
    # YAML text works as well as a path; then the sweep is named generically.
    from_text = spec_from_yaml(FORK_YAML, data_path=tmp_path, limit=7, seed=3, scoring_mode="robust")
    assert from_text.prompts == expected.prompts and from_text.name == "fork config"
    assert config.model.prompt_template == PROMPT_TEMPLATE


def test_top_k_species_becomes_top_k_classes_and_lists_the_most_frequent_first(data_dir):
    spec = spec_from_yaml(TOP_K_YAML, data_path=data_dir)
    assert spec.top_k_classes == 2 and spec.species == () and spec.num_beams == 2 and spec.max_new_tokens == 100
    (plan,) = plan_sweep(spec)
    assert plan.labels == ["Spotted Elachura", "Dall's Porpoise"]  # 4 rows, then 3 (a tie with Rare Bird, by name)
    assert len(plan.sample_ids) == 7


def test_species_restrict_the_data_and_are_listed_in_the_configured_order_unless_randomized(data_dir):
    yaml_text = (
        "extended:\n  datasets: [unseen-family-cmn]\n  lora_scales: [1.0]\n  queries:\n"
        '    - "Output one of: {species_list}\\n\\n{examples}\\n\\nAudio: <Audio><AudioHere></Audio>\\nLabel:"\n'
        '    - "Pick one of: {species_list}{randomize}"\n'
        "  species:\n    - name: Dall's Porpoise\n      description: clicks\n    - name: Spotted Elachura\n"
    )
    spec = spec_from_yaml(yaml_text, data_path=data_dir)
    (plan,) = plan_sweep(spec)
    assert plan.labels == ["Dall's Porpoise", "Spotted Elachura"]
    assert len(plan.sample_ids) == 7  # the 3 Rare Bird rows are left out
    texts = [[item.prompt_text for item in sample_items(spec, plan, i)] for i in plan.sample_ids]
    # Without {randomize}: the configured order, with the descriptions, the same for every sample.
    assert {fixed for fixed, _ in texts} == {
        "Output one of: Dall's Porpoise, Spotted Elachura\n\nAudio: clicks\nLabel: Dall's Porpoise\n\n"
        "Audio: \nLabel: Spotted Elachura\n\nAudio: <Audio><AudioHere></Audio>\nLabel:"
    }
    # With {randomize}: each sample its own seeded order, the marker itself removed.
    assert {shuffled for _, shuffled in texts} == {
        "Pick one of: Dall's Porpoise, Spotted Elachura",
        "Pick one of: Spotted Elachura, Dall's Porpoise",
    }
    assert texts == [[item.prompt_text for item in sample_items(spec, plan, i)] for i in plan.sample_ids]


def test_species_and_top_k_species_together_are_refused():
    both = TOP_K_YAML + "  species:\n    - name: Spotted Elachura\n      description: chirps\n"
    with pytest.raises(ForkConfigError, match=r"species and extended\.top_k_species are mutually exclusive"):
        spec_from_yaml(both)


@pytest.mark.parametrize(
    ("original", "replacement", "named"),
    [
        ("  n_examples: 5", "  n_exemples: 5", "extended.n_exemples"),
        ("  num_beams: 3", "  num_beam: 3", "generate.num_beam"),
        ("  lora_rank: 32", "  lora_rang: 32", "model.lora_rang"),
        ("    encoder_layers: 12", "    encoder_layer: 12", "model.beats_cfg.encoder_layer"),
        ("generate:", "experiment: 1\ngenerate:", "experiment"),
        ('      description: "[high-pitched clicks and whistles]"', "      colour: grey", "colour"),
    ],
)
def test_unknown_keys_are_named(original, replacement, named):
    assert original in FORK_YAML
    with pytest.raises(ForkConfigError, match=named):
        spec_from_yaml(FORK_YAML.replace(original, replacement))


@pytest.mark.parametrize(
    ("original", "replacement", "message"),
    [
        ("  do_sample: False", "  do_sample: True", "do_sample"),
        ("  length_penalty: 1.0", "  length_penalty: 2.0", "length_penalty"),
        ("  min_length: 1", "  min_length: 20", "min_length"),
        ("  num_beams: 3", "  num_beams: 0", "num_beams"),
        ("    - 0.4\n", "    - 1.4\n", r"must lie in \[0, 1\]"),
        ("  n_examples: 5", "  n_examples: -1", "n_examples"),
        ("  lora_scales:\n    - 0.0\n    - 0.4\n    - 1.0\n", "", "lora_scales is missing"),
        ("Label:{randomize}", "Label:{species}", "unknown placeholder"),
        ("model:", "model: [", "not valid YAML"),
    ],
)
def test_settings_that_cannot_be_honoured_are_refused_by_key(original, replacement, message):
    assert original in FORK_YAML
    with pytest.raises(ForkConfigError, match=message):
        spec_from_yaml(FORK_YAML.replace(original, replacement))


def test_top_k_species_needs_a_single_data_set_and_queries_are_required():
    with pytest.raises(ForkConfigError, match="single data set"):
        spec_from_yaml(TOP_K_YAML.replace('["unseen-family-cmn"]', '["unseen-family-cmn", "zf-indiv"]'))
    with pytest.raises(ForkConfigError, match="queries is missing"):
        spec_from_yaml("extended:\n  datasets: [watkins]\n  lora_scales: [1.0]\n")
    with pytest.raises(ForkConfigError, match="does not exist"):
        spec_from_yaml("no_such_config.yml")


def test_the_command_line_runs_a_fork_config(data_dir, tiny_checkpoint, tmp_path, capsys):
    config = tmp_path / "zf_indiv.yml"
    config.write_text(
        "generate:\n  max_new_tokens: 4\n  num_beams: 1\nextended:\n  datasets: [zf-indiv]\n"
        '  queries:\n    - "How many birds are there in the audio?"\n  lora_scales: [0.0, 1.0]\n'
    )
    runs = tmp_path / "runs"
    argv = [str(config), "--data-path", str(data_dir), "--limit", "2", "--runs-dir", str(runs)]
    argv += ["--model", str(tiny_checkpoint), "--device", "cpu"]
    assert main(argv) == EXIT_COMPLETE
    spec = spec_from_yaml(config, data_path=data_dir, limit=2)
    records = SweepFolder(runs, spec.sweep_id).results.read()
    assert sorted((r["prompt_name"], r["alpha"]) for r in records) == [("0", 0.0), ("0", 0.0), ("0", 1.0), ("0", 1.0)]
    config.write_text(config.read_text() + "  top_k_species: 1\n  species: [One]\n")
    assert main(argv) == EXIT_BAD_INPUT
    assert "mutually exclusive" in capsys.readouterr().err
