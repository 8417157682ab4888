"""A shadow cache's loops (kvsaga/policy/shadow_loops.py): the C++ twin (kvsaga._kvcore.
ShadowLoops) answers as the Python reference under the same calls, leaves the same tables,
and refuses the same bad input with the same error, nothing changed."""

from __future__ import annotations

import copy
import hashlib
import random

import pytest

from kvsaga.policy.shadow_loops import ACTIVE, CACHED, FREE, PyShadowLoops, make_shadow_loops

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

N = 24


def h(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def _generations(n: int) -> memoryview:
    return memoryview(bytearray(8 * n)).cast("q")


def _snapshot(t: dict) -> dict:
    """A deep copy of tables `t`, the generations as a list."""
    return copy.deepcopy({k: v.tolist() if k == "gen" else v for k, v in t.items()})


def _tables() -> dict:
    return {"state": bytearray(N), "ref": [0] * N, "gen": _generations(N), "owner": [None] * N,
            "position": [0] * N, "block_hash": [None] * N, "free": list(range(N - 1, -1, -1)),
            "index": {}}


def _pair():
    """(Python twin, C++ twin, their tables), equal tables each."""
    cpp_mod = pytest.importorskip("kvsaga._kvcore")
    a, b = _tables(), _tables()
    py = PyShadowLoops(*a.values(), "ttl")
    cpp = make_shadow_loops(True, *b.values(), "ttl")
    assert type(cpp) is cpp_mod.ShadowLoops
    return py, cpp, a, b


def _outcome(fn, *args):
    """What `fn(*args)` returned, or its error's type and message."""
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 (the error itself is compared)
        return type(e).__name__, str(e)


def _same(a: dict, b: dict) -> None:
    assert a == b
    for h_, blk in a["index"].items():  # the index points at blocks holding its hashes
        assert a["block_hash"][blk] == h_ and a["state"][blk] != FREE


def test_reference_semantics():
    t = _tables()
    lo = PyShadowLoops(*t.values(), "lru")
    table: list[int] = []
    assert lo.allocate("a", table, [h(0), h(1), h(0)], 4, 3) == 4
    assert table == [0, 1, 2, 3] and t["index"] == {h(0): 0, h(1): 1}
    assert t["block_hash"][:4] == [h(0), h(1), None, None]  # h(0) twice: the first stays
    assert t["owner"][:4] == ["a"] * 4 and t["position"][:4] == [0, 1, 2, 3]
    assert lo.release(table, 3) == ([3, 1, 0], 4)  # the unhashed tail 3 kept, 2 freed
    assert t["state"][:4] == bytearray([CACHED, CACHED, FREE, CACHED]) and t["free"][-1] == 2
    assert lo.hits([h(0), h(1), h(5), h(0)], 4) == [0, 1] and lo.hits([h(0)], 0) == []
    assert lo.take([0, 1], "b") == [0, 1] and t["owner"][:2] == [None, None]
    with pytest.raises(RuntimeError, match="shadow 'lru' named block 0, not cached"):
        lo.evict([3, 0])
    assert t["state"][3] == CACHED  # nothing changed
    lo.evict([3])
    assert t["state"][3] == FREE and t["free"][-1] == 3


@pytest.mark.parametrize("seed", range(6))
def test_cpp_matches_reference_under_random_steps(seed):
    py, cpp, a, b = _pair()
    rng = random.Random(seed)
    tables_py: dict[str, list[int]] = {}
    tables_cpp: dict[str, list[int]] = {}
    for _ in range(400):
        sid = rng.choice("abcd")
        op = rng.random()
        if op < 0.3:  # a step: hits, references, room made, blocks appended
            hashes = [h(1000 * (ord(sid) % 3) + i) for i in range(rng.randint(0, 10))]
            limit = rng.randint(-2, len(hashes) + 1)
            hits = py.hits(hashes, limit)
            assert hits == cpp.hits(hashes, limit)
            hits = [x for x in hits if a["state"][x] == CACHED or a["ref"][x] > 0]
            if sid in tables_py:
                continue
            assert py.take(hits, sid) == cpp.take(hits, sid)
            tables_py[sid], tables_cpp[sid] = list(hits), list(hits)
            cached = [x for x in range(N) if a["state"][x] == CACHED]
            victims = rng.sample(cached, min(len(cached), rng.randint(0, 3)))
            assert _outcome(py.evict, victims) == _outcome(cpp.evict, victims)
            py.disown(victims)
            cpp.disown(victims)
            need, full = rng.randint(-1, 6), rng.randint(0, len(hashes) + 2)
            assert _outcome(py.allocate, sid, tables_py[sid], hashes, need, full) == \
                _outcome(cpp.allocate, sid, tables_cpp[sid], hashes, need, full)
        elif op < 0.55 and sid in tables_py:  # the step's end
            t_py, t_cpp = tables_py.pop(sid), tables_cpp.pop(sid)
            assert t_py == t_cpp
            tail = rng.choice([-1, *t_py[-1:]])
            if t_py and a["block_hash"][t_py[-1]] is None and rng.random() < 0.3:
                assert _outcome(py.index_block, t_py[-1], h(7)) == \
                    _outcome(cpp.index_block, t_cpp[-1], h(7))
            assert py.release(t_py, tail) == cpp.release(t_cpp, tail)
        else:  # a victim search's answer, bad ones among them
            cached = [x for x in range(N) if a["state"][x] == CACHED]
            victims = rng.sample(cached, min(len(cached), rng.randint(0, 4)))
            if rng.random() < 0.2:
                victims.append(rng.choice([*victims[:1], N, -1, 0]))
            assert _outcome(py.evict, victims) == _outcome(cpp.evict, victims)
        _same(a, b)
        assert tables_py == tables_cpp


def test_bad_input_is_refused_alike_and_changes_nothing():
    py, cpp, a, b = _pair()
    py.allocate("a", [], [h(0), h(1)], 3, 2)
    cpp.allocate("a", [], [h(0), h(1)], 3, 2)
    py.release([0, 1, 2], -1)
    cpp.release([0, 1, 2], -1)
    before = _snapshot(a)
    for call, args in (("evict", ([0, 0],)), ("evict", ([1, 2],)), ("evict", ([N],)),
                       ("take", ([0, -1], "a")), ("release", (["x"], -1)),
                       ("allocate", ("b", [], [h(5)], 3, 3)),
                       ("allocate", ("a", [], [h(0), [1], h(2)], 3, 3)),  # unhashable
                       ("index_block", (N, h(9))),
                       ("disown", ([0, N],))):
        got = _outcome(getattr(py, call), *args)
        assert got[0] != "ok" and got == _outcome(getattr(cpp, call), *args), call
        assert _snapshot(a) == before == _snapshot(b), call


def test_the_tables_are_checked_at_construction():
    cpp_mod = pytest.importorskip("kvsaga._kvcore")
    for cls in (PyShadowLoops, cpp_mod.ShadowLoops):
        t = _tables()
        t["ref"] = [0] * (N - 1)
        with pytest.raises(TypeError, match="ref must be a list of 24 entries"):
            cls(*t.values(), "x")
        t = _tables()
        t["state"] = [0] * N
        with pytest.raises(TypeError, match="state must be a bytearray"):
            cls(*t.values(), "x")
        for gen in ([0] * N, _generations(N - 1), memoryview(bytearray(N)),
                    memoryview(bytes(8 * N)).cast("q")):
            t = _tables()
            t["gen"] = gen
            with pytest.raises(TypeError, match="gen must be a writable memoryview of 24"):
                cls(*t.values(), "x")


def test_the_active_state_is_what_take_and_allocate_leave():
    py, cpp, a, b = _pair()
    for lo in (py, cpp):
        table: list[int] = []
        lo.allocate("s", table, [h(0)], 2, 1)
        lo.release(table, -1)
        assert lo.take(lo.hits([h(0)], 1), "s") == [0]
    assert a["state"][0] == b["state"][0] == ACTIVE and a["ref"][0] == b["ref"][0] == 1


class _Id:
    """An index-like block id (as a numpy integer is)."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


def test_ids_given_as_bools_or_index_likes_come_back_as_ints_alike():
    py, cpp, a, b = _pair()
    for lo in (py, cpp):
        lo.allocate("a", [], [h(0), h(1), h(2)], 3, 2)  # blocks 0, 1 hashed, 2 not
    for call, args in (("release", ([False, True, _Id(2)], 2)), ("take", ([True], "b")),
                       ("release", ([_Id(1)], -1)), ("index_block", (_Id(2), h(9))),
                       ("evict", ([True, _Id(2)],))):
        got = _outcome(getattr(py, call), *args)
        assert got[0] == "ok" and got == _outcome(getattr(cpp, call), *args), call
        _same(a, b)
        for t in (a, b):  # the free stack, the index and the answers hold ints, not bools
            assert all(type(x) is int for x in [*t["free"], *t["index"].values()]), call
        answer = got[1][0] if isinstance(got[1], tuple) else got[1] or []
        assert all(type(x) is int for x in answer), call
    assert a["free"][-2:] == [1, 2] and h(9) not in a["index"]
