"""The kept prefix of waiting sessions found unable to get in (gate_yields.py) and the
reservation rule ("waited", gate_waits.py): the prefix is judged again when the waiting
sessions' total wait grew, when the recompute price `token_s` fell, or when it was kept with
no price at all (each can make a session in it admissible by "waited"), and it is used when
neither moved that way (the same, a higher price, a shorter total wait). Before these tests
no test failed with that condition of `GateYields._kept_prefix` removed or turned around
(s51 vgatefix's weak spot); each change of it makes one test below fail
(checked by hand: 12 mutants)."""

from __future__ import annotations

import math

from kvsaga.integrations.vllm.gate import SessionGate
from tests.integrations.test_vllm_gate_scaling import _lines

BS = 16
TOKEN_S = 0.01  # big's recompute: 24 blocks x 16 tokens x 0.01 s; "waited" at 2x: 7.68 s


def _gate(num_big: int) -> SessionGate:
    """Capacity 40 blocks; 8 blocks of growth reserved a session (2 blocks a step, 4 steps).
    `keep` (4 blocks) runs; `hold` (20 blocks) runs and then ends, leaving room by fit for one
    of q0 (19 blocks) and q1 (20), but not for both, and by the reservation rule for neither
    beside the other. `num_big` sessions of 24 blocks, hinted last (ranked first), never fit
    (4 + 8 + 24 + 8 > 40) but would by the reservation rule once paid (4 + 24 <= 40), and
    either shuts q0 and q1 out. Everyone waits from 1.0; no rule but fit and "waited"."""
    g = SessionGate(40, BS, prior_growth_tokens=2 * BS, horizon_steps=4.0, idle_admit_s=1e9,
                    max_wait_s=1e9, reserve_wait_factor=2.0, room_admit=False)
    assert g.admit("keep", "w", 4 * BS, 0, 0.0)
    g.started("k0", "keep")
    assert g.admit("hold", "w", 20 * BS, 0, 0.0)
    g.started("h0", "hold")
    for i in range(num_big):
        assert not g.admit(f"big{i}", "w", 24 * BS, 0, 1.0, last_step=True)
    assert not g.admit("q0", "w", 19 * BS, 0, 1.0)
    assert not g.admit("q1", "w", 19 * BS + 1, 0, 1.0)
    g.new_step()
    g.finished("h0", "hold", 21 * BS, 1.0, None, True)
    return g


def _kept(g: SessionGate, now: float, token_s: float | None) -> None:
    """q1's probe yields to q0 and keeps the bigs as unable to get in."""
    assert not g.admit("q1", "w", 19 * BS + 1, 0, now, token_s=token_s)
    assert g.order.num_yielded == 1
    assert g.order.skip is not None and g.order.skip[0][1].startswith("big")


def _q0(g: SessionGate, now: float, token_s: float | None) -> bool:
    return g.admit("q0", "w", 19 * BS, 0, now, token_s=token_s)


def _fresh_answer(now: float, token_s: float | None, monkeypatch) -> bool:
    """q0's answer from the same state, with nothing kept between probes."""
    with monkeypatch.context() as m:
        m.setattr(SessionGate, "_kept_prefix", lambda self, *a: (None, math.inf))
        g = _gate(3)
        _kept(g, 1.5, TOKEN_S)
        return _q0(g, now, token_s)


def test_the_prefix_is_judged_again_once_the_total_wait_grew(monkeypatch):
    # At 1.5 the five waiting sessions waited 2.5 s in all (< 7.68): the bigs cannot get in.
    # At 3.0, 10 s: a big gets in by "waited" and q0 yields to it.
    g = _gate(3)
    _kept(g, 1.5, TOKEN_S)
    assert _q0(g, 3.0, TOKEN_S) is False
    assert g.order.num_yielded == 2
    assert _fresh_answer(3.0, TOKEN_S, monkeypatch) is False


def test_the_prefix_is_judged_again_once_the_recompute_price_fell(monkeypatch):
    # 2.5 s waited: short of 7.68 s at the price the bigs were kept under, past 1.92 s at a
    # quarter of it, when a big is paid for.
    g = _gate(3)
    _kept(g, 1.5, TOKEN_S)
    assert _q0(g, 1.5, TOKEN_S / 4) is False
    assert g.order.num_yielded == 2
    assert _fresh_answer(1.5, TOKEN_S / 4, monkeypatch) is False


def test_a_prefix_kept_without_a_price_is_judged_again_with_one(monkeypatch):
    g = _gate(3)
    _kept(g, 3.0, None)  # no price: the reservation rule cannot fire
    assert _q0(g, 3.0, TOKEN_S) is False  # 10 s waited >= 7.68
    assert g.order.num_yielded == 2
    assert _fresh_answer(3.0, TOKEN_S, monkeypatch) is False


def test_q0_is_admitted_when_nothing_ahead_is_paid_for():
    # (the scenario's control: the same probes, the bigs still short of their price)
    g = _gate(3)
    _kept(g, 1.5, TOKEN_S)
    assert _q0(g, 1.5, TOKEN_S) is True


def _q0_lines(num_big: int, token_s: float | None, withdraw_q1: bool = False) -> int:
    g = _gate(num_big)
    _kept(g, 1.001, TOKEN_S)  # 0.202 s waited at most (202 sessions): far from 7.68
    if withdraw_q1:  # q1's waiting request aborted: the total wait shrinks
        before = g._waiting_since.waited(1.001)
        g.finished("q1-req", "q1", 19 * BS + 1, 1.001, None, False)
        assert g._waiting_since.waited(1.001) < before
    n, admitted = _lines(lambda: _q0(g, 1.001, token_s))
    assert admitted is True and g.order.num_yielded == 1
    return n


def test_the_prefix_is_used_when_wait_and_price_are_unchanged():
    assert _q0_lines(20, TOKEN_S) == _q0_lines(200, TOKEN_S)


def test_the_prefix_is_used_when_the_price_rose():
    assert _q0_lines(20, 2 * TOKEN_S) == _q0_lines(200, 2 * TOKEN_S)


def test_the_prefix_is_used_when_the_total_wait_shrank():
    assert _q0_lines(20, TOKEN_S, True) == _q0_lines(200, TOKEN_S, True)


def test_the_prefix_is_used_when_the_price_is_unknown_now():
    # (the reservation rule cannot fire: only fit, and the bigs never fit)
    assert _q0_lines(20, None) == _q0_lines(200, None)
