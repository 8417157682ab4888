"""The single-GPU simulator (review s50): the tenants' alone runs go through `compare`'s
worker pool and log (they ran one after another in the parent, unlogged, whatever --jobs
said); --plot takes its 1x capacity from the table's rows (it simulated them again);
`unloaded_tct` chunks a resumed step as the scheduler does (a lone session beat it by up to
0.1%); --trace names the generation flags it ignores (they were ignored silently)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import random

import pytest

from kvsaga.cli import main
from kvsaga.sim.compare import compare, tenant_share
from kvsaga.sim.metrics import unloaded_tct
from kvsaga.sim.simulator import SimConfig, simulate
from kvsaga.sim.trace import Session, SharedPrefix, Step, write_trace
from kvsaga.sim.workloads import generate

compare_mod = importlib.import_module("kvsaga.sim.compare")  # kvsaga.sim.compare: the function

# Two tenants; the longest session needs 100 blocks, so 200 hold each tenant's share.
TENANTS = [dataclasses.replace(s, tenant="ab"[i % 2])
           for i, s in enumerate(generate("swe", 8, seed=2, scale=0.02, arrival_rate=2.0))]
BASE = SimConfig(num_gpu_blocks=200)
SPECS = ["lru", "graph"]


def test_the_alone_runs_go_to_the_workers_with_jobs(monkeypatch):
    parent = os.getpid()
    real = compare_mod.simulate

    def not_here(sessions, config, **kwargs):  # a worker (forked or spawned) runs `real`
        assert os.getpid() != parent, "a simulation ran in the parent despite jobs=2"
        return real(sessions, config, **kwargs)

    monkeypatch.setattr(compare_mod, "simulate", not_here)
    rows = compare(TENANTS, BASE, SPECS, jobs=2)
    monkeypatch.setattr(compare_mod, "simulate", real)
    # The same figures as before: each tenant's sessions alone on its share of the GPU.
    for spec, row in zip(SPECS, rows, strict=True):
        share = tenant_share(dataclasses.replace(BASE, policy=spec), 2)
        for t, entry in row["tenants"].items():
            own = [s for s in TENANTS if s.tenant == t]
            assert entry["tct_alone_s"] == simulate(own, share).tct_mean_s
            assert entry["slowdown"] == entry["tct_mean_s"] / entry["tct_alone_s"]
        slow = [e["slowdown"] for e in row["tenants"].values()]
        assert row["afs_max_slowdown_ratio"] == max(slow) / min(slow)
    assert rows == compare(TENANTS, BASE, SPECS, jobs=1)


def test_every_alone_run_gets_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="kvsaga.sim"):
        compare(TENANTS, BASE, SPECS, jobs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "kvsaga.sim"]
    # lru, graph, the belady reference, and each of the two rows' two tenants alone
    assert len(lines) == 3 + 2 * 2, lines
    for spec in SPECS:
        for t in "ab":
            assert sum(line.startswith(f"simulated {spec} alone, tenant {t!r} on 1/2 of the GPU "
                                       "(scheduler workflow): 4 sessions in ")
                       for line in lines) == 1, lines


def test_rows_of_one_simulation_share_its_alone_runs_not_their_dicts(caplog):
    with caplog.at_level(logging.INFO, logger="kvsaga.sim"):
        rows = compare(TENANTS, BASE, ["lru", "lru-host"], jobs=1)  # one config, no host tier
    # lru (and its belady), lru's tenants alone once; kvsaga.sim's records only: caplog
    # also takes any other logger's and thread's (an earlier test's task finalized here)
    assert len([r for r in caplog.records if r.name == "kvsaga.sim"]) == 2 + 2, caplog.text
    assert rows[0]["tenants"] == rows[1]["tenants"]
    assert rows[0]["tenants"] is not rows[1]["tenants"]


def test_plot_takes_the_1x_capacity_from_the_table(tmp_path, monkeypatch):
    runs = []
    real = compare_mod._simulate

    def counted(sessions, config, progress=False):
        runs.append((tuple(s.id for s in sessions), config))
        return real(sessions, config, progress)

    monkeypatch.setattr(compare_mod, "_simulate", counted)
    trace, out = tmp_path / "t.jsonl", tmp_path / "r.json"
    write_trace(TENANTS, trace)
    assert main(["sim", "--trace", str(trace), "--policy", "lru", "--kv-memory", "600M",
                 "--jobs", "1", "--quiet", "--json", str(out),
                 "--plot", str(tmp_path / "p.svg")]) == 0
    assert len(runs) == len(set(runs)), "a simulation ran twice"
    data = json.loads(out.read_text())
    gib = [r["kv_gib"] for r in data["sweep"]]
    # 300 blocks; 0.5x holds no tenant's share of the longest session (100 blocks)
    assert sorted(set(gib)) == [300 * 2 / 1024 * f for f in (0.75, 1.0, 1.5, 2.0)]
    # 2 rows (lru, belady) with 2 tenants alone each, at each of the 4 capacities
    assert len(runs) == 4 * (2 + 2 * 2)
    at_1x = [r for r in data["sweep"] if r["kv_gib"] == 300 * 2 / 1024]
    assert at_1x == [dict(r, kv_gib=300 * 2 / 1024) for r in data["results"]]


def _lone(rng: random.Random) -> Session:
    n = rng.randint(2, 4)
    steps = tuple(Step(rng.randint(1, 3000), rng.randint(1, 40),
                       None if k == n - 1 else "t", 0.0 if k == n - 1 else rng.choice([0, 0.5]))
                  for k in range(n))
    return Session("s", "w", 0.0, SharedPrefix("g", rng.choice([0, 17, 64])), steps)


# The review's case: the second step resumes on 719 cached tokens, 15 past a block boundary.
REVIEW_CASE = Session("s", "w", 0.0, SharedPrefix("g", 0),
                      (Step(683, 37, "t", 0.5), Step(2617, 1, None, 0.0)))


@pytest.mark.parametrize("budget", [512, 64, 8])
@pytest.mark.parametrize("scheduler", ["fcfs", "workflow"])
def test_a_lone_session_runs_exactly_its_unloaded_tct(budget, scheduler):
    rng = random.Random(budget)
    for s in [REVIEW_CASE] + [_lone(rng) for _ in range(8)]:
        cfg = SimConfig(num_gpu_blocks=5000, scheduler=scheduler,
                        max_num_batched_tokens=budget)
        assert simulate([s], cfg).tct_mean_s == pytest.approx(
            unloaded_tct(s, cfg.cost, budget), rel=1e-12, abs=0)


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(generate("swe", 2, seed=3, scale=0.02, arrival_rate=1.0), path)
    return str(path)


RUN = ["--kv-memory", "1G", "--policy", "lru", "--quiet", "--jobs", "1"]


@pytest.mark.parametrize(("flags", "named"), [
    (["--sessions", "5"], "--sessions does"),
    (["--workload", "nope", "--seed", "3"], "--workload and --seed do"),
    (["--scale", "0.5", "--arrival-rate", "2"], "--scale and --arrival-rate do"),
    (["--sessions", "5", "--gpus", "2"], "--sessions does"),  # the cluster run too
])
def test_trace_names_the_generation_flags_it_ignores(flags, named, trace_file, capsys):
    assert main(["sim", "--trace", trace_file, *RUN, *flags]) == 0
    err = capsys.readouterr().err
    assert (f"kvsaga sim: {named} not apply with --trace (the trace is replayed as it is): "
            "ignored\n") in err, err


def test_trace_alone_or_generation_flags_alone_get_no_note(trace_file, capsys):
    assert main(["sim", "--trace", trace_file, *RUN]) == 0
    assert "--trace" not in capsys.readouterr().err
    assert main(["sim", "--workload", "swe", "--sessions", "2", "--scale", "0.02", *RUN]) == 0
    assert "--trace" not in capsys.readouterr().err
