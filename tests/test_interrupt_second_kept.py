"""A second interrupt that lands while the manager cleans up after a first error is not lost,
and a take-back cut as it forgets a new session still restores the hit counters (review s57
diffinterrupts, of the interrupts lane's 32faa119).

F1: the lane's cleanup handlers rerun a cleanup cut by a second interrupt (`until_done`),
then re-raised only the FIRST error: when that was not an interrupt (a bad token, a hook's
RuntimeError), the Ctrl-C was dropped, not even chained. Now the second interrupt
propagates, with the first error as its context. The interrupt is delivered at the
cleanup's entry, where CPython checks pending signals.

F2: the take-back of a new session restored the hit counters and `pool.reused_s` after
`self.sessions.pop`, whose return is an interrupt point: cut there, the metrics still
counted the step taken back. Now they are restored before it.
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager
from kvsaga.errors import InvalidRequest
from kvsaga.manager import KVCacheManager as _M
from tests.interrupts import Cut
from tests.test_interrupt_unbegin_second import X, _paused  # (a paused 14-token session)


def _cut_at_entry(monkeypatch, name: str) -> list[int]:
    """`name` raises KeyboardInterrupt at its first call's entry, then runs as before."""
    real, fired = getattr(_M, name), []

    def cut(*args, **kwargs):
        if not fired:
            fired.append(1)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_M, name, cut)
    return fired


def test_a_ctrl_c_in_the_cleanup_of_a_bad_prompt_is_raised(core, monkeypatch):
    m = _paused(core)
    fired = _cut_at_entry(monkeypatch, "_unopen")
    with pytest.raises(KeyboardInterrupt) as info:  # was: InvalidRequest alone
        m.begin_step("x", X + [True])
    assert fired and isinstance(info.value.__context__, InvalidRequest)
    m.check_integrity()
    assert m.session("x").state.name == "PAUSED" and m.session("x").token_ids == X


def test_a_ctrl_c_in_the_take_back_of_a_hook_error_is_raised(core, monkeypatch):
    m = _paused(core)

    def refuse(session, now):
        raise RuntimeError("policy refused")

    m.policy.step_started = refuse
    fired = _cut_at_entry(monkeypatch, "_unbegin_hits")
    with pytest.raises(KeyboardInterrupt) as info:  # was: RuntimeError alone
        m.begin_step("x", X + [5])
    assert fired and isinstance(info.value.__context__, RuntimeError)
    m.check_integrity()
    assert m.session("x").state.name == "PAUSED"


def _counters(m: KVCacheManager) -> tuple:
    return m._queried_tokens, m._hit_tokens, m._host_hit_tokens, m.pool.reused_s


def test_a_new_sessions_take_back_cut_as_it_is_forgotten_restores_the_hit_counters(core):
    """A new session `y` hits `x`'s blocks; the policy's `step_started` raises
    KeyboardInterrupt (the take-back runs), and a second one lands at every C call's return
    of `_unbegin` in turn: the counters are those before the step each time (was: (14, 0)
    -> (25, 8) when cut as `sessions.pop` returned)."""
    k = 0
    while True:
        m = _paused(core)

        def refuse(session, now):
            raise KeyboardInterrupt

        m.policy.step_started = refuse
        before = _counters(m)
        cut = Cut(_M._unbegin.__code__, k, c_returns_only=True)
        with pytest.raises(KeyboardInterrupt), cut:
            m.begin_step("y", X[:9] + [7, 7])
        if not cut.fired:
            break
        assert _counters(m) == before, f"second interrupt at point {k}"
        assert "y" not in m.sessions
        m.check_integrity()
        k += 1
    assert k > 0
