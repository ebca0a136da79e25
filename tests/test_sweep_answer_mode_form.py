"""The New sweep form's answer mode: generate by default, likelihood on request, on this machine or a Ray cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.backend_choice import RAY_CLUSTER, SweepBackends
from evaluation.sweep import AnswerMode, SweepQueue
from evaluation.sweep_forms import SweepForm, SweepFormError, spec_from_form
from tests.sweep_helpers import RecordingQueue
from ui.sweeps_service import SweepsService

BASE_FORM = {"name": "s", "source": "beans-zero", "subsets": ["watkins"], "presets": ["common"]}


def test_the_form_answers_by_generating_unless_told_otherwise(tmp_path):
    assert spec_from_form(SweepForm(**BASE_FORM), tmp_path).answer_mode is AnswerMode.GENERATE
    spec = spec_from_form(SweepForm(**BASE_FORM, answer_mode="likelihood"), tmp_path)
    assert spec.answer_mode is AnswerMode.LIKELIHOOD
    with pytest.raises(SweepFormError, match="unknown answer mode"):
        spec_from_form(SweepForm(**BASE_FORM, answer_mode="guess"), tmp_path)
    assert "answer_mode" in SweepForm.field_names()


class RecordingBackends(SweepBackends):
    """The app's backend choice with a RecordingQueue where the Ray pool would start."""

    def __init__(self, runs: Path) -> None:
        super().__init__(SweepQueue(None, runs), source="tiny")
        self.ray_queue = RecordingQueue()
        self.asked: list[tuple[str, str | None]] = []

    def queue_for(self, run_on: str, address: str | None) -> SweepQueue | RecordingQueue:
        self.asked.append((run_on, address))
        return self.ray_queue if run_on == RAY_CLUSTER else super().queue_for(run_on, address)


def test_a_likelihood_sweep_goes_to_a_ray_cluster_like_any_other(tmp_path):
    """The Ray pool scores labels as the local engine does, so "Run on: Ray cluster" no longer refuses them."""
    backends = RecordingBackends(tmp_path / "runs")
    service = SweepsService(backends, zero_gpu=False)
    queued = service.start(SweepForm(**BASE_FORM, answer_mode="likelihood"), RAY_CLUSTER, "ray://127.0.0.1:1")
    assert backends.asked == [(RAY_CLUSTER, "ray://127.0.0.1:1")]
    (spec,) = backends.ray_queue.specs
    assert spec.answer_mode is AnswerMode.LIKELIHOOD and queued.sweep_id == spec.sweep_id
