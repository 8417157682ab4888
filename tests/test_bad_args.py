"""Regression (session 35, fuzz lane; tests/test_error_atomicity_stateful.py found both):
bad arguments get an InvalidRequest naming them, not a TypeError from deep inside.

- begin_step("s0", [0], salt=7) raised TypeError("can't concat int to bytes") out of
  `root_hash`; so did `lookup` and `import_session` with such a salt.
- begin_step("s0", [0]); num_blocks_needed("s0", "3") raised TypeError ("unsupported operand
  type(s) for +: 'int' and 'str'"); can_allocate too.
"""

from __future__ import annotations

import pytest

from kvsaga import InvalidRequest, KVCacheManager, KVSpec


def _manager(core: str) -> KVCacheManager:
    return KVCacheManager(KVSpec(1, 1, 4, block_size=4), 12, clock=lambda: 0.0, core=core)


@pytest.mark.parametrize("salt", [7, 1.5, ["t"], True])
def test_bad_salt(core, salt):
    m = _manager(core.name)
    with pytest.raises(InvalidRequest, match=r"salt must be a str, bytes or None, got"):
        m.begin_step("s0", [0], salt=salt)
    assert not m.sessions
    with pytest.raises(InvalidRequest, match=r"salt must be a str, bytes or None"):
        m.lookup("s0", [0, 1, 2, 3, 4], salt=salt)
    m.begin_step("s0", [0, 1, 2, 3, 4], salt="t")
    m.allocate_slots("s0", 5)
    m.finish_step("s0")
    with pytest.raises(InvalidRequest, match=r"salt must be a str, bytes or None"):
        m.begin_step("s0", [0, 1, 2, 3, 4, 5], salt=salt)  # a paused session: checked too
    assert not m.sessions["s0"].is_running
    m.check_integrity()


def test_bytes_salt_is_a_salt(core):
    m = _manager(core.name)
    m.begin_step("a", list(range(9)), salt=b"t")
    m.allocate_slots("a", 9)
    m.finish_step("a")
    assert m.begin_step("b", list(range(9)), salt="t").num_cached_tokens == 8  # same root


@pytest.mark.parametrize("n", ["3", 2.0, None, True, -1])
def test_num_blocks_needed_checks_num_tokens(core, n):
    m = _manager(core.name)
    m.begin_step("s0", [0])
    for ask in (m.num_blocks_needed, m.can_allocate):
        with pytest.raises(InvalidRequest, match=r"num_tokens must be an int >= 0, got"):
            ask("s0", n)
    assert m.num_blocks_needed("s0", 0) == 0 and m.num_blocks_needed("s0", 5) == 2
