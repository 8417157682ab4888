"""Random walks at the edges of the inputs a policy is told (review s52 policy2): pause hints
of 0, the smallest float, 1e-9, 1e9, 1e300 and inf, and clock jumps of 1e6 s, through every
call that moves a session (begin, allocate, finish with a hint, preempt, pause and resume
hints, a withdrawn resume, end). At every step the event-driven index gives the order of a
full scan (ttl, saga, graph and graph's opt-in options; relearn_share=0), and ttl's and
graph's fast search names the victims of their general path, its pushes checked against
`_keys` at every fast search (test_fast_search.py's fixture). The existing walks told hints
of 0.01 to 14 s only."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga import OutOfBlocks
from kvsaga.policy import make_policy
from tests.policy.helpers import make
from tests.policy.test_fast_search import _pushes_are_the_general_keys  # noqa: F401 (autouse)

HINTS = (None,) * 6 + (0.0, 5e-324, 1e-9, 0.01, 1.0, 1e9, 1e300, math.inf)
STEPS = (0.0,) * 4 + (4e-4, 3e-3, 0.05, 0.4, 7.0, 1e6)
TOOLS = (None, "a", "a", "a", "b")
# (weighted by repeats: mostly new sessions, as under eviction; mostly no hint, so that
# sessions share classes and the fast search has pushes to make)
OPS = ("new",) * 10 + ("begin", "grow", "finish", "finish", "preempt", "resume",
       "withdraw", "hint", "end")
SESSIONS = 10

walks = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, SESSIONS - 1), st.integers(1, 9),
                           st.sampled_from(HINTS), st.sampled_from(TOOLS),
                           st.sampled_from(STEPS), st.integers(0, 4)),
                 min_size=40, max_size=100)


def _apply(m, op: str, i: int, n: int, hint, tool, now: float, made: list[int]) -> None:
    """Apply one call (`made`: [how many `new` sessions were begun]). `new`: a new session's
    first step of two blocks on a tool (eviction's usual shape, bench/eviction_scaling.py:
    sessions of one shape and workflow share a class, so the fast search finds their keys
    in the memo); other calls name session s{i} for i < 5, else one of the 5 newest."""
    if op == "new":
        j = made[0]
        made[0] += 1  # (first: a refused allocation leaves n{j} running, as a step waits)
        prompt = [1000 * (j + SESSIONS) + t for t in range(8)]
        st_ = m.begin_step(f"n{j}", prompt, now=now, workflow=f"w{j % 2}")
        m.allocate_slots(f"n{j}", len(prompt) - st_.num_cached_tokens, now=now)
        m.finish_step(f"n{j}", now=now, tool=tool, expected_s=hint)
        return
    sid = f"s{i}" if i < 5 else f"n{made[0] - 1 - (i - 5)}"
    s = m.sessions.get(sid)
    running = s is not None and s.is_running
    if op in ("begin", "grow") and not running:
        # `begin`: the session's own prompt again, 1 or 2 blocks (sessions of one shape and
        # workflow share a class, so the fast search finds their keys in the memo);
        # `grow`: its context and n new tokens after a shared prefix of 0-2 blocks.
        if op == "begin" or s is None:
            prompt = [1000 * i + j for j in range(4 * (1 + i % 2))]
        else:
            ctx = list(s.token_ids[: s.num_computed]) or [7] * (4 * (i % 3))
            prompt = (ctx + [1000 * i + 500 + len(ctx) + j for j in range(n)])[-28:]
        st_ = m.begin_step(sid, prompt, now=now, workflow=f"w{i % 2}")
        m.allocate_slots(sid, len(prompt) - st_.num_cached_tokens, now=now)
    elif op == "finish" and running:
        m.finish_step(sid, now=now, tool=tool, expected_s=hint, last_step=n == 9)
    elif op == "preempt" and running:
        m.preempt(sid, now=now)
    elif s is None or running:
        pass
    elif op == "resume":
        m.resume_hint(sid, now=now)
    elif op == "withdraw":
        m.resume_withdrawn(sid, now=now)
    elif op == "hint":
        m.pause_hint(sid, now=now, tool=tool, expected_s=hint)
    elif op == "end":
        m.end_session(sid, now=now)


def _run(m, walk, after) -> None:
    now, made = 0.0, [0]
    for op, i, n, hint, tool, dt, k in walk:
        with contextlib.suppress(OutOfBlocks):  # all or nothing: the checks still hold
            _apply(m, op, i, n, hint, tool, now, made)
        now += dt
        m.check_integrity()
        m.policy.check_integrity()
        after(now, k)


# saga and graph[trust=1] (opt-in) were left out of these walks in session 52, which found
# each one's index and full scan disagreeing at these edges (tests/policy/edge_walk_saga.py,
# edge_walk_trust.py, now pinned below as ordinary tests): saga's expiry deadline was one ulp
# late where paused_at + ttl rounded up, graph[trust=1]'s formula folded trust's factor into
# its correction (session 53: tests/policy/test_edge_key_rounding.py). With both fixed, the
# order walks passed 300 random examples (derandomize=False) for each of the two on each core
# and 120 for every spec; they stay derandomized here (the same examples every run: CI runs
# them once, and a new edge found by chance there would fail an unrelated change), with more
# examples than before.
SPECS = [("ttl", {}), ("saga", {}), ("graph", {}), ("graph", {"trust": 1}),
         ("graph", {"spread": 1}), ("graph", {"demoted_mean": 1}),
         ("graph", {"median_returns": 0})]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s[0] + "".join(f"-{k}" for k in s[1]))
@settings(max_examples=25, deadline=None, derandomize=True)
@given(walk=walks)
def test_the_index_gives_the_scans_order_at_the_edges(spec, walk):
    name, kw = spec
    m = make(make_policy(name, relearn_share=0.0, **kw), num_blocks=14)
    p = m.policy
    _run(m, walk, lambda now, k: _check_order(p, now, k))


@pytest.mark.parametrize("spec", [("ttl", {}), ("graph", {}), ("graph", {"trust": 1})],
                         ids=lambda s: s[0] + "".join(f"-{k}" for k in s[1]))
@settings(max_examples=15, deadline=None, derandomize=True)
@given(walk=walks)
def test_the_fast_search_names_the_general_paths_victims_at_the_edges(spec, walk):
    name, kw = spec
    fast, general = (make(make_policy(name, **kw), num_blocks=14) for _ in range(2))
    general.policy._fast = False
    got: list = []

    def record(m):
        def after(now, k):
            got.append((list(m.policy.choose_victims(k, now)), m.policy.eviction_order(now)))
        return after

    _run(fast, walk, record(fast))
    mine, got[:] = list(got), []
    _run(general, walk, record(general))
    assert mine == got
    assert general.policy.fast_searches == 0


def test_graph_trust_index_gives_the_scans_order_on_the_walk_ci_found():
    from tests.policy.edge_walk_trust import WALK
    m = make(make_policy("graph", relearn_share=0.0, trust=1), num_blocks=14)
    p = m.policy
    _run(m, WALK, lambda now, k: _check_order(p, now, k))


def test_saga_index_gives_the_scans_order_on_the_walk_ci_found():
    from tests.policy.edge_walk_saga import WALK
    m = make(make_policy("saga", relearn_share=0.0), num_blocks=14)
    p = m.policy
    _run(m, WALK, lambda now, k: _check_order(p, now, k))


def test_plain_graph_gives_the_scans_order_on_that_walk():
    from tests.policy.edge_walk_trust import WALK
    m = make(make_policy("graph", relearn_share=0.0), num_blocks=14)
    p = m.policy
    _run(m, WALK, lambda now, k: _check_order(p, now, k))


def _check_order(p, now: float, k: int) -> None:
    got = p.eviction_order(now)
    assert got == p.scan_order(now)
    assert p.choose_victims(k, now) == got[:k]

