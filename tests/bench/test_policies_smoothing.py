"""bench/policies.py's smoothing over pool sizes (`--smooth`): the sizes it runs, the means it
takes, the verdicts it feeds, and how a smoothed tuning sets the default."""

from __future__ import annotations

import json

import pytest

from kvsaga.policy import DEFAULT_POLICY
from tests.bench.test_policies import _row, load


def test_smoothing_sizes_are_five_within_two_percent_and_never_below_the_floor():
    smooth = load("policies_smooth")
    assert smooth.pool_sizes(1000, 500) == [980, 990, 1000, 1010, 1020]
    # at the floor (longest session + 1 block) the five shift up together
    assert smooth.pool_sizes(1000, 999) == [1000, 1010, 1020, 1030, 1040]
    assert smooth.pool_sizes(1000, 985) == [986, 996, 1006, 1016, 1026]


def test_smoothed_rows_are_means_over_every_size_and_feed_the_same_verdicts():
    mod, smooth = load(), load("policies_smooth")

    def row(policy, tokens, blocks=100, hit=0.9, frac=0.3):
        return {**_row("swe", 931, frac, policy, tokens, hit, blocks), "longest": 50}
    # one pressured case (lru hit 0.9) and one thrashing case (hit 0.5) at another capacity
    rows = [row(p, x) for p, x in (("lru", 10), ("saga", 12), ("ttl", 9), ("g", 11))]
    rows += [row(p, 5, 200, 0.5, 0.6) for p in ("lru", "saga", "ttl", "g")]
    todo = smooth.tasks(rows, ["lru", "saga", "ttl", "g"])
    # only the pressured case, four more sizes (its own is reused), every policy
    assert len(todo) == 16 and {t[:3] for t in todo} == {("swe", 931, 0.3)}
    assert {t[4] for t in todo} == {98, 99, 101, 102}
    # at the other sizes g is the best and ttl the worst: smoothed, g wins
    extra = []
    for _, _, _, p, size in todo:
        x = {"lru": 10, "saga": 12, "ttl": 14, "g": 8}[p]
        extra.append({**row(p, x, size), "num_gpu_blocks": size})
    srows = smooth.smoothed(rows, extra[:-1])  # g lacks one size: not smoothed
    assert {r["policy"] for r in srows} == {"lru", "saga", "ttl"}
    srows = smooth.smoothed(rows, extra)
    by = {r["policy"]: r["recomputed_tokens"] for r in srows}
    assert by == {"lru": 10, "saga": 12, "ttl": (9 + 4 * 14) / 5, "g": (11 + 4 * 8) / 5}
    assert mod.rank(rows, "g")[0] > 1.0 and mod.rank(srows, "g")[0] < 1.0
    text = "\n".join(smooth.markdown(srows, ["lru", "saga", "ttl", "g"], 60.0, ["g"]))
    assert "Smoothed goal for `g`" in text and "**met**" in text
    tune = load("policies_tune")
    assert tune.pick(rows, ["lru", "ttl", "g"]) == "ttl"
    assert tune.pick(srows, ["lru", "ttl", "g"]) == "g"


def test_the_default_follows_the_saved_smoothed_tuning_by_the_rule():
    """The saved smoothed tuning sets the default only by `smoothed_default`'s rule (whole
    fit set, pick passes issue 10's non-thrash check, else the incumbent stays)."""
    tune = load("policies_tune")
    if not tune.TUNE_SMOOTH_JSON.exists():
        pytest.skip("no smoothed tuning saved")
    tuned = json.loads(tune.TUNE_SMOOTH_JSON.read_text(encoding="utf-8"))
    assert set(tuned["seeds"]) <= set(load().TUNE_SEEDS)
    assert tune.smoothed_default(tuned)[0] == DEFAULT_POLICY


def test_a_smoothed_pick_sets_the_default_only_over_the_whole_fit_set_and_unvetoed(
        monkeypatch):
    """A partial run (seeds 401, 402, as dfea371's) sets nothing; over the whole fit set the
    incumbent's pick stands, a vetoed pick (ttl: issue 10's non-thrash check) or an
    unchecked one leaves the incumbent, and only a pick that passed the check is the
    default. The verdict says when `DEFAULT_POLICY` disagrees with the rule."""
    tune, mod = load("policies_tune"), load()
    full = ["lru", "saga", "ttl", mod.TUNE_INCUMBENT]
    incumbent = mod.parse_spec(mod.TUNE_INCUMBENT)[0]
    part = {"pick": "ttl", "seeds": [401, 402], "candidates": full}
    name, why = tune.smoothed_default(part)
    assert name == incumbent and "seeds 1, 101, 102" in why
    assert tune.smoothed_default({**part, "pick": "saga"})[0] == incumbent
    whole = {"pick": "ttl", "seeds": list(mod.TUNE_SEEDS), "candidates": full,
             "traces": list(tune.FIT_TRACES), "fractions": list(mod.FRACTIONS)}
    assert tune.smoothed_default({**whole, "candidates": full[1:]})[0] == incumbent
    name, why = tune.smoothed_default(whole)
    assert name == incumbent and "vetoed" in why and "+4.6%" in why
    assert not tune.NON_THRASH_CHECKS["ttl"].passes
    # the incumbent's policy with other constants is a change: unchecked, it sets nothing
    name, why = tune.smoothed_default({**whole, "pick": "graph[spread=1,spread_states=queued]"},
                                      fallback="graph[median_returns=1]")
    assert name == "graph" and "no recorded non-thrash check" in why
    # graph[spread=1] (session 29's per-size pick) passed the non-thrash check and, since
    # session 32, the calibrated AFS veto (the any-rise veto had rejected it), but lowers
    # issue 10's smallest fit gain: its recorded fit check vetoes it
    name, why = tune.smoothed_default({**whole, "pick": "graph[spread=1]"},
                                      fallback="graph[median_returns=1]")
    assert name == "graph" and "vetoed by its fit check" in why and "1.62x -> 1.59x" in why
    assert tune.FIT_CHECKS["graph[demoted_release=1]"].passes
    assert tune.NON_THRASH_CHECKS["graph[spread=1]"].passes
    spread = tune.AFS_CHECKS["graph[spread=1]"]
    assert spread.passes and spread.worse == 5 and spread.calibrated
    assert not spread._replace(calibrated=False).passes
    assert not spread._replace(calibrated=None).passes  # the any-rise record: 5 rows worse
    assert tune.at_defaults("graph[median_returns=1]")
    assert tune.at_defaults("graph[demoted_mean=0]")
    assert not tune.at_defaults("graph[demoted_mean=1]")
    # it passed its recorded non-thrash check but failed the AFS veto: the default stays
    dm = {**whole, "pick": "graph[demoted_mean=1]"}
    name, why = tune.smoothed_default(dm, fallback="graph[median_returns=1]")
    assert name == "graph" and "vetoed by its AFS veto" in why and "1.44 -> 1.59" in why
    assert tune.NON_THRASH_CHECKS["graph[demoted_mean=1]"].passes
    assert not tune.AFS_CHECKS["graph[demoted_mean=1]"].passes
    # a pick that passed every recorded check is adopted, its constants the defaults to be
    monkeypatch.setitem(tune.AFS_CHECKS, "graph[demoted_mean=1]",
                        tune.AfsCheck("graph", 0, 0, "cmd", "none worse"))
    name, why = tune.smoothed_default(dm, fallback="graph[median_returns=1]")
    assert name == "graph" and "no recorded issue-10 fit check" in why
    monkeypatch.setitem(tune.FIT_CHECKS, "graph[demoted_mean=1]",
                        tune.FitCheck("graph", True, "cmd", "1.62x -> 1.62x"))
    name, why = tune.smoothed_default(dm, fallback="graph[median_returns=1]")
    assert name == "graph" and why.startswith("it passed") and "AFS veto" in why
    # one worse row, or one met -> missed, fails; no record (or one against another) too
    for worse, crossed in ((1, 0), (0, 1)):
        monkeypatch.setitem(tune.AFS_CHECKS, "graph[demoted_mean=1]",
                            tune.AfsCheck("graph", worse, crossed, "cmd", "x"))
        assert "vetoed by its AFS veto" in tune.smoothed_default(dm, "graph[median_returns=1]")[1]
    monkeypatch.setitem(tune.AFS_CHECKS, "graph[demoted_mean=1]",
                        tune.AfsCheck("ttl", 0, 0, "cmd", "none worse"))
    assert "no recorded AFS veto" in tune.smoothed_default(dm, "graph[median_returns=1]")[1]
    monkeypatch.delitem(tune.AFS_CHECKS, "graph[demoted_mean=1]")
    name, why = tune.smoothed_default(dm, fallback="graph[median_returns=1]")
    assert name == "graph" and "no recorded AFS veto" in why
    other = {**whole, "pick": "ttl[base_ttl_s=30]"}  # ttl's check is of "ttl", not this spec
    assert "no recorded non-thrash check" in tune.smoothed_default(other)[1]
    assert tune.smoothed_default(part, fallback="ttl")[0] == "ttl"  # the per-size pick
    assert tune.smoothed_default({**whole, "pick": mod.TUNE_INCUMBENT})[0] == incumbent
    name, why = tune.smoothed_default({**whole, "pick": "saga"})
    assert name == incumbent and "no recorded non-thrash check" in why
    monkeypatch.setitem(tune.NON_THRASH_CHECKS, "saga",
                        tune.NonThrashCheck(incumbent, 0, "cmd", "none worse by > 2%"))
    assert tune.smoothed_default({**whole, "pick": "saga"})[0] == incumbent  # no AFS veto
    monkeypatch.setitem(tune.AFS_CHECKS, "saga",
                        tune.AfsCheck(incumbent, 0, 0, "cmd", "none worse"))
    assert tune.smoothed_default({**whole, "pick": "saga"})[0] == incumbent  # no fit check
    monkeypatch.setitem(tune.FIT_CHECKS, "saga", tune.FitCheck(incumbent, True, "cmd", "x"))
    assert tune.smoothed_default({**whole, "pick": "saga"})[0] == "saga"
    monkeypatch.setattr(tune, "DEFAULT_POLICY", incumbent)
    assert "**not** `saga`" in tune.default_verdict({**whole, "pick": "saga"})
    assert "**not**" not in tune.default_verdict(whole)
    every, fit = list(mod.TUNE_SEEDS), (list(tune.FIT_TRACES), list(mod.FRACTIONS))
    assert tune.coverage([401, 402], fit[0], full, fit[1]).startswith("part of the fit set only")
    assert tune.coverage(every, fit[0], full, fit[1]) == "the whole fit set"
    # review repro partial_tune.py: one trace, or one capacity, of the fit set is part of it
    assert "traces web, bfcl" in tune.coverage(every, ["swe"], full, fit[1])
    assert "capacities 0.3 of the peak" in tune.coverage(every, fit[0], full, [0.3])
    assert tune.smoothed_default({**whole, "pick": "saga"})[0] == "saga"
    name, why = tune.smoothed_default({**whole, "pick": "saga", "traces": ["swe"]})
    assert name == incumbent and "not the whole fit set (traces web" in why


def test_regret_over_the_smoothing_sizes_sums_victims_and_averages_recomputation(
        monkeypatch):
    """`--regret --smooth`: one row per policy with its pool sizes, the mean recomputed
    tokens over them and per class victims / victims read again (two sizes here, for time)."""
    mod, smooth, regret = load(), load("policies_smooth"), load("policies_regret")
    monkeypatch.setattr(smooth, "pool_sizes", lambda blocks, longest: [blocks, blocks + 8])
    text = regret.regret_smoothed(["swe"], 103, 0.6, ["lru"], "cmd")
    row = next(line for line in text.splitlines() if line.startswith("| swe | lru |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    peak, longest = mod._peak("swe", 103)
    blocks = mod._blocks(peak, longest, 0.6)
    assert cells[2] == f"{blocks}-{blocks + 8}"
    dead = cells[4 + list(regret.CLASSES).index("dead")]
    assert dead == "-" or dead.endswith("/ 0")  # a dead block is never read again
    trace, victims, recomputed = regret.build_trace("swe", 103), [], []
    for size in (blocks, blocks + 8):  # each size on its own: the row sums / averages them
        config = regret.SimConfig(preset=regret.PRESET, num_gpu_blocks=size, policy="lru")
        policy = regret.make_policy("lru", cost=config.cost)
        sim = regret.Simulator(trace, config, policy=policy)
        log = regret.record_regret(sim)
        recomputed.append(sim.run().recomputed_tokens)
        victims.append(log.summary())
    assert recomputed[0] != recomputed[1]  # else a mean and one size's figure agree
    assert cells[3] == f"{sum(recomputed) / 2 / 1e6:.3f}"
    for i, c in enumerate(regret.CLASSES):
        v, r = (sum(s[c][k] for s in victims if c in s) for k in ("victims", "reused"))
        assert cells[4 + i] == (f"{v} / {r}" if v else "-"), c
    assert any(cells[4 + i] != "-" for i in range(len(regret.CLASSES)))
