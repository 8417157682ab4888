"""Every policy names only distinct CACHED blocks, whatever the engine does."""

from __future__ import annotations

import contextlib

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga import OutOfBlocks
from kvsaga.policy import POLICIES
from kvsaga.pool import CACHED
from tests.policy.helpers import build, make

# Weighted towards the calls that fill the pool, so that eviction happens often.
OPS = ["begin"] * 3 + ["alloc"] * 4 + ["finish"] * 2 + [
    "preempt", "end", "tick", "hint", "resume", "plan"]
op_lists = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 4), st.integers(1, 14), st.integers(0, 3)),
    max_size=45,
)


def apply(m, op: str, i: int, n: int, x: int, now: float) -> float:
    running_ids = sorted(k for k, v in m.sessions.items() if v.is_running)
    if op in ("alloc", "finish", "preempt") and running_ids:
        sid = running_ids[i % len(running_ids)]
    else:
        sid = f"s{i}"
    s = m.sessions.get(sid)
    running = s is not None and s.is_running
    if op == "begin" and not running:
        # Sessions extend their own context; new ones may share a prefix of 0-2 blocks.
        base = list(s.token_ids[: s.num_computed]) if s is not None else [7] * (4 * (x % 3))
        m.begin_step(sid, (base + [x] * n)[-28:], now=now, workflow=f"w{x % 2}")
    elif op == "alloc" and running:
        if len(s.token_ids) == s.num_computed:
            m.append_tokens(sid, [x])
        m.allocate_slots(sid, min(3 * n, len(s.token_ids) - s.num_computed), now=now)
    elif op == "finish" and running:
        tool = [None, "grep", "test", "web"][x]
        m.finish_step(sid, now=now, tool=tool, expected_s=n / 4 if n % 3 == 0 else None,
                      last_step=n == 14)
    elif op == "preempt" and running:
        m.preempt(sid, now=now)
    elif op == "end" and s is not None:
        m.end_session(sid, now=now)
    elif op == "tick":
        now += n / 4
        m.tick(now)
    elif op == "hint" and s is not None and not running:
        m.pause_hint(sid, now=now, tool="grep", expected_s=float(n), last_step=n == 14)
    elif op == "resume" and s is not None and not running:
        m.resume_hint(sid, now=now)
    elif op == "plan" and m.num_host_blocks:
        m.take_transfers()
    return now


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=25, deadline=None)
@given(ops=op_lists, num_host_blocks=st.sampled_from([0, 4]))
def test_victims_are_distinct_cached_blocks(name, ops, num_host_blocks):
    m = make(build(name), num_blocks=8, num_host_blocks=num_host_blocks)
    now = 0.0
    for op, i, n, x in ops:
        with contextlib.suppress(OutOfBlocks):  # all or nothing: the checks still hold
            now = apply(m, op, i, n, x, now)
        m.check_integrity()
        check = getattr(m.policy, "check_integrity", None)
        if check is not None:
            check()
        k = (n + x) % 7
        victims = m.policy.choose_victims(k, now)
        assert len(victims) == min(k, m.pool.num_cached)
        assert len(set(victims)) == len(victims)
        assert all(m.pool.state[b] == CACHED for b in victims)
