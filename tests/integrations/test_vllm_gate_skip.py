"""A probe that yields or is admitted starts past the waiting sessions ranked ahead of it that
an earlier probe found unable to get in, while nothing they were judged by has changed
(gate_yields.py; review s51, diffvgate finding 1): before, each such probe walked them all.
Work is counted as the Python lines a probe executes (sys.settrace), as in
test_vllm_gate_scaling.py; the decisions are checked against the same gate with nothing kept."""

from __future__ import annotations

import math
import random

import pytest

from kvsaga.integrations.vllm.gate import SessionGate
from tests.integrations.test_vllm_gate_scaling import _lines

BS = 16


def _gate(num_big: int, num_small: int, max_wait_s: float = 1e9,
          small_at: float = 1.0) -> SessionGate:
    """Room for one small session once `hold` finishes (half a second after the small ones
    asked, at `small_at`); `num_big` sessions of 100 blocks (capacity 40: they never get
    in by fit) hinted last, so ranked first, asking at 1.0."""
    g = SessionGate(40, BS, prior_growth_tokens=16, horizon_steps=1.0, idle_admit_s=1e9,
                    max_wait_s=max_wait_s, reserve_wait_factor=None, room_admit=False)
    assert g.admit("keep", "w", 4 * BS, 0, 0.0)
    g.started("k0", "keep")
    assert g.admit("hold", "w", 30 * BS, 0, 0.0)
    g.started("h0", "hold")
    for i in range(num_big):
        assert not g.admit(f"big{i}", "w", 100 * BS, 0, 1.0, last_step=True)
    for i in range(num_small):
        assert not g.admit(f"q{i}", "w", 20 * BS + i, 0, small_at)
    g.new_step()
    g.finished("h0", "hold", 31 * BS, small_at + 0.5, None, True)
    return g


def test_a_yielding_probe_costs_the_same_with_20_or_200_sessions_ahead_that_cannot_get_in():
    counts = []
    for num_big in (20, 200):
        g = _gate(num_big, 3)
        assert not g.admit("q1", "w", 20 * BS + 1, 0, 2.0)  # yields to q0
        n, admitted = _lines(lambda g=g: g.admit("q2", "w", 20 * BS + 2, 0, 2.0))
        assert admitted is False and g.order.num_yielded == 2
        counts.append(n)
    assert counts[0] == counts[1], counts


def _no_skip(monkeypatch) -> None:
    monkeypatch.setattr(SessionGate, "_kept_prefix", lambda self, *a: (None, math.inf))


def _drive(seed: int, no_skip: bool, monkeypatch) -> list:
    """Bursts of probes (vLLM asking about its waiting requests) among finishes, starts, new
    steps and changes of the free blocks, the recompute price and the clock; every answer."""
    with monkeypatch.context() as m:
        if no_skip:
            _no_skip(m)
        r = random.Random(seed)
        g = SessionGate(40, BS, prior_growth_tokens=16, horizon_steps=1.0,
                        idle_admit_s=r.choice([30.0, 1e9]), max_wait_s=r.choice([8.0, 1e9]),
                        reserve_wait_factor=r.choice([None, 2.0]), demote_min_s=5.0,
                        room_admit=r.random() < 0.5)
        sids = [f"s{i}" for i in range(40)]
        size = {s: r.choice([2, 5, 12, 20, 60, 100]) * BS + r.randrange(BS) for s in sids}
        running: list[tuple[str, str]] = []
        out: list = []
        now = 0.0
        for step in range(60):
            spare = r.choice([None, 0, 5, 20, 60])
            token_s = r.choice([None, 1e-3, 0.05])
            for _ in range(r.randint(1, 30)):
                s = r.choice(sids)
                now += r.choice([0.0, 0.0, 0.01, 0.5])
                last = size[s] > 40 * BS or r.random() < 0.1
                ok = g.admit(s, "w" if size[s] < 40 * BS else "x", size[s], 0, now,
                             spare if r.random() < 0.8 else r.choice([None, 0, 60]),
                             token_s, last)
                out.append((s, ok, list(g.last_demoted)))
                if ok:
                    running.append((f"r{step}.{len(out)}", s))
                    g.started(*running[-1])
            if running and r.random() < 0.7:
                rid, s = running.pop(r.randrange(len(running)))
                size[s] += r.randrange(3 * BS)
                g.finished(rid, s, size[s], now, r.choice([None, 1.0]), r.random() < 0.3)
            g.new_step()
        out.append((dict(g.admitted_by), g.order.num_yielded, sorted(g.sessions)))
        return out


@pytest.mark.parametrize("seed", range(12))
def test_the_answers_are_those_of_a_gate_that_keeps_nothing(seed, monkeypatch):
    assert _drive(seed, False, monkeypatch) == _drive(seed, True, monkeypatch)


def test_a_session_in_the_kept_prefix_that_reaches_max_wait_is_judged_again():
    # The big sessions (ranked first, never fitting) wait from 1.0, the small ones from 5.0.
    # q1's probe at 6.0 keeps the bigs as unable to get in; at 11.5 they have waited
    # max_wait_s (10) and may go in, so q0, admissible by fit, yields to them.
    g = _gate(3, 3, max_wait_s=10.0, small_at=5.0)
    assert not g.admit("q1", "w", 20 * BS + 1, 0, 6.0)  # yields to q0
    assert g.order.skip is not None  # (the bigs are kept as unable to get in)
    assert not g.admit("q0", "w", 20 * BS, 0, 11.5)  # yields to big0, past max_wait
    assert g.order.num_yielded == 2
