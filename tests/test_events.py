"""Window answers -> events: consecutive equal answers merge, absences and gaps split, alphas stay apart."""

from __future__ import annotations

import subprocess
import sys

import pytest

from naturelm_core.events import Event, WindowAnswer, alpha_text, merge_events, normalise_answer


def _answers(texts: list[str], hop_s: float = 10.0, window_s: float = 10.0, alpha: str = "1") -> list[WindowAnswer]:
    return [WindowAnswer(i * hop_s, i * hop_s + window_s, alpha, text) for i, text in enumerate(texts)]


def test_consecutive_windows_with_one_normalised_answer_are_one_event():
    events = merge_events(_answers(["Common loon.", "common loon", '"Common Loon"', "Wolf", "wolf!"]))
    assert events == (
        Event(0.0, 30.0, "1", "Common loon.", 3),  # the label is the first window's answer
        Event(30.0, 50.0, "1", "Wolf", 2),
    )


def test_answers_meaning_nothing_are_absences_that_split_events():
    events = merge_events(_answers(["Wolf", "None", "No animal.", "", "Wolf", "nothing"]))
    assert [(e.start_s, e.end_s, e.label) for e in events] == [(0.0, 10.0, "Wolf"), (40.0, 50.0, "Wolf")]


def test_the_absent_answers_are_configurable():
    texts = ["Wind", "Wolf", "wind."]
    assert [e.label for e in merge_events(_answers(texts), absent=["wind"])] == ["Wolf"]


def test_overlapping_windows_merge_into_one_span_and_gaps_never_merge():
    overlapping = merge_events(_answers(["Elk", "Elk", "Elk"], hop_s=5.0))
    assert [(e.start_s, e.end_s, e.windows) for e in overlapping] == [(0.0, 20.0, 3)]
    gapped = merge_events(_answers(["Elk", "Elk"], hop_s=8.0, window_s=5.0))  # 5-8 s was never heard
    assert [(e.start_s, e.end_s) for e in gapped] == [(0.0, 5.0), (8.0, 13.0)]


def test_alphas_merge_separately_and_sort_by_time_then_alpha_order():
    windows = _answers(["Elk", "Elk", "Wolf"], alpha="0.5") + _answers(["Wolf", "Wolf", "Wolf"], alpha="0")
    events = merge_events(reversed(windows), alpha_order=["0.5", "0"])
    assert [(e.start_s, e.end_s, e.alpha, e.label) for e in events] == [
        (0.0, 20.0, "0.5", "Elk"),
        (0.0, 30.0, "0", "Wolf"),
        (20.0, 30.0, "0.5", "Wolf"),
    ]


def test_labels_are_one_line_and_confidence_is_never_invented():
    (event,) = merge_events(_answers(["Common\nloon\t calls"]))
    assert event.label == "Common loon calls"
    assert event.confidence is None


def test_normalise_answer_ignores_case_quotes_markdown_dashes_and_end_punctuation():
    assert normalise_answer('  **"Red-winged  Blackbird."** ') == "red winged blackbird"


@pytest.mark.parametrize(
    ("alpha", "text"),
    [(0.5, "0.5"), (1, "1"), (0.30000000000000004, "0.3"), ({"recipe": "ties"}, "{'recipe': 'ties'}")],
)
def test_alpha_text_formats_numbers_and_passes_recipes_through_str(alpha, text):
    assert alpha_text(alpha) == text


def test_events_and_exports_need_no_torch():
    code = "import sys, naturelm_core.events, naturelm_core.annotations; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
