"""What the gate charges a demoted session admitted again (`readmit_charge`,
kvsaga/scheduler/working_set_gate.py): its uncached part only, or its whole context too."""

from __future__ import annotations

import pytest

from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyRequest
from tests.scheduler.helpers import manager, toks, two_paused


def _demoted_a_back(charge: str, grow: int):
    """a and b admitted on a 16-block pool (4 tokens a block); a's second step grows past
    its prediction, so the shrink demotes a (expected back last); then a's third step (its
    prompt 44 + `grow` tokens, 40 of them still cached) waits to be admitted again beside
    b (4 blocks of context, 6 with its predicted growth)."""
    m, s, ex, a = two_paused(prompt_len=12, readmit_charge=charge)
    a2 = ToyRequest("a", a.prompt + a.out + toks(50, 30), max_new=1, last=False, resumed=True)
    s.add(a2, 1.0)
    for t in (1.0, 2.0):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"b"} and s.num_demotions == 1 and "a" in s._deferred
    a3 = ToyRequest("a", a2.prompt + a2.out + toks(90, grow), max_new=1, last=False,
                    resumed=True)
    s.add(a3, 3.0)
    assert s.lookup(a3).gpu_hit_blocks == 10  # its context, still cached
    return s, ex, a3


@pytest.mark.parametrize("charge,grow,admitted,cause", [
    ("uncached", 5, True, None),  # charged 9 uncached tokens + growth: 3 + 6 blocks fit 16
    ("context", 5, False, "contexts"),  # its whole context, 13 blocks, beside b's 4: > 16
    ("context", 4, True, None),   # 12 + 4 blocks: fits (growth not counted)
    ("full", 4, False, "growth"),  # 12 blocks + 2 of growth beside b's 6: over 16 (the
])                                 # contexts alone, 12 + 4, fit: its growth is the cause)
def test_readmit_charge_decides_whether_a_cached_demoted_session_enters(charge, grow,
                                                                        admitted, cause):
    s, ex, a3 = _demoted_a_back(charge, grow)
    out = s.schedule(3.0, ex)
    assert (out.admitted == [a3]) is admitted
    assert ("a" in s.sessions) is admitted
    if not admitted:
        assert s._cause == cause and s._committed <= s.capacity


def test_readmit_charge_leaves_new_sessions_alone():
    """A new session's GPU hits are a prefix other sessions share: "full" charges them no
    more than "uncached" does (only demoted sessions' hits are their own context)."""
    m = manager(16)
    s = make_scheduler("workflow", m, readmit_charge="full")
    new = ToyRequest("n", toks(0, 12), max_new=1, last=False)
    s.add(new, 0.0)
    assert s._readmit_tokens(new, s.lookup(new)) == (12, None)


def test_readmit_charge_rejects_unknown_values():
    with pytest.raises(ValueError, match="readmit_charge must be one of uncached, room, "
                       "room_queue, room_fits, room_contexts, room_ranked, room_overdue, "
                       "room_priced, room_returns, room_returns_fair, room_returns_stay, "
                       "room_returns_queue, room_returns_queue_seen, room_returns_queue_leave, "
                       "room_returns_queue_corrected, room_returns_queue_steps, "
                       "room_returns_queue_shrink, room_returns_queue_cleared, "
                       "room_returns_queue_demoted, "
                       "context, full, "
                       "binding, binding_short, "
                       "cost, cost_ends, cost_leave, cost_leave_waits, got 'all'"):
        make_scheduler("workflow", manager(16), readmit_charge="all")
    assert make_scheduler("workflow", manager(16)).readmit_charge == \
        "room_returns_queue_demoted"
