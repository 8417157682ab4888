"""The RESULTS.md writers session 45's first fix left on whole sections (review of dd5a077,
other_writers.py): bench/allocator.py's `write_section` (the Allocator section, eviction
scaling, cluster.py) and bench/policies.py's (`--reference`, `--regret`, the tune, the
evaluation) replaced everything up to the next `## ` heading: 3165 lines and 64 hand-written
headings under "Eviction scaling with paused sessions", a session-43 note under "Cluster
routing (simulated)", the session 43/44 rerun notes under the reference and regret sections.
Each now writes its own marked block (bench/results_blocks.py) and refuses before its run
what the write would refuse after it; the evaluation adds each run as a section of its own.
Nothing is simulated: the runs are stubbed."""

from __future__ import annotations

import sys

import pytest

from tests.bench.test_policies import load
from tests.exits import usage_error

NOTE = "Rerun 2026-12-06 (session 44, by hand): the figures above moved; see the index."


def _doc(title: str) -> str:
    return (f"# Measured results\n\n{title}\n\nAn old run's table, pasted.\n\n### A session-43 "
            f"note (by hand)\n\n{NOTE}\n\n## Next section\n\nNot this writer's.\n")


def _kept(text: str, title: str) -> None:
    """Every hand-written line of `_doc(title)` is still there, in order, in its section."""
    head, rest = text.split("## Next section")
    assert head.startswith(_doc(title).split("## Next section")[0].rstrip("\n"))
    assert rest == "\n\nNot this writer's.\n"


def test_allocator_writers_keep_the_hand_written_notes_of_their_sections(tmp_path):
    allocator = load("allocator")
    scaling = load("eviction_scaling")
    path = tmp_path / "RESULTS.md"
    for title, writer in ((scaling.SCALING_SECTION, scaling.SCALING_WRITER),
                          ("## Cluster routing (simulated)", "bench/cluster.py")):
        path.write_text(_doc(title), encoding="utf-8")
        allocator.write_section(title, "FIRST RUN", path, writer)
        allocator.write_section(title, "SECOND RUN", path, writer)
        text = path.read_text(encoding="utf-8")
        _kept(text, title)
        assert "FIRST RUN" not in text and text.count("SECOND RUN") == 1
        assert text.count(f"<!-- begin: written by {writer} ") == 1
    allocator.write_results("## Allocator (`cmd`)\nbody one", path)
    allocator.write_results("## Allocator (`cmd`)\nbody two", path)
    text = path.read_text(encoding="utf-8")
    assert "body one" not in text and text.count("## Allocator (`cmd`)") == 1


def test_eviction_scaling_refuses_before_timing_when_its_section_is_ambiguous(
        tmp_path, monkeypatch):
    scaling = load("eviction_scaling")
    path = tmp_path / "RESULTS.md"
    path.write_text(f"{scaling.SCALING_SECTION}\n\na\n\n{scaling.SCALING_SECTION}\n\nb\n")
    monkeypatch.setattr(scaling, "RESULTS", path)

    def timed(*a, **k):
        raise AssertionError("timed before refusing")

    monkeypatch.setattr(scaling, "eviction_scaling", timed)
    from tests.bench.test_allocator_scaling import scaling_args
    with pytest.raises(SystemExit, match="2 sections are headed"):
        scaling.scaling_main(scaling_args(write_results=True))


def test_cluster_refuses_before_simulating_when_its_block_was_edited(tmp_path, monkeypatch):
    cluster = load("cluster")
    allocator = load("allocator")
    path = tmp_path / "RESULTS.md"
    path.write_text(_doc(cluster.SECTION), encoding="utf-8")
    allocator.write_section(cluster.SECTION, "a run", path, cluster.WRITER)
    path.write_text(path.read_text().replace("a run", "a run, and a note in it"))

    def pool(*a, **k):
        raise AssertionError("simulated before refusing")

    monkeypatch.setattr(cluster, "worker_pool", pool)
    monkeypatch.setattr(sys, "argv", ["cluster.py", "--results", str(path)])
    with pytest.raises(SystemExit, match="edited since it was written"):
        cluster.main()


@pytest.fixture
def policies(tmp_path, monkeypatch):
    mod = load("policies")
    monkeypatch.setattr(mod, "HERE", tmp_path)
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "RESULTS.md", raising=False)
    monkeypatch.setattr(mod, "_save", lambda path, payload: None)
    return mod, tmp_path / "RESULTS.md"


@pytest.mark.parametrize("mode", ["--reference", "--regret"])
def test_policies_reference_and_regret_replace_only_their_block(policies, monkeypatch, mode):
    mod, path = policies
    runs = iter(["FIRST RUN", "SECOND RUN"])
    if mode == "--reference":
        ref = load("policies_reference")
        title = ref.REF_SECTION
        monkeypatch.setattr(ref, "reference", lambda workers, command: (
            f"{ref.REF_SECTION}\n\n{next(runs)}\n"))
    else:
        regret = load("policies_regret")
        title = mod.REGRET_SECTION
        monkeypatch.setattr(regret, "regret_report", lambda *a: f"{next(runs)}\n")
    path.write_text(_doc(title), encoding="utf-8")
    assert mod.main([mode]) == 0 and mod.main([mode]) == 0
    text = path.read_text(encoding="utf-8")
    _kept(text, title)
    assert "FIRST RUN" not in text and text.count("SECOND RUN") == 1
    assert text.count(f"<!-- begin: written by bench/policies.py {mode} (") == 1


def test_policies_reference_refuses_before_its_run(policies, monkeypatch, capsys):
    mod, path = policies
    ref = load("policies_reference")

    def never(*a, **k):
        raise AssertionError("ran before refusing")

    monkeypatch.setattr(ref, "reference", never)
    path.write_text(f"{ref.REF_SECTION}\n\na\n\n{ref.REF_SECTION}\n\nb\n")
    with pytest.raises(SystemExit) as e:
        mod.main(["--reference"])
    assert "2 sections are headed" in usage_error(e, capsys)


def test_each_evaluation_run_adds_its_own_section_titled_with_its_seeds(policies, monkeypatch):
    """The lead runs the evaluation in another worktree and copies its section into main's
    RESULTS.md, one per fresh-seed pair: a run replaced the last run's section (and its
    notes). Each run now adds a section of its own, headed with its seeds."""
    mod, path = policies
    runs = iter(["FIRST RUN", "SECOND RUN"])
    monkeypatch.setattr(mod, "run", lambda *a: ([], []))
    monkeypatch.setattr(mod, "markdown", lambda *a: f"{mod.SECTION}\n\n{next(runs)}\n")
    path.write_text(_doc(mod.SECTION), encoding="utf-8")
    assert mod.main(["--seeds", "1091,1092", "--workers", "1"]) == 0
    assert mod.main(["--seeds", "1093,1094", "--workers", "1"]) == 0
    text = path.read_text(encoding="utf-8")
    assert text.startswith(_doc(mod.SECTION).rstrip("\n"))  # the earlier section as it was
    tail = text[len(_doc(mod.SECTION).rstrip("\n")):]
    first, second = tail.split("## Eviction policies (held-out, seeds ")[1:]
    assert first.startswith("1091, 1092, written ") and "FIRST RUN" in first
    assert second.startswith("1093, 1094, written ") and "SECOND RUN" in second
    assert text.count("<!-- begin: written by bench/policies.py (") == 2


def test_the_evaluation_title_names_its_seeds():
    mod = load("policies")
    assert mod.eval_title([1091, 1092], "2026-12-06 13:00 UTC") == (
        "## Eviction policies (held-out, seeds 1091, 1092, written 2026-12-06 13:00 UTC; "
        "simulated)")
