"""Soak: the state a long-running process keeps stays bounded when clients behave as agent
clients do, thousands of sessions with workflow and tool names never seen before (a tool
name with a call id in it), most abandoned while paused or ended, some aborted mid-step,
tenants (salts) that come and go. Sizes are measured with len(), never timed (docs/
architecture.md, "Bounded state in a long-running process")."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager
from kvsaga.config import KVSpec
from kvsaga.policy import GraphPolicy
from kvsaga.policy.aeg import NO_TOOL, ExecutionGraph
from kvsaga.policy.bounded import (
    TRACKED_KINDS,
    TRACKED_KINDS_PER_WORKFLOW,
    TRACKED_WORKFLOWS,
    touch,
)
from kvsaga.policy.trust import STATES
from kvsaga.session import idle_sessions

N = 3000  # sessions, each with names of its own: past every cap below
IDLE_S = 60.0  # the driver ends paused sessions idle past this, as the engine does


def test_touch_keeps_the_most_recently_updated():
    table: dict[str, int] = {}
    dropped: list[tuple[str, int]] = []
    for i, k in enumerate("abcab"):
        touch(table, k, lambda i=i: i, 2, lambda *kv: dropped.append(kv))
    # a, b, c (a dropped), a again (b dropped: c was updated after it), b (c dropped)
    assert list(table) == ["a", "b"] and dropped == [("a", 0), ("b", 1), ("c", 2)]


def test_execution_graph_bounded_by_its_caps_and_counts_every_session():
    g = ExecutionGraph(max_workflows=8, max_kinds_per_workflow=4, max_kinds=16)
    t = 0.0
    steps = 0
    for i in range(400):
        sid, wf = f"s{i}", f"wf-{i % 50}"
        for j in range(3):  # three steps, each pausing on a tool of its own
            g.step_started(sid, wf, t)
            g.step_finished(sid, f"call_{i}_{j}", t + 1)
            t += 2
            steps += 1
        g.session_ended(sid, t)  # abandoned while paused on its last tool
    assert len(g.workflows) <= 8 and len(g._by_kind) <= 16
    assert all(len(w.nodes) <= 4 for w in g.workflows.values())
    assert not g._tracks
    # Forgotten workflows' finished sessions still count: 3 steps each.
    assert g.mean_steps() == pytest.approx((steps + g.prior_steps) / (400 + 1))
    # A forgotten kind is predicted as a kind never seen is: from its fallbacks.
    assert "call_0_1" not in g._by_kind
    got, unseen = g.pause_dist("wf-0", "call_0_1"), g.pause_dist("wf-0", "never-seen")
    assert (got.mu, got.sigma) == (unseen.mu, unseen.sigma)
    assert g.resume_share("wf-0", "call_0_1") == g.resume_share("wf-0", "never-seen")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_execution_graph_refuses_bad_caps(bad):
    for name in ("max_workflows", "max_kinds_per_workflow", "max_kinds"):
        with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
            ExecutionGraph(**{name: bad})


def _soak(policy, n: int = N):
    """Drive a manager as a long-running engine would: every session new, with its own
    workflow, tool names and a tenant of 200 that rotate; a quarter end after two steps,
    a quarter abandon after one, a quarter abandon after two, a quarter are aborted in their
    second step (ended while running). Paused sessions idle past IDLE_S are ended.
    One session paused at the start comes back only at the end. Returns the manager and
    the most live sessions seen."""
    m = KVCacheManager(KVSpec(1, 1, 8, block_size=16), 256, policy=policy)
    t = 0.0
    m.begin_step("anchor", list(range(40)), now=t)
    m.allocate_slots("anchor", 40, now=t)
    m.finish_step("anchor", now=t, tool="long_job")
    live_max = 0
    for i in range(n):
        sid, wf, salt = f"s{i}", f"wf-{i}", f"tenant-{i % 200}-{i // 1000}"
        toks = [(i * 7 + k) % 1000 for k in range(40)]
        kind = i % 4
        for step in range(1 if kind == 1 else 2):
            if step:
                toks = toks + [1, 2, 3]
            m.begin_step(sid, toks, now=t, salt=salt, workflow=wf)
            m.allocate_slots(sid, len(toks) - m.num_computed_tokens(sid), now=t)
            t += 0.5
            if step and kind == 3:
                m.end_session(sid, now=t)  # aborted mid-step
            elif step and kind == 0:
                m.finish_step(sid, now=t, tool=f"call_{i}_{step}", last_step=True)
            else:
                m.finish_step(sid, now=t, tool=f"call_{i}_{step}")
            t += 0.5
        if i % 10 == 0:
            m.tick(t)
            for old in idle_sessions(m.sessions, IDLE_S, t):
                if old != "anchor":
                    m.end_session(old, now=t)
        live_max = max(live_max, len(m.sessions))
    m.begin_step("anchor", list(range(41)), now=t)
    m.check_integrity()
    return m, live_max


# Paused sessions within IDLE_S of their pause: one new session a second (plus the anchor
# and the ones the last sweep, 10 s ago, left).
LIVE = int(IDLE_S) + 12


@pytest.mark.parametrize("policy", ["lru", "ttl", "graph", "saga", "adaptive", "graph-trust"])
def test_policies_stay_bounded_under_fresh_names_and_abandoned_sessions(policy):
    m, live_max = _soak(GraphPolicy(trust=True) if policy == "graph-trust" else policy)
    assert live_max <= LIVE
    p = m.policy
    inner = getattr(p, "leader", None)
    for q in (p, getattr(inner, "policy", None)):
        if q is None:
            continue
        for name in ("views", "groups", "_ctx_blocks", "_calib_pending", "_trust_pending",
                     "_ready", "_deferred", "_size"):
            table = getattr(q, name, None)
            if table is not None:
                assert len(table) <= LIVE, (policy, name, len(table))
        graph = getattr(q, "graph", None)
        if graph is not None:
            assert len(graph._tracks) <= LIVE
            assert len(graph.workflows) <= TRACKED_WORKFLOWS
            assert len(graph._by_kind) <= TRACKED_KINDS
            assert max(len(w.nodes) for w in graph.workflows.values()) \
                <= TRACKED_KINDS_PER_WORKFLOW
        calib = getattr(q, "_calib", None)
        if calib is not None:
            assert len(calib) <= TRACKED_WORKFLOWS + TRACKED_KINDS
        trust = getattr(q, "trust", None)
        if trust is not None:
            assert len(trust.errors) <= TRACKED_WORKFLOWS * len(STATES)
        latency = getattr(q, "latency", None)
        if latency is not None:
            assert len(latency) <= TRACKED_KINDS
        pauses = getattr(q, "_pauses", None)
        if pauses is not None:  # stale pauses behind the anchor's are dropped
            assert len(pauses) <= 2 * LIVE + 1024 + 1


def test_the_soak_reaches_every_cap():
    """The soak above would pass on unbounded tables if it named too few: it names more
    workflows, kinds and (workflow, kind) pairs than every cap."""
    m, _ = _soak("graph")
    g = m.policy.graph
    assert len(g.workflows) == TRACKED_WORKFLOWS and len(g._by_kind) == TRACKED_KINDS
    assert len(m.policy._calib) == TRACKED_WORKFLOWS + TRACKED_KINDS
    assert g.mean_steps() > 1.0  # the forgotten workflows' sessions still count
    assert NO_TOOL not in g._by_kind


def test_graph_trust_errors_stay_bounded_under_fresh_workflows():
    """graph(trust=True) learns per (workflow, state) from the sessions it evicted from
    that came back. The soak above evicts from no session that comes back, so here each
    fresh workflow's session pauses, is evicted from by another, and comes back: one key
    per workflow, past the cap; the oldest are forgotten (they read as no evidence)."""
    p = GraphPolicy(trust=True)
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 16, policy=p)
    cap = TRACKED_WORKFLOWS * len(STATES)
    t = 0.0
    for i in range(cap + 100):
        a, b, wf = f"a{i}", f"b{i}", f"wf-{i}"
        m.begin_step(a, list(range(1000 * i, 1000 * i + 24)), now=t, workflow=wf)
        m.allocate_slots(a, 24, now=t)
        m.finish_step(a, now=t, tool="grep")  # 6 cached blocks
        t += 10.0  # past graph's forecast: priced as paused
        m.begin_step(b, list(range(1000 * i + 500, 1000 * i + 552)), now=t, workflow=wf)
        m.allocate_slots(b, 52, now=t)  # 13 blocks: evicts from a
        m.finish_step(b, now=t, last_step=True)
        t += 1.0
        st = m.begin_step(a, list(range(1000 * i, 1000 * i + 25)), now=t, workflow=wf)
        m.allocate_slots(a, 25 - st.num_cached_tokens, now=t)  # a is back: scored
        m.finish_step(a, now=t, last_step=True)
        t += 1.0
    m.check_integrity()
    assert len(p.trust.errors) == cap  # reached, and held
    assert (f"wf-{cap + 99}", "paused") in p.trust.errors
    assert ("wf-0", "paused") not in p.trust.errors
    assert p.trust.factor("wf-0", "paused") == 1.0  # forgotten: no evidence


def test_vllm_gate_pause_log_stays_bounded_under_fresh_workflows():
    from kvsaga.integrations.vllm.gate_pauses import PauseLog

    log = PauseLog(0.95, 1)
    for i in range(N):
        log.paused(f"s{i}", float(i))
        log.back(f"s{i}", f"wf-{i}", i + 2.0)
        assert log.limit(f"wf-{i}") == 2.0
        log.limit(f"never-{i}")  # asked about, never observed
    assert len(log.observed) <= TRACKED_WORKFLOWS and len(log._limits) <= TRACKED_WORKFLOWS
    assert log.limit(f"wf-{N - 1}") == 2.0 and log.limit("wf-0") is None  # forgotten
