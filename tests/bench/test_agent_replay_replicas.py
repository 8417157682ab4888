"""bench/agent_replay.py --replicas: the router arms, the comparison they are judged by and
their RESULTS heading (the live run needs a local Ray cluster: see docs/cluster.md)."""

from __future__ import annotations

import pytest

from tests.bench.test_agent_replay import _load_script
from tests.exits import usage_error


def test_replica_arms_differ_only_in_the_router() -> None:
    m = _load_script()
    args = m.build_parser().parse_args(["--replicas", "2", "--replica-policy", "lru"])
    got = m.arms(args)
    routers = ("ray-default", "round-robin", "kvsaga")
    assert [a.name for a in got] == [f"replicas:{r}" for r in routers]
    for arm, router in zip(got, routers, strict=True):
        assert (arm.engine, arm.policy) == ("kvsaga", "lru")
        assert arm.serve_args == ("--replicas", "2", "--router", router)
    assert m.results_title(args) == m.REPLICAS_TITLE
    plain = m.build_parser().parse_args([])
    assert all(not a.serve_args for a in m.arms(plain))
    assert m.results_title(plain) != m.REPLICAS_TITLE
    two = m.build_parser().parse_args(["--replicas", "2", "--replica-routers", "kvsaga,affinity"])
    assert [a.name for a in m.arms(two)] == ["replicas:kvsaga", "replicas:affinity"]


@pytest.mark.parametrize("bad", ["round-robin", "kvsaga,nope", "kvsaga,kvsaga", ""])
def test_bad_replica_routers_are_named(bad: str) -> None:
    m = _load_script()
    args = m.build_parser().parse_args(["--replicas", "2", "--replica-routers", bad])
    with pytest.raises(SystemExit, match="--replica-routers"):
        m.arms(args)


def test_replicas_are_judged_kvsaga_against_every_other_router() -> None:
    m = _load_script()
    args = m.build_parser().parse_args(["--replicas", "2"])
    systems = m.arms(args)
    fig = {"task_time_mean_s": 0.0, "task_time_p95_s": 0.0, "prefill_tokens": 0.0,
           "requests": 16, "replica_changes": 0, "routes": {}}
    unnamed = {**fig, "replica_changes": None}  # Ray's own router: no replica header
    rounds = [{"replicas:ray-default": {**unnamed, "task_time_mean_s": 40.0,
                                        "task_time_p95_s": 50.0, "prefill_tokens": 1200.0},
               "replicas:round-robin": {**fig, "task_time_mean_s": 30.0,
                                        "task_time_p95_s": 40.0, "prefill_tokens": 900.0},
               "replicas:kvsaga": {**fig, "task_time_mean_s": 20.0, "task_time_p95_s": 40.0,
                                   "prefill_tokens": 300.0, "replica_changes": 1,
                                   "routes": {"affinity": 11, "new": 4, "steal": 1}}}]
    judged = m.comparisons(args, systems, rounds)
    ray = judged["replicas:kvsaga vs replicas:ray-default"]
    assert ray["tct_speedup"] == [pytest.approx(2.0)]
    assert ray["prefill_ratio"] == [pytest.approx(4.0)] and ray["goal_met"]
    got = judged["replicas:kvsaga vs replicas:round-robin"]
    assert got["tct_speedup"] == [pytest.approx(1.5)]
    assert got["prefill_ratio"] == [pytest.approx(3.0)] and got["goal_met"]
    assert len(judged["lines"]) == 5 and "issue 12" in judged["lines"][0]
    # Then each arm's moves: how many steps changed replica, and the router's reasons.
    assert judged["lines"][4] == ("replicas:kvsaga: steps that changed replica per round 1 "
                                  "of 16; routes (round 0) affinity 11, new 4, steal 1")
    assert judged["lines"][3].endswith("per round 0 of 16")  # round-robin (no moves here)
    assert judged["lines"][2] == ("replicas:ray-default: which replica served each step is "
                                  "not reported (no x-kvsaga-replica)")


def test_replica_changes_and_route_counts_come_from_the_headers() -> None:
    from bench.replay.client import StepRecord
    from bench.replay.report import replica_changes, route_counts

    def rec(session: str, step: int, replica: str | None, route: str | None,
            error: str | None = None) -> StepRecord:
        return StepRecord(session, step, 0.0, 1.0, error=error, replica=replica, route=route)

    records = [rec("a", 1, "r1", "affinity"), rec("a", 0, "r1", "new"),
               rec("a", 2, "r2", "steal"), rec("a", 3, "r1", "balance"),
               rec("b", 0, "r2", "new"), rec("b", 1, "r1", None, error="503"),
               rec("b", 2, "r2", "affinity")]
    # a: r1 r1 r2 r1 (two moves; out of step order in the list); b's failed step is no move.
    assert replica_changes(records) == 2
    assert route_counts(records) == {"affinity": 2, "balance": 1, "new": 2, "steal": 1}
    # A single-node server sends no headers: nothing moved, no routes.
    plain = [rec("a", 0, None, None), rec("a", 1, None, None)]
    assert replica_changes(plain) is None and route_counts(plain) == {}


def test_bad_replica_count_is_refused() -> None:
    with pytest.raises(SystemExit, match="--replicas must be >= 1"):
        _load_script().main(["--replicas", "0"])


@pytest.mark.parametrize(("flags", "says"), [
    (["--replicas", "2", "--kvsaga-arms", "fcfs+lru,workflow+graph"],
     "--replicas compares routers (issue 12) and --kvsaga-arms schedulers"),
    (["--replicas", "2", "--engine", "vllm"], "--replicas runs kvsaga-serve's routers only"),
    (["--kvsaga-arms", "fcfs+lru,workflow+graph", "--engine", "vllm"],
     "--kvsaga-arms runs kvsaga-serve arms only")])
def test_two_modes_in_one_run_are_refused(flags, says, capsys) -> None:
    """Review repro replicas_kvsaga_arms: `--replicas N --kvsaga-arms ...` ran the router
    arms and judged them by issue 10's scheduler goal; `--engine vllm --replicas N` judged
    nothing. Refused as an argparse error, before anything starts."""
    with pytest.raises(SystemExit) as e:
        _load_script().main(flags)
    assert says in usage_error(e, capsys)  # the usage above it names both flags


def test_replicas_are_judged_by_the_router_goal_whatever_else_args_hold() -> None:
    """comparisons() reads --replicas first: its arms get issue 12's goal, never issue 10's."""
    m = _load_script()
    args = m.build_parser().parse_args(["--replicas", "2"])
    args.kvsaga_arms = "fcfs+lru,workflow+graph"  # as the unrefused combination left it
    fig = {"task_time_p95_s": 1.0, "prefill_tokens": 100.0, "failed_sessions": 0,
           "requests": 4, "replica_changes": 0, "routes": {}}
    rounds = [{"replicas:ray-default": {**fig, "task_time_mean_s": 30.0},
               "replicas:round-robin": {**fig, "task_time_mean_s": 40.0},
               "replicas:kvsaga": {**fig, "task_time_mean_s": 20.0, "prefill_tokens": 50.0}}]
    judged = m.comparisons(args, m.arms(args), rounds)
    pairs = [k for k in judged if " vs " in k]
    assert pairs == ["replicas:kvsaga vs replicas:ray-default",
                     "replicas:kvsaga vs replicas:round-robin"]
    assert all("issue 12" in line for line in judged["lines"][:2])
    assert not any("issue 10" in line for line in judged["lines"])
