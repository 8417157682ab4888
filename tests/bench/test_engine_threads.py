"""bench/engine_threads.py: its arms, their environments, and a real run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kvsaga.kernels import inplace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import engine_threads  # noqa: E402
import extend_step  # noqa: E402


def test_arms_are_the_pool_then_the_team_under_each_wait_setting():
    arms = engine_threads.arms([3000, 10000], libgomp_default=True)
    assert list(arms) == ["pool, PASSIVE", "team, PASSIVE", "team, GOMP_SPINCOUNT=3000",
                          "team, GOMP_SPINCOUNT=10000", "team, libgomp default"]
    assert arms["pool, PASSIVE"] == ({"OMP_WAIT_POLICY": "PASSIVE"}, False)
    assert arms["team, GOMP_SPINCOUNT=3000"] == (
        {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000"}, True)
    assert arms["team, libgomp default"] == ({}, True)
    assert "team, libgomp default" not in engine_threads.arms([], libgomp_default=False)


def test_serial_arms_set_the_threshold_under_passive_in_the_team():
    arms = engine_threads.arms([10000], libgomp_default=True, serial=[0, 4194304])
    assert list(arms) == ["team, PASSIVE, serial<0", "team, PASSIVE, serial<4194304"]
    assert arms["team, PASSIVE, serial<0"] == (
        {"OMP_WAIT_POLICY": "PASSIVE", "KVSAGA_CPU_SERIAL_BELOW": "0"}, True)


def test_an_arm_replaces_every_wait_setting_of_the_callers(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")
    env = engine_threads.arm_env({"OMP_WAIT_POLICY": "PASSIVE"})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in env
    assert "GOMP_SPINCOUNT" not in engine_threads.arm_env({})


def test_vllm_gets_neither_wait_setting_meant_for_kvsaga(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    env = extend_step.vllm_env(2)
    assert "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


def test_a_team_arm_refuses_to_run_where_there_is_no_team(monkeypatch):
    """Where torch's team is not found a "team" arm's worker stops with the reason (before
    loading a model), rather than timing the pool under the team's name."""
    from kvsaga.kernels import inplace

    monkeypatch.setattr(inplace, "_TEAM_FOUND", 0)  # as the lookup answers without libgomp
    monkeypatch.setattr(inplace, "_OMP_TEAM", 0)
    before = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match="not a libgomp"):
            extend_step.KvsagaEngine({"threads": before, "kernel_team": True})
    finally:
        torch.set_num_threads(before)
    assert inplace._OMP_TEAM == 0


@pytest.mark.skipif(not inplace.team_available(), reason="no torch OpenMP team to run in")
def test_a_real_run_times_every_arm(capsys):
    """Real workers (the default model, one tiny case, one repeat): a row per window with
    a cell per arm, the first arm at 1.00x."""
    assert engine_threads.main(["--cases", "64:16:1:1", "--repeat", "1", "--max-tokens", "2",
                                "--threads", "2", "--spins", "1000"]) == 0
    out = capsys.readouterr().out
    head = "| case | window | pool, PASSIVE | team, PASSIVE | team, GOMP_SPINCOUNT=1000 |"
    assert head in out
    for window in ("extend", "decode"):
        row = next(line for line in out.splitlines()
                   if line.startswith(f"| P=64 N=16 S=1 D=1 | {window} |"))
        assert row.count("x)") == 3 and "(1.00x)" in row.split("|")[3]
