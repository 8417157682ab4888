"""bench/policies_tune.py keeps a tuning's rows when its walk cannot judge: the rows are
saved before issue 10's checks run, and a check that raises (a stale AFS calibration:
`policies_check.calibrated_afs` refuses when today's default no longer reproduces its base)
stops the walk with exit status 2, the rows kept for `--rewalk` (session 34)."""

from __future__ import annotations

import json
from types import SimpleNamespace

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
    return tune, pol, tokens


def test_a_walk_that_cannot_judge_keeps_the_rows_and_writes_no_section(
        tmp_path, monkeypatch, capsys):
    stale = Stale()
    tune, pol, tokens = _setup(tmp_path, monkeypatch, stale)
    args = SimpleNamespace(from_json=None, smooth=False, workers=1, no_write=False)
    assert tune.tune(None, args, ["swe"], list(pol.TUNE_SEEDS), list(tokens), [0.3],
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
    assert tune.tune(None, args, ["swe"], list(pol.TUNE_SEEDS), list(tokens), [0.3],
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
    assert tune.tune(None, args, ["swe"], list(pol.TUNE_SEEDS), list(tokens), [0.3],
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
    assert tune.tune(None, args, ["swe"], list(pol.TUNE_SEEDS), list(tokens), [0.3],
                     "whole") == 0
    whole = (tmp_path / "tune.json").read_text()
    section = (tmp_path / "RESULTS.md").read_text()
    partial = [p for p in tokens if p != tune.TUNE_INCUMBENT]
    assert tune.fit_set_gaps([1], partial)
    assert tune.tune(None, args, ["swe"], [1], partial, [0.3], "partial") == 0
    assert (tmp_path / "tune.json").read_text() == whole
    assert tune.per_size_pick() == json.loads(whole)["pick"]
    saved = json.loads((tmp_path / "partial.json").read_text())
    assert saved["seeds"] == [1] and saved["command"] == "partial"
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith(section.rstrip("\n"))  # the whole fit set's section unchanged
    assert tune.TUNE_PARTIAL_SECTION in text and "so this pick sets nothing" in text
