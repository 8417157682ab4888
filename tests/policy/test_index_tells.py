"""The event-driven index gives exactly a full scan's order under the scheduler's tells too:
demotions (`session_deferred`), queue ranks and rooms (`session_admission_rank`,
`session_admission_room`, `session_paused_room`), with graph's options that read them on
(trust, spread, the demotions' mean and size effect, admission rank and room, paused room,
release of demoted sessions on or off). test_index.py's differential test drives the
manager's calls only; these hooks come from the scheduler, so no walk of it reached them."""

from __future__ import annotations

import contextlib

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga import OutOfBlocks
from kvsaga.policy import make_policy
from tests.policy.helpers import assert_index_matches_scan, make, run_step, tokens
from tests.policy.test_properties import OPS, apply

# (policy, options): every indexed policy's tells, graph's with each option that reads one.
SPECS = {
    "ttl": ("ttl", {}),
    "saga": ("saga", {}),
    "graph": ("graph", {}),
    "graph-tells": ("graph", {"admission_rank": True, "admission_room": True,
                              "paused_room": True, "demoted_mean": True,
                              "demoted_size": True}),
    "graph-trust-kept": ("graph", {"trust": True, "spread": True,
                                   "demoted_release": False, "admission_rank": True}),
}
TELLS = ["defer"] * 3 + ["undefer", "rank", "rank", "room", "room", "paused_room"]
ops = st.lists(st.tuples(st.sampled_from(OPS + TELLS), st.integers(0, 4),
                         st.integers(1, 14), st.integers(0, 3)), max_size=45)


def tell(m, op: str, i: int, n: int, x: int, now: float) -> None:
    """Give the scheduler's tell `op` about a paused session (the i-th, by id), as the
    scheduler would (a demoted session's rank or room while its step waits: None now and
    then, it left the queue)."""
    paused = sorted(k for k, v in m.sessions.items() if not v.is_running)
    if not paused:
        return
    s = m.sessions[paused[i % len(paused)]]
    p = m.policy
    if op in ("defer", "undefer"):
        p.session_deferred(s, op == "defer", now)
    elif op == "paused_room":  # demoted, still on its tool
        p.session_deferred(s, True, now)
        p.session_paused_room(s, None if x == 3 else n, now)
    else:  # demoted, its tool returned: its step waits in the queue
        p.session_deferred(s, True, now)
        m.resume_hint(s.session_id, now=now)
        if op == "rank":
            p.session_admission_rank(s, None if x == 3 else n % 4, now)
        else:
            p.session_admission_room(s, None if x == 3 else n, now)


@pytest.mark.parametrize("spec", sorted(SPECS))
@settings(max_examples=100, deadline=None)
@given(ops=ops, steps=st.lists(st.sampled_from([0.0, 4e-4, 3e-3, 0.05, 0.4, 7.0]),
                               min_size=45, max_size=45))
def test_index_matches_a_brute_force_scan_under_the_schedulers_tells(spec, ops, steps):
    name, kw = SPECS[spec]
    # relearn_share=0: every key reads the current statistics, as the scan does.
    m = make(make_policy(name, relearn_share=0.0, **kw), num_blocks=24)
    now = 0.0
    for (op, i, n, x), dt in zip(ops, steps, strict=False):
        with contextlib.suppress(OutOfBlocks):
            if op in TELLS:
                tell(m, op, i, n, x, now)
            else:
                now = apply(m, op, i, n, x, now)
        now += dt
        assert_index_matches_scan(m, (n + x) % 5, now)


@pytest.mark.parametrize("hook", ["session_admission_rank", "session_admission_room"])
def test_a_queue_tell_re_keys_the_demoted_session_it_names(hook):
    # Random walks rarely learn a queue's pace before telling another session's place: a
    # told session is admitted first (seconds per place learned), then two demoted ones
    # wait and are told places; each new tell must move the index's order as the scan's.
    p = make_policy("graph", relearn_share=0.0, admission_rank=True, admission_room=True,
                    demoted_release=False)
    m = make(p, num_blocks=20)
    for i, sid in enumerate("abc"):
        run_step(m, sid, tokens(100 * i, 12), 0.0, tool="grep")
    tell = getattr(p, hook)
    # two admissions, a short wait for a small tell and a long one for a large tell: the
    # pace per place (rank) and the wait's slope in the deficit (room) are learned
    for told, t0, t1, n in ((1, 0.1, 0.6, 16), (8, 0.7, 2.7, 20)):
        p.session_deferred(m.sessions["a"], True, t0)
        m.resume_hint("a", now=t0)
        tell(m.sessions["a"], told, t0)
        run_step(m, "a", tokens(0, n), t1, tool="grep")  # admitted
        p.session_deferred(m.sessions["a"], False, t1)
    for sid in "bc":
        p.session_deferred(m.sessions[sid], True, 2.8)
        m.resume_hint(sid, now=2.8)
    orders = []
    for first, last in (("b", "c"), ("c", "b")):
        tell(m.sessions[first], 0, 2.9)
        tell(m.sessions[last], 9, 2.9)
        orders.append(p.eviction_order(2.9))
        assert orders[-1] == p.scan_order(2.9)
    assert orders[0] != orders[1]  # the tells did move the order


def test_a_demotion_re_keys_the_session_it_names():
    p = make_policy("graph", relearn_share=0.0)
    m = make(p, num_blocks=10)
    run_step(m, "a", tokens(0, 12), 0.0, tool="grep")
    run_step(m, "b", tokens(100, 12), 0.1, tool="grep")
    before = p.eviction_order(0.2)
    p.session_deferred(m.sessions["b"], True, 0.3)  # released until its tool returns
    after = p.eviction_order(0.3)
    assert after == p.scan_order(0.3) and after != before
    p.session_deferred(m.sessions["b"], False, 0.4)  # admitted again
    assert p.eviction_order(0.4) == p.scan_order(0.4)
