"""bench/policies.py: the tuning rule, the tuning/evaluation split, and that the default
policy is the one the tuning picked."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
from pathlib import Path

import pytest

from kvsaga.policy import DEFAULT_POLICY, POLICIES, make_policy
from tests.exits import usage_error

ROOT = Path(__file__).resolve().parents[2]


def load(name: str = "policies"):
    """bench/NAME.py as a module, with bench/ on the path (its modules import each other, as
    when run as a script)."""
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def _row(trace, seed, frac, policy, recomputed, hit=0.9, blocks=100):
    return {"trace": trace, "seed": seed, "frac": frac, "policy": policy,
            "recomputed_tokens": recomputed, "hit_rate": hit, "num_gpu_blocks": blocks}


def test_pick_ranks_worst_ratio_then_cases_above_best_then_recomputation():
    mod, tune = load(), load("policies_tune")
    cols = ("lru", "saga", "ttl", "a", "b", "c", "d", "e")
    rows = []
    for k, xs in enumerate([(10, 12, 11, 9, 10, 10, 10.5, 12),  # best baseline 10
                            (20, 19, 25, 19, 30, 19, 19.95, 19),  # 19
                            (5, 6, 7, 6, 5, 10, 5.25, 6)]):  # 5
        for p, x in zip(cols, xs, strict=True):
            rows.append(_row("swe", 1, 0.1 * (k + 1), p, x, blocks=100 + k))
    # thrashing (lru hit rate below the range): not counted
    rows += [_row("web", 1, 0.3, p, x, hit=0.5) for p, x in
             zip(cols, (1, 1, 1, 99, 1, 99, 99, 99), strict=True)]
    assert mod.score(rows, "a") == (2, 34.0, 3)
    assert mod.rank(rows, "a") == (pytest.approx(1.2), 1, 34.0)
    assert mod.rank(rows, "e") == (pytest.approx(1.2), 2, 37.0)
    assert mod.rank(rows, "lru") == (pytest.approx(20 / 19), 1, 35.0)
    # c is above the best on one case only (count-first would pick it), but 2x there;
    # d is 1.05x on all three: the worst ratio comes first
    assert tune.pick(rows, ["c", "d"]) == "d"
    assert tune.pick(rows, ["e", "a"]) == "a"  # same worst, fewer cases above 1.0x
    assert tune.pick(rows, ["a", "lru"]) == "lru"  # lru's worst 1.05x < a's 1.2x
    assert tune.pick(rows, ["b", "a"]) == "a"
    f = [dict(r, policy="f", recomputed_tokens=9.5 if r["frac"] == 0.1 else
              r["recomputed_tokens"]) for r in rows if r["policy"] == "a"]
    assert tune.pick(rows + f, ["f", "a"]) == "a"  # same worst and count, fewer tokens
    with pytest.raises(ValueError, match="nothing to pick"):
        tune.pick(rows, ["missing"])
    # the incumbent keeps its place against a challenger that leads it by less than
    # TIE_SHARE of the tokens on key 3, and loses it beyond
    inc = mod.TUNE_INCUMBENT
    same = [dict(r, policy=inc) for r in rows if r["policy"] == "a"]  # a's rows, 34 tokens
    for lead, want in ((0.5 * mod.TIE_SHARE, inc), (2 * mod.TIE_SHARE, "g")):
        g = [dict(r, policy="g", recomputed_tokens=r["recomputed_tokens"] - lead * 34
                  if r["frac"] == 0.1 else r["recomputed_tokens"]) for r in same]
        assert mod.rank(rows + g, "g")[:2] == mod.rank(rows + same, inc)[:2]
        assert tune.pick(rows + same + g, ["g", inc]) == want


def test_wins_renders_without_pressured_cases():
    """No case in the pressured range (every row thrashing): rank() is None, and the
    table says n/a instead of raising."""
    mod = load()
    rows = [_row("web", 1, 0.3, p, 1, hit=0.5) for p in ("lru", "saga", "ttl", "a")]
    assert mod.rank(rows, "a") is None
    assert load("policies_verdict").wins(rows, ["a"])[-1] == "| a | 0.000 | 0 of 0 | n/a |"


def test_policy_specs_parse_and_bad_ones_are_refused():
    mod = load()
    assert mod.parse_spec("graph") == ("graph", {})
    assert mod.parse_spec("graph[residual_wait=1,calib_prior=2.5]") == (
        "graph", {"residual_wait": 1.0, "calib_prior": 2.5})
    assert mod.parse_spec("adaptive[experts=ttl+lru]") == ("adaptive", {"experts": ("ttl", "lru")})
    for bad in ("graph[x]", "graph[", "gr aph", "adaptive[experts=ttl+]"):
        with pytest.raises(ValueError, match="spec|constant"):
            mod.parse_spec(bad)


def test_every_tune_candidate_builds():
    """Every spec `--tune` runs builds its policy: a spec's `shadow_cache=1` reaches adaptive
    as a bool, which refuses the float 1.0 (the tune failed on it before parse_spec typed
    it); a number other than 0 or 1 for a bool constant is still refused by the policy."""
    mod = load()
    for spec in (*mod.TUNE_CANDIDATES, mod.SPREAD):
        base, params = mod.parse_spec(spec)
        assert make_policy(base, **params).name == base
    _, params = mod.parse_spec("adaptive[shadow_cache=1,realized=0,shadow_memory=8]")
    assert params["shadow_cache"] is True and params["realized"] is False
    assert params["shadow_memory"] == 8.0 and not isinstance(params["shadow_memory"], bool)
    base, params = mod.parse_spec("adaptive[shadow_cache=2]")
    with pytest.raises(ValueError, match="shadow_cache must be a bool"):
        make_policy(base, **params)


def test_evaluation_refuses_fit_seeds_and_tune_refuses_evaluation_seeds(capsys):
    """Each refusal names the seeds given that are on the wrong side, not only the fit set."""
    mod = load()
    fresh = mod.EVAL_SEEDS[0]
    for seed in mod.TUNE_SEEDS:  # every fit seed, of the families and of the traces
        with pytest.raises(SystemExit) as e:
            mod.main(["--seeds", f"{fresh},{seed}", "--no-write"])
        assert f"error: --seeds {seed}: fit seeds" in usage_error(e, capsys)
    with pytest.raises(SystemExit) as e:
        mod.main(["--tune", "--seeds", f"{mod.TUNE_SEEDS[0]},{fresh}", "--no-write"])
    assert f"error: --seeds {fresh}: --tune runs only the fit seeds" in usage_error(e, capsys)
    assert not set(mod.TUNE_SEEDS) & set(mod.EVAL_SEEDS)


def test_default_policy_and_its_constants_are_what_the_tuning_picked():
    """The per-size tuning's pick is the default unless the saved smoothed tuning's rule
    sets another (`smoothed_default` falls back to the per-size pick); its constants are
    its class defaults."""
    mod, tune = load(), load("policies_tune")
    tuned = json.loads(mod.TUNE_JSON.read_text(encoding="utf-8"))
    assert set(tuned["seeds"]) <= set(mod.TUNE_SEEDS)
    assert tuned["pick"] == tune.per_size_pick()
    name, params = mod.parse_spec(tuned["pick"])
    smoothed = json.loads(tune.TUNE_SMOOTH_JSON.read_text(encoding="utf-8"))
    if tune.saved_gaps(smoothed):  # partial: falls back
        assert name == tune.smoothed_default(smoothed)[0] == DEFAULT_POLICY
    assert tune.smoothed_default(smoothed)[0] == DEFAULT_POLICY
    name, params = mod.parse_spec(tune.default_spec(smoothed))
    defaults = inspect.signature(POLICIES[name]).parameters
    for key, value in params.items():
        default = defaults[key].default
        assert (list(default) if isinstance(default, tuple) else default) == (
            list(value) if isinstance(value, tuple) else value), (key, default, value)
    # the smoothed pick graph[demoted_mean=1] failed the AFS veto: graph, the mean off; and
    # since seeds 951, 952 joined the fit set (session 32) the saved smoothed tune, which did
    # not run them, covers part of it only, so it sets nothing either way
    assert smoothed["pick"] == "graph[demoted_mean=1]"
    assert tune.saved_gaps(smoothed)
    assert "seeds 951, 952 not run" in tune.smoothed_default(smoothed)[1]
    assert "graph[demoted_mean=1]" in tune.AFS_CHECKS and not tune.AFS_CHECKS[
        "graph[demoted_mean=1]"].passes
    assert DEFAULT_POLICY == "graph" and defaults["demoted_mean"].default is False
    assert make_policy(DEFAULT_POLICY).returns.demoted_mean is False


def test_one_tiny_run_renders_both_sections(tmp_path):
    mod = load()
    rows, skipped = mod.run(["swe"], [0.6], ["lru", "saga", "ttl", "graph"], [103], 1)
    assert not skipped and {r["policy"] for r in rows} == {"lru", "saga", "ttl", "graph"}
    text = mod.markdown(rows, skipped, ["lru", "saga", "ttl", "graph"], "cmd", 1.0, [103])
    assert text.startswith(mod.SECTION) and "| swe | 103 | 60% |" in text
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# R\n\n## Other\n\nkept\n\n{mod.SECTION}\n\nold\n")
    title = mod.eval_title([103], "2026-12-06 13:00 UTC")
    mod.append_evaluation(text, results, title)
    out = results.read_text()
    assert "kept" in out and "old" in out and out.count(mod.SECTION) == 1
    assert out.index("old") < out.index(title) < out.index("| swe | 103 | 60% |")


def test_the_hindsight_column_and_the_reference_goal_on_the_best_run_found():
    """`hindsight` runs as a column (the least of belady's and oracle-ttl's runs from several
    schedules, never above plain belady), and with it in the table the 1.10x goal is judged
    against the least of the case's columns, not against belady."""
    mod = load()
    rows, _ = mod.run(["swe"], [0.6], ["belady", "hindsight"], [103], 1)
    by = {r["policy"]: r for r in rows}
    assert by["hindsight"]["recomputed_tokens"] <= by["belady"]["recomputed_tokens"]
    assert by["hindsight"]["hindsight_from"].split("<-")[0] in ("belady", "oracle-ttl")
    table = [_row("swe", 1, 0.3, p, x) for p, x in
             (("lru", 10), ("saga", 12), ("ttl", 11), ("g", 10.5), ("belady", 20),
              ("hindsight", 9.5))]
    line = mod.goals(table, "g")[1]
    assert "best run found" in line and "worst 1.11x" in line  # 10.5 / 9.5
    line = mod.goals(table[:-1], "g")[1]  # no hindsight: belady, as before
    assert "belady (a reference, not a bound)" in line and "worst 0.53x" in line
    table[-1]["recomputed_tokens"] = 12  # the best run found is then lru's
    assert "worst 1.05x" in mod.goals(table, "g")[1]
    # another candidate's column is no part of the yardstick: it must not move with --policies
    assert "worst 1.05x" in mod.goals([*table, _row("swe", 1, 0.3, "other", 5)], "g")[1]
    # hindsight on some pressured cases only: one yardstick or none, so none is judged
    mixed = [*table, *(_row("swe", 2, 0.3, p, x) for p, x in
                       (("lru", 10), ("saga", 12), ("ttl", 11), ("g", 10.5), ("belady", 20)))]
    lines = mod.goals(mixed, "g")
    assert len(lines) == 2 and "not judged" in lines[1] and "on 1 of 2" in lines[1]
    assert "best run found" not in " ".join(lines) and "belady" not in lines[1].split(":")[0]


def test_hindsight_takes_no_parameters(capsys):
    """`hindsight[...]` is refused with its name, not run with its parameters dropped."""
    mod = load()
    with pytest.raises(SystemExit) as e:
        mod.main(["--policies", "lru,hindsight[rounds=2]", "--no-write"])
    assert "'hindsight[rounds=2]': hindsight takes no parameters" in usage_error(e, capsys)
    with pytest.raises(ValueError, match=r"hindsight\[rounds=2\].*no parameters"):
        mod._run(("swe", 103, 0.6, "hindsight[rounds=2]"))


def test_hindsight_diagnosis_reads_fit_seeds_only_one_case_per_pool(capsys):
    """bench/policies_hindsight.py refuses any seed outside the fit set before simulating,
    and takes each pressured pool once, with the least of lru, saga and ttl as its best."""
    h = load("policies_hindsight")
    for seeds in ("941", "12345", f"{h.TUNE_SEEDS[0]},950"):  # 950: next to fit seed 951
        with pytest.raises(SystemExit) as e:
            h.main(["--seeds", seeds])
        assert f"seeds [{seeds.split(',')[-1]}] are not fit seeds" in usage_error(e, capsys)
    rows = [_row("swe", 1, f, p, x, hit, blocks) for f, hit, blocks in
            ((0.3, 0.9, 100), (0.6, 0.9, 100), (0.9, 0.5, 300))
            for p, x in (("lru", 10), ("saga", 8), ("ttl", 9), (h.GRAPH, 7))]
    cases = h.pressured_cases(rows)
    assert [(c["frac"], c["blocks"], c["best"], c["best_saved"], c["graph_saved"])
            for c in cases] == [(0.3, 100, "saga", 8, 7)]


def test_hindsight_diagnosis_reads_steered_runs_exactly_and_prints_its_counts():
    """`offline <- graph` is belady's and oracle-ttl's run told graph's waits exactly, not a
    later round's run whose source ends in graph; the counts RESULTS quotes are printed."""
    h = load("policies_hindsight")
    runs = {"belady": 50, "oracle-ttl": 39, "belady<-belady": 45, "oracle-ttl<-belady": 41,
            "belady<-graph": 30, "oracle-ttl<-graph": 35, "belady<-ttl": 20,
            "oracle-ttl<-ttl": 25, "belady<-belady<-graph": 10, "oracle-ttl<-belady<-graph": 11}
    row = dict(trace="swe", seed=1, frac=0.3, blocks=100, best="ttl", best_saved=38,
               graph_saved=44, best_now=38, graph_now=44, runs=runs, hindsight=10,
               hindsight_from="belady<-belady<-graph",
               online={"lru": 60, "saga": 39, "ttl": 38, "graph": 44})
    assert h._from(row, "graph") == 30 and h._from(row, "ttl") == 20
    text = h.report([row], "cmd", 1.0)
    assert "at or below the best baseline, of 1: hindsight 1; plain belady 0; plain " \
           "oracle-ttl 0; the lesser of plain belady and oracle-ttl 0." in text
    assert "graph within 1.10x of: hindsight 0; plain belady 1; plain oracle-ttl 0" in text
    # graph 44 > 1.05 * 38: a loss; offline <- graph 30 < 0.95 * 44; 30 > 1.05 * 20
    assert "graph over 5% above the best baseline on 1 of 1; of those, offline <- graph " \
           "over 5% below graph on 1, over 5% above offline <- BEST on 1 (swe 1 30%)." in text


def test_every_tuned_constant_is_its_policys_default():
    """The constants the tuning picked among a policy's settings are that policy's class
    defaults: read from the signatures, so flipping e.g. graph's residual_wait fails here."""
    mod, tune = load(), load("policies_tune")
    tuned = json.loads(mod.TUNE_JSON.read_text(encoding="utf-8"))
    constants = tuned["constants"]  # what each setting ran with, bare names included
    for spec, values in constants.items():  # a spec's own constants are what it ran with
        for key, value in mod.parse_spec(spec)[1].items():
            assert values[key] == tune._constant(value), (spec, key)
    if "vetting" in tuned:  # a veto-aware tune: the rule's picks after issue 10's checks
        picks = tune.vetted_variants(tuned["rows"], tuned["candidates"], tuned["vetting"],
                                     tuned["pick"])
    else:
        picks = tune.variant_picks(tuned["rows"], tuned["candidates"])
    assert set(picks) == set(tuned["variants"]) and picks
    for base, label in picks.items():
        spec = tuned["variants"][base]
        assert spec == tune.explicit(label, constants), (base, label, spec)
        name, params = mod.parse_spec(spec)
        assert name == base and params, spec  # every varied constant written out
        defaults = inspect.signature(POLICIES[base]).parameters
        for key, value in params.items():  # names (adaptive's experts) saved as lists
            assert tune._constant(defaults[key].default) == tune._constant(value), (
                base, key, defaults[key].default, value)


def test_a_tuning_run_records_what_bare_names_ran_with(tmp_path, capsys):
    """A bare name's constants are its class defaults on the day it ran; re-rendering keeps
    the saved ones instead of today's, and refuses a save that lacks them."""
    mod, tune = load(), load("policies_tune")
    now = float(inspect.signature(POLICIES["graph"]).parameters["residual_wait"].default)
    other = f"graph[residual_wait={1 - now:g}]"
    cands = ["lru", "saga", "ttl", "graph", other]
    got = tune.setting_constants(cands)
    assert got == {"graph": {"residual_wait": now}, other: {"residual_wait": 1 - now}}
    assert tune.explicit("graph", got) == f"graph[residual_wait={now:g}]"
    assert tune.explicit("ttl", got) == "ttl"
    rows = [_row("swe", 1, 0.3, p, x) for p, x in zip(cands, (5, 6, 7, 3, 4), strict=True)]
    then = {"graph": {"residual_wait": 1 - now}, other: {"residual_wait": 1 - now}}
    saved = {"rows": rows, "command": "cmd", "wall_s": 1.0, "seeds": [1], "traces": ["swe"],
             "candidates": cands, "constants": then, "notes": ["a note"]}
    path = tmp_path / "tune.json"
    path.write_text(json.dumps(saved))
    assert mod.main(["--tune", "--from-json", str(path), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert f"`graph` (ran as `{other}`; its defaults)" in out
    assert out.rstrip().endswith("a note")
    del saved["constants"]
    path.write_text(json.dumps(saved))
    with pytest.raises(SystemExit) as e:
        mod.main(["--tune", "--from-json", str(path), "--no-write"])
    assert f"{path} does not record what its bare policy names ran with" in \
        usage_error(e, capsys)


def test_names_as_constants_are_saved_and_written_back():
    """adaptive's settings differ in `experts` (names): saved as lists, written back as
    `a+b` specs that parse to what ran."""
    mod, tune = load(), load("policies_tune")
    other = "adaptive[experts=graph+ttl,realized=1]"
    got = tune.setting_constants(["adaptive", other])
    assert got[other] == {"experts": ["graph", "ttl"], "realized": 1.0}
    defaults = inspect.signature(POLICIES["adaptive"]).parameters
    assert got["adaptive"] == {"experts": list(defaults["experts"].default),
                               "realized": float(defaults["realized"].default)}
    assert tune.explicit(other, got) == other
    assert mod.parse_spec(tune.explicit("adaptive", got))[1]["experts"] == \
        defaults["experts"].default


def test_the_evaluation_ranks_the_online_policies_and_says_whether_the_default_wins(
        monkeypatch):
    """The held-out section states, by the tune rule, who wins and where the default
    stands (issue 11: the default must win this evaluation); references are not ranked.
    The default is named `g` here, apart from the baselines (it may be one of them)."""
    mod = load("policies_verdict")
    monkeypatch.setattr(mod, "DEFAULT_POLICY", "g")
    rows = [_row("swe", 1, 0.3, p, x) for p, x in
            (("lru", 10), ("saga", 12), ("ttl", 11), (mod.DEFAULT_POLICY, 9), ("x", 20),
             ("belady", 1))]
    line = mod.ranking(rows, ["lru", "saga", "ttl", mod.DEFAULT_POLICY, "x", "belady"])[0]
    assert line.index(f"`{mod.DEFAULT_POLICY}` 0.90x") < line.index("`lru` 1.00x")
    assert "belady" not in line and "**it wins**" in line
    rows[3]["recomputed_tokens"] = 15
    line = mod.ranking(rows, ["lru", "saga", "ttl", mod.DEFAULT_POLICY])[0]
    assert f"the default `{mod.DEFAULT_POLICY}` ranks 4 of 4: **missed** (the baseline " \
        "`lru` ranks first; its ratio is to the best" in line
    rows[4]["recomputed_tokens"] = 8  # a non-baseline first: it is named the winner
    line = mod.ranking(rows, ["lru", "saga", "ttl", mod.DEFAULT_POLICY, "x"])[0]
    assert "ranks 5 of 5: **missed** (`x` wins)" in line
    # the default a baseline that ranks first: not called the winner
    monkeypatch.setattr(mod, "DEFAULT_POLICY", "lru")
    line = mod.ranking(rows[:4], ["lru", "saga", "ttl", "g"])[0]
    assert "ranks 1 of 4: **it ranks first, as a baseline**" in line
    assert "**it wins**" not in line


def test_chaos_diagnosis_refuses_fresh_seeds_before_any_run(capsys):
    """bench/policies_chaos.py reads seen seeds only: a fresh evaluation seed (or any seed
    outside the fit and seen sets) is refused before anything is simulated."""
    chaos, mod = load("policies_chaos"), load()
    for seed in (*mod.SEED_SETS[1][1], 12345):
        with pytest.raises(SystemExit) as e:
            chaos.main(["--seed", str(seed), "--jitter", ""])
        assert f"seed {seed} is neither a fit seed nor a seen" in usage_error(e, capsys)


def test_bfcl_v4_fit_and_evaluation_seeds_draw_from_disjoint_halves(monkeypatch):
    """A fresh bfcl-v4 seed replayed mostly entries the fit seeds used (review repro
    bfcl_heldout.py: 70-74 of 80): fit seeds now draw from BFCL's fit half of tasks, every
    other seed from the eval half."""
    import kvsaga.sim.bfcl as bfcl

    P = load()
    asked = {}
    monkeypatch.setattr(bfcl, "bfcl_trace", lambda *a, **k: asked.setdefault(a[1], k["half"]))
    for seed in P.TUNE_SEEDS + P.EVAL_SEEDS:
        P.build_trace("bfcl-v4", seed)
    assert {asked[s] for s in P.TUNE_SEEDS} == {"fit"}
    assert {asked[s] for s in P.EVAL_SEEDS} == {"eval"}


def test_reference_says_which_capacities_it_left_out(monkeypatch):
    """Session 43: a capacity too big to search was dropped silently, though the section
    says every capacity is run; now each one left out is returned (and printed)."""
    ref = load("policies_reference")

    def too_big(*a, **k):
        raise RuntimeError("exhaustive search exceeded 20000 runs")

    monkeypatch.setattr(ref, "exhaustive_optimum", too_big)
    rows, left_out = ref._reference_case((200, "fcfs", "tiny"))
    assert rows == [] and len(left_out) == ref.MAX_EXTRA + 1
    assert all("too many choices" in x for x in left_out[:-1])
    assert "the cap" in left_out[-1]  # and none of them reached an optimum of 0


def _ref_row(ref, blocks: int, optimum: int, **recomputed) -> dict:
    row = {"seed": 1, "shape": "tiny", "scheduler": "workflow", "blocks": blocks,
           "optimum": optimum, "demoted": False, "waited": False,
           "fed": {p: recomputed.pop(f"fed_{p.replace('-', '_')}", 0)
                   for p in ref.GRAPH_KEEPERS}}
    row.update({p: recomputed.get(p, 0) for p in ref.REF_POLICIES})
    return row


def test_reference_goes_on_past_an_optimum_of_0_where_a_policy_recomputes(monkeypatch):
    """Session 44: the capacity loop stopped at the first capacity whose optimum was 0, and
    no policy ran there: a policy that recomputed at it was in no table."""
    ref = load("policies_reference")
    made = []

    def case(sessions, config, seed, shape, max_runs):
        made.append(config.num_gpu_blocks)
        return _ref_row(ref, config.num_gpu_blocks, 0, lru=7 if len(made) < 3 else 0)

    monkeypatch.setattr(ref, "_case", case)
    rows, left_out = ref._reference_case((200, "workflow", "tiny"))
    assert len(rows) == 3 and not left_out  # two with lru recomputing, then all 0
    table = "\n".join(ref._zero_table(rows))
    assert "| workflow | tiny | 3 | lru | 2 | 7 | - |" in table


def test_reference_judges_graph_keepers_against_their_fed_optimum():
    """Each graph-keeping policy against the optimum fed its own graph, and a policy that
    beat every run of that search counted below it (a broken bound shows)."""
    ref = load("policies_reference")
    rows = [_ref_row(ref, 5, 9, ttl=4, saga=4, graph=4, adaptive=4, **{"oracle-ttl": 4},
                     hindsight=4, lru=21, belady=17, fed_ttl=4, fed_saga=4, fed_graph=4,
                     fed_adaptive=4, fed_oracle_ttl=4),
            _ref_row(ref, 6, 2, ttl=2, saga=3, fed_ttl=math.inf, fed_saga=3)]
    table = "\n".join(ref._fed_table(rows))
    assert "| tiny | ttl | 2 | 1 | 1 | 1.00x | 1.00x | 1.00x | 0 | 1 |" in table
    assert "| tiny | saga | 2 | 2 | 0 | 1.00x | 1.00x | 1.00x | 1 | 1 |" in table
    # hindsight: the least of the plain optimum and the one fed oracle-ttl's graph
    assert "| tiny | hindsight | 1 | 1 | 0 | 1.00x | 1.00x | 1.00x | - | - |" in table


def test_help_says_what_tune_runs_and_no_seed_set_is_called_fresh(capsys):
    """Review repros tune_traces_help and stale_fresh_labels: --traces' help said --tune runs
    the built-in families (it runs the held-out traces too), and the default run labelled
    931, 932 (fresh in the sixteenth session, seen since) "fresh seeds"."""
    mod = load()
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    at = out.index("--traces TRACES comma-separated")
    text = out[at:out.index("--fractions FRACTIONS", at)]
    assert all(t in text.split("with --tune")[1] for t in mod.FAMILIES + mod.TRACES)
    assert not any(label.startswith("fresh") for label, _ in mod.SEED_SETS)
