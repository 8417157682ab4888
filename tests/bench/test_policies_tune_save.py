"""bench/policies_tune.py keeps a tuning's rows when its walk cannot judge: the rows are
saved before issue 10's checks run, and a check that raises (a stale AFS calibration:
`policies_check.calibrated_afs` refuses when today's default no longer reproduces its base)
stops the walk with exit status 2, the rows kept for `--rewalk` (session 34)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kvsaga.policy import DEFAULT_POLICY
from tests.bench.test_policies import load
from tests.bench.test_policies_vetting import TOKENS, Fake, rows_for


class Stale:
    """A check that cannot judge, as the calibrated AFS veto on a moved base."""

    def __init__(self):
        self.calls = 0

    def __call__(self, spec, against):
        self.calls += 1
        raise ValueError("workflow+graph no longer reproduces the committed AFS "
                         "calibration's base (3 of 32 cases moved): recalibrate")


def _setup(tmp_path, monkeypatch, check):
    tune, pol = load("policies_tune"), load("policies")
    tokens = {k: v for k, v in TOKENS.items() if k != "saga2"}
    monkeypatch.setattr(tune, "run", lambda traces, fractions, policies, seeds, workers: (
        rows_for(tokens) if 1 in seeds else [], []))
    monkeypatch.setattr(tune, "run_checks", lambda workers: [check])
    monkeypatch.setattr(tune, "TUNE_JSON", tmp_path / "tune.json")
    monkeypatch.setattr(tune, "HERE", tmp_path)
    # every trace's data installed (bfcl-v4's bfcl-eval may not be here)
    monkeypatch.setattr(tune, "skipped_traces", lambda traces, seed: [])
    return tune, pol, tokens


def test_a_walk_that_cannot_judge_keeps_the_rows_and_writes_no_section(
        tmp_path, monkeypatch, capsys):
    stale = Stale()
    tune, pol, tokens = _setup(tmp_path, monkeypatch, stale)
    args = SimpleNamespace(from_json=None, smooth=False, workers=1, no_write=False)
    assert tune.tune(None, args, list(tune.FIT_TRACES), list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS),
                     "cmd") == 2
    assert stale.calls == 1  # the rule's first, `graph[trust=1]`, is not the default
    err = capsys.readouterr().err
    assert "the walk through issue 10's checks stopped" in err and "recalibrate" in err
    assert "--rewalk" in err and str(tmp_path / "tune.json") in err
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["vetting"] is None and saved["against"] is None
    assert saved["pick"] == saved["rule_pick"] == "graph[trust=1]"  # not walked: the rule's
    assert len(saved["rows"]) == 3 * len(tokens) and saved["candidates"] == list(tokens)
    assert saved["constants"] == tune.setting_constants(list(tokens))
    assert not (tmp_path / "RESULTS.md").exists()  # no section from an unwalked tune

    # the saved rows walked again once the check can judge
    ok = Fake("AFS veto", set())
    monkeypatch.setattr(tune, "run_checks", lambda workers: [ok])
    again = SimpleNamespace(from_json=str(tmp_path / "tune.json"), smooth=False, workers=1,
                            no_write=False, rewalk=True)
    assert tune.tune(None, again, [], [], [], [], "x") == 0
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["pick"] == "graph[trust=1]" and saved["against"] == DEFAULT_POLICY
    assert [w["vetoed_by"] for w in saved["vetting"]] == [None]
    assert "walk through issue 10's checks was rerun" in (tmp_path / "RESULTS.md").read_text()


def test_a_rewalk_that_cannot_judge_leaves_the_saved_walk(tmp_path, monkeypatch, capsys):
    ok = Fake("AFS veto", {"nothing"})
    tune, pol, tokens = _setup(tmp_path, monkeypatch, ok)
    args = SimpleNamespace(from_json=None, smooth=False, workers=1, no_write=False)
    assert tune.tune(None, args, list(tune.FIT_TRACES), list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS),
                     "cmd") == 0
    before = (tmp_path / "tune.json").read_text()
    assert json.loads(before)["vetting"]  # walked and saved
    monkeypatch.setattr(tune, "run_checks", lambda workers: [Stale()])
    again = SimpleNamespace(from_json=str(tmp_path / "tune.json"), smooth=False, workers=1,
                            no_write=False, rewalk=True)
    capsys.readouterr()
    assert tune.tune(None, again, [], [], [], [], "x") == 2
    assert (tmp_path / "tune.json").read_text() == before
    assert "stopped" in capsys.readouterr().err


def test_no_write_saves_nothing_even_when_the_walk_stops(tmp_path, monkeypatch, capsys):
    tune, pol, tokens = _setup(tmp_path, monkeypatch, Stale())
    args = SimpleNamespace(from_json=None, smooth=False, workers=1, no_write=True)
    assert tune.tune(None, args, list(tune.FIT_TRACES), list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS),
                     "cmd") == 2
    assert not (tmp_path / "tune.json").exists()
    assert "were not saved (--no-write)" in capsys.readouterr().err


def test_a_partial_tune_is_saved_apart_from_the_whole_fit_sets(tmp_path, monkeypatch):
    """Review repro partial_tune_overwrites: `--tune --seeds 1 ...` (part of the fit set, no
    incumbent) overwrote bench/plots/policies_tune.json, whose pick `per_size_pick()`, the
    evaluation's header and the default's test read. It goes to its own file and RESULTS
    section; the whole fit set's tuning and section stay."""
    tune, pol, tokens = _setup(tmp_path, monkeypatch, Fake("AFS veto", set()))
    monkeypatch.setattr(tune, "TUNE_PARTIAL_JSON", tmp_path / "partial.json", raising=False)
    args = SimpleNamespace(from_json=None, smooth=False, workers=1, no_write=False)
    assert tune.tune(None, args, list(tune.FIT_TRACES), list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS),
                     "whole") == 0
    whole = (tmp_path / "tune.json").read_text()
    section = (tmp_path / "RESULTS.md").read_text()
    partial = [p for p in tokens if p != tune.TUNE_INCUMBENT]
    assert tune.fit_set_gaps([1], partial, ["swe"], [0.3])
    assert tune.tune(None, args, ["swe"], [1], partial, [0.3], "partial") == 0
    assert (tmp_path / "tune.json").read_text() == whole
    assert tune.per_size_pick() == json.loads(whole)["pick"]
    saved = json.loads((tmp_path / "partial.json").read_text())
    assert saved["seeds"] == [1] and saved["command"] == "partial"
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith(section.rstrip("\n"))  # the whole fit set's section unchanged
    assert tune.TUNE_PARTIAL_SECTION in text and "so this pick sets nothing" in text


def _whole_run(tmp_path, monkeypatch):
    """A whole fit set's tuning saved and written, and the files it wrote (as they are)."""
    tune, pol, tokens = _setup(tmp_path, monkeypatch, Fake("AFS veto", set()))
    for name in ("TUNE_PARTIAL_JSON", "TUNE_SMOOTH_JSON", "TUNE_SMOOTH_PARTIAL_JSON"):
        monkeypatch.setattr(tune, name, tmp_path / f"{name}.json")
    args = SimpleNamespace(from_json=None, smooth=False, workers=1, no_write=False)
    assert tune.tune(None, args, list(tune.FIT_TRACES), list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS), "whole") == 0
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["fractions"] == list(pol.FRACTIONS) and saved["traces"] == list(tune.FIT_TRACES)
    assert "Ran the whole fit set" in (tmp_path / "RESULTS.md").read_text()
    return tune, pol, tokens, args


@pytest.mark.parametrize("part", ["traces", "fractions"])
def test_a_tune_of_some_traces_or_capacities_is_part_of_the_fit_set(tmp_path, monkeypatch,
                                                                    part):
    """Review repro partial_tune.py: `--tune --traces swe` (or `--fractions 0.3`), every seed
    and candidate, counted as the whole fit set: it overwrote policies_tune.json (read by
    `per_size_pick()` and the default's test) and the tuning section, headed "Ran the whole
    fit set". It is part of it: saved apart, in its own section, its header says so."""
    tune, pol, tokens, args = _whole_run(tmp_path, monkeypatch)
    whole, results = (tmp_path / "tune.json").read_text(), (tmp_path / "RESULTS.md").read_text()
    traces = ["swe"] if part == "traces" else list(tune.FIT_TRACES)
    fractions = [0.3] if part == "fractions" else list(pol.FRACTIONS)
    gaps = tune.fit_set_gaps(list(pol.TUNE_SEEDS), list(tokens), traces, fractions)
    assert gaps and ("not run" in gaps[0] if part == "traces" else "capacities 0.3" in gaps[0])
    assert tune.tune(None, args, traces, list(pol.TUNE_SEEDS), list(tokens), fractions,
                     "part") == 0
    assert (tmp_path / "tune.json").read_text() == whole
    saved = json.loads((tmp_path / "TUNE_PARTIAL_JSON.json").read_text())
    assert saved["command"] == "part" and saved["fractions"] == fractions
    assert tune.saved_gaps(saved) == gaps
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith(results.rstrip("\n"))  # the whole fit set's section unchanged
    partial = text[text.index(tune.TUNE_PARTIAL_SECTION):]
    assert "Ran part of the fit set only" in partial and "so this pick sets nothing" in partial


def test_a_smoothed_tune_of_part_of_the_fit_set_is_saved_apart(tmp_path, monkeypatch):
    """Smoothed tunes of part of the fit set went to policies_tune_smooth.json and the
    smoothed section, which the default's test reads: they have their own file and section."""
    tune, pol, tokens, args = _whole_run(tmp_path, monkeypatch)
    import policies_smooth as S
    monkeypatch.setattr(S, "run_smooth", lambda rows, policies, workers: ([], 0.0))
    monkeypatch.setattr(S, "smoothed", lambda rows, extra: rows)
    results = (tmp_path / "RESULTS.md").read_text()
    smooth = SimpleNamespace(**{**vars(args), "smooth": True})
    assert tune.tune(None, smooth, ["swe"], list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS), "smooth part") == 0
    assert not tune.TUNE_SMOOTH_JSON.exists()
    saved = json.loads(tune.TUNE_SMOOTH_PARTIAL_JSON.read_text())
    assert saved["command"] == "smooth part" and tune.saved_gaps(saved)
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith(results.rstrip("\n"))
    assert tune.TUNE_SMOOTH_SECTION not in text and tune.TUNE_SMOOTH_PARTIAL_SECTION in text
    # the whole fit set's smoothed tune still goes to its own
    assert tune.tune(None, smooth, list(tune.FIT_TRACES), list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS), "smooth whole") == 0
    assert json.loads(tune.TUNE_SMOOTH_JSON.read_text())["command"] == "smooth whole"
    assert json.loads(tune.TUNE_SMOOTH_PARTIAL_JSON.read_text())["command"] == "smooth part"


def test_a_tune_whose_bfcl_v4_data_is_not_installed_is_part_of_the_fit_set(
        tmp_path, monkeypatch, capsys):
    """Without the `bfcl-eval` package `run` skips bfcl-v4, and the tune counted as the
    whole fit set all the same: saved over policies_tune.json (whose pick `per_size_pick()`,
    the evaluation's header and the default's test read) and its section, headed "Ran the
    whole fit set". bfcl-v4 is now not run, so the tune is part of the fit set, saved apart."""
    tune, pol, tokens, args = _whole_run(tmp_path, monkeypatch)
    whole, results = (tmp_path / "tune.json").read_text(), (tmp_path / "RESULTS.md").read_text()
    monkeypatch.setattr(tune, "skipped_traces", lambda traces, seed: [
        t for t in traces if t == "bfcl-v4"])
    ran = []
    monkeypatch.setattr(tune, "run", lambda traces, fractions, policies, seeds, workers: (
        ran.extend(traces) or (rows_for(tokens) if 1 in seeds else []),
        [t for t in traces if t == "bfcl-v4"]))
    capsys.readouterr()
    assert tune.tune(None, args, list(tune.FIT_TRACES), list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS), "no bfcl") == 0
    assert "bfcl-v4" not in ran and "skipped (data not installed): bfcl-v4" in (
        capsys.readouterr().err)
    assert (tmp_path / "tune.json").read_text() == whole
    saved = json.loads((tmp_path / "TUNE_PARTIAL_JSON.json").read_text())
    assert saved["command"] == "no bfcl" and "bfcl-v4" not in saved["traces"]
    assert tune.saved_gaps(saved) == ["traces bfcl-v4 not run"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith(results.rstrip("\n"))  # the whole fit set's section unchanged
    partial = text[text.index(tune.TUNE_PARTIAL_SECTION):]
    assert "Ran part of the fit set only" in partial and "so this pick sets nothing" in partial


def test_the_skipped_traces_are_those_whose_data_is_not_installed(monkeypatch):
    pol = load("policies")
    monkeypatch.setattr(pol, "build_trace", lambda name, seed: None if name == "bfcl-v4"
                        else [name])
    assert pol.skipped_traces(["swe", "bfcl-v4", "web-short"], 1) == ["bfcl-v4"]
