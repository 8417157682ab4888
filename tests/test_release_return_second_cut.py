"""Two pending signals at once on the C++ core: the first raised as the pool's `release_many`
returns (release whole, policy told), the second at the handler's next interrupt point
(review s55 diffint LOW-1).

CPython raises the remaining pending signals at the next check points once a handler raised.
The handlers read the pool's `calls` to tell a call that returned from one whose hook raised;
they read it inside `release_again`, whose entry is itself a point: a second signal there
raised before the read. `_release_table` then took the release for one whose hook raised
(blocks the C++ pool cached and LRU was told of freed "unseen", LRU's queue naming FREE
blocks) and `_unbegin`'s take-back stopped there (the session left RUNNING on a table it
holds no reference on). Now each caller compares `pool.calls` inline (no call, so no point)
before it calls `release_again`. The second signal is delivered here by making
`release_again` raise KeyboardInterrupt at its entry (where a signal would land).
"""

from __future__ import annotations

import pytest

import kvsaga.host_tier as host_tier
import kvsaga.manager_rollback as manager_rollback
import kvsaga.manager_signals as manager_signals
from kvsaga._core import cpp_available
from kvsaga.host_tier import HostTierOps
from kvsaga.manager_rollback import FailedWrites
from kvsaga.manager_signals import SessionSignals
from tests.test_manager_hook_failure import books
from tests.test_release_return_cut import (
    CALLS,
    _books,
    _check,
    _cut_at_release,
    _host_manager,
    _manager,
    _resumable,
    _take_back_cut,
    _take_back_manager,
)

pytestmark = pytest.mark.skipif(not cpp_available(), reason="the C++ core is not built")


class _EntryCut:
    """Stands in for `release_again`: KeyboardInterrupt("second") on its first call (a signal
    at its entry, nothing run), the real one after."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt("second")
        return self.real(*args, **kwargs)


def _second_cut(monkeypatch, module) -> _EntryCut:
    entry = _EntryCut(module.release_again)
    monkeypatch.setattr(module, "release_again", entry)
    return entry


@pytest.mark.parametrize("policy", ["lru", "saga"])
@pytest.mark.parametrize("op", sorted(CALLS))
def test_release_table_second_signal_after_the_return_cut_keeps_told_blocks(
        monkeypatch, op, policy):
    m, twin = _manager(policy), _manager(policy)
    _second_cut(monkeypatch, manager_signals)
    cut = _cut_at_release(SessionSignals._release_table.__code__)
    with cut, pytest.raises(KeyboardInterrupt):
        CALLS[op](m)
    assert cut.fired
    _check(m)  # was: LRU's queue naming the FREE blocks dropped "unseen"
    monkeypatch.undo()
    CALLS[op](twin)
    assert _books(m) == _books(twin)
    st = m.begin_step("c", [1, 2, 3, 4, 5, 6, 9])
    assert st.num_cached_tokens == 6
    _check(m)


def test_lru_serves_evictions_after_a_second_signal_in_finish_step(monkeypatch):
    """Plain traffic after the two signals: was `ValueError: block 2 is already queued`."""
    m = _manager("lru")
    _second_cut(monkeypatch, manager_signals)
    cut = _cut_at_release(SessionSignals._release_table.__code__)
    with cut, pytest.raises(KeyboardInterrupt):
        m.finish_step("a")
    assert cut.fired
    monkeypatch.undo()
    for i in range(6):
        base = 1000 * (i + 1)
        st = m.begin_step(f"n{i}", list(range(base, base + 6)))
        m.allocate_slots(f"n{i}", 6 - st.num_cached_tokens)
        m.finish_step(f"n{i}")
        _check(m)


def test_unbegin_second_signal_after_the_return_cut_still_takes_the_step_back(monkeypatch):
    m, policy, prompt, before = _resumable("cpp")
    policy.fail = "step_started"
    _second_cut(monkeypatch, manager_rollback)
    cut = _cut_at_release(FailedWrites._unbegin.__code__)
    with cut, pytest.raises(KeyboardInterrupt):
        m.begin_step("s", prompt)
    assert cut.fired
    m.check_integrity()  # was: 's' RUNNING on a table it held no reference on
    assert books(m) == before
    monkeypatch.undo()
    policy.fail = None
    assert m.begin_step("s", prompt).num_cached_tokens == 10  # was: "already has an open step"
    m.check_integrity()


# The callers below read a raise at `release_again`'s entry as "nothing to drop" already, which
# is right after a return cut; they compare `calls` inline too now: proved not to regress.

def test_take_back_second_signal_after_the_return_cut_keeps_what_it_cached(monkeypatch):
    m, twin = _take_back_manager(), _take_back_manager()
    _second_cut(monkeypatch, manager_rollback)
    _take_back_cut(m)
    monkeypatch.undo()
    twin.discard_writes({"a": 4})
    assert _books(m) == _books(twin)


def test_prefetch_second_signal_after_the_return_cut_keeps_the_loads(monkeypatch):
    m, twin = _host_manager(), _host_manager()
    _second_cut(monkeypatch, host_tier)
    cut = _cut_at_release(HostTierOps.prefetch.__code__)
    with cut, pytest.raises(KeyboardInterrupt):
        m.prefetch("x")
    assert cut.fired
    _check(m)
    monkeypatch.undo()
    assert twin.prefetch("x") >= 1
    assert _books(m) == _books(twin)
