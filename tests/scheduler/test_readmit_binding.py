"""`WorkflowScheduler(readmit_charge="binding")`: a demoted session admitted again is charged
its whole context ("full") only while no other step waits for admission (the pool binds),
else its uncached part ("uncached": the queue binds); `WorkingSetGate._pool_binds`. Its
value's check, and the scheduler state machine with it on under every policy."""

from __future__ import annotations

from collections import deque

import pytest

from tests.sched_helpers import ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, assert_reaches_both_answers, machines
from tests.scheduler.helpers import manager, toks, two_paused, wf
from tests.scheduler.readmit_common import assert_refused_and_off_by_default, assert_serve_takes


def _demoted_a_back(charge: str, others: int):
    """test_readmit_charge's set-up: a demoted, b admitted on a 16-block pool, then a's
    third step (48 tokens, 40 of them still cached: 12 blocks + 2 of growth beside b's 6
    would not fit; 2 uncached blocks + growth would) queued at 3.0, with `others` new
    sessions (2 tokens each) queued behind it."""
    m, s, ex, a = two_paused(prompt_len=12, readmit_charge=charge)
    a2 = ToyRequest("a", a.prompt + a.out + toks(50, 30), max_new=1, last=False, resumed=True)
    s.add(a2, 1.0)
    for t in (1.0, 2.0):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"b"} and "a" in s._deferred
    a3 = ToyRequest("a", a2.prompt + a2.out + toks(90, 4), max_new=1, last=False,
                    resumed=True)
    s.add(a3, 3.0)
    new = [ToyRequest(f"n{i}", toks(200 + 10 * i, 2), max_new=1, last=False, arrival=3.0)
           for i in range(others)]
    for r in new:
        s.add(r, 3.0)
    assert s.lookup(a3).gpu_hit_blocks == 10
    return s, ex, a3, new


@pytest.mark.parametrize("others,admitted", [
    (0, False),  # alone: the pool binds, "full": its 12 blocks + growth beside b's 6 > 16
    (1, True),   # a new session waits: the queue binds, "uncached": 1 block + growth fits
])
def test_binding_charges_the_whole_context_only_while_nobody_else_waits(others, admitted):
    s, ex, a3, new = _demoted_a_back("binding", others)
    lk = s.lookup(a3)
    assert s._pool_binds(a3) is (not others)
    own = a3.num_tokens - lk.gpu_hit_blocks * 4
    assert s._readmit_tokens(a3, lk) == ((own, None) if others else (a3.num_tokens, None))
    out = s.schedule(3.0, ex)
    assert (a3 in out.admitted) is admitted and ("a" in s.sessions) is admitted
    if not admitted:
        assert s._cause == "growth" and s._committed <= s.capacity


@pytest.mark.parametrize("others", [0, 1])
def test_binding_matches_full_alone_and_uncached_otherwise(others):
    """The same state under "binding" and under the charge it picks decides alike."""
    picked = "uncached" if others else "full"
    got = []
    for charge in ("binding", picked):
        s, ex, a3, new = _demoted_a_back(charge, others)
        out = s.schedule(3.0, ex)
        got.append(([r.session_id for r in out.admitted], s._committed, s.num_demotions))
    assert got[0] == got[1]


def test_binding_counts_waiting_demoted_steps_and_every_tenant():
    """Another demoted session's waiting step, or another tenant's waiting session, is an
    other claimant: the queue binds."""
    m = manager(16)
    s = wf(m, readmit_charge="binding")
    a = ToyRequest("a", toks(0, 4), max_new=1, last=False, resumed=True, tenant="x")
    s._pending = {"x": deque([a])}
    assert s._pool_binds(a)
    s._pending["y"] = deque([ToyRequest("z", toks(50, 4), max_new=1, last=False,
                                        resumed=True, tenant="y")])
    assert not s._pool_binds(a)
    s._pending = {}
    assert s._pool_binds(a)  # asked before it queued: nobody else waits


def test_binding_leaves_new_sessions_alone():
    """A new session's GPU hits are a shared prefix: never charged, under any signal."""
    s = wf(manager(16), readmit_charge="binding")
    new = ToyRequest("n", toks(0, 12), max_new=1, last=False)
    s.add(new, 0.0)
    assert s._pool_binds(new)
    assert s._readmit_tokens(new, s.lookup(new)) == (12, None)


def test_binding_is_a_named_value_and_off_by_default():
    assert_refused_and_off_by_default("pool")


def test_binding_reaches_kvsaga_serve_settings_and_a_bad_value_is_refused():
    """`kvsaga-serve --scheduler-params` takes it like the other values, and checks it
    before any model loads (`ServerSettings`)."""
    assert_serve_takes("binding", "pool")


def test_the_state_machine_reaches_both_charges(monkeypatch):
    """Over the machine's derandomized runs the signal answers both ways at re-admissions
    (the code under test is reached), the books holding after every rule."""
    assert_reaches_both_answers(monkeypatch, "_pool_binds",
                                {**DEMOTING, "readmit_charge": "binding"})


# The scheduler state machine (admission, preemption, chunked prefill: every invariant of the
# manager and the queues, and the scheduler's books: `DemotingMachine.books`) with
# readmit_charge "binding", under every policy, with parameters under which it demotes.
globals().update(machines("readmit_binding", {**DEMOTING, "readmit_charge": "binding"}))
