"""The ghost list of `adaptive`: the C++ twin (kvsaga._evict.GhostList) behaves as the Python
reference (PyGhostList) under the same calls, including the oldest names falling out, names
taken out of the middle and entering again, and the ring's compaction."""

import hashlib
import random

import pytest

from kvsaga.policy.ghost_list import PyGhostList, make_ghost_list

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True


def _cpp():
    """kvsaga._evict, or skip (the reference tests run without it)."""
    return pytest.importorskip("kvsaga._evict")


def h(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def test_reference_semantics():
    g = PyGhostList(3)
    assert g.enter([h(1), None, h(2), h(1)], [1.0, 9.0, 2.0, 5.0]) == 2  # h(1) keeps 1.0
    assert len(g) == 2 and h(1) in g and None not in g
    assert g.enter([h(3), h(4)], [3.0, 4.0]) == 2 and len(g) == 3 and h(1) not in g  # oldest out
    assert g.charge(10.0, [h(2), h(9), h(4), h(2)]) == 16.0 and len(g) == 1
    assert g.pop(h(3)) == 3.0 and g.pop(h(3), -1.0) == -1.0 and not g


def test_cpp_matches_reference_under_random_calls():
    _evict = _cpp()
    rng = random.Random(7)
    py, cpp = PyGhostList(40), make_ghost_list(40, cpp=True)
    assert type(cpp) is _evict.GhostList
    for _ in range(3000):
        op = rng.random()
        if op < 0.5:
            n = rng.randint(0, 12)
            hs = [None if rng.random() < 0.1 else h(rng.randint(0, 120)) for _ in range(n)]
            cs = [rng.random() for _ in range(n)]
            assert py.enter(hs, cs) == cpp.enter(hs, cs)
        elif op < 0.8:
            hs = [h(rng.randint(0, 120)) for _ in range(rng.randint(0, 10))] + [None]
            total = rng.random()
            assert py.charge(total, hs) == cpp.charge(total, iter(hs))
        else:
            x = None if rng.random() < 0.1 else h(rng.randint(0, 120))
            assert (x in py) == (x in cpp)
            assert py.pop(x) == cpp.pop(x)
        assert len(py) == len(cpp)
    # Same names, same order: draining both by charging every candidate gives equal sums.
    every = [h(i) for i in range(121)]
    assert py.charge(0.0, every) == cpp.charge(0.0, every) and not py and not cpp


@pytest.mark.parametrize("reserve", [1, 37, 40, 10_000])
def test_reserved_room_changes_nothing_but_capacity(reserve):
    """A list made with room for `reserve` names (its table sized at once, capped at the
    list's capacity) behaves as one grown name by name, through fills, falls, takes and the
    ring's compactions (which size their new table at once too)."""
    _cpp()
    rng = random.Random(reserve)
    ref, grown, roomy = (PyGhostList(40, reserve), make_ghost_list(40, cpp=True),
                         make_ghost_list(40, cpp=True, reserve=reserve))
    for _ in range(1500):
        if rng.random() < 0.6:
            hs = [h(rng.randint(0, 150)) for _ in range(rng.randint(0, 12))]
            cs = [rng.random() for _ in hs]
            assert ref.enter(hs, cs) == grown.enter(hs, cs) == roomy.enter(hs, cs)
        else:
            hs = [h(rng.randint(0, 150)) for _ in range(rng.randint(0, 10))]
            total = rng.random()
            assert ref.charge(total, hs) == grown.charge(total, hs) == roomy.charge(total, hs)
        assert len(ref) == len(grown) == len(roomy)
    every = [h(i) for i in range(151)]
    assert ref.charge(0.0, every) == grown.charge(0.0, every) == roomy.charge(0.0, every)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        PyGhostList(0)
    with pytest.raises(ValueError):
        PyGhostList(4, reserve=-1)
    with pytest.raises(ValueError):
        PyGhostList(4).enter([b"x" * 32], [])
    _evict = _cpp()
    with pytest.raises(ValueError):
        _evict.GhostList(0)
    with pytest.raises(ValueError):
        _evict.GhostList(4, reserve=-1)
    g = _evict.GhostList(4)
    with pytest.raises(ValueError):
        g.enter([h(1)], [])
    with pytest.raises(TypeError):
        g.enter([b"short"], [1.0])
    assert len(g) == 0


@pytest.mark.parametrize("args", [(4, 1.5), (4.0, 1), (4, "2")])
def test_both_refuse_non_int_sizes_alike(args):
    """A float or str capacity or reserve is a TypeError in both twins."""
    with pytest.raises(TypeError):
        PyGhostList(*args)
    with pytest.raises(TypeError):
        _cpp().GhostList(*args)


def test_cpp_bad_input_changes_nothing():
    """A bad name or cost anywhere in a call raises before any name enters."""
    _evict = _cpp()
    g = _evict.GhostList(8)
    assert g.enter([h(1)], [1.0]) == 1
    with pytest.raises(TypeError):
        g.enter([h(2), h(3), b"short", h(4)], [2.0, 3.0, 4.0, 5.0])
    with pytest.raises(TypeError):
        g.enter([h(2), h(3)], [2.0, "three"])
    assert len(g) == 1 and h(1) in g and h(2) not in g and h(3) not in g
    assert g.enter([h(2)], [2.0]) == 1 and len(g) == 2


@pytest.mark.parametrize("cpp", [False, True])
def test_enter_blocks_reads_the_tables_as_enter_would(cpp):
    # enter_blocks(blocks, ...) == enter([hashes[b]...], [costs[positions[b]]...]); a position
    # past the costs answers -1 - that position and enters nothing.
    if cpp:
        _cpp()
    rng = random.Random(3)
    hashes = [None if rng.random() < 0.2 else h(rng.randint(0, 60)) for _ in range(50)]
    positions = [rng.randint(0, 9) for _ in range(50)]
    costs = [float(p) + 0.5 for p in range(10)]
    by_blocks, by_names = make_ghost_list(30, cpp), PyGhostList(30)
    for _ in range(200):
        blocks = [rng.randrange(50) for _ in range(rng.randint(0, 8))]
        assert by_blocks.enter_blocks(blocks, hashes, positions, costs) == by_names.enter(
            [hashes[b] for b in blocks], [costs[positions[b]] for b in blocks])
        assert len(by_blocks) == len(by_names)
    every = [h(i) for i in range(61)]
    assert by_blocks.charge(0.0, every) == by_names.charge(0.0, every)
    short = make_ghost_list(30, cpp)
    named = [b for b in range(50) if hashes[b] is not None]
    deepest = max(positions[b] for b in named)
    assert short.enter_blocks(named, hashes, positions, costs[:deepest]) == -1 - deepest
    assert len(short) == 0


@pytest.mark.parametrize("cpp", [False, True])
def test_enter_blocks_rejects_bad_tables_alike_and_enters_nothing(cpp):
    # The Python list is the C++ list's reference, bad input included: a partial block's
    # position is never read, a negative position and a hash of the wrong size raise (before
    # a position past the costs is answered), and the list is left as it was.
    if cpp:
        _cpp()
    g = make_ghost_list(8, cpp)
    assert g.enter_blocks([0, 1], [h(1), None], {0: 0}, [1.0]) == 1  # no positions[1]
    with pytest.raises(ValueError, match="negative position"):
        g.enter_blocks([0], [h(2)], [-1], [1.0, 2.0])
    with pytest.raises(TypeError, match="32 bytes"):
        g.enter_blocks([0, 1], [h(3), b"x"], [5, 0], [1.0])
    assert len(g) == 1 and h(1) in g and h(2) not in g and h(3) not in g


@pytest.mark.parametrize("cpp", [False, True])
@pytest.mark.parametrize("hashes,costs,error", [
    ([h(2), "x"], [2.0, 1.0], "a ghost's hash must be 32 bytes"),
    ([h(2), b"short"], [2.0, 1.0], "a ghost's hash must be 32 bytes"),
    ([h(2), h(3)], [2.0, "three"], "must be real number, not str"),
    ([h(2), h(3)], [2.0, None], "must be real number, not NoneType"),
])
def test_both_twins_refuse_a_bad_name_or_cost_at_enter_alike(cpp, hashes, costs, error):
    """A name that is not 32 bytes or a cost that is not a number: TypeError at `enter`,
    nothing entered, in both twins (the Python list let them in; a later `charge` then
    raised after it had taken names out: half done)."""
    if cpp:
        _cpp()
    g = make_ghost_list(8, cpp)
    assert g.enter([h(1)], [1.0]) == 1
    with pytest.raises(TypeError, match=f"^{error}$"):
        g.enter(hashes, costs)
    assert len(g) == 1 and h(1) in g and h(2) not in g and h(3) not in g
    assert g.charge(0.5, [h(1), h(2), h(3)]) == 1.5 and len(g) == 0
