"""Bounded state in a long-running vLLM: the retention connector ends sessions whose client
never sent a last step (`session_idle_s`), and KVSagaScheduler's per-workflow tables keep
only the most recently updated workflows. Sizes are measured with len(), on a controlled
clock, through vLLM's real scheduler (docs/architecture.md, "Bounded state in a long-running
process")."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from .harness import BLOCK_SIZE, TOKEN, make_request, make_scheduler, run, step  # noqa: E402

N = 60  # abandoned sessions, one every STEP_S seconds, each with a workflow of its own
STEP_S = 100.0
IDLE_S = 600.0
# Paused within IDLE_S (6 sessions) + one sweep interval's lag + the one running: at most 8.
LIVE = 8


def _prompt(tag: int, blocks: int) -> list[int]:
    return [20_000 + tag * 300 + i for i in range(blocks * BLOCK_SIZE)]


def _check_blocks(s) -> None:
    """Nothing running: each block's reference count is the sessions retaining it (no block
    leaked, none freed twice), and every other block is free."""
    pool, c = s.kv_cache_manager.block_pool, s.connector
    for b in pool.blocks:
        if not b.is_null:
            assert b.ref_cnt == len(c._holders.get(b.block_id, ())), b.block_id
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1 - len(c._holders)
    assert {b for h in c.holds.values() for b in h} == set(c._holders)


def _records(c) -> dict[str, int]:
    """The connector's, its policy's (graph, the default) and its gate's per-session tables."""
    g = c.gate
    return {"holds": len(c.holds), "sessions": len(c._sessions), "paused": len(c._paused),
            "policy.views": len(c.policy.views), "graph._tracks": len(c.policy.graph._tracks),
            "gate.sessions": len(g.sessions), "gate.paused_since": len(g.pauses.paused_since),
            "gate.order.done": len(g.order.done), "gate._shared": len(g._shared),
            "gate._waiting_since": len(g._waiting_since)}


def test_the_default_limit_is_kvsagas_engines(hf_model_dir):
    from kvsaga.session import DEFAULT_SESSION_IDLE_S  # the engine's default too

    assert DEFAULT_SESSION_IDLE_S == 1800.0
    s = make_scheduler(hf_model_dir, 64, connector=True, policy=None)
    assert s.connector.session_idle_s == DEFAULT_SESSION_IDLE_S
    assert make_scheduler(hf_model_dir, 64, connector=True, policy=None,
                          session_idle_s=None).connector.session_idle_s is None


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "600", True])
def test_a_bad_session_idle_is_refused_naming_it(hf_model_dir, bad):
    with pytest.raises(ValueError, match="session_idle_s"):
        make_scheduler(hf_model_dir, 64, connector=True, session_idle_s=bad)


def test_abandoned_sessions_end_and_give_back_their_blocks(hf_model_dir):
    """N sessions with fresh workflow and tool names each run one step and never come back:
    on the connector's clock each is ended within IDLE_S + one sweep of its pause (its
    retained blocks back to vLLM, its records gone from the connector, the policy and the
    gate), with memory to spare (nothing released by pressure); the blocks stay intact."""
    s = make_scheduler(hf_model_dir, 512, connector=True, policy=None,
                       session_idle_s=IDLE_S)
    c, now = s.connector, [0.0]
    c.clock = lambda: now[0]
    most: dict[str, int] = {}
    for i in range(N):
        hint = {"session_id": f"agent-{i}", "workflow": f"wf-{i}", "tool": f"call_{i}"}
        run(s, [make_request(_prompt(i, 4), 2, hint)])
        for k, v in _records(c).items():
            most[k] = max(most.get(k, 0), v)
        _check_blocks(s)
        now[0] += STEP_S
    assert all(v <= LIVE for v in most.values()), most
    assert c.stats.abandoned >= N - LIVE
    assert c.stats.released_blocks == 0  # ended by the clock, not by pressure
    # Past the limit every one goes at the next sweep (here, a request outside any session).
    now[0] += IDLE_S + 1
    run(s, [make_request(_prompt(N, 1), 1)])
    assert c.stats.abandoned == N
    assert not any(_records(c).values()), _records(c)
    _check_blocks(s)
    assert not c._holders


def test_a_session_with_a_step_in_flight_is_never_ended(hf_model_dir):
    """Session X's second step runs (a long decode) across twice the limit since X's pause
    began, while abandoned session Y is ended: X keeps its records, and its step's finish
    retains its blocks as usual; None means never."""
    s = make_scheduler(hf_model_dir, 128, connector=True, policy=None,
                       session_idle_s=IDLE_S)
    c, now = s.connector, [0.0]
    c.clock = lambda: now[0]
    first = _prompt(1, 3)
    run(s, [make_request(first, 2, {"session_id": "X", "tool": "t"})])
    run(s, [make_request(_prompt(2, 3), 2, {"session_id": "Y", "tool": "t"})])
    x2 = make_request(first + [TOKEN] * 2 + _prompt(3, 1), 40, {"session_id": "X", "tool": "t"})
    s.add_request(x2)
    step(s)  # allocated: X's step is in flight
    for _ in range(4):
        now[0] += IDLE_S / 2
        step(s)
        assert "X" in c._sessions and "X" in c.gate.order.done
    assert "Y" not in c._sessions and "Y" not in c.holds
    assert c.stats.abandoned == 1
    while s.has_unfinished_requests():
        step(s)
    assert "X" in c.holds and c.stats.retained_steps == 3  # X's, Y's, then X's second
    _check_blocks(s)
    # None: never ended, however long the pause.
    never = make_scheduler(hf_model_dir, 64, connector=True, session_idle_s=None)
    never.connector.clock = lambda: now[0]
    run(never, [make_request(_prompt(4, 2), 2, {"session_id": "Z", "tool": "t"})])
    now[0] += 1e9
    run(never, [make_request(_prompt(5, 1), 1)])
    assert "Z" in never.connector.holds and never.connector.stats.abandoned == 0


def test_kvsaga_scheduler_keeps_its_sessions_alive_and_its_workflow_tables_bounded(
        hf_model_dir):
    """KVSagaScheduler: a step queued (arrived) restarts its session's pause; its ranker's
    per-workflow growth tables keep the TRACKED_WORKFLOWS most recently updated workflows, a
    forgotten one ranked as one never seen."""
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler, SessionRanker
    from kvsaga.policy.bounded import TRACKED_WORKFLOWS

    s = make_scheduler(hf_model_dir, 64, connector=True, scheduling_policy="priority",
                       scheduler_cls=KVSagaScheduler, session_idle_s=IDLE_S)
    now = [0.0]
    s.clock = s.connector.clock = lambda: now[0]
    run(s, [make_request(_prompt(6, 2), 2, {"session_id": "Q", "tool": "t"})])
    now[0] += IDLE_S - 1
    s.add_request(make_request(_prompt(6, 2) + [TOKEN] * 2, 2, {"session_id": "Q"}))
    now[0] += IDLE_S - 1  # past the limit since Q's pause began, not since its step arrived
    s.connector._end_idle_sessions(now[0])
    assert "Q" in s.connector._sessions and s.connector.stats.abandoned == 0
    while s.has_unfinished_requests():
        step(s)

    r = SessionRanker()
    for i in range(TRACKED_WORKFLOWS + 50):  # two steps each: the second records a growth
        for k in range(2):
            r.record(f"s{i}", f"wf-{i}", 100 + 50 * k + i % 7, last_step=k == 1)
    assert len(r.growth) == len(r.seen) == TRACKED_WORKFLOWS
    assert "wf-0" not in r.growth and f"wf-{TRACKED_WORKFLOWS + 49}" in r.growth
    assert r._growth("wf-0", 1, 600, 500) == r._growth("never-seen", 1, 600, 500)
    assert not r.live
