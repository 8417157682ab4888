"""Bad ids given to the pure-Python pool's release_many / evict_many are refused before any
change, with the C++ pool's error type, as the C++ pool refuses them (review s54 diffpyloops
LOW-2: the interrupt-completion handlers of session 54's pyloops also ran on these errors,
released the other ids of a release_many([7, 3, 4]) and left an evict_many of a FREE, an
out-of-range or a negative id with the pool's books broken)."""

from __future__ import annotations

import pytest

from kvsaga.block_queue import BlockQueue
from kvsaga.pool import BlockPool

N = 6


class _Recorder:
    def __init__(self) -> None:
        self.log: list = []

    def block_cached(self, b):
        self.log.append(("c", b))

    def block_uncached(self, b):
        self.log.append(("u", b))


class _Lru:
    """A batch observer over a queue of the pool's own core (as the LRU policy)."""

    def __init__(self, queue_cls) -> None:
        self.q = queue_cls(N)

    def block_cached(self, b):
        self.q.push(b)

    def block_uncached(self, b):
        self.q.remove(b)

    def blocks_cached(self, ids):
        self.q.push_many(ids)

    def blocks_uncached(self, ids):
        self.q.remove_many(ids)

    @property
    def log(self):
        return list(self.q)


def _pools():
    yield "python", BlockPool, BlockQueue
    core = pytest.importorskip("kvsaga._core")
    if core.cpp_available():
        cpp = core.get_core("cpp")
        yield "cpp", cpp.BlockPool, cpp.BlockQueue


def _pool(pool_cls, queue_cls, kind):
    """0, 1 CACHED; 2 ACTIVE twice; 3, 4 ACTIVE; 5 FREE (0-2 hashed)."""
    p = pool_cls(N)
    obs = {"none": None, "per_block": _Recorder(), "lru": _Lru(queue_cls)}[kind]
    if obs is not None:
        p.observer = obs
    p.allocate(5)
    for b in (0, 1, 2):
        p.block_hash[b] = bytes([b])
    p.clock = 1.0
    p.release_many([0, 1])
    p.acquire_many([2])
    p.clock = 2.0
    return p, obs


def _books(p, obs, name):
    books = (list(p.refcount), list(p.state), list(p.generation), list(p.block_hash),
             p.free_ids(), p.num_cached, p.reused_s, None if obs is None else obs.log)
    if name == "python":
        books += (list(p._cached_at), sorted(p._held))
    return books


BAD = [
    ("release_many", [7, 3, 4]),
    ("release_many", [3, 7, 4]),
    ("release_many", [3, 4, 6]),
    ("release_many", [None, 3, 4]),
    ("release_many", [3, "4"]),
    ("release_many", [3, 4.0]),
    ("release_many", [3, 5]),  # FREE
    ("release_many", [0, 3]),  # CACHED
    ("release_many", [3, -1]),  # -1 would be block 5 (FREE)
    ("release_many", [3, -7]),
    ("evict_many", [5]),  # FREE
    ("evict_many", [0, 7]),
    ("evict_many", [-1]),
    ("evict_many", [0, -6]),  # -6 would be block 0
    ("evict_many", [0, 0]),
    ("evict_many", [0, 3]),  # ACTIVE
    ("evict_many", [3, 0]),
    ("evict_many", [0, None]),
    ("evict_many", [0, 1.0]),
]


@pytest.mark.parametrize("kind", ["none", "per_block", "lru"])
@pytest.mark.parametrize(("op", "ids"), BAD)
def test_bad_ids_are_refused_with_nothing_changed_as_by_the_cpp_pool(op, ids, kind):
    errors = {}
    for name, pool_cls, queue_cls in _pools():
        p, obs = _pool(pool_cls, queue_cls, kind)
        before = _books(p, obs, name)
        with pytest.raises((TypeError, IndexError, ValueError)) as info:
            getattr(p, op)(list(ids))
        assert _books(p, obs, name) == before, name
        p.check_integrity()
        errors[name] = type(info.value)
        if name == "python" and not isinstance(info.value, TypeError):
            bad = next(b for b in ids if not isinstance(b, int) or not 0 <= b < N or
                       p.state[b] != (2 if op == "evict_many" else 1) or ids.count(b) > 1)
            assert f"block {bad}" in str(info.value) or f"id {bad}" in str(info.value)
    if "cpp" in errors:
        assert errors["python"] is errors["cpp"]


@pytest.mark.parametrize(("op", "ids"), [("release_many", [7, 3, 4]), ("evict_many", [0, 7])])
def test_a_refused_call_then_a_good_one(op, ids):
    """The pool still works after a refusal: the good call does what it does on a fresh
    pool."""
    p, obs = _pool(BlockPool, BlockQueue, "lru")
    twin, twin_obs = _pool(BlockPool, BlockQueue, "lru")
    with pytest.raises(IndexError, match=r"block id 7 out of range \[0, 6\)"):
        getattr(p, op)(ids)
    good = [b for b in ids if b != 7]
    assert getattr(p, op)(good) == getattr(twin, op)(good)
    assert _books(p, obs, "python") == _books(twin, twin_obs, "python")
    p.check_integrity()


@pytest.mark.parametrize("shape", ["numpy", "generator", "tuple"])
def test_release_and_evict_take_any_sequence_of_ids_as_the_cpp_pool(shape):
    """Review s54 diffpyfix LOW-1: the up-front checks refused a numpy array ("ambiguous
    truth value") and a generator (an AssertionError) that the C++ pool (and the Python pool
    before them) take; an evict_many of a numpy array also broke the Python pool's books."""
    np = pytest.importorskip("numpy")
    make = {"numpy": lambda ids: np.array(ids, dtype=np.int64),
            "generator": lambda ids: (b for b in ids), "tuple": tuple}[shape]
    books = {}
    for name, pool_cls, queue_cls in _pools():
        p, obs = _pool(pool_cls, queue_cls, "lru")
        p.release_many(make([3, 4, 2]))
        hashes = p.evict_many(make([0, 1]))
        p.check_integrity()
        books[name] = (_books(p, obs, name)[:8], list(hashes))
    if "cpp" in books:
        assert books["python"] == books["cpp"]


# Session 55 (pyint; review s54 diffpyfix LOW-4): a block released more often than it is
# referenced (its refcount went below 0), and negative ids (Python's lists alias them from
# the end), which the C++ pool refuses, nothing changed; acquire_many / hold_many's errors
# were ValueError "free block -1" / a bare "list index out of range" where the C++ pool says
# "block id -1 out of range [0, 6)".
BAD_55 = [
    ("release_many", [3, 3]),  # one reference, named twice
    ("release_many", [2, 2, 2]),  # two references, named three times
    ("release_many", [2, 3, 2, 4, 2]),
    ("release_many", [4, 3, 2, 4]),  # found last: the blocks before it taken back
    ("release_many", [3, -2]),  # -2 would be block 4 (ACTIVE): released, then refused
    ("release_many", [2, -4]),  # -4 would be block 2
    ("release_many", [-2]),
    ("release_many", [3, 4, 2, -1]),
    ("release_many", [3, 4, 0]),  # CACHED, found by the loop: 3 and 4 taken back
    ("release_many", [2, 4, 5]),  # FREE
    ("release_many", [2, 4, 6]),  # past the end
    ("release_many", [2, 4.0]),
    ("acquire_many", [-1]),  # -1 would be block 5 (FREE): was ValueError "free block -1"
    ("acquire_many", [0, -6]),  # -6 would be block 0: was accepted
    ("acquire_many", [3, -3]),
    ("acquire_many", [7]),
    ("acquire_many", [0, 7]),
    ("acquire_many", [None]),
    ("acquire_many", [0, "1"]),
    ("acquire_many", [1.0]),
    ("hold_many", [-5]),  # would be block 1 (CACHED): was accepted
    ("hold_many", [0, -1]),
    ("hold_many", [9, 0]),
    ("hold_many", [0, None]),
]


def _books_55(p, obs, name):
    """The books (`_cached_at` only where it means something: CACHED blocks)."""
    books = (list(p.refcount), list(p.state), list(p.generation), list(p.block_hash),
             p.free_ids(), p.num_cached, p.reused_s, None if obs is None else obs.log)
    if name == "python":
        books += ([p._cached_at[b] for b in range(N) if p.state[b] == 2], sorted(p._held),
                  p._releasing)
    return books


def refusals(op, ids, kind, errors=(TypeError, IndexError, ValueError)) -> dict:
    """`op(ids)` on a fresh pool of each core: refused with one of `errors`, the books
    (`_books_55`) and the pool's integrity unchanged. Returns each core's (type, message)."""
    out = {}
    for name, pool_cls, queue_cls in _pools():
        p, obs = _pool(pool_cls, queue_cls, kind)
        if name == "python":
            p._releasing = None  # (a refused call names no release that began)
        before = _books_55(p, obs, name)
        with pytest.raises(errors) as info:
            getattr(p, op)(list(ids))
        assert _books_55(p, obs, name) == before, name
        p.check_integrity()
        out[name] = (type(info.value), str(info.value))
    return out


@pytest.mark.parametrize("kind", ["none", "per_block", "lru"])
@pytest.mark.parametrize(("op", "ids"), BAD_55)
def test_overreleases_and_negative_ids_are_refused_as_by_the_cpp_pool(op, ids, kind):
    errors = refusals(op, ids, kind)
    if "cpp" in errors:
        assert errors["python"] == errors["cpp"]
    else:  # (no C++ core built: the Python pool's own verdict)
        assert errors["python"][0] is not ValueError or op == "release_many"


def test_a_refused_overrelease_gives_back_the_holds_it_ended():
    """Block 0, held (a prefetch's hold), reaches zero before the refused block: the
    refusal takes back its release, its hold with it (held blocks keep their time cached
    when released)."""
    p, obs = _pool(BlockPool, BlockQueue, "lru")
    twin, twin_obs = _pool(BlockPool, BlockQueue, "lru")
    for q in (p, twin):
        q.hold_many([0])
    assert p._held == {0}
    with pytest.raises(ValueError, match="active block 3: release_many names it more often"):
        p.release_many([0, 3, 3])
    assert p._held == {0}
    assert _books_55(p, obs, "python")[:-1] == _books_55(twin, twin_obs, "python")[:-1]
    p.check_integrity()
    p.clock = twin.clock = 5.0
    p.release_many([0, 3])
    twin.release_many([0, 3])
    assert p._cached_at == twin._cached_at  # 0 cached as of before its hold in both
    assert _books_55(p, obs, "python")[:-1] == _books_55(twin, twin_obs, "python")[:-1]
