"""benchmarks/ab.py on a throwaway git repository whose benchmarks/gpu.py is a stand-in: worktrees per ref, rounds
that alternate the trees, the figures picked per tree and round, a failed run reported without stopping the rest."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from benchmarks import ab

STAND_IN = textwrap.dedent(
    """
    import argparse, json, os, pathlib
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args, rest = parser.parse_known_args()
    version = pathlib.Path("VERSION").read_text().strip()
    with open(os.environ["AB_LOG"], "a") as log:
        log.write(version + "\\n")
    if version == "broken":
        raise SystemExit("no GPU here")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True)
    results = {"sweep": {"ours": {"answers_per_s": float(version)}}, "other": {"argv": rest}}
    (out / "results.json").write_text(json.dumps(results))
    """
)


def _git(repository, *arguments):
    subprocess.run(["git", "-C", str(repository), *arguments], check=True, capture_output=True)


@pytest.fixture
def repository(tmp_path):
    """main (VERSION 1.5), a branch `fast/one` (2.5) and a branch `broken` whose benchmark fails."""
    repository = tmp_path / "repository"
    (repository / "benchmarks").mkdir(parents=True)
    (repository / "benchmarks" / "gpu.py").write_text(STAND_IN)
    _git(repository, "init", "-q", "-b", "main")
    for ref, version in (("main", "1.5"), ("fast/one", "2.5"), ("broken", "broken")):
        if ref != "main":
            _git(repository, "checkout", "-q", "-b", ref, "main")
        (repository / "VERSION").write_text(version)
        _git(repository, "add", "-A")
        _git(repository, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", version)
    _git(repository, "checkout", "-q", "main")
    return repository


def test_rounds_alternate_the_trees_and_keep_the_chosen_figures(repository, tmp_path, monkeypatch):
    trees, log = tmp_path / "trees", tmp_path / "order.log"
    monkeypatch.setenv("AB_LOG", str(log))
    folders = ab.prepare(["main", "fast/one"], trees=trees, repository=repository)
    assert [folder.name for folder in folders] == ["main", "fast-one"]
    figures = ab.run(["--sections", "sweep"], rounds=2, out=tmp_path / "out", keys=r"^sweep\.", trees=trees)
    assert log.read_text().split() == ["1.5", "2.5", "1.5", "2.5"]  # A, B, A, B: never A, A, B, B
    assert figures == {
        "main": [{"sweep.ours.answers_per_s": 1.5}] * 2,
        "fast-one": [{"sweep.ours.answers_per_s": 2.5}] * 2,
    }
    assert json.loads((tmp_path / "out" / "ab.json").read_text()) == figures
    rendered = ab.table(figures)
    assert "| figure | main #1 | fast-one #1 | main #2 | fast-one #2 |" in rendered
    assert "| sweep.ours.answers_per_s | 1.5 | 2.5 | 1.5 | 2.5 |" in rendered


def test_gpu_arguments_reach_every_run_and_a_failed_tree_does_not_stop_the_others(repository, tmp_path, monkeypatch):
    trees = tmp_path / "trees"
    monkeypatch.setenv("AB_LOG", str(tmp_path / "order.log"))
    ab.prepare(["broken", "main"], trees=trees, repository=repository)
    monkeypatch.chdir(tmp_path)  # a relative --out is the caller's, not each tree's
    figures = ab.run(["--sweep-ours-only"], rounds=1, out=Path("out"), keys=r"^other\.", trees=trees)
    assert figures["main"] == [{"other.argv": ["--sweep-ours-only"]}]
    (failed,) = figures["broken"]
    assert failed["exit_status"] != 0 and "no GPU here" in failed["output_end"]
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())  # every figure, the failure too
    assert runs["main"] == [{"sweep.ours.answers_per_s": 1.5, "other.argv": ["--sweep-ours-only"]}]
    assert runs["broken"] == figures["broken"]


def test_out_holds_two_files_whatever_the_trees_and_rounds(repository, tmp_path, monkeypatch):
    """The device returns at most 8 files from $OUT: an A/B leaves room for a whole gpu.py run in the same call."""
    trees = tmp_path / "trees"
    monkeypatch.setenv("AB_LOG", str(tmp_path / "order.log"))
    ab.prepare(["main", "fast/one"], trees=trees, repository=repository)
    ab.run([], rounds=3, out=tmp_path / "out", keys=r"^sweep\.", trees=trees)
    assert sorted(path.name for path in (tmp_path / "out").rglob("*")) == ["ab.json", "runs.json"]
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert [len(runs[name]) for name in ("main", "fast-one")] == [3, 3]


def test_prepare_replaces_an_old_tree_and_refuses_two_refs_of_one_folder(repository, tmp_path):
    trees = tmp_path / "trees"
    ab.prepare(["main"], trees=trees, repository=repository)
    (trees / "main" / "VERSION").write_text("edited")
    ab.prepare(["main"], trees=trees, repository=repository)
    assert (trees / "main" / "VERSION").read_text() == "1.5"
    with pytest.raises(ValueError, match="one folder name"):
        ab.prepare(["fast/one", "fast-one"], trees=trees, repository=repository)


def test_bad_input_gets_a_message_and_no_run(repository, tmp_path, monkeypatch, capsys):
    trees = tmp_path / "trees"
    monkeypatch.setenv("AB_LOG", str(tmp_path / "order.log"))
    with pytest.raises(ValueError, match="prepare REF"):  # nothing prepared yet
        ab.run([], rounds=1, out=tmp_path / "out", trees=trees)
    ab.prepare(["main"], trees=trees, repository=repository)
    with pytest.raises(RuntimeError, match="invalid reference: no-such-ref"):
        ab.prepare(["main", "no-such-ref"], trees=trees, repository=repository)
    with pytest.raises(ValueError, match="prepare REF"):  # the failed prepare left no list of the old trees
        ab.run([], rounds=1, out=tmp_path / "out", trees=trees)
    ab.prepare(["main", "fast/one"], trees=trees, repository=repository)
    subprocess.run(["git", "-C", str(repository), "worktree", "remove", "--force", str(trees / "fast-one")], check=True)
    with pytest.raises(ValueError, match=r"not there .*\['fast-one'\]"):
        ab.run([], rounds=1, out=tmp_path / "out", trees=trees)
    with pytest.raises(ValueError, match="not a regular expression"):
        ab.run([], rounds=1, out=tmp_path / "out", keys="(", trees=trees)
    assert not (tmp_path / "order.log").exists()  # no benchmark ran
    with pytest.raises(SystemExit) as exit_info:
        ab.main(["run", "--rounds", "0"])
    assert exit_info.value.code == 2 and "--rounds must be at least 1" in capsys.readouterr().err
