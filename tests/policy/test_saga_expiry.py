"""saga's TTL crossings re-keyed by the index (session_heap.py `expire_into`, saga.py
`_link_expiry`; docs/policies.md, "Eviction cost, twenty-ninth session"): the same victims
as before the change and as Python keying every session from scratch, on randomized agent
walks whose entries cross their TTLs, on both indexes; fewer sessions keyed in Python; and
the index call itself, alike in both implementations."""

from __future__ import annotations

import math

import pytest

from kvsaga.policy import make_policy
from kvsaga.policy.search import grid_index
from kvsaga.policy.session_heap import make_session_heap
from tests.policy.helpers import bench_shape_walk, make
from tests.policy.test_timed_rekey import _watch
from tests.policy.victim_record import STEPS, seeded_walk

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

try:
    from kvsaga._evict import SessionHeap
except ImportError:  # not built: the Python index runs everywhere
    SessionHeap = None

CORES = ["python", "cpp"]


def _run(walk, core: str, mode: str, blocks: int = 64, **params) -> tuple[list, int, int]:
    """(victims of every search, sessions keyed in Python, TTL crossings the index moved)
    of saga on `walk(m)`; `mode`: "linked" (as shipped), "unlinked" (the path before the
    change: every crossing handed back to Python) or "reference" (no timed records, no
    memo: every due session keyed from scratch)."""
    policy = make_policy("saga", **params)
    m = make(policy, num_blocks=blocks, core=core)
    keyed = _watch(policy, mode != "reference")
    linked = [0]
    if mode == "unlinked":
        policy._link_expiry = lambda live: None
    else:
        link = policy._link_expiry

        def counted(live):
            linked[0] += 1
            link(live)

        policy._link_expiry = counted
    out: list = []
    choose = policy.choose_victims
    policy.choose_victims = lambda n, now: out.append(choose(n, now)) or out[-1]
    walk(m)
    m.check_integrity()
    return out, keyed[0], linked[0]


def _agents(seed: int, steps: tuple[float, ...] = STEPS):
    def walk(m):
        seeded_walk(m, "agents", seed, 1200, steps)
    return walk


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("median", [1.0, 0.02])
def test_ttl_crossings_by_the_index_name_the_same_victims(seed, median, core):
    """Agent walks (hints, resumes that relearn the TTLs, ends, preemptions, last steps),
    time moving 0 to 7 s a step; with a prior median of 0.02 s (p95 ~0.1 s) most pauses
    cross their TTL. Victims: linked == unlinked == reference."""
    walk = _agents(seed)
    got, keyed, linked = _run(walk, core, "linked", prior_median_s=median)
    old, keyed_old, _ = _run(walk, core, "unlinked", prior_median_s=median)
    ref, _, _ = _run(walk, core, "reference", prior_median_s=median)
    assert linked > 0  # the scenario links classes (else it tests nothing)
    assert got == old
    assert got == ref
    assert keyed <= keyed_old


@pytest.mark.parametrize("core", CORES)
def test_on_the_bench_shape_crossings_leave_python(core):
    """bench/eviction_scaling.py's shape, small, with TTLs inside its span (prior median
    0.02 s: p95 ~0.1 s, pauses 1 ms apart over 0.4 s): the same victims as before and as
    the reference, and markedly fewer sessions keyed in Python than before."""

    def walk(m):
        for _ in bench_shape_walk(m, 400, extra=160, every_other=False):
            pass

    got, keyed, _ = _run(walk, core, "linked", 800, prior_median_s=0.02)
    old, keyed_old, _ = _run(walk, core, "unlinked", 800, prior_median_s=0.02)
    ref, _, _ = _run(walk, core, "reference", 800, prior_median_s=0.02)
    assert got == old == ref
    assert keyed < keyed_old


def _index(core: str):
    if core == "cpp" and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    return make_session_heap(core == "cpp")


F = (0.3, 1.0, 0.25, 0.2)  # saga's formula (w, s, a, b): key -((w * min(lo / s, 1) + a) + b)


def _push(index, sid: str, cls: int, t0: float, now: float, ttl: float, tie: int) -> None:
    """A saga entry before its TTL, as saga.py `_timed_base` gives it."""
    k, lo, hi = grid_index(now - t0)
    key = (2, -((F[0] * min(lo / F[1], 1.0) + F[2]) + F[3]))
    t = math.nextafter(t0 + ttl, math.inf)
    index.push(sid, key, tie, 4, min(t0 + hi, t), now,
               (cls, k, 2, F, 2, t0, math.nextafter(ttl, math.inf), t, 1.0))


@pytest.mark.parametrize("core", CORES)
def test_a_linked_class_moves_past_its_limit_in_the_index(core):
    index = _index(core)
    _push(index, "a", 1, 0.0, 0.1, 0.5, 10)
    _push(index, "b", 3, 0.0, 0.1, 0.5, 20)  # not linked: Python keys it past its limit
    index.expire_into(1, 2)
    assert index.due(0.7) == ["b"]
    _, lo, _ = grid_index(0.7)
    assert index.top() == ((1, -((F[0] * min(lo / F[1], 1.0) + F[2]) + F[3])), 10)
    # Class 2 took the formula with k0 1 and no limit: "a" keeps being re-keyed there.
    assert index.timed_classes(["a"]) == {2: "a"}
    assert index.due(5.0) == []
    _, lo, _ = grid_index(5.0)
    assert index.top() == ((1, -((F[0] * min(lo / F[1], 1.0) + F[2]) + F[3])), 10)


@pytest.mark.parametrize("core", CORES)
def test_links_are_forgotten_with_the_keys(core):
    index = _index(core)
    index.expire_into(1, 2)
    index.forget_keys()
    _push(index, "a", 1, 0.0, 0.1, 0.5, 10)
    assert index.due(0.7) == ["a"]


@pytest.mark.parametrize("core", CORES)
def test_rekey_classes_into_a_twin_takes_its_live_class_formula(core):
    """A class mapped to a linked twin no session was pushed in gets the live class's
    formula as expired (k0 1, no limit); a twin of no known class is refused (Python)."""
    index = _index(core)
    _push(index, "a", 1, 0.0, 0.1, 0.5, 10)
    _push(index, "b", 5, 0.0, 0.1, 0.5, 20)
    index.expire_into(1, 2)
    rest = index.rekey_classes({1: 2, 5: 7}, 0.2)
    assert rest == {"b"}
    _, lo, _ = grid_index(0.2)
    assert index.top() == ((1, -((F[0] * min(lo / F[1], 1.0) + F[2]) + F[3])), 10)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("args, error", [((-1, 2), ValueError), ((1, -2), ValueError),
                                         ((3, 3), ValueError), ((1.5, 2), TypeError)])
def test_bad_links_are_refused(core, args, error):
    index = _index(core)
    with pytest.raises(error):
        index.expire_into(*args)
