"""ttl's and graph's usual search in one function (kvsaga/policy/ttl_fast.py,
graph_fast.py) names the victims, and leaves the index, bases, classes and memo, as the
general path does; it is taken when its conditions hold and never after a change of the
statistics, the rent, or a marked session the memo does not cover (counted:
`fast_searches`, `general_searches`)."""

from __future__ import annotations

import contextlib
import random

import pytest

from kvsaga import OutOfBlocks
from kvsaga.policy import make_policy
from kvsaga.policy.graph import GraphPolicy
from kvsaga.policy.ttl import TTLPolicy
from tests.policy.helpers import make
from tests.policy.victim_record import STEPS, WORKLOADS

TOOLS = ("search", "edit", "test", "shell", "browse")


def _ttls(policy) -> list:
    """The parts of `policy` (itself, or adaptive's experts) with a fast path."""
    return [p for p in (getattr(e, "policy", e) for e in getattr(policy, "experts", [policy]))
            if isinstance(p, (TTLPolicy, GraphPolicy))]


def _recorded(m, fast: bool) -> list:
    """Record every search's victims (and the policy's state after it) of `m`'s ttl parts,
    with their fast path on or off."""
    out: list = []
    for p in _ttls(m.policy):
        p._fast = fast
        choose = p.choose_victims

        def recorded(n, now, p=p, choose=choose):
            v = choose(n, now)
            out.append((list(v), p._runs, dict(p._base), len(p._memo), dict(p._classes),
                        p._plan is None))
            return v

        p.choose_victims = recorded
    return out


def _state(m) -> list:
    return [(p.eviction_order(), dict(p._base), sorted(p._sig_of.items()))
            for p in _ttls(m.policy)]


def _walk(name: str, workload: str, fast: bool, core: str):
    m = make(make_policy(name), num_blocks=64, core=core)
    out = _recorded(m, fast)
    rng, now = random.Random(5), 0.0
    for _ in range(1500):
        with contextlib.suppress(OutOfBlocks):
            now = WORKLOADS[workload](m, rng, now)
        now += rng.choice(STEPS)
    m.check_integrity()
    return out, _state(m), _ttls(m.policy)


def _bench_shape(name: str, fast: bool, core: str, paused: int = 400, events: bool = True):
    """bench/eviction_scaling.py's shape, small (tests/policy/test_timed_rekey.py's): new
    sessions allocating 1 ms apart under eviction; with `events`, paused ones also resume
    (learning: new statistics) or get pause hints."""
    per = 4
    m = make(make_policy(name), num_blocks=paused * per // 2, core=core)
    out = _recorded(m, fast)
    now, ctx = 0.0, per * m.block_size
    rng = random.Random(3)
    for i in range(paused + 160):
        sid = f"p{i}"
        if events and i >= paused and rng.random() < 0.25:
            sid = f"p{rng.randrange(paused)}"
            s = m.sessions.get(sid)
            if s is None or s.is_running:
                continue
            if rng.random() < 0.5:
                m.pause_hint(sid, now=now, tool="edit", expected_s=rng.choice([0.005, 2.0]))
                continue
        prompt = [i * ctx * 4 + j for j in range(ctx)]
        with contextlib.suppress(OutOfBlocks):
            st = m.begin_step(sid, prompt, now=now, workflow=f"w{i % 3}")
            m.allocate_slots(sid, ctx - st.num_cached_tokens, now=now)
            m.finish_step(sid, now=now, tool=TOOLS[i % len(TOOLS)])
        now += 1e-3 if i % 2 else 0.0
    m.check_integrity()
    return out, _state(m), _ttls(m.policy)


@pytest.mark.parametrize("core", ["python", "cpp"])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("name", ["ttl", "graph", "adaptive"])
def test_fast_path_names_the_victims_of_the_general_path_on_the_walks(name, workload, core):
    ref, ref_state, off = _walk(name, workload, False, core)
    got, state, on = _walk(name, workload, True, core)
    assert got == ref
    assert state == ref_state
    assert all(p.fast_searches == 0 for p in off)


@pytest.mark.parametrize("core", ["python", "cpp"])
@pytest.mark.parametrize("events", [False, True])
@pytest.mark.parametrize("name", ["ttl", "graph", "adaptive"])
def test_fast_path_on_the_bench_shape_is_taken_and_names_the_same_victims(name, events, core):
    ref, ref_state, off = _bench_shape(name, False, core, events=events)
    got, state, on = _bench_shape(name, True, core, events=events)
    assert got == ref
    assert state == ref_state
    assert all(p.fast_searches == 0 for p in off)
    if name != "adaptive":  # (adaptive's experts search only while they lead)
        # Taken: between two steps that learn nothing most searches are usual ones (the
        # events' resumes learn, and the searches after one are general).
        assert on[0].fast_searches > (0 if events else on[0].general_searches)


def _steady(core: str, cls=TTLPolicy):
    """`cls` on the bench shape with no events, the fast path taken."""
    per, paused = 4, 200
    m = make(cls(), num_blocks=paused * per // 2, core=core)
    p, ctx = m.policy, per * m.block_size
    now = 0.0

    def step(sid: str, i: int, now: float) -> None:
        prompt = [i * ctx * 4 + j for j in range(ctx)]
        st = m.begin_step(sid, prompt, now=now, workflow=f"w{i % 3}")
        m.allocate_slots(sid, ctx - st.num_cached_tokens, now=now)
        m.finish_step(sid, now=now, tool=TOOLS[i % len(TOOLS)])

    for i in range(paused + 40):
        step(f"p{i}", i, now)
    assert p.fast_searches > 0
    return m, p, step, paused + 40, now


@pytest.mark.parametrize("cls", [TTLPolicy, GraphPolicy])
@pytest.mark.parametrize("core", ["python", "cpp"])
def test_fast_path_is_not_taken_after_new_statistics_and_its_victims_stay_exact(core, cls):
    m, p, step, i, now = _steady(core, cls)
    _, ref, ref_step, _, _ = _steady(core, cls)
    ref._fast = False
    fast = p.fast_searches
    # A paused session resumes: the graph learns its pause (a new version: the keys' token).
    version = p.graph.version
    for st in (step, ref_step):
        st("p5", 5, now + 0.5)
    assert p.graph.version != version
    # The resume's own allocation already searched under the new token: general.
    assert p.fast_searches == fast
    gen = p.general_searches
    for st in (step, ref_step):
        st(f"p{i}", i, now + 0.5)
    assert p.general_searches > gen
    assert p.eviction_order() == ref.eviction_order()
    assert p._base == ref._base


@pytest.mark.parametrize("cls", [TTLPolicy, GraphPolicy])
@pytest.mark.parametrize("core", ["python", "cpp"])
def test_fast_path_is_not_taken_for_a_marked_session_the_memo_does_not_cover(core, cls):
    m, p, step, i, now = _steady(core, cls)
    # A session of a new class (another workflow): its class key is not in the memo when
    # the next search keys it.
    ctx = 4 * m.block_size
    m.begin_step("odd", [10**9 + j for j in range(ctx)], now=now, workflow="new-kind")
    m.allocate_slots("odd", ctx, now=now)
    m.finish_step("odd", now=now, tool="rare")
    fast, gen = p.fast_searches, p.general_searches
    step(f"p{i}", i, now)
    assert p.fast_searches == fast and p.general_searches == gen + 1
    # With ttl's rent priced at another usage, or graph's learned waits changed (a new
    # token), the fast path does not run either: stale keys would price new sessions wrong.
    if cls is TTLPolicy:
        p._rent_usage = -1.0
    else:
        p._learned_waits += 1
    step(f"p{i + 1}", i + 1, now)
    assert p.fast_searches == fast and p.general_searches == gen + 2
    for j in range(i + 2, i + 8):  # and it comes back once the memo covers the marks again
        step(f"p{j}", j, now)
    assert p.fast_searches > fast


def test_fast_path_is_off_for_a_subclass_that_changes_the_keying():
    class Other(TTLPolicy):
        def _key(self, *a):
            return super()._key(*a)

    class OtherGraph(GraphPolicy):
        def _entry_key(self, *a):
            return super()._entry_key(*a)

    assert TTLPolicy()._fast and not Other()._fast
    assert GraphPolicy()._fast and not OtherGraph()._fast
