"""`python -m evaluation.score`: the paper's Watkins numbers reproduced, our results files, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.prompts import COMMON, SCIENTIFIC
from evaluation.reference import load_label_mapping, read_reference_folder, write_reference_folder
from evaluation.results import ResultRow, write_results
from evaluation.score import main
from evaluation.scoring import Outcome, score_rows

SUMMARY_KEYS = {"accuracy", "f1_weighted", "f1_macro", "out_of_set", "in_set_confusion", "abstention"}
GROUP_KEYS = SUMMARY_KEYS | {"official", "ties"}
OFFICIAL_NAMES = ["Accuracy", "Precision", "Recall", "F1 Score", "Top-1 Accuracy"]
QUERY_KINDS = {"0": "common", "1": "scientific", "2": "combined"}


def run_json(capsys, *args):
    assert main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def watkins(shared_dir):
    results = shared_dir / "reference" / "paper_results"
    return (
        results / "watkins",
        results / "watkins_vernacular_scientific_mapping.jsonl",
        results / "watkins_expected.json",
    )


def test_paper_mode_reproduces_the_released_watkins_numbers(watkins, capsys):
    folder, mapping, expected_path = watkins
    scored = run_json(capsys, folder, "--mode", "paper", "--mapping", mapping)["watkins"]
    expected = json.loads(expected_path.read_text())
    checked = 0
    for query, kind in QUERY_KINDS.items():
        assert set(scored[query]) == set(expected["accuracy"][kind])
        for alpha, accuracy in expected["accuracy"][kind].items():
            assert scored[query][alpha]["accuracy"] == pytest.approx(accuracy, abs=0.003), (kind, alpha)
            f1 = expected["weighted_f1"][kind][alpha]
            assert scored[query][alpha]["f1_weighted"] == pytest.approx(f1, abs=0.0065), (kind, alpha)
            checked += 1
    assert checked == 33


def test_mapping_beside_the_folder_is_found_without_the_flag(watkins, capsys):
    folder, mapping, _ = watkins
    found = run_json(capsys, folder, "--mode", "paper")
    given = run_json(capsys, folder, "--mode", "paper", "--mapping", mapping)
    assert found == given


def test_robust_mode_credits_what_the_paper_marks_out_of_set(watkins):
    folder, mapping_path, _ = watkins
    rows = read_reference_folder(folder)
    mapping = load_label_mapping(mapping_path)
    paper = {(s.prompt_name, s.alpha): s for s in score_rows(rows, "paper", mapping)}
    robust = {(s.prompt_name, s.alpha): s for s in score_rows(rows, "robust", mapping)}
    rescued = 0
    for key, score in robust.items():
        assert score.metrics.accuracy >= paper[key].metrics.accuracy - 1e-9, key
        outcome_in_paper = {answer.id: answer.outcome for answer in paper[key].answers}
        rescued += sum(
            answer.outcome is Outcome.CORRECT and outcome_in_paper[answer.id] is Outcome.OUT_OF_SET
            for answer in score.answers
        )
    assert rescued > 0


def test_our_results_file_gives_the_documented_json_shape(tmp_path, capsys):
    rows = [
        ResultRow("1", "garden", "common", COMMON.template, 0.0, "robin", "Robin"),
        ResultRow("2", "garden", "common", COMMON.template, 0.0, "I cannot tell", "Jay"),
        ResultRow("1", "garden", "common", COMMON.template, 0.5, "The robin.", "Robin"),
        ResultRow("2", "garden", "common", COMMON.template, 0.5, "Blue jay", "Jay"),
    ]
    write_results(rows, tmp_path / "results.jsonl")
    for mode in ("official", "paper", "robust"):
        scored = run_json(capsys, tmp_path / "results.jsonl", "--mode", mode)
        assert list(scored) == ["garden"] and list(scored["garden"]) == ["common"]
        assert set(scored["garden"]["common"]) == {"0.0", "0.5"}
        for metrics in scored["garden"]["common"].values():
            assert set(metrics) == GROUP_KEYS
            assert (metrics["official"] is None) == (mode != "official")
            assert (metrics["ties"] is None) == (mode == "robust")
    official = run_json(capsys, tmp_path / "results.jsonl", "--mode", "official")["garden"]["common"]["0.5"]
    assert list(official["official"]) == OFFICIAL_NAMES
    assert official["ties"]["orders"] == 33
    robust = run_json(capsys, tmp_path / "results.jsonl", "--mode", "robust")["garden"]["common"]
    assert robust["0.0"]["abstention"] == 0.5
    # "Blue jay" is 4 edits from "Jay": the paper snaps it there, robust finds no such species.
    assert robust["0.5"]["accuracy"] == 0.5


def test_official_mode_never_maps_whether_or_not_a_mapping_is_beside(watkins, tmp_path, capsys):
    folder, mapping, _ = watkins
    assert main([str(folder), "--mode", "official", "--json"]) == 0  # the paper's mapping lies beside the folder
    beside = capsys.readouterr()
    write_reference_folder(read_reference_folder(folder), tmp_path / "alone")
    assert main([str(tmp_path / "alone"), "--mode", "official", "--json"]) == 0
    alone = capsys.readouterr()
    assert (
        json.loads(beside.out)
        == json.loads(alone.out)
        == run_json(capsys, folder, "--mode", "official", "--mapping", mapping)
    )
    # Both say why scientific answers score low: official scoring compares them with the raw labels.
    assert beside.err == alone.err and beside.err.count("applies no label mapping") == 2
    beside = json.loads(beside.out)
    # Scientific-name answers against common-name labels: what BEANS-Zero's own number is.
    assert beside["watkins"]["1"]["1.0"]["official"]["Accuracy"] < 0.1


def test_official_json_carries_every_official_metric_with_its_tie_range(watkins, capsys):
    folder, _, _ = watkins
    scored = run_json(capsys, folder, "--mode", "official")["watkins"]
    tied = []
    for alphas in scored.values():
        for group in alphas.values():
            assert list(group["official"]) == OFFICIAL_NAMES
            ranges = group["ties"]["ranges"]
            for name, value in group["official"].items():
                assert ranges[name][0] <= value <= ranges[name][1]
            tied.append(group["ties"]["tied_answers"])
    assert min(tied) > 0  # every released Watkins file has answers with tied nearest labels


def test_table_names_the_official_metrics_and_their_tie_ranges(tmp_path, capsys):
    rows = [
        ResultRow("1", "garden", "common", COMMON.template, 1.0, "hat", "cat"),
        ResultRow("2", "garden", "common", COMMON.template, 1.0, "rat", "rat"),
    ]
    write_results(rows, tmp_path / "results.jsonl")
    assert main([str(tmp_path / "results.jsonl"), "--mode", "official"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    # "hat" is one edit from cat and from rat: the sorted order says cat, another order rat.
    assert "Accuracy=1.000 [0.500, 1.000]" in line and "Top-1 Accuracy=1.000 [0.500, 1.000]" in line
    assert main([str(tmp_path / "results.jsonl"), "--mode", "paper"]) == 0
    assert "accuracy ties [0.500, 1.000]" in capsys.readouterr().out


def test_scientific_prompts_without_a_mapping_warn(tmp_path, capsys):
    rows = [ResultRow("1", "garden", "sci", SCIENTIFIC.template, 1.0, "Turdus migratorius", "Robin")]
    write_reference_folder(rows, tmp_path / "released")
    assert main([str(tmp_path / "released"), "--mode", "paper"]) == 0
    captured = capsys.readouterr()
    assert "no label mapping" in captured.err
    (tmp_path / "garden_vernacular_scientific_mapping.jsonl").write_text(
        '{"label": "Robin", "scientific_name": "Turdus migratorius"}\n'
    )
    scored = run_json(capsys, tmp_path / "released", "--mode", "paper")
    assert scored["garden"]["0"]["1.0"]["accuracy"] == 1.0


def test_table_output_and_errors(tmp_path, capsys):
    rows = [ResultRow("1", "garden", "common", COMMON.template, 1.0, "Robin", "Robin")]
    write_results(rows, tmp_path / "results.jsonl")
    assert main([str(tmp_path / "results.jsonl"), "--mode", "official"]) == 0
    table = capsys.readouterr().out
    assert "garden" in table and "1.000" in table
    assert main([str(tmp_path / "absent"), "--mode", "paper"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "torn.jsonl").write_text('{"id": "1", "dataset": "g", "prompt_na')
    assert main([str(tmp_path / "torn.jsonl")]) == 2
    assert "torn.jsonl:1" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path):
    write_results([ResultRow("1", "garden", "common", COMMON.template, 1.0, "Robin", "Robin")], tmp_path / "r.jsonl")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "evaluation.score", str(tmp_path / "r.jsonl"), "--mode", "robust", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["garden"]["common"]["1.0"]["accuracy"] == 1.0
