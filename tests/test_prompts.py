"""The paper's prompts, the per-sample seeded shuffle of the closed-set list, custom templates, kind detection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.prompts import (
    CLOSED_SET,
    COMBINED,
    COMBINED_RELEASED,
    COMMON,
    PAPER_PROMPTS,
    SCIENTIFIC,
    ZF_HOW_MANY,
    PromptKind,
    PromptTemplateError,
    custom_prompt,
    detect_prompt_kind,
    shuffled_labels,
)

LABELS = [f"species {i:02d}" for i in range(30)]
RELEASED_COMBINED_TEXT = (
    "<|start_header_id|>user<|end_header_id|>\n\n<Audio><AudioHere></Audio> Identify the focal species in the audio "
    "and provide its taxonomic name followed by a colon and its common name.<|eot_id|>"
)


def test_prompt_kinds_are_read_from_the_text():
    assert COMMON.kind is PromptKind.COMMON
    assert SCIENTIFIC.kind is PromptKind.SCIENTIFIC
    assert COMBINED.kind is PromptKind.COMBINED
    assert COMBINED_RELEASED.kind is PromptKind.COMBINED
    assert detect_prompt_kind(RELEASED_COMBINED_TEXT) is PromptKind.COMBINED
    assert CLOSED_SET.kind is PromptKind.COMMON
    assert ZF_HOW_MANY.kind is PromptKind.COMMON
    assert detect_prompt_kind("Give the SCIENTIFIC NAME of this animal") is PromptKind.SCIENTIFIC


def test_paper_prompts_are_keyed_by_their_names():
    assert all(name == prompt.name for name, prompt in PAPER_PROMPTS.items())
    assert len(PAPER_PROMPTS) == len({prompt.template for prompt in PAPER_PROMPTS.values()})


def test_closed_set_lists_every_label_once_in_a_per_sample_order():
    first = CLOSED_SET.render("sample-a", LABELS, seed=7)
    assert first.startswith("What is the common name for the focal species in the audio? Output exactly one of: ")
    listed = first.split("Output exactly one of: ")[1].split(", ")
    assert sorted(listed) == sorted(LABELS)
    assert CLOSED_SET.render("sample-a", LABELS, seed=7) == first
    assert CLOSED_SET.render("sample-a", list(reversed(LABELS)), seed=7) == first  # caller's order is irrelevant
    others = {CLOSED_SET.render(f"sample-{i}", LABELS, seed=7) for i in range(20)}
    assert len(others) == 20
    assert CLOSED_SET.render("sample-a", LABELS, seed=8) != first


def test_shuffle_does_not_depend_on_python_hash_randomisation():
    code = "from evaluation.prompts import shuffled_labels; print(shuffled_labels(list('abcdefghij'), 3, 'id-1'))"
    root = Path(__file__).resolve().parents[1]
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert outputs == {f"{shuffled_labels(list('abcdefghij'), 3, 'id-1')}\n"}


def test_custom_templates_fill_only_the_species_list():
    prompt = custom_prompt("pick", "Which of these is calling: {species_list}? Answer in {{braces}}.")
    text = prompt.render("x", ["b", "a"], seed=0, separator=" | ")
    assert text.endswith("? Answer in {braces}.")
    assert set(text.split(": ")[1].split("?")[0].split(" | ")) == {"a", "b"}
    plain = custom_prompt("plain", "What animal is this?")
    assert plain.render() == "What animal is this?"


def test_bad_templates_are_refused():
    with pytest.raises(PromptTemplateError, match="species"):
        custom_prompt("x", "Is it {species}?")
    with pytest.raises(PromptTemplateError, match="malformed"):
        custom_prompt("x", "Is it {species_list?")
    with pytest.raises(PromptTemplateError, match="name"):
        custom_prompt(" ", "What is it?")
    with pytest.raises(PromptTemplateError, match="no labels"):
        CLOSED_SET.render("id", [])
