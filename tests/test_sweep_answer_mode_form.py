"""The New sweep form's answer mode: generate by default, likelihood on request, refused on a Ray cluster."""

from __future__ import annotations

import pytest

from evaluation.backend_choice import THIS_MACHINE, SweepBackends
from evaluation.sweep import AnswerMode, SweepQueue
from evaluation.sweep_forms import SweepForm, SweepFormError, spec_from_form
from ui.sweeps_service import SweepsService

BASE_FORM = {"name": "s", "source": "beans-zero", "subsets": ["watkins"], "presets": ["common"]}


def test_the_form_answers_by_generating_unless_told_otherwise(tmp_path):
    assert spec_from_form(SweepForm(**BASE_FORM), tmp_path).answer_mode is AnswerMode.GENERATE
    spec = spec_from_form(SweepForm(**BASE_FORM, answer_mode="likelihood"), tmp_path)
    assert spec.answer_mode is AnswerMode.LIKELIHOOD
    with pytest.raises(SweepFormError, match="unknown answer mode"):
        spec_from_form(SweepForm(**BASE_FORM, answer_mode="guess"), tmp_path)
    assert "answer_mode" in SweepForm.field_names()


def test_a_likelihood_sweep_is_refused_on_a_ray_cluster_before_anything_starts(tmp_path):
    runs = tmp_path / "runs"
    service = SweepsService(SweepBackends(SweepQueue(None, runs), source="tiny"), zero_gpu=False)
    assert THIS_MACHINE != "Ray cluster"
    with pytest.raises(SweepFormError, match="this machine only"):
        service.start(SweepForm(**BASE_FORM, answer_mode="likelihood"), "Ray cluster", "ray://127.0.0.1:1")
