"""`kvsaga sim` flags that used to crash or run an empty or mislabelled table: each now
exits 2 with an error naming the flag, and no traceback."""

from __future__ import annotations

import pytest

from kvsaga.cli import main

TINY = ["sim", "--workload", "swe", "--sessions", "2", "--scale", "0.02", "--seed", "101",
        "--kv-memory", "1G", "--jobs", "1", "--quiet"]


@pytest.mark.parametrize(("args", "message"), [
    # --gpus with only the offline reference: UnboundLocalError ('config'), exit 1
    (["--gpus", "2", "--policy", "belady"], "--policy names no policy to run behind a router"),
    (["--gpus", "2", "--policy", ","], "--policy names no policy"),
    # an empty router list ran nothing and printed an empty table, exit 0
    (["--gpus", "2", "--router", ",", "--policy", "lru"], "--router names no router"),
    # a +host spec with --gpus was "unknown policy 'lru+host'" though --policy's help offers it
    (["--gpus", "2", "--policy", "lru+host", "--host-memory", "1G"],
     "--policy 'lru+host': a +host/-host suffix applies without --gpus"),
    (["--gpus", "2", "--policy", "nope"], "unknown policy 'nope'"),
    # a host tier that holds no block ran as "lru+host" with host 0 blocks, exit 0
    (["--policy", "lru+host", "--host-memory", "1"], "--host-memory 1 B holds no host block"),
    (["--policy", "lru", "--host-memory", "1K"], "--host-memory 1,024 B holds no host block"),
    (["--gpus", "2", "--policy", "lru", "--host-memory", "1"], "holds no host block"),
])
def test_bad_sim_flags_exit_2_naming_the_flag(args, message, capsys):
    assert main(TINY + args) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "router  gpus" not in captured.out  # no table was printed


def test_host_memory_that_holds_blocks_still_runs(capsys):
    assert main(TINY + ["--policy", "lru+host", "--host-memory", "4M"]) == 0
    out = capsys.readouterr().out
    assert "host 0 blocks" not in out and "lru+host" in out
