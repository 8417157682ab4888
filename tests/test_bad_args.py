"""Regression (session 35, fuzz lane; tests/test_error_atomicity_stateful.py found both):
bad arguments get an InvalidRequest naming them, not a TypeError from deep inside.

- begin_step("s0", [0], salt=7) raised TypeError("can't concat int to bytes") out of
  `root_hash`; so did `lookup` and `import_session` with such a salt. (Session 45: a str salt
  with a lone surrogate raised UnicodeEncodeError there.)
- begin_step("s0", [0]); num_blocks_needed("s0", "3") raised TypeError ("unsupported operand
  type(s) for +: 'int' and 'str'"); can_allocate too. (Session 45: they now raise exactly what
  allocate_slots raises, 0 and a count past the tokens without slots included.)
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


@pytest.mark.parametrize("salt", ["\udc80", "tenant-\ud800"])
def test_salt_with_a_lone_surrogate(core, salt):
    """A str salt is hashed as its UTF-8 bytes, which a lone surrogate has none of: until
    session 45 begin_step and lookup raised UnicodeEncodeError out of `root_hash`."""
    m = _manager(core.name)
    where = len(salt) - 1
    with pytest.raises(InvalidRequest, match=rf"salt must be valid UTF-8.* position {where}"):
        m.begin_step("s0", [0], salt=salt)
    assert not m.sessions
    with pytest.raises(InvalidRequest, match=r"salt must be valid UTF-8"):
        m.lookup("s0", [0, 1, 2, 3, 4], salt=salt)
    m.begin_step("s0", [0, 1, 2, 3, 4], salt="t")
    m.allocate_slots("s0", 5)
    m.finish_step("s0")
    with pytest.raises(InvalidRequest, match=r"salt must be valid UTF-8"):
        m.begin_step("s0", [0, 1, 2, 3, 4, 5], salt=salt)  # a paused session: unchanged
    assert not m.sessions["s0"].is_running
    m.check_integrity()


def test_bytes_salt_is_a_salt(core):
    m = _manager(core.name)
    m.begin_step("a", list(range(9)), salt=b"t")
    m.allocate_slots("a", 9)
    m.finish_step("a")
    assert m.begin_step("b", list(range(9)), salt="t").num_cached_tokens == 8  # same root


@pytest.mark.parametrize("n", ["3", 2.0, None, True, -1, 0, 6, 10**6])
def test_num_blocks_needed_raises_as_allocate_slots(core, n):
    """docs/api.md: the asks raise what allocate_slots raises. Until session 45 they took 0
    (answering 0 blocks, True) and a count past the tokens without slots (answering 2
    blocks, True), where allocate_slots refuses both."""
    m = _manager(core.name)
    m.begin_step("s0", [0, 1, 2, 3, 4])
    with pytest.raises(InvalidRequest) as refused:
        m.allocate_slots("s0", n)
    for ask in (m.num_blocks_needed, m.can_allocate):
        with pytest.raises(InvalidRequest) as e:
            ask("s0", n)
        assert str(e.value) == str(refused.value)
    assert m.num_blocks_needed("s0", 5) == 2 and m.can_allocate("s0", 5)
    m.check_integrity()
