"""bench/scheduling.py and bench/scheduling_fit.py on one grid point: a row carries the
admission wait split by cause, and the fit's score and the held-out table read rows as
their docstrings say."""

from __future__ import annotations

import pytest

from tests.bench_scripts import bench_modules, import_bench
from tests.exits import usage_error

mods = bench_modules("scheduling", "scheduling_fit")


def test_a_row_splits_its_admission_wait_by_cause(mods):
    sched, _ = mods
    row = sched._run(("swe", 101, 1.0, 0.25, "workflow", "ttl", None))
    causes = row["wait_causes"]
    assert set(causes) == {"pool", "contexts", "growth", "reserve", "batch"}
    assert row["admission_wait_s"] > 0  # this point is under pressure
    assert sum(causes.values()) == pytest.approx(row["admission_wait_s"])
    assert 0 < row["waiting_share"] <= 1 and 0 < row["waiting_context_fill"] <= 1
    assert "held the next session back" in sched.waits(row)


def test_fit_score_and_held_out_table(mods):
    sched, fit = mods

    def row(scheduler, policy, seed, frac, tct, p95, tph, hit=0.5, params=None):
        return {"family": "swe", "seed": seed, "load": 1.0, "frac": frac,
                "scheduler": scheduler, "policy": policy, "params": params,
                "tct_mean_s": tct, "tct_p95_s": p95, "tasks_per_hour": tph,
                "hit_rate": hit, "tct_unloaded_mean_s": 1.0, "admission_wait_s": 0.5,
                "wait_causes": {"pool": 0.1, "contexts": 0.3, "growth": 0.1}}

    base = {("swe", s, 1.0, 0.5): row("fcfs", "lru", s, 0.5, 8.0, 16.0, 100.0)
            for s in (1, 2)}
    rows = [row("workflow", "ttl", 1, 0.5, 2.0, 8.0, 200.0),
            row("workflow", "ttl", 2, 0.5, 8.0, 16.0, 50.0)]
    got = fit.score(rows, base, None)["swe 1x 50%"]
    assert got == pytest.approx({"gain": 2.0, "p95": 2 ** 0.5, "tph": 1.0})  # geomeans
    sched_name, policy = sched.DEFAULT.split("+")
    held = []
    for seed in fit.HELD_OUT_SEEDS:
        for load, frac in sched.GRID:
            hit = 0.9 if frac == 1.0 else 0.5  # unpressured at 100%: left out of the table
            for s, p, tct in (("fcfs", "lru", 8.0), (sched_name, policy, 4.0)):
                r = row(s, p, seed, frac, tct, tct, 100.0, hit=hit)
                r["load"] = load
                held.append(r)
    table = fit.held_out_table(held, ["swe"]).splitlines()
    # header, rule, and per seed the three pressured points
    assert len(table) == 2 + 3 * len(fit.HELD_OUT_SEEDS)
    assert all("| 2.00x |" in line for line in table[2:])


def test_noisy_mix_and_its_goal_line(mods):
    """The noisy-neighbour mix is what bench/scheduling_mix.py declares (one family, tenant
    a at 4x b's rate), and its goal line is met only where the default's ratio is <= 1.5
    and below fcfs+lru's at every seed."""
    mix = import_bench("scheduling_mix")
    sched, _ = mods
    sessions = mix.mix_trace("noisy", 101)
    assert [sum(s.tenant == t for s in sessions) for t in "ab"] == [32, 8]
    assert {s.workflow for s in sessions} == {"web"}
    sched_name, policy = sched.DEFAULT.split("+")

    def row(scheduler, policy, seed, frac, ratio):
        return {"family": "noisy", "seed": seed, "frac": frac, "scheduler": scheduler,
                "policy": policy, "params": None, "afs_max_slowdown_ratio": ratio,
                "tenants": {"a": {"slowdown": 1.0, "tct_alone_s": 100.0},
                            "b": {"slowdown": ratio, "tct_alone_s": 100.0}}}

    rows = []
    for seed in mix.NOISY_SEEDS:
        for frac in mix.MIX_FRACS["noisy"]:
            rows += [row("fcfs", "lru", seed, frac, 4.0),
                     row(sched_name, policy, seed, frac, 1.2 if frac == 0.5 else 2.0)]
    lines = [x for x in mix.afs_lines(rows) if x.startswith("- Noisy")]
    assert len(lines) == 2 and "at 50%" in lines[0] and ": met;" in lines[0]
    assert "at 25%" in lines[1] and ": missed;" in lines[1]
    # Each seed's default row carries the tenants' floors (solo TCT / alone).
    solo = mix.tenant_solo("noisy", mix.NOISY_SEEDS[0])
    assert f"floors a {solo['a'] / 100:.2f}, b {solo['b'] / 100:.2f}" in lines[0]


def test_slowdown_floors(mods):
    """A tenant's floor is its solo TCT over its TCT alone; the best reachable ratio is
    the highest floor over the smallest slowdown (which cannot rise), never below 1: the
    ratio, largest slowdown over smallest, never is (review s48, bench finding 5: RESULTS
    printed "at best 0.92" for mix 209 100%)."""
    mix = import_bench("scheduling_mix")
    r = {"tenants": {"a": {"slowdown": 0.4, "tct_alone_s": 50.0},
                     "b": {"slowdown": 1.6, "tct_alone_s": 10.0}}}
    floors, best = mix.slowdown_floors(r, {"a": 5.0, "b": 6.0})
    assert floors == {"a": 0.1, "b": 0.6}
    assert best == 0.6 / 0.4
    # mix 209 100%'s figures: floors 0.448 and 0.43 under slowdowns of about 0.49
    r = {"tenants": {"a": {"slowdown": 0.49, "tct_alone_s": 45.8},
                     "b": {"slowdown": 0.487, "tct_alone_s": 15.1}}}
    floors, best = mix.slowdown_floors(r, {"a": 20.5, "b": 6.5})
    assert max(floors.values()) / 0.487 < 1 and best == 1.0


def test_solo_floor_is_the_bounds_solo_time_and_never_above_unloaded(mods):
    """The floor is scheduling_bound's per-session solo time, a true lower bound on any
    schedule's TCT (review s48, bench finding 6: the unloaded TCT, the floor before, fixes
    the chunking and hits no shared prefix, so a schedule beat it, and "strict" was not)."""
    from scheduling_bound import session_needs

    from kvsaga.sim.metrics import unloaded_tct
    from kvsaga.sim.simulator import SimConfig
    mix = import_bench("scheduling_mix")
    cfg = SimConfig(preset=mix.PRESET)
    sessions = mix.mix_trace("noisy", 101)
    solo = mix.tenant_solo("noisy", 101)
    for t in "ab":
        own = [s for s in sessions if s.tenant == t]
        needs = [session_needs(s, cfg.cost, cfg.max_num_batched_tokens).solo_s for s in own]
        unl = [unloaded_tct(s, cfg.cost, cfg.max_num_batched_tokens) for s in own]
        assert solo[t] == pytest.approx(sum(needs) / len(needs))
        assert all(x <= u * (1 + 1e-9) for x, u in zip(needs, unl, strict=True))


def test_a_floored_capacity_is_one_run_marked_and_counted_once(mods):
    """The noisy mix's 25% point floored to its 50% capacity is the 50% run: its line says
    so and the goal count takes it once (review s48, bench finding 4: RESULTS counted seed
    210's 3.05 twice, and 201, 202's misses at both capacities)."""
    mix = import_bench("scheduling_mix")
    sched, _ = mods
    name, policy = sched.DEFAULT.split("+")

    def row(scheduler, policy, seed, frac, blocks, ratio):
        return {"family": "noisy", "seed": seed, "frac": frac, "scheduler": scheduler,
                "policy": policy, "params": None, "capacity_blocks": blocks,
                "afs_max_slowdown_ratio": ratio,
                "tenants": {"a": {"slowdown": 1.0, "tct_alone_s": 100.0},
                            "b": {"slowdown": ratio, "tct_alone_s": 100.0}}}

    rows = []
    for seed, blocks in ((7, {0.5: 2681, 0.25: 2024}), (8, {0.5: 2226, 0.25: 2226})):
        for frac in (0.5, 0.25):
            rows += [row("fcfs", "lru", seed, frac, blocks[frac], 4.0),
                     row(name, policy, seed, frac, blocks[frac], 1.2 if seed == 8 else 3.0)]
    lines = [x for x in mix.afs_lines(rows, noisy_seeds=(7, 8)) if x.startswith("- Noisy")]
    assert "2226 blocks: the same run as at 50%" not in lines[0]
    assert "seed 8 (2226 blocks: the same run as at 50%, counted once)" in lines[1]
    assert "seed 7 (" not in lines[1]
    assert mix.goal_runs(rows) == [("noisy 7 50%", False), ("noisy 8 50%", True),
                                   ("noisy 7 25%", False)]
    assert "met at 1 of 3 (noisy 8 50%)" in mix.goal_count_line(rows)


def test_mix_rows_carry_each_tenant_alone_on_the_whole_gpu(mods):
    """A mix row carries each tenant's TCT alone on the whole GPU (no scheduler finishes a
    tenant's tasks sooner than its solo time), and the goal line's verdict reads both
    floors: 1.5 out of reach by the solo floors (strict), by the whole-GPU ones, or
    neither."""
    mix = import_bench("scheduling_mix")
    sched, _ = mods
    row = sched._run(("mix", 101, mix.MIX_LOAD, 0.5, "workflow", "graph", None))
    solo = mix.tenant_solo("mix", 101)
    for t, v in row["tenants"].items():
        assert v["tct_whole_s"] >= solo[t]
    floors, best = mix.slowdown_floors(row, solo, whole=True)
    assert floors == {t: v["tct_whole_s"] / v["tct_alone_s"] for t, v in row["tenants"].items()}
    unl = {"a": 5.0, "b": 2.0}

    def verdict(whole_a):
        r = {"tenants": {"a": {"slowdown": 0.4, "tct_alone_s": 50.0, "tct_mean_s": 20.0,
                               "tct_whole_s": whole_a},
                         "b": {"slowdown": 0.2, "tct_alone_s": 50.0, "tct_mean_s": 10.0,
                               "tct_whole_s": 9.0}}}
        return mix.afs_floor(r, unl).rsplit(": ", 1)[1]

    assert verdict(6.0) == "1.5 within the floors"  # floors 0.12 / 0.2 = 0.6 and 0.6
    assert verdict(18.0).startswith("1.5 only by slowing a tenant, unless")  # 0.36 / 0.2
    unl["a"] = 16.0  # solo floor 0.32: 1.6 > 1.5 whatever the whole-GPU runs say
    assert verdict(18.0) == "1.5 only by slowing a tenant (strict)"


def test_oracle_order_takes_the_fewest_remaining_steps_first(mods):
    """bench/scheduling_oracle.py: sessions waiting for admission go in order of their true
    remaining steps (ties in arrival order); its rows get their own label, and the miss
    line quotes them."""
    from types import SimpleNamespace

    from kvsaga import KVCacheManager, KVSpec
    from kvsaga.scheduler import make_scheduler

    sched, _ = mods
    import scheduling_oracle as oracle  # on the path while `mods` holds it

    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 16, policy="lru", clock=lambda: 0.0)
    s = oracle.OracleOrder(m)
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler(oracle.NAME, m)  # bench-only: not in the library's registry
    for i, (steps, k) in enumerate(((6, 0), (5, 1), (2, 0), (4, 1))):
        s.add(SimpleNamespace(session_id=f"s{i}", tenant=None, resumed=k > 0, arrival=0.1 * i,
                              workflow="w", num_tokens=4,  # the request protocol's fields
                              session=SimpleNamespace(steps=(None,) * steps), k=k), 0.1 * i)
    assert [r.session_id for r in s.waiting] == ["s3", "s1", "s0", "s2"]  # demoted first
    assert s._candidate(1.0).session_id == "s2"  # 2 steps left, though new and last
    assert [r.session_id for r in s.waiting] == ["s2", "s3", "s1", "s0"]  # 2, 3, 4, 6 left
    assert len(oracle.oracle_tasks(["swe"], sched.GRID, 1, "lru")) == 3  # frac < 1 only
    row = {"tct_mean_s": 10.0, "busy_s": 50.0, "num_batch_steps": 9, "recomputed_tokens": 1,
           "computed_tokens": 4}
    line = oracle.oracle_line({"tct_mean_s": 30.0}, row, row, row)
    assert "gives 10.0 s (3.00x fcfs+lru)" in line and "25% of the prefill" in line
    got = sched._run(("bfcl", 101, 1.0, 0.25, oracle.NAME, "lru", None))
    assert got["scheduler"] == oracle.NAME and got["num_demotions"] > 0


def test_recompute_diagnosis_accounts_for_every_recomputed_token(mods):
    """bench/scheduling_recompute.py observes without changing: its split by the step
    that recomputes adds up to the row's recomputed tokens, and the row equals an
    unobserved run's. At swe 1x 25% the capacity is its floor (the longest session + 1)."""
    sched, _ = mods
    scheduling_recompute = import_bench("scheduling_recompute")
    d = scheduling_recompute.measure("swe", 1.0, 0.25, 101, "graph")
    split = {k: v for k, v in d["counts"].items() if k.startswith("recomputed")}
    assert sum(split.values()) == d["row"]["recomputed_tokens"] > 0
    assert d["counts"]["prefill"] == d["row"]["computed_tokens"]
    assert split.get("recomputed demoted", 0) > 0 and len(d["demotions"]) > 0
    assert d["capacity"] == d["longest"] + 1 < d["peak"]
    plain = sched._run(("swe", 101, 1.0, 0.25, "workflow", "graph", None))
    assert plain["tct_mean_s"] == d["row"]["tct_mean_s"]
    assert plain["recomputed_tokens"] == d["row"]["recomputed_tokens"]


def test_run_reusing_takes_saved_rows_in_task_order(mods):
    """A saved row stands for its task (the oracle's by its scheduler name, params by
    value); only the tasks the saved run lacks are simulated, and rows keep task order."""
    _, fit = mods

    def saved(family, sched, params=None):
        return {"family": family, "seed": 1, "load": 1.0, "frac": 0.5, "scheduler": sched,
                "policy": "graph", "params": params}

    rows = [saved("swe", "workflow-oracle"), saved("web", "workflow", {"admission_order": "fifo"})]
    tasks = [("web", 1, 1.0, 0.5, "workflow", "graph", {"admission_order": "fifo"}),
             ("swe", 1, 1.0, 0.5, "workflow-oracle", "graph", None)]
    got = fit.run_reusing(tasks, rows, workers=1)
    assert list(got) == [rows[1], rows[0]] and got.reused == 2
    assert fit.task_key(tasks[0]) != fit.task_key((*tasks[0][:6], {"admission_order": "gittins"}))


def test_round_9_ranks_p95_misses_per_seed_first(mods):
    """bench/scheduling_fit.py's round-9 rule: a candidate with fewer (seed, point) pairs
    whose p95 gain is below 1 ranks first, whatever its mean gains; then the smallest gain.
    The geomean over seeds would hide seed 2's miss below."""
    _, fit = mods

    def row(seed, tct, p95, params):
        return {"family": "swe", "seed": seed, "load": 1.0, "frac": 0.5, "scheduler":
                "workflow" if params is not None else "fcfs", "policy": "graph",
                "params": params, "tct_mean_s": tct, "tct_p95_s": p95, "tasks_per_hour": 100.0}

    a, b = {"tail_wait_factor": 0.0}, {"tail_wait_factor": 3.0}
    base = {("swe", s, 1.0, 0.5): row(s, 8.0, 16.0, None) for s in (1, 2)}
    rows = [row(1, 2.0, 4.0, a), row(2, 2.0, 20.0, a),  # gains 4x, 4x; p95 4x, 0.8x
            row(1, 4.0, 8.0, b), row(2, 4.0, 16.0, b)]  # gains 2x, 2x; p95 2x, 1x
    sa, sb = fit.score(rows, base, a), fit.score(rows, base, b)
    da, db = fit.per_seed(rows, base, a), fit.per_seed(rows, base, b)
    assert sa["swe 1x 50%"]["p95"] == pytest.approx(20 ** 0.5 / 5 * 2)  # geomean > 1
    assert fit.p95_misses(da) == ["swe 1x 50% seed 2 0.80x"] and fit.p95_misses(db) == []
    assert fit.RULE == "p95_misses"
    assert fit.rank_key(sb, db) < fit.rank_key(sa, da)  # b first despite half the gain
    table = fit.candidate_table([a, b], {0: sa, 1: sb}, {0: da, 1: db}).splitlines()
    assert table[2].endswith("| 4.00x | 1: swe 1x 50% seed 2 0.80x |")
    assert table[3].endswith("| 2.00x | 0 |")


def test_p95_misses_count_a_run_shared_by_two_fit_points_once(mods):
    """`scheduling.capacity` floors the capacity at the longest session + 1 block, so the
    25% and 50% points of a seed can be one run (same blocks): its p95 miss counts once.
    Seed 2 misses at 25% and 50% on one capacity (one run), seed 3 at two capacities (two)."""
    _, fit = mods

    def row(seed, frac, blocks, p95, params):
        return {"family": "web", "seed": seed, "load": 1.0, "frac": frac, "scheduler":
                "workflow" if params is not None else "fcfs", "policy": "graph",
                "params": params, "tct_mean_s": 4.0, "tct_p95_s": p95,
                "tasks_per_hour": 100.0, "capacity_blocks": blocks}

    a = {"tail_wait_factor": 0.0}
    caps = {(2, 0.5): 40, (2, 0.25): 40, (3, 0.5): 80, (3, 0.25): 50}
    base = {("web", s, 1.0, f): row(s, f, c, 10.0, None) for (s, f), c in caps.items()}
    rows = [row(s, f, c, 20.0, a) for (s, f), c in caps.items()]
    miss = fit.p95_misses(fit.per_seed(rows, base, a))
    assert miss == ["web 1x 50% = web 1x 25% seed 2 0.50x", "web 1x 50% seed 3 0.50x",
                    "web 1x 25% seed 3 0.50x"]


def test_held_out_cli_refuses_bad_seeds_and_families(mods, capsys):
    """Also the fit seeds and the report seed: they are seen, not held out."""
    _, fit = mods
    seen = "fit seeds 101-106 and the report seed 1; got"
    for argv, says in ((["--held-out", "3x"], "comma-separated integers, got '3x'"),
                       (["--held-out", "35", "--families", "chat"], "unknown families ['chat']"),
                       (["--held-out", "35,101,1"], f"{seen} [101, 1]"),
                       (["--held-out", "106"], f"{seen} [106]")):
        with pytest.raises(SystemExit) as e:
            fit.main(argv)
        assert says in usage_error(e, capsys)


def test_policy_option_refuses_unknown_names_and_names_the_known(mods, capsys):
    """`--policy` and `--policy-check` take a registered policy name; anything else is a
    usage error naming the bad name and the known ones, before any simulation."""
    _, fit = mods
    for argv in (["--held-out", "35", "--policy", "nope"], ["--policy-check", "nope"],
                 ["--policy-check", "graph", "--policy", "LRU"]):
        with pytest.raises(SystemExit) as e:
            fit.main(argv)
        err = usage_error(e, capsys)
        assert "unknown policy" in err and "known: " in err and "graph" in err
        assert repr(argv[-1]) in err
    for name in ("graph", "lru"):  # even the default: a mode that ignores it refuses it
        with pytest.raises(SystemExit) as e:
            fit.main(["--tail-guard-check", "--policy", name])
        assert "--policy applies to --held-out and --policy-check only, not " \
            "--tail-guard-check" in usage_error(e, capsys)


def test_held_out_and_non_thrash_run_the_named_policy(mods, monkeypatch):
    """With a policy named, the held-out tasks' workflow arm and the table read that
    policy's rows; the non-thrash check runs today's defaults with `against` as the old arm
    and `policy` as the new one, and reports each worse figure with its change."""
    _, fit = mods
    tasks = fit.held_out_tasks(["swe"], (35,), "lru")
    assert {(t[4], t[5]) for t in tasks} == {("fcfs", "lru"), ("workflow", "lru")}
    assert len(tasks) == 2 * len(fit.GRID)
    pt = ("swe", 101, 1.0, 1.0)
    ran = []

    def fake_run(todo, workers):
        ran.extend(todo)
        return [{"tct_mean_s": 10.0 if t[5] == "graph" else 10.1, "tct_p95_s": 20.0,
                 "tasks_per_hour": 50.0, "slo_attainment": 1.0} for t in todo]

    monkeypatch.setattr(fit, "run", fake_run)
    monkeypatch.setattr(fit, "_NON_THRASH", [pt])
    worse = fit.non_thrash_worse(fit.PREVIOUS, 1, policy="ttl", against="graph", slack=0.0)
    assert [t[5] for t in ran] == ["graph", "ttl"] and all(t[6] == fit.PREVIOUS for t in ran)
    assert worse == ["swe seed 101 1x 100% tct_mean_s 10.00 -> 10.10 (+1.0%)"]
    assert fit.non_thrash_worse(fit.PREVIOUS, 1, policy="ttl", against="graph") == []
    ran.clear()
    assert fit.non_thrash_worse(fit.PREVIOUS, 1, policy="ttl") == [] and ran == []


def test_report_defaults_set_the_workflow_defaults_or_change_nothing():
    """`scheduling_mix.py --report --defaults` (the fit's veto): a candidate becomes the
    `workflow` defaults of the process; an unknown name or a refused value is named and
    changes nothing."""
    mix = import_bench("scheduling_mix")
    from kvsaga.scheduler import WorkflowScheduler

    defaults = WorkflowScheduler.__init__.__kwdefaults__
    saved = dict(defaults)
    try:
        with pytest.raises(ValueError, match="no parameter 'nope'"):
            mix.set_workflow_defaults({"growth_charge": "remaining", "nope": 1})
        with pytest.raises(ValueError, match="growth_reserve must be a number >= 0"):
            mix.set_workflow_defaults({"growth_charge": "remaining", "growth_reserve": -1})
        assert defaults == saved
        mix.set_workflow_defaults({"growth_charge": "remaining", "growth_reserve": 0.5})
        assert defaults == saved | {"growth_charge": "remaining", "growth_reserve": 0.5}
    finally:
        defaults.clear()
        defaults.update(saved)


def test_the_verdict_says_when_no_grid_point_is_under_pressure(mods):
    """Review repro verdict_no_pressure: `--families assistant` (no point with fcfs+lru's hit
    rate < 0.8 at seed 1) raised IndexError after the whole run's simulations."""
    sched, _ = mods

    def row(scheduler, policy, load, frac):
        return {"family": "assistant", "seed": 1, "load": load, "frac": frac,
                "scheduler": scheduler, "policy": policy, "params": None, "hit_rate": 0.9,
                "tct_mean_s": 10.0, "tct_p95_s": 20.0, "tasks_per_hour": 100.0,
                "slo_attainment": 1.0}

    rows = [row(s, p, load, frac) for load, frac in sched.GRID
            for s, p in (("fcfs", "lru"), tuple(sched.DEFAULT.split("+")))]
    lines = sched.verdict(rows, ["assistant"])
    assert lines[0] == f"- Grid points where fcfs+lru's hit rate < 0.8: 0 of {len(sched.GRID)}."
    assert "No grid point was under pressure" in lines[1] and "not judged" in lines[1]
    assert not any(": met" in x or ": missed" in x for x in lines)
    assert lines[-1].startswith("- SLO attainment of workflow")


def test_help_and_held_out_labels_say_what_the_default_run_does(mods, capsys):
    """Review repros tune_traces_help and stale_fresh_labels: --families' help left out the
    held-out variants and the mixes that run whatever it names, and the default run labelled
    seeds 151, 152 (run in session 31, seen since) fresh."""
    sched, fit = mods
    with pytest.raises(SystemExit) as e:
        sched.main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(v in out for v in sched.PERTURBED) and "two-tenant mixes" in out
    assert not hasattr(fit, "FRESH_SEEDS") and {151, 152} <= set(fit.SEEN_SEEDS)
    assert fit.HELD_OUT_SEEDS == fit.SEEN_SEEDS
