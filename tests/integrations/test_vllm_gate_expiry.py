"""SessionGate.expire keeps the earliest time a paused session expires (`_expiry_due`), so a
call with nothing expired is O(1) in the admitted sessions, not a scan of every paused one
(review s51, vgate finding 3: ~0.5 us a session, 2 ms a probe at 4,000 paused, and the
connector asks before every admission probe). Its decisions are those of the scan: a random
driver compares them, asking at the exact float boundary of each pause's expiry too."""

from __future__ import annotations

import math
import random

import pytest

from kvsaga.integrations.vllm.gate import SessionGate
from kvsaga.integrations.vllm.gate_pauses import expiry_bound
from tests.integrations.test_vllm_gate_scaling import _lines

BS = 16


@pytest.mark.parametrize("paused_at,limit", [
    (0.0, 0.0), (0.1, 0.2), (0.3, 0.1), (1e9 + 0.1, 0.7), (12345.678, 1e-9), (1.0, 3e-17),
    (-2.5, 0.3), (5.0, -1.0), (0.75, 0.25), (1e300, 1e300), (1.7e308, 1.7e308)])
def test_expiry_bound_is_at_most_a_few_floats_before_the_first_time_that_passes(
        paused_at, limit):
    t = expiry_bound(paused_at, limit)
    assert not t - paused_at > limit  # (and so every time before it: subtraction is monotone)
    if math.isfinite(t):
        for _ in range(4):
            t = math.nextafter(t, math.inf)
        assert t - paused_at > limit
    assert expiry_bound(math.nan, 1.0) == -math.inf


def _paused_gate(n: int) -> SessionGate:
    """`n` admitted sessions paused: half unhinted at 10 s, half hinted 1 s (within the
    workflow's limit, so never expiring here) since 1 s; 8 pauses of 1-8 s observed (the
    limit, their 0.8 quantile, ~6.6 s); something runs."""
    g = SessionGate(10**9, BS, idle_admit_s=1e9, max_wait_s=1e9)
    for i in range(0, n, 2):
        assert g.admit(f"s{i}", "w", 4 * BS, 0, 0.5)
        g.started(f"r{i}", f"s{i}")
        g.finished(f"r{i}", f"s{i}", 5 * BS, 1.0, 1.0, False)
    for k in range(8):
        assert g.admit(f"p{k}", "w", 4 * BS, 0, 0.0)
        g.started(f"pr{k}", f"p{k}")
        g.finished(f"pr{k}", f"p{k}", 5 * BS, 1.0, None, False)
        assert g.admit(f"p{k}", "w", 6 * BS, 0, 2.0 + k)  # back: a pause of 1 + k s
    for i in range(1, n, 2):
        assert g.admit(f"s{i}", "w", 4 * BS, 0, 10.0)
        g.started(f"r{i}", f"s{i}")
        g.finished(f"r{i}", f"s{i}", 5 * BS, 10.0, None, False)
    g.started("other")
    return g


def test_a_call_with_nothing_expired_costs_the_same_with_20_or_200_paused():
    counts = []
    for n in (20, 200):
        g = _paused_gate(n)
        assert g.expire(10.5) == []  # (the first call after a change works the time out)
        count, out = _lines(lambda g=g: g.expire(10.6, "x"))
        assert out == []
        counts.append(count)
    assert counts[0] == counts[1], counts
    g = _paused_gate(20)  # and past the limit the unhinted ones expire, as before
    limit = g.pause_limit("w")
    assert sorted(g.expire(10.0 + limit + 0.01)) == sorted(f"s{i}" for i in range(1, 20, 2))


def test_a_pause_learned_of_a_session_not_admitted_moves_the_expiry():
    """R's step rode along (R is not admitted), and R's return, deferred, is the workflow's
    first pause observed (1 s): no admitted record changed, but A, paused unhinted 4 s,
    is past the workflow's new limit."""
    g = SessionGate(20, BS, room_admit=False, reserve_wait_factor=None, idle_admit_s=1e9,
                    max_wait_s=1e9, demote_min_s=1e9, pause_min_observed=1)
    assert g.admit("A", "w", 15 * BS, 0, 0.0)
    g.started("a0", "A")
    g.finished("a0", "A", 15 * BS, 1.0, None, False)
    g.started("other")
    assert not g.admit("R", "w", 10 * BS, 0, 1.0)
    g.rode_along("R", 1.0)
    g.started("r0", "R")
    g.finished("r0", "R", 11 * BS, 2.0, None, False)
    assert g.expire(3.0) == []  # no pause observed yet: no limit
    assert not g.admit("R", "w", 12 * BS, 0, 3.0)  # back after 1 s: the limit is 1 s
    assert g.pause_limit("w") == 1.0
    assert g.expire(5.0) == ["A"]


def _drive(seed: int, scan: bool, monkeypatch) -> list:
    """Admits, starts, finishes (unhinted, hinted short or long), arrivals, aborts, last
    steps, settings changes, and `expire` asked at random times and at each paused
    session's float boundary and the floats either side; every answer and the sessions."""
    with monkeypatch.context() as m:
        if scan:
            m.setattr(SessionGate, "_expiry_due", lambda self: -math.inf)
        r = random.Random(seed)
        g = SessionGate(r.choice([40, 10**6]), BS, idle_admit_s=1e9, max_wait_s=1e9,
                        pause_min_observed=r.choice([1, 3]), demote_min_s=1e9,
                        expire_long_hints=r.random() < 0.5)
        sids = [f"s{i}" for i in range(12)]
        running: dict[str, str] = {}
        out: list = []
        now = r.choice([0.0, 0.1, 1e6 + 0.3])
        for op in range(300):
            now += r.choice([0.0, 0.0, 1e-9, 0.1, 0.3, 0.7, 2.0])
            k = r.random()
            s = r.choice(sids)
            wf = "w" if s < "s6" else "x"
            if k < 0.3:
                ok = g.admit(s, wf, r.randint(1, 8) * BS, 0, now)
                out.append(("admit", s, ok))
                if ok and s not in running and r.random() < 0.8:
                    running[s] = f"{s}.{op}"
                    g.started(running[s], s)
            elif k < 0.55 and running:
                s = r.choice(sorted(running))
                g.finished(running.pop(s), s, r.randint(1, 9) * BS, now,
                           r.choice([None, None, 0.05, 1.0, 50.0]), r.random() < 0.1,
                           withdrawn=r.random() < 0.05)
            elif k < 0.6:
                g.arrived(s, r.randint(1, 8) * BS, now)
            elif k < 0.63:
                g.expire_long_hints = not g.expire_long_hints
            else:
                paused = [(x, v) for x, v in g.sessions.items() if v.paused_at is not None]
                t, boundary = now, False
                if paused and r.random() < 0.7:  # at a pause's boundary, or a float off it
                    x, v = r.choice(paused)
                    limit = g.pause_limit(v.workflow)
                    if limit is not None:
                        t, boundary = v.paused_at + limit, True
                        for _ in range(r.choice([0, 1, 2])):
                            t = math.nextafter(t, r.choice([-math.inf, math.inf]))
                        now = max(now, t)
                out.append(("expire", g.expire(t, r.choice([None, s])), g.num_expired,
                            boundary))
            out.append(sorted(g.sessions))
        return out


@pytest.mark.parametrize("seed", range(40))
def test_expire_decides_as_the_scan(seed, monkeypatch):
    assert _drive(seed, False, monkeypatch) == _drive(seed, True, monkeypatch)


def test_the_driver_expires_sessions_at_their_boundary(monkeypatch):
    """(The comparison above is not idle: the driver's calls expire sessions, many of them
    asked within two floats of a pause's `paused_at + limit`.)"""
    calls = [o for seed in range(40) for o in _drive(seed, False, monkeypatch)
             if isinstance(o, tuple) and o[0] == "expire" and o[1]]
    assert len(calls) >= 20 and sum(o[3] for o in calls) >= 10, calls
