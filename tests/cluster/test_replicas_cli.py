"""kvsaga-serve --replicas: flags and failures that need no cluster."""

from __future__ import annotations

import sys

import pytest

from kvsaga.serve.cli import build_parser, main
from kvsaga.serve.replicas import RayMissing, replica_resources, run_replicas
from kvsaga.serve.settings import ServerSettings
from tests.exits import usage_error


def test_flags_parse(capsys):
    args = build_parser().parse_args(["--replicas", "3", "--router", "affinity"])
    assert (args.replicas, args.router) == (3, "affinity")
    assert build_parser().parse_args([]).replicas is None
    assert build_parser().parse_args(["--router", "ray-default"]).router == "ray-default"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--router", "random"])
    assert "argument --router: invalid choice: 'random'" in usage_error(e, capsys)


def test_bad_replica_count_is_a_usage_error(capsys):
    assert main(["--replicas", "0"]) == 2
    assert "--replicas must be >= 1" in capsys.readouterr().err


def test_without_ray_only_replicas_is_lost(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(RayMissing, match=r"pip install 'kvsaga\[cluster\]'"):
        run_replicas(ServerSettings(device="cpu"), 2)
    with pytest.raises(ValueError, match="unknown router"):
        run_replicas(ServerSettings(device="cpu"), 2, router="random")


def test_cpu_replicas_share_the_cores():
    pytest.importorskip("torch")
    options, threads = replica_resources(ServerSettings(device="cpu"), 2)
    assert 0 < options["num_cpus"] <= 1 and threads >= 1 and "num_gpus" not in options


def test_cpu_replicas_share_the_cores_a_quota_leaves(monkeypatch: pytest.MonkeyPatch):
    """In a container limited to 3 cores of a 16-core host, two replicas take one thread
    each (3 // 2), not 8: a thread beyond the quota is stopped with the whole team."""
    pytest.importorskip("torch")
    from kvsaga.engine import cpu_threads

    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: set(range(16)),
                        raising=False)
    monkeypatch.setattr(cpu_threads, "cpu_quota", lambda: 3.0)
    assert cpu_threads.usable_cores() == 3
    _, threads = replica_resources(ServerSettings(device="cpu"), 2)
    assert threads == 1
    monkeypatch.setattr(cpu_threads, "cpu_quota", lambda: None)
    assert replica_resources(ServerSettings(device="cpu"), 2)[1] == 8


def test_replicas_take_the_thread_settings_in_their_runtime_env(
        monkeypatch: pytest.MonkeyPatch):
    """What `--cpu-host` set here reaches each replica's worker through Ray's runtime_env
    (a joined cluster's workers do not inherit this process's environment); an unset or
    empty variable is not passed."""
    pytest.importorskip("torch")
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    monkeypatch.setenv("KVSAGA_CPU_SERIAL_BELOW", "")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    options, _ = replica_resources(ServerSettings(device="cpu"), 2)
    assert options["runtime_env"] == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE",
                                                   "GOMP_SPINCOUNT": "10000"}}
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name)
    options, _ = replica_resources(ServerSettings(device="cpu"), 2)
    assert "runtime_env" not in options
