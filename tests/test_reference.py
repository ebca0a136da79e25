"""The paper's released layout: file names, reading, writing our sweeps out in it, and its label mapping."""

from __future__ import annotations

import json

import pytest

from evaluation.reference import (
    MappingError,
    ReferenceFormatError,
    find_mapping_beside,
    find_reference_files,
    load_label_mapping,
    parse_reference_name,
    read_reference_folder,
    reference_file_name,
    write_reference_folder,
)
from evaluation.results import ResultRow, read_results, write_results


def rows_for(prompt_name, prompt, alphas=(0.0, 0.3, 1.0)):
    return [
        ResultRow(f"id-{i}", dataset, prompt_name, prompt, alpha, f"answer {i} at {alpha}", f"label {i % 2}")
        for dataset in ("unseen-species-cmn", "watkins")
        for alpha in alphas
        for i in range(3)
    ]


def test_file_names_round_trip_including_hyphenated_datasets():
    assert reference_file_name("watkins", 2, 0.3) == "beans_zero_eval_watkins_query2_lora030.jsonl"
    parsed = parse_reference_name("beans_zero_eval_unseen-family-sci_query11_lora075.jsonl")
    assert (parsed.dataset, parsed.query, parsed.alpha, parsed.prompt_name) == ("unseen-family-sci", 11, 0.75, "11")
    for alpha in (0.0, 0.07, 0.29, 0.57, 1.0, 1.5):  # int(100 * 0.29) would be 28
        assert parse_reference_name(reference_file_name("x", 0, alpha)).alpha == pytest.approx(alpha)
    with pytest.raises(ReferenceFormatError, match=r"multiple of 0\.01"):
        reference_file_name("x", 0, 0.125)
    with pytest.raises(ReferenceFormatError, match="not named"):
        parse_reference_name("results.jsonl")


def test_write_then_read_round_trip(tmp_path):
    rows = rows_for("3", "What is the common name?") + rows_for("common", "What is it?")
    queries = write_reference_folder(rows, tmp_path)
    assert queries == {"3": 3, "common": 0}
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 2 * 2 * 3 and "beans_zero_eval_watkins_query3_lora030.jsonl" in names
    first = json.loads((tmp_path / "beans_zero_eval_watkins_query0_lora100.jsonl").read_text().splitlines()[0])
    assert set(first) == {"prediction", "label", "id", "dataset_name", "prompt", "lora_scale"}
    back = read_reference_folder(tmp_path)
    renamed = {"3": "3", "common": "0"}
    expected = sorted((r.dataset, renamed[r.prompt_name], r.alpha, r.id, r.prediction, r.label, r.prompt) for r in rows)
    assert sorted((r.dataset, r.prompt_name, r.alpha, r.id, r.prediction, r.label, r.prompt) for r in back) == expected


def test_reading_checks_the_rows(tmp_path):
    path = tmp_path / reference_file_name("watkins", 0, 0.5)
    path.write_text(json.dumps({"prediction": "a", "label": "b", "id": "1", "lora_scale": 0.6}) + "\n")
    with pytest.raises(ReferenceFormatError, match="disagrees"):
        read_reference_folder(tmp_path)
    path.write_text(json.dumps({"prediction": "a", "id": "1"}) + "\n")
    with pytest.raises(ReferenceFormatError, match="label"):
        read_reference_folder(tmp_path)
    path.unlink()
    (tmp_path / "notes.txt").write_text("not a result")
    with pytest.raises(ReferenceFormatError, match="holds no"):
        read_reference_folder(tmp_path)
    assert find_reference_files(tmp_path) == []


def test_results_rows_round_trip_and_errors(tmp_path):
    rows = rows_for("closed_set", "Output exactly one of: a, b")
    write_results(rows, tmp_path / "results.jsonl")
    assert list(read_results(tmp_path / "results.jsonl")) == rows
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "1", "dataset": "w"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: results row lacks \['prompt_name'"):
        list(read_results(tmp_path / "bad.jsonl"))


def test_label_mapping_jsonl_and_csv(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        "\n".join(
            json.dumps(record)
            for record in [
                {"label": "Walrus", "scientific_name": "Scientific name not found"},
                {
                    "label": "Harp Seal",
                    "scientific_name": "Phoca groenlandica",
                    "synonyms": ["Pagophilus groenlandicus"],
                },
            ]
        )
    )
    mapping = load_label_mapping(tmp_path / "m.jsonl")
    assert mapping.scientific_name("Walrus") == "Scientific name not found"
    assert mapping.known_scientific_name("Walrus") is None
    assert mapping.accepted_names("Harp Seal") == ("Phoca groenlandica", "Pagophilus groenlandicus")
    assert mapping.missing(["Walrus", "Narwhal"]) == ["Narwhal"]
    with pytest.raises(MappingError, match="Narwhal"):
        mapping.scientific_name("Narwhal")

    (tmp_path / "m.csv").write_text(
        "label,scientific_name,synonyms\nGreater Yellowlegs,Tringa melanoleuca,Scolopax melanoleuca|Totanus\n"
    )
    csv_mapping = load_label_mapping(tmp_path / "m.csv")
    assert csv_mapping.accepted_names("Greater Yellowlegs") == ("Tringa melanoleuca", "Scolopax melanoleuca", "Totanus")
    assert mapping.merged(csv_mapping).missing(["Walrus", "Greater Yellowlegs"]) == []


def test_label_mapping_errors(tmp_path):
    (tmp_path / "dup.jsonl").write_text(
        '{"label": "A", "scientific_name": "X y"}\n{"label": "A", "scientific_name": "Z w"}\n'
    )
    with pytest.raises(MappingError, match="mapped twice"):
        load_label_mapping(tmp_path / "dup.jsonl")
    (tmp_path / "bad.csv").write_text("common,latin\nA,X y\n")
    with pytest.raises(MappingError, match="lacks columns"):
        load_label_mapping(tmp_path / "bad.csv")
    (tmp_path / "field.jsonl").write_text('{"label": "A"}\n')
    with pytest.raises(MappingError, match=r"field\.jsonl:1"):
        load_label_mapping(tmp_path / "field.jsonl")
    with pytest.raises(MappingError, match="does not exist"):
        load_label_mapping(tmp_path / "absent.jsonl")


def test_mapping_found_beside_a_released_folder(tmp_path):
    folder = tmp_path / "watkins"
    folder.mkdir()
    (tmp_path / "watkins_vernacular_scientific_mapping.jsonl").write_text(
        '{"label": "Walrus", "scientific_name": "Odobenus rosmarus"}\n'
    )
    found = find_mapping_beside(folder, ["watkins"])
    assert found is not None and found.scientific_name("Walrus") == "Odobenus rosmarus"
    assert find_mapping_beside(folder, ["cbi"]) is None


def test_the_released_watkins_folder_reads_whole(shared_dir):
    folder = shared_dir / "reference" / "paper_results" / "watkins"
    rows = read_reference_folder(folder)
    assert len(rows) == 33 * 339
    assert {row.prompt_name for row in rows} == {"0", "1", "2"}
    assert sorted({row.alpha for row in rows}) == pytest.approx([i / 10 for i in range(11)])
    first_ids = [row.id for row in rows if row.prompt_name == "0" and row.alpha == 0.0]
    assert first_ids == [row.id for row in rows if row.prompt_name == "2" and row.alpha == 1.0]
