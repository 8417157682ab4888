"""`kvsaga sim`: a tiny run, its JSON and plot, and clear errors for bad arguments."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kvsaga.cli import main
from kvsaga.sim.trace import write_trace
from kvsaga.sim.workloads import generate
from tests.exits import usage_error

TINY = ["sim", "--workload", "swe", "--sessions", "4", "--scale", "0.05", "--arrival-rate", "1",
        "--kv-memory", "1G", "--quiet"]


def test_tiny_run_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(TINY + ["--policy", "lru,graph+host", "--host-memory", "2G",
                        "--json", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "lru" in text and "graph+host" in text and "belady" in text
    assert "belady: a reference, not a lower bound" in text  # "x belady" is no distance to best
    data = json.loads(out.read_text())
    rows = data["results"]
    assert [r["policy"] for r in rows] == ["lru", "graph+host", "belady"]
    for r in rows:
        for key in ("policy", "recomputed_tokens", "belady_ratio", "hit_rate", "tct_mean_s",
                    "tct_p95_s", "kv_utilization", "bytes_offloaded", "bytes_reloaded"):
            assert key in r
    assert rows[2]["belady_ratio"] == 1.0
    assert data["sweep"] and {r["kv_gib"] for r in data["sweep"]}
    assert png.stat().st_size > 1000


def test_a_line_per_simulation_when_stderr_is_not_a_terminal(capsys):
    assert main([a for a in TINY if a != "--quiet"] + ["--policy", "lru,graph"]) == 0
    err = capsys.readouterr().err  # captured: not a terminal, so lines instead of bars
    for policy in ("lru", "graph", "belady"):
        assert f"kvsaga sim: simulated {policy} (scheduler workflow): 4 sessions in " in err
    assert "\r" not in err  # no progress bar


def test_replays_a_trace_file(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    write_trace(generate("bfcl", 3, seed=2, scale=0.05), trace)
    assert main(["sim", "--trace", str(trace), "--policy", "lru", "--kv-memory", "1G",
                 "--quiet"]) == 0
    assert "3 sessions" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "fifo"], "unknown policy 'fifo'"),
    (["--policy", "graph+host"], "needs a host tier size (--host-memory)"),
    (["--workload", "chess"], "unknown workload 'chess'"),
    (["--preset", "tpu"], "unknown preset 'tpu'"),
    (["--kv-memory", "1M"], "--kv-memory 1,048,576 B holds no KV block (2,097,152 B each"),
    (["--kv-gib", "1"], "--kv-gib is deprecated; give only --kv-memory"),
    (["--trace", "/nonexistent/t.jsonl"], "No such file"),
    (["--trace", "/dev/null"], "trace '/dev/null' holds no sessions"),
    (["--trace", "/dev/null", "--gpus", "2"], "trace '/dev/null' holds no sessions"),
    (["--scheduler", "fcfs,lifo"], "unknown scheduler 'lifo'; choose from fcfs, workflow"),
    (["--scheduler", ","], "--scheduler names no scheduler"),
    # a name given twice ran and printed the same rows twice
    (["--policy", "lru,ttl,lru"], "--policy names 'lru' more than once"),
    (["--scheduler", "fcfs,workflow,fcfs"], "--scheduler names 'fcfs' more than once"),
    (["--gpus", "2", "--policy", "ttl,ttl"], "--policy names 'ttl' more than once"),
    (["--gpus", "2", "--router", "affinity,affinity"], "--router names 'affinity' more than once"),
])
def test_bad_arguments_say_what_is_wrong(args, message, capsys):
    assert main(TINY + args) == 2
    assert message in capsys.readouterr().err


def test_argparse_rejects_non_positive_numbers_and_bad_sizes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sim", "--sessions", "0"])
    assert "argument --sessions: must be > 0, got '0'" in usage_error(e, capsys)
    with pytest.raises(SystemExit) as e:
        main(["sim", "--kv-memory", "lots"])
    assert "argument --kv-memory: not a memory size: 'lots'" in usage_error(e, capsys)


def test_deprecated_gib_flags_still_work_and_say_so(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    write_trace(generate("bfcl", 3, seed=2, scale=0.05), trace)
    new = ["sim", "--trace", str(trace), "--policy", "lru", "--quiet"]
    assert main(new + ["--kv-memory", "1G", "--host-memory", "2G"]) == 0
    expected = capsys.readouterr().out
    assert main(new + ["--kv-gib", "1", "--host-gib", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected
    assert "--kv-gib is deprecated and will be removed; use --kv-memory 1G" in captured.err
    assert "--host-gib is deprecated" in captured.err


def test_schedulers_side_by_side_with_tenants(tmp_path, capsys):
    """--scheduler a,b runs every policy under each; every row names its scheduler; a
    two-tenant trace gets per-tenant slowdowns and the AFS ratio."""
    sessions = generate("bfcl", 6, seed=2, scale=0.05, arrival_rate=2.0)
    sessions = [dataclasses.replace(s, tenant="ab"[i % 2]) for i, s in enumerate(sessions)]
    trace, out = tmp_path / "t.jsonl", tmp_path / "r.json"
    write_trace(sessions, trace)
    assert main(["sim", "--trace", str(trace), "--policy", "lru", "--kv-memory", "1G",
                 "--scheduler", "fcfs,workflow", "--slo-factor", "2", "--json", str(out),
                 "--quiet"]) == 0
    assert "workflow" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["config"]["schedulers"] == ["fcfs", "workflow"]
    rows = data["results"]
    assert [(r["scheduler"], r["policy"]) for r in rows] == [
        ("fcfs", "lru"), ("fcfs", "belady"), ("workflow", "lru"), ("workflow", "belady")]
    for r in rows:
        assert 0 <= r["slo_attainment"] <= 1 and r["tasks_per_hour"] > 0
        assert set(r["tenants"]) == {"a", "b"}
        assert sum(t["tasks"] for t in r["tenants"].values()) == 6
        slow = [t["slowdown"] for t in r["tenants"].values()]
        assert r["afs_max_slowdown_ratio"] == pytest.approx(max(slow) / min(slow))


@pytest.mark.parametrize(("args", "message"), [
    (["--json", "/nonexistent-dir/r.json"], "--json '/nonexistent-dir/r.json': directory"),
    (["--plot", "/nonexistent-dir/r.png"], "--plot '/nonexistent-dir/r.png': directory"),
    (["--json", "."], "--json '.' is a directory"),
    (["--plot", "r.png", "--gpus", "2"], "--plot sweeps one GPU's KV capacity"),
    (["--json", "/nonexistent-dir/r.json", "--gpus", "2"], "--json '/nonexistent-dir/r.json'"),
])
def test_output_paths_are_checked_before_anything_runs(args, message, capsys, monkeypatch):
    """A typo in --json or --plot fails at once, not after the simulations ran."""
    from kvsaga.sim import cli as sim_cli

    def refuse(*a, **k):
        raise AssertionError("simulated before checking the output paths")

    monkeypatch.setattr(sim_cli, "compare", refuse)
    monkeypatch.setattr(sim_cli, "_load", refuse)
    assert main(TINY + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plot_without_matplotlib_fails_before_the_sweep(capsys, monkeypatch):
    import sys

    from kvsaga.sim import cli as sim_cli

    def refuse(*a, **k):
        raise AssertionError("simulated before finding that --plot cannot draw")

    monkeypatch.setattr(sim_cli, "compare", refuse)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(TINY + ["--plot", "r.png"]) == 2
    assert "--plot needs matplotlib: pip install 'kvsaga[sim]'" in capsys.readouterr().err


def test_a_crash_does_not_suggest_a_flag_sim_lacks(capsys, monkeypatch):
    from kvsaga.sim import cli as sim_cli

    def crash(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(sim_cli, "compare", crash)
    assert main(TINY) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "--log-level" not in err


def test_help_names_every_flag_and_its_default():
    """Every flag has help text, and it states the default wherever there is one."""
    import argparse

    from kvsaga.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["sim"]._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert action.help, action.option_strings
        if action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in action.help, action.option_strings
