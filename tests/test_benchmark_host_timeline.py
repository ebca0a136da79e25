"""benchmarks/host_timeline.py's tracer: what it records while on, nothing while off, and the idle between calls."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest


def test_the_tracer_records_each_call_while_on_and_times_the_gaps_between_top_level_calls():
    from benchmarks.host_timeline import Tracer

    def inner() -> None:
        time.sleep(0.002)

    owner = SimpleNamespace(inner=inner)

    def outer() -> None:
        owner.inner()
        owner.inner()

    owner.outer = outer
    tracer = Tracer()
    tracer.wrap(owner, "inner", "inner")
    tracer.wrap(owner, "outer", "outer")
    owner.outer()  # off: nothing recorded
    assert tracer.records == []
    tracer.on = True
    owner.outer()
    time.sleep(0.01)  # between two top-level calls, on the CPU's stand-in clock
    owner.inner()
    summary, lines = tracer.report("case")
    per_label = summary["per_label"]
    assert per_label["outer"]["n"] == 1 and per_label["inner"]["n"] == 3
    nested = [float(line.split()[3]) for line in lines[2:] if line.split()[1] == "1"]
    assert len(nested) == 2 and per_label["outer"]["host_ms"] >= sum(nested)  # outer's time holds its inner calls'
    assert summary["gpu_ms_between_top_level_calls"] >= 9.0
    assert lines[0] == "## case" and len(lines) == 2 + 4
    assert [line.split()[1] for line in lines[2:]] == ["0", "1", "1", "0"]  # nesting depths, in call order
    assert tracer.records == []  # a report starts the next trace afresh


def test_without_an_output_folder_it_says_what_is_missing(capsys):
    from benchmarks.host_timeline import main

    with pytest.raises(SystemExit):
        main([])
    assert "the following arguments are required: out" in capsys.readouterr().err


def test_an_unknown_scenario_is_named_before_any_model_is_built(tmp_path, capsys):
    from benchmarks.host_timeline import main

    with pytest.raises(SystemExit):
        main([str(tmp_path), "--scenarios", "explore,file"])
    assert "unknown scenarios ['file']; choose from ('explore', 'sweep', 'files')" in capsys.readouterr().err
