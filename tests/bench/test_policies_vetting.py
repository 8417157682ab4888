"""bench/policies_tune.py's veto-aware pick: the candidates walked in the tune rule's order
through issue 10's checks (the AFS veto, then the non-thrash check), the first that passes
(or the default as it is) taken, and the vetoes recorded with their figures."""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import pytest

from kvsaga.policy import DEFAULT_POLICY, POLICIES
from tests.bench.test_policies import load  # bench/NAME.py, bench/ on the path


def _row(trace, seed, frac, policy, recomputed, hit=0.9, blocks=100):
    return {"trace": trace, "seed": seed, "frac": frac, "policy": policy,
            "recomputed_tokens": recomputed, "hit_rate": hit, "num_gpu_blocks": blocks}


# Three pressured cases; the baselines' best is 10, 19 and 5. graph's settings other than
# the incumbent name `trust` and `spread_states`, off their defaults whatever graph's other
# defaults are (until session 34 they named `spread`, which the tune may turn on).
TOKENS = {
    "lru": (10, 20, 5), "saga": (12, 19, 6), "ttl": (11, 25, 7),
    "graph[trust=1]": (10, 19, 5),  # 1.00x everywhere: the rule's first
    "graph[trust=1,spread_states=queued]": (11, 19, 5),  # 1.10x
    "saga2": (12, 19, 5),  # 1.20x (an unregistered name: never the default)
    "graph[median_returns=1]": (13, 19, 5),  # 1.30x: the incumbent, today's default
}


def rows_for(tokens=TOKENS):
    rows = []
    for p, xs in tokens.items():
        for k, x in enumerate(xs):
            rows.append(_row("swe", 1, 0.1 * (k + 1), p, x, blocks=100 + k))
    return rows


class Fake:
    """Checks that answer from a table and count their calls."""

    def __init__(self, name, fails):
        self.name, self.fails, self.calls = name, fails, []

    def __call__(self, spec, against):
        self.calls.append((spec, against))
        bad = spec in self.fails
        return load("policies_tune").CheckResult(self.name, not bad,
                                                 f"{spec}: {'1.47 -> 1.67' if bad else 'none'}")


def test_the_ranking_is_the_rule_applied_again_to_what_is_left():
    tune = load("policies_tune")
    rows = rows_for()
    cands = list(TOKENS)
    order = tune.ranking(rows, cands)
    assert order[0] == tune.pick(rows, cands) == "graph[trust=1]"
    # lru's worst 20/19 comes before the 1.10x setting; the incumbent after saga2's 1.20x
    assert order == ["graph[trust=1]", "lru", "graph[trust=1,spread_states=queued]", "saga2",
                     "saga", "graph[median_returns=1]", "ttl"]
    # a candidate that did not run every pressured case is not ranked
    assert "x" not in tune.ranking(rows + [_row("swe", 1, 0.1, "x", 1)], [*cands, "x"])
    assert tune.ranking(rows, ["missing"]) == []


def test_a_vetoed_best_candidate_is_skipped_and_its_veto_recorded():
    tune = load("policies_tune")
    rows = rows_for()
    afs = Fake("AFS veto", {"graph[trust=1]"})
    nt = Fake("non-thrash check", {"lru"})
    chosen, walked = tune.vetted_pick(rows, list(TOKENS), [afs, nt], against="graph")
    assert chosen == "graph[trust=1,spread_states=queued]" != tune.pick(rows, list(TOKENS))
    assert [w["candidate"] for w in walked] == [
        "graph[trust=1]", "lru", "graph[trust=1,spread_states=queued]"]
    first, second, third = walked
    assert first["vetoed_by"] == "AFS veto" and len(first["checks"]) == 1  # stopped there
    assert "1.47 -> 1.67" in first["checks"][0]["figures"]
    assert first["worst"] == pytest.approx(1.0) and first["above"] == 0
    assert second["vetoed_by"] == "non-thrash check"
    assert [c["check"] for c in second["checks"]] == ["AFS veto", "non-thrash check"]
    assert third["vetoed_by"] is None and all(c["passes"] for c in third["checks"])
    # the non-thrash check never ran for the one the AFS veto stopped; every check against
    # the policy given
    assert [s for s, _ in nt.calls] == ["lru", "graph[trust=1,spread_states=queued]"]
    assert {a for _, a in afs.calls + nt.calls} == {"graph"}
    lines = "\n".join(tune.vetting_lines(walked, chosen, "graph"))
    assert "`graph[trust=1]` (worst 1.00x, 0 above 1.0x" in lines
    assert "AFS veto fails (graph[trust=1]: 1.47 -> 1.67); **vetoed by the AFS veto**" in lines
    assert "**vetoed by the non-thrash check**" in lines
    assert lines.endswith("Pick after the checks: **`graph[trust=1,spread_states=queued]`**.")


def test_the_default_as_it_is_takes_no_check_and_ends_the_walk():
    tune = load("policies_tune")
    assert DEFAULT_POLICY == "graph" and tune.is_default("graph[median_returns=1]")
    assert tune.is_default("graph") and not tune.is_default("graph[trust=1]")
    assert not tune.is_default("saga")
    rows = rows_for()
    every = set(TOKENS) - {"graph[median_returns=1]"}
    afs = Fake("AFS veto", every)
    chosen, walked = tune.vetted_pick(rows, list(TOKENS), [afs])
    assert chosen == "graph[median_returns=1]" and walked[-1].get("default")
    assert walked[-1]["checks"] == [] and "graph[median_returns=1]" not in dict(afs.calls)
    assert "ttl" not in [w["candidate"] for w in walked]  # ranked below the default
    assert all(w["vetoed_by"] == "AFS veto" for w in walked[:-1]) and len(walked) == 6
    assert "the default as it is: no check; **chosen**" in "\n".join(
        tune.vetting_lines(walked, chosen, "graph"))
    # without the default among them, vetoing every one is an error, not a silent pick
    no_default = {k: v for k, v in TOKENS.items() if k != "graph[median_returns=1]"}
    with pytest.raises(ValueError, match="every candidate was vetoed"):
        tune.vetted_pick(rows_for(no_default), list(no_default), [Fake("AFS veto", every)])
    with pytest.raises(ValueError, match="nothing to pick"):
        tune.vetted_pick(rows, ["missing"], [afs])


def test_a_vetoed_or_unchecked_setting_does_not_become_the_defaults():
    """graph's settings: the rule's first among them was vetoed and the next never checked
    (the walk chose saga2 first), so graph's constants stay those of today's defaults."""
    tune = load("policies_tune")
    rows = rows_for()
    cands = list(TOKENS)
    afs = Fake("AFS veto", {"graph[trust=1]", "lru", "graph[trust=1,spread_states=queued]"})
    chosen, walked = tune.vetted_pick(rows, cands, [afs])
    assert chosen == "saga2"
    assert tune.variant_picks(rows, cands)["graph"] == "graph[trust=1]"
    assert tune.vetted_variants(rows, cands, walked, chosen)["graph"] == \
        "graph[median_returns=1]"
    # a setting of graph that passed is its variant
    afs = Fake("AFS veto", {"graph[trust=1]", "lru"})
    chosen, walked = tune.vetted_pick(rows, cands, [afs])
    assert tune.vetted_variants(rows, cands, walked, chosen)["graph"] == chosen


def test_the_tune_runs_the_walk_and_saves_and_renders_it(tmp_path, monkeypatch, capsys):
    """`--tune` over the whole fit set (baselines and incumbent among the candidates) puts
    the rule's order through the checks, saves the choice as the pick beside the rule's,
    with the walk, and a re-render from the json prints the same vetoes."""
    tune, pol = load("policies_tune"), load("policies")
    tokens = {k: v for k, v in TOKENS.items() if k != "saga2"}
    fake_rows = rows_for(tokens)
    monkeypatch.setattr(tune, "run", lambda traces, fractions, policies, seeds, workers: (
        fake_rows if 1 in seeds else [], []))
    # the walk checks each candidate as it ran: its spec with today's constants written out
    afs = Fake("AFS veto", {tune.explicit("graph[trust=1]",
                                          tune.setting_constants(list(tokens)))})
    monkeypatch.setattr(tune, "run_checks", lambda workers: [afs])
    monkeypatch.setattr(tune, "TUNE_JSON", tmp_path / "tune.json")
    monkeypatch.setattr(tune, "HERE", tmp_path)
    # every trace's data installed (bfcl-v4's bfcl-eval may not be here)
    monkeypatch.setattr(tune, "skipped_traces", lambda traces, seed: [])
    args = SimpleNamespace(from_json=None, smooth=False, workers=1, no_write=False)
    assert tune.tune(None, args, list(tune.FIT_TRACES), list(pol.TUNE_SEEDS), list(tokens),
                     list(pol.FRACTIONS), "cmd") == 0
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["rule_pick"] == "graph[trust=1]" and saved["pick"] == "lru"
    assert saved["against"] == DEFAULT_POLICY
    assert [w["vetoed_by"] for w in saved["vetting"]] == ["AFS veto", None]
    assert saved["variants"]["graph"] == "graph[median_returns=1,spread_states=" \
        "queued+demoted,trust=0]"  # the vetoed setting is not graph's
    out = capsys.readouterr().out
    assert "**vetoed by the AFS veto**" in out and "Pick after the checks: **`lru`**" in out
    assert "Constants of `graph` by the same rule and checks among its settings: " \
        "`graph[median_returns=1]`" in out
    section = (tmp_path / "RESULTS.md").read_text()
    assert tune.TUNE_SECTION in section and "**vetoed by the AFS veto**" in section
    afs.calls.clear()
    assert tune.tune(None, SimpleNamespace(from_json=str(tmp_path / "tune.json"), smooth=False,
                                           workers=1, no_write=True),
                     [], [], [], [], "x") == 0
    assert afs.calls == []  # a re-render runs no check
    again = capsys.readouterr().out
    assert "**vetoed by the AFS veto**" in again and "Pick after the checks: **`lru`**" in again
    # --rewalk: the saved rows walked again through today's checks (none vetoes now)
    afs.fails = set()
    assert tune.tune(None, SimpleNamespace(from_json=str(tmp_path / "tune.json"), smooth=False,
                                           workers=1, no_write=False, rewalk=True),
                     [], [], [], [], "x") == 0
    assert afs.calls and "walk through issue 10's checks was rerun" in capsys.readouterr().out
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["pick"] == "graph[trust=1]" and saved["rule_pick"] == "graph[trust=1]"
    assert [w["vetoed_by"] for w in saved["vetting"]] == [None]
    afs.calls.clear()
    # part of the fit set: no walk, nothing checked
    args.no_write = True
    assert tune.tune(None, args, ["swe"], [1], list(tokens), [0.3], "cmd") == 0
    assert afs.calls == [] and "Pick after the checks" not in capsys.readouterr().out


@pytest.fixture
def policies_restored():
    """`run_checks` registers specs as policy names: drop them after the test."""
    before = dict(POLICIES)
    yield
    for name in set(POLICIES) - set(before):
        del POLICIES[name]


def test_the_real_checks_run_the_calibrated_afs_veto_and_the_non_thrash_figures(
        monkeypatch, policies_restored):
    """`run_checks`' AFS veto is the calibrated one (session 32): the incumbent's 32 cases
    must reproduce the committed calibration's base, then the candidate is judged by
    `afs_noise_veto` (a mean shift past the frozen band fails; its figures say so); a base
    that no longer reproduces refuses to judge. Its non-thrash check asks for the recorded
    slack against the given policy and fails on any figure it returns."""
    tune = load("policies_tune")
    fit, check, noise = load("scheduling_fit"), load("policies_check"), load(
        "scheduling_veto_noise")
    base, _, _, _ = check.saved_calibration()
    scale = {"graph": 1.0, "saga": 1.0, "lru": 1.06}

    def fake_rows(seeds, config, null, workers):
        assert list(seeds) == list(check.AFS_FIT_SEEDS) and null is None
        k = scale[config.split("+", 1)[1]]
        return [{"mix": m, "seed": sd, "frac": f, "ratio": x * k}
                for (m, sd, f), x in base.items()]

    monkeypatch.setattr(noise, "run_rows", fake_rows)
    asked = []

    def fake_worse(params, workers, policy, against, slack):
        asked.append((params, policy, against, slack))
        return ["web seed 105 1x 50% tct_p95_s 21.87 -> 22.87 (+4.6%)"] if policy == "lru" \
            else []

    monkeypatch.setattr(fit, "non_thrash_worse", fake_worse)
    afs, nt, fg = tune.run_checks(1)
    got = afs("lru", "graph")
    assert not got.passes and got.check == "AFS veto"
    assert f"over 32 cases +0.0583 (at most {check.AFS_NOISE_MEAN_LOG:.4f}): fails" in got.figures
    assert afs("saga", "graph").passes
    scale["graph"] = 1.01  # today's default no longer reproduces the calibration
    with pytest.raises(ValueError, match="recalibrate"):
        afs("saga", "graph")
    scale["graph"] = 1.0
    with pytest.raises(ValueError, match="not workflow\\+ttl"):
        afs("saga", "ttl")
    got = nt("lru", "graph")
    assert not got.passes and "+4.6%" in got.figures
    assert asked == [(fit.PREVIOUS, "lru", "graph", tune.NON_THRASH_SLACK)]
    assert nt("graph[trust=1]", "graph").passes
    assert "graph[trust=1]" in POLICIES  # registered as a name


def test_the_fit_check_fails_a_lower_smallest_gain_or_an_added_p95_miss(monkeypatch,
                                                                        policies_restored):
    """`run_checks`' third check (session 32), issue 10's fit keys at the fit points with the
    scheduler unchanged: a candidate that lowers the smallest mean-TCT gain (bfcl 1x 25%
    2.00x -> 1.60x here) or adds a p95 miss fails; one that matches the incumbent passes."""
    tune, fit = load("policies_tune"), load("scheduling_fit")
    monkeypatch.setattr(fit, "_FCFS_ROWS", {})

    def fake_run(tasks, workers):
        out = []
        for fam, seed, load_, frac, sched, pol, params in tasks:
            mean, p95 = (10.0, 20.0) if sched == "fcfs" else (5.0, 10.0)
            if sched == "workflow" and (fam, load_, frac) == ("bfcl", 1.0, 0.25):
                mean = {"lru": 6.25}.get(pol, mean)
                p95 = {"saga": 25.0}.get(pol, p95) if seed == fit.FIT_SEEDS[0] else p95
            out.append({"family": fam, "seed": seed, "load": load_, "frac": frac,
                        "scheduler": sched, "policy": pol, "params": params,
                        "tct_mean_s": mean, "tct_p95_s": p95, "tasks_per_hour": 100.0,
                        "capacity_blocks": 100})
        return out

    monkeypatch.setattr(fit, "run", fake_run)
    *_, fg = tune.run_checks(1)
    got = fg("lru", "graph")
    assert not got.passes and got.check == "issue 10's fit check"
    assert "smallest gain 2.00x -> 1.60x (fails)" in got.figures
    assert "bfcl 1x 25% 2.00x -> 1.60x" in got.figures
    got = fg("saga", "graph")  # the same gains, one seed's p95 below fcfs+lru's
    assert not got.passes and "p95 misses 0 -> 1" in got.figures
    assert fg("ttl", "graph").passes



def test_a_candidate_is_checked_and_judged_the_default_as_its_rows_ran():
    """With the saved tune's constants, the walk checks each candidate as its rows ran,
    not as its spec reads under today's class defaults: rows of `graph[median_returns=1]`
    run with a `demoted_release` other than today's are not today's default (they are
    checked), and a candidate's check gets its explicit spec (session 33: a rewalk of
    rows saved before graph's `demoted_release` default changed checked other settings)."""
    tune = load("policies_tune")
    rows = rows_for()
    today = inspect.signature(POLICIES["graph"]).parameters["demoted_release"].default
    old = {"median_returns": 1.0, "demoted_release": float(not today)}
    constants = {"graph[median_returns=1]": old,
                 "graph[trust=1]": {**old, "trust": 1.0}}
    every = set(TOKENS) - {"graph[median_returns=1]"}
    afs = Fake("AFS veto", {tune.explicit(k, constants) for k in constants} | every)
    # no candidate's rows are today's default as they ran: vetoing all is an error
    with pytest.raises(ValueError, match="every candidate was vetoed"):
        tune.vetted_pick(rows, list(TOKENS), [afs], constants=constants)
    checked = [s for s, _ in afs.calls]
    assert checked[0] == tune.explicit("graph[trust=1]", constants) != "graph[trust=1]"
    assert f"demoted_release={int(not today)}" in checked[0]
    assert tune.explicit("graph[median_returns=1]", constants) in checked  # not the default
    afs.fails.discard(checked[0])
    chosen, walked = tune.vetted_pick(rows, list(TOKENS), [afs], constants=constants)
    assert chosen == "graph[trust=1]" and walked[0]["as_run"] == checked[0]
    assert f"as its rows ran, `{checked[0]}`" in "\n".join(
        tune.vetting_lines(walked, chosen, "graph"))
    # without the constants the same rows' spec reads as today's default: no check
    chosen, walked = tune.vetted_pick(rows, list(TOKENS), [Fake("AFS veto", every)])
    assert chosen == "graph[median_returns=1]" and walked[-1].get("default")
    assert "as_run" not in walked[1]  # lru: no constants, checked as named
