"""A second interrupt at the very entry of the pure-Python pool's completion (`until_done`,
before it ran anything) after a first one cut an operation: the completion is run again
(the handler's `finally`), so the operation is still nothing or whole (session 55 pyint;
review s54 diffpyloops LOW-3: the handler's first point was `until_done`'s entry, and two
signals pending at once are run at consecutive points, so the second lands exactly there;
before, the completion never ran: "free block 4 is not in the free queue").

A third interrupt at the second completion's entry is not covered: every handler needs a
call, and a Python function's entry is an interrupt point, so each level of `finally`
covers one more interrupt in a row, never all (findings s55 pyint).
"""

from __future__ import annotations

import pytest

import kvsaga.pool as pool_mod
from tests.interrupts import Cut
from tests.test_pool_interrupt import OPS, _code, _expected, _fns, _outcome, _points, _pool


@pytest.mark.parametrize("kind", ["batch", "per_block"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_a_second_interrupt_at_the_completions_entry(name, kind, monkeypatch):
    call, _, firsts, _ = OPS[name]
    expected = _expected(name, kind)
    real = pool_mod.until_done
    seconds = 0
    for fn in _fns(firsts):
        for k in range(_points(fn, call, kind)):
            calls = []

            def entry_cut(undo, *args, calls=calls):
                calls.append(undo)
                if len(calls) == 1:
                    raise KeyboardInterrupt("second")
                return real(undo, *args)

            p, q = _pool(kind)
            with monkeypatch.context() as mp:
                mp.setattr(pool_mod, "until_done", entry_cut)
                with Cut(_code(fn), k, c_returns_only=True) as cut, \
                        pytest.raises(KeyboardInterrupt):
                    call(p)
            assert cut.fired
            _outcome(name, kind, p, q, expected)  # was: broken books (the completion skipped)
            seconds += bool(calls)
    assert seconds >= 2
