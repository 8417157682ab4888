"""A second interrupt inside `HostTier._repin` (take_plan's rollback) is handled: the rollback
is restartable and `take_plan` restarts it, then the first interrupt propagates with the
plan whole, pending and pinned.

Before (lane s52 takeplan, "not fixed"): `_repin` referenced the released entries again
first first; a KeyboardInterrupt between two of them propagated from the handler with the
pins half restored (refcounts below the pending plan's pins, `num_cached` stale), and a
rerun could not tell which entries were left. Each test cuts take_plan's release (the
first interrupt), then `_repin` at each point where CPython could raise a signal's
exception (tests/interrupts.py). Both cores (the host pool is the Python one in both).
"""

from __future__ import annotations

import pytest

from kvsaga.host_tier import HostTier, _QueueObserver
from tests.interrupts import Cut, Cuts, rearm
from tests.test_host_take_plan_interrupt import CORES, _arm, _books, _pending

# First interrupts whose rollback has entries to reference again: between the release's
# first two blocks, and in its observer hook (every entry released).
FIRST = ["loop", "hook"]


def _restore(m, monkeypatch) -> None:
    monkeypatch.undo()
    hp = m.host.pool
    hp.__dict__.pop("_tell", None)
    hp.refcount = list(hp.refcount)
    hp.observer = _QueueObserver(m.host.order)


def _cuts(m, first: str, k: int, monkeypatch):
    """The first interrupt armed at `first` and a Cut of `_repin` at its point `k`, under
    one tracer (re-armed for `_repin` when the first was a Cut, which CPython unsets)."""
    second = Cut(HostTier._repin.__code__, k)
    cut = _arm(m, first, monkeypatch)
    if cut is None:
        return second, second
    both = Cuts(cut, second)
    rearm(monkeypatch, both, [(HostTier, "_repin")])
    return both, second


def _cut_points(core: str, first: str, monkeypatch) -> int:
    m = _pending(core)
    tracer, probe = _cuts(m, first, -1, monkeypatch)
    with tracer, pytest.raises(KeyboardInterrupt):
        m.take_transfers()
    _restore(m, monkeypatch)
    return probe.hits


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("first", FIRST)
def test_a_second_interrupt_in_the_rollback_keeps_the_plan_whole(core, first, monkeypatch):
    hits = _cut_points(core, first, monkeypatch)
    assert hits >= 3  # the calls before the loop and a jump back per entry, at least
    for k in range(hits):
        m, twin = _pending(core), _pending(core)
        before = _books(m)
        tracer, cut = _cuts(m, first, k, monkeypatch)
        with tracer, pytest.raises(KeyboardInterrupt):
            m.take_transfers()
        assert cut.fired
        _restore(m, monkeypatch)
        assert _books(m) == before, k  # was: pins half restored
        m.check_integrity()
        plan, expected = m.take_transfers(), twin.take_transfers()
        assert plan == expected and plan.offloads and plan.loads
        m.check_integrity()
        assert _books(m)[3:] == _books(twin)[3:]
