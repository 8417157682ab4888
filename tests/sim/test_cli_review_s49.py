"""`kvsaga sim` (review s49, docs): two --policy specs that are one run are refused, since
--host-memory gives every row its tier (`lru,lru+host` read as a comparison with and without
one, and ran the same config twice); the --kv-gib / --host-gib deprecation message suggests
a size `parse_bytes` takes and that is the size run."""

from __future__ import annotations

import re

import pytest

from kvsaga.cli import main
from kvsaga.config import parse_bytes
from kvsaga.sim import cli as sim_cli
from kvsaga.sim.cost import GIB
from kvsaga.sim.trace import write_trace
from kvsaga.sim.workloads import generate

TINY = ["sim", "--workload", "swe", "--sessions", "3", "--scale", "0.05", "--arrival-rate", "1",
        "--kv-memory", "1G", "--quiet", "--jobs", "1"]


@pytest.mark.parametrize(("args", "message"), [
    (["--host-memory", "2G", "--policy", "lru,lru+host"],
     "--policy names 'lru' and 'lru+host', the same run (1,024 host blocks each): "
     "--host-memory gives every row its host tier; suffix -host to deny a row it"),
    (["--host-memory", "2G", "--policy", "graph+host,ttl,graph"],
     "--policy names 'graph+host' and 'graph', the same run (1,024 host blocks each)"),
    (["--policy", "lru,lru-host"],
     "--policy names 'lru' and 'lru-host', the same run (0 host blocks each): no row has a "
     "host tier without --host-memory"),
    (["--policy", "belady-host,belady"], "--policy names 'belady-host' and 'belady', the same"),
    # a +host spec without --host-memory keeps its own message, ahead of this one
    (["--policy", "graph+host"], "policy 'graph+host' needs a host tier size (--host-memory)"),
    (["--policy", "graph,graph+host"],
     "policy 'graph+host' needs a host tier size (--host-memory)"),
])
def test_two_specs_of_one_run_are_refused_before_any_simulation(args, message, no_run, capsys):
    assert main(TINY + args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvsaga sim: error: {message}"), err
    assert err.count("\n") == 1, err


def test_a_row_denied_the_tier_beside_one_with_it_still_runs(capsys):
    assert main(TINY + ["--host-memory", "2G", "--policy", "lru,lru-host,graph+host"]) == 0
    out = capsys.readouterr().out
    for row in ("lru ", "lru-host", "graph+host", "belady ", "belady-host"):
        assert row in out


@pytest.mark.parametrize("gib", ["0.00001", "1.2345678", "3000000", "1"])
def test_the_deprecation_message_suggests_the_size_run(gib, capsys, monkeypatch):
    """`{value:g}G` suggested `1e-05G` (refused by parse_bytes) and `1.23457G` (another
    size); the suggestion is now NG for whole GiB, else the bytes run."""
    seen = {}

    def stop(args, kv_memory_bytes):
        seen["bytes"] = kv_memory_bytes
        raise ValueError("stopped")

    monkeypatch.setattr(sim_cli, "_base_config", stop)
    assert main([a for a in TINY if a not in ("--kv-memory", "1G")] + ["--kv-gib", gib]) == 2
    err = capsys.readouterr().err
    suggested = re.search(r"deprecated and will be removed; use --kv-memory (\S+)\n", err)[1]
    assert parse_bytes(suggested) == seen["bytes"] == int(float(gib) * GIB)
    assert "e" not in suggested.lower()
    if float(gib).is_integer():
        assert suggested == f"{gib}G"


def test_a_suggested_size_gives_the_same_table(tmp_path, capsys):
    """1.0019532 GiB holds 513 blocks of 2 MiB; the old suggestion, 1.00195G, held 512."""
    trace = tmp_path / "t.jsonl"
    write_trace(generate("bfcl", 3, seed=2, scale=0.05), trace)
    run = ["sim", "--trace", str(trace), "--policy", "lru", "--quiet", "--jobs", "1"]
    assert main(run + ["--kv-gib", "1.0019532", "--host-gib", "0.7654321"]) == 0
    old = capsys.readouterr()
    new = re.findall(r"use (--\S+) (\S+)\n", old.err)
    assert [flag for flag, _ in new] == ["--kv-memory", "--host-memory"]
    assert main(run + [part for pair in new for part in pair]) == 0
    assert capsys.readouterr().out == old.out
    assert "513 GPU blocks" in old.out
