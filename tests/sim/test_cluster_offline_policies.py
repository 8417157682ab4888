"""Offline policies (`needs_oracle`: belady, oracle-ttl) are not run behind a router: each
simulated GPU is built empty, so their oracle knows no session (review: `--gpus 2 --policy
oracle-ttl` raised KeyError at the first step). `kvsaga sim --gpus` skips them, saying so,
and `ClusterSimulator` refuses them."""

from __future__ import annotations

import pytest

from kvsaga.cli import main
from kvsaga.policy import POLICIES
from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import generate

OFFLINE = sorted(n for n, c in POLICIES.items() if getattr(c, "needs_oracle", False))
TINY = ["sim", "--workload", "swe", "--sessions", "3", "--scale", "0.05", "--arrival-rate",
        "1", "--kv-memory", "1G", "--gpus", "2", "--router", "round-robin"]


def test_there_is_more_than_belady_to_skip():
    assert "oracle-ttl" in OFFLINE and "belady" in OFFLINE


@pytest.mark.parametrize("name", OFFLINE)
def test_cluster_simulator_refuses_an_offline_policy(name):
    sessions = generate("swe", 2, seed=1, scale=0.05)
    with pytest.raises(ValueError, match=f"policy '{name}' needs the whole trace"):
        ClusterSimulator(sessions, SimConfig(policy=name, kv_memory_bytes=2**30), gpus=2,
                         router="round-robin")


@pytest.mark.parametrize("name", OFFLINE)
def test_cli_refuses_only_offline_policies(name, capsys):
    assert main(TINY + ["--policy", name, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "names no policy to run behind a router" in err and name in err


def test_cli_skips_offline_policies_and_runs_the_rest(capsys):
    assert main(TINY + ["--policy", "lru,oracle-ttl,belady"]) == 0
    out, err = capsys.readouterr()
    assert "skipping oracle-ttl, belady with --gpus" in err
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[3] for r in rows] == ["lru"]
