"""SessionGate fixes from the s51 diff review of the vgate lane (diffvgate findings 2-4):
a demote_factor of 0 with an endless pause hint gave a nan deadline that hid every other
overdue pause; a gate with a deferred session no longer pickled; and the integer-nanosecond
wait sum decides the reservation rule's exact float ties as documented."""

from __future__ import annotations

import copy
import math
import pickle

from kvsaga.integrations.vllm.gate import SessionGate
from kvsaga.integrations.vllm.gate_waits import WaitTable
from kvsaga.scheduler.working_set import demote_deadline

BS = 16


def test_demote_deadline_factor_zero_ignores_an_endless_pause():
    assert demote_deadline(1.0, math.inf, 0.0, 10.0) == 11.0
    assert demote_deadline(1.0, 30.0, 0.0, 10.0) == 11.0
    assert demote_deadline(1.0, math.inf, 2.0, 10.0) == math.inf


def _two_paused(demote_factor: float) -> SessionGate:
    """A paused (hinted an endless pause, first in order) and B paused (no hint) fill 32 of
    40 blocks; something else runs, so the gate is never idle."""
    g = SessionGate(40, BS, prior_growth_tokens=0, horizon_steps=0.0, room_admit=False,
                    idle_admit_s=1e9, max_wait_s=1e9, demote_factor=demote_factor,
                    demote_min_s=10.0, reserve_wait_factor=None, admission_order="fifo")
    assert g.admit("A", "w", 15 * BS, 0, 0.0)
    g.started("a0", "A")
    g.finished("a0", "A", 16 * BS, 1.0, math.inf, False)  # paused at 1, expected inf
    assert g.admit("B", "w", 15 * BS, 0, 1.0)
    g.started("b0", "B")
    g.finished("b0", "B", 16 * BS, 2.0, None, False)  # paused at 2, deadline 12 (factor 0)
    g.started("other")
    return g


def test_factor_zero_endless_hint_does_not_hide_other_overdue_pauses():
    # Before: A's deadline was 1 + 0 x inf + 10 = nan, the kept earliest deadline was nan,
    # and C waited with B 8 s past its deadline. Now A is due at 11 and B at 12.
    g = _two_paused(0.0)
    assert g.admit("C", "w", 16 * BS, 0, 20.0)
    assert g.last_demoted == ["A", "B"]
    assert list(g.sessions) == ["C"]


def test_factor_zero_endless_hint_is_due_at_min_s():
    g = _two_paused(0.0)
    assert g.admit("C", "w", 16 * BS, 0, 11.5)  # A (due 11) is overdue, B (due 12) is not
    assert g.last_demoted == ["A"]
    assert sorted(g.sessions) == ["B", "C"]


def test_endless_hint_with_a_factor_is_never_due_and_others_still_are():
    g = _two_paused(2.0)  # A's deadline inf, B's 2 + 2 x default_pause_s + 10
    due_b = g._deadline(g.sessions["B"])
    assert g._deadline(g.sessions["A"]) == math.inf
    assert not g.admit("C", "w", 16 * BS, 0, due_b)  # B not yet past its deadline
    assert g.admit("C", "w", 16 * BS, 0, due_b + 1.0)
    assert g.last_demoted == ["B"]


def _drive(g: SessionGate) -> list:
    """The same ops on a gate whose session `b` waits; what each decides."""
    out = [g.admit("b", "w", 48, 0, 2.0), dict(g._waiting_since), g._waiting_since.waited(3.0)]
    g.finished("r", "a", 64, 3.0, None, True)
    out += [g.admit("b", "w", 48, 0, 3.5), g.admitted_by.copy(), list(g.sessions),
            g._waiting_since.total_ns, g.admit("c", "w", 48, 0, 4.0)]
    return out


def test_gate_with_a_deferred_session_pickles_and_decides_the_same():
    g = SessionGate(4, BS, idle_admit_s=1e9)
    assert g.admit("a", "w", 48, 0, 0.0)
    g.started("r", "a")
    assert not g.admit("b", "w", 48, 0, 1.0)  # deferred: in _waiting_since
    assert not g.admit("d", "w", 48, 0, 1.25)
    h = pickle.loads(pickle.dumps(g))
    c = copy.deepcopy(g)
    assert isinstance(h._waiting_since, WaitTable)
    assert dict(h._waiting_since) == {"b": 1.0, "d": 1.25}
    assert h._waiting_since.total_ns == g._waiting_since.total_ns == 2_250_000_000
    assert _drive(h) == _drive(c) == _drive(g)


def test_wait_table_round_trip_keeps_the_sum_and_its_writes():
    t = WaitTable()
    t["x"] = 0.5
    t["y"] = 0.25
    u = pickle.loads(pickle.dumps(t))
    assert u == t and u.total_ns == t.total_ns == 750_000_000
    del u["x"]
    assert u.total_ns == 250_000_000 and u.waited(1.0) == 0.75


def test_reservation_rule_at_an_exact_float_tie_counts_the_nanosecond_sum():
    # Documented (WaitTable): the wait sum is exact in nanoseconds. q waited from 0.1 to 0.3:
    # 0.19999999999999998 s as a float difference, 0.2 s here, which meets the threshold of
    # reserve_wait_factor 2 x recompute 0.1 s = 0.2 s, so q is admitted as "waited".
    g = SessionGate(30, BS, prior_growth_tokens=64, horizon_steps=4.0, room_admit=False,
                    idle_admit_s=1e9, max_wait_s=1e9, demote_min_s=1e9,
                    reserve_wait_factor=2.0, admission_order="fifo")
    assert g.admit("a", "w", 18 * BS, 0, 0.0)
    g.started("a0", "a")
    g.finished("a0", "a", 19 * BS, 0.05, 1e6, False)
    g.started("other")
    assert not g.admit("q", "w", BS, 0, 0.1)
    assert 0.3 - 0.1 < 0.2 and g._waiting_since.waited(0.3) == 0.2
    assert g.admit("q", "w", BS, 0, 0.3, token_s=0.1 / BS)
    assert g.admitted_by == {"waited": 1}


def test_earliest_deadline_ignores_a_non_finite_one(monkeypatch):
    # Belt and braces: should a deadline still come out nan, the kept earliest deadline
    # skips it rather than becoming nan, which hid every other overdue pause.
    g = _two_paused(0.0)
    real = SessionGate._deadline
    monkeypatch.setattr(SessionGate, "_deadline",
                        lambda self, s: math.nan if s is self.sessions.get("A") else real(self, s))
    assert g.admit("C", "w", 16 * BS, 0, 20.0)
    assert g.last_demoted == ["B"]
