"""ttl's and graph's usual search in one function (kvsaga/policy/ttl_fast.py,
graph_fast.py) names the victims, and leaves the index, bases, classes and memo, as the
general path does; it is taken when its conditions hold and never after a change of the
statistics, the rent, or a marked session the memo does not cover or must not key from it
(counted: `fast_searches`, `general_searches`). At every fast search its pushes are checked
against the general path's keying of the same marks (`_pushes_are_the_general_keys`)."""

from __future__ import annotations

import functools
import os

import pytest

from kvsaga.policy import fast_search, graph_fast, make_policy, ttl_fast
from kvsaga.policy.graph import GraphPolicy
from kvsaga.policy.search import grid_index
from kvsaga.policy.ttl import TTLPolicy
from tests.policy.helpers import bench_shape_walk, make
from tests.policy.victim_record import WORKLOADS, seeded_walk

TOOLS = ("search", "edit", "test", "shell", "browse")


@pytest.fixture
def core() -> str:
    """The core of this run: conftest.py's autouse `_each_core` runs each test once per core
    (KVSAGA_CORE), so the tests take it from there rather than parametrizing it again."""
    return os.environ["KVSAGA_CORE"]


def _memo_state(p) -> tuple:
    return (dict(p._memo), dict(p._classes), dict(p._sig_of), dict(p._base), set(p._dirty),
            getattr(p, "_rent", None), p._token)


@pytest.fixture(autouse=True)
def _pushes_are_the_general_keys(monkeypatch):
    """At every fast search, the pushes the fast path made are those `_keys` gives for the
    same marks (the general path's keying), and that `_keys` call, whose classes and keys
    the memo then holds, changes nothing: a fast path keying differently fails here even
    where the victims stay the same."""
    real = fast_search.finish
    checked = []

    def finish(self, num_blocks, now, pushes, runs=False):
        before = _memo_state(self)
        assert pushes == self._keys(self._dirty, now, {})
        assert _memo_state(self) == before
        checked.append(1)
        return real(self, num_blocks, now, pushes, runs)

    for mod in (ttl_fast, graph_fast):
        monkeypatch.setattr(mod, "finish", finish)
    return checked


def _ttls(policy) -> list:
    """The parts of `policy` (itself, or adaptive's experts) with a fast path."""
    return [p for p in (getattr(e, "policy", e) for e in getattr(policy, "experts", [policy]))
            if isinstance(p, (TTLPolicy, GraphPolicy))]


def _shadow_ttls(m) -> list:
    """The parts with a fast path of adaptive's shadows (`shadow_cache`), if any."""
    return [p for shadow in getattr(m.policy, "_shadows", []) for p in _ttls(shadow.policy)]


def _recorded(m, fast: bool) -> list:
    """Record every search's victims (and the policy's state after it) of `m`'s ttl parts,
    with their fast path on or off (adaptive's shadows' too, not recorded)."""
    out: list = []
    for p in _shadow_ttls(m):
        p._fast = fast
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
    seeded_walk(m, workload, 5, 1500)
    m.check_integrity()
    return out, _state(m), _ttls(m.policy) + _shadow_ttls(m)


def _bench_shape(name: str, fast: bool, core: str, paused: int = 400, events: bool = True):
    """bench/eviction_scaling.py's shape, small (tests/policy/test_timed_rekey.py's): new
    sessions allocating 1 ms apart under eviction; with `events`, paused ones also resume
    (learning: new statistics) or get pause hints."""
    per = 4
    m = make(make_policy(name), num_blocks=paused * per // 2, core=core)
    out = _recorded(m, fast)
    for _ in bench_shape_walk(m, paused, events=events):
        pass
    m.check_integrity()
    return out, _state(m), _ttls(m.policy) + _shadow_ttls(m)


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("name", ["ttl", "graph", "adaptive"])
def test_fast_path_names_the_victims_of_the_general_path_on_the_walks(name, workload, core):
    ref, ref_state, off = _walk(name, workload, False, core)
    got, state, on = _walk(name, workload, True, core)
    assert got == ref
    assert state == ref_state
    assert all(p.fast_searches == 0 for p in off)


@pytest.mark.parametrize("events", [False, True])
@pytest.mark.parametrize("name", ["ttl", "graph", "adaptive"])
def test_fast_path_on_the_bench_shape_is_taken_and_names_the_same_victims(
        name, events, core, _pushes_are_the_general_keys):
    ref, ref_state, off = _bench_shape(name, False, core, events=events)
    got, state, on = _bench_shape(name, True, core, events=events)
    assert got == ref
    assert state == ref_state
    assert all(p.fast_searches == 0 for p in off)
    if name != "adaptive":  # (adaptive's experts search only while they lead)
        # Taken: between two steps that learn nothing most searches are usual ones (the
        # events' resumes learn, and the searches after one are general).
        assert on[0].fast_searches > (0 if events else on[0].general_searches)
        assert len(_pushes_are_the_general_keys) >= on[0].fast_searches  # (checked)


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


def _sig(p, sid: str, d: float) -> tuple:
    """The memo's key of paused session `sid`'s class at `d` seconds into its pause."""
    v, g = p.views[sid], p.groups[sid]
    k = grid_index(max(d, 0.0))[0]
    if isinstance(p, TTLPolicy):
        return (v.workflow, v.tool, len(g), p._pos[g[-1]], None), k
    return (v.workflow, v.tool, 2 * len(g) > p._ctx_blocks.get(sid, 0), None), k


def _covered(p, now: float) -> list[str]:
    """The paused sessions whose class and grid point at `now` the memo holds."""
    return [s for s in p.groups if not p.views[s].needed_now
            and _sig(p, s, now - p.views[s].paused_at) in p._memo]


def _poked(core, cls, poke, taken: bool, dt: float = 0.0):
    """`cls` steady (fast path on) and its twin with the fast path off: the marks cleared,
    `poke(m, p, now)` on both, then one search at `now + dt`. Its victims, the index's order,
    bases and memo are the same on both, and the fast path was `taken` or not."""
    out = []
    for fast in (True, False):
        m, p, step, i, now = _steady(core, cls)
        p._fast = fast
        p.choose_victims(1, now)  # (marks cleared)
        t = poke(m, p, now)
        t = now + dt if t is None else t
        f, g = p.fast_searches, p.general_searches
        got = p.choose_victims(8, t)
        assert p.fast_searches + p.general_searches == f + g + 1
        out.append((p.fast_searches - f, got, p.eviction_order(), dict(p._base),
                    dict(p._memo)))
    assert out[0][1:] == out[1][1:]
    assert out[0][0] == (1 if taken else 0)


def _first_covered(p, now):
    sids = _covered(p, now)
    assert sids
    return sids[0]


def _defer(m, p, now):  # demoted: graph keys it by `_deferred`, not the memo's paused rate
    p.session_deferred(m.sessions[_first_covered(p, now)], True, now)


def _resume_hint(m, p, now):  # needed now: never a victim while hinted
    m.resume_hint(_first_covered(p, now), now=now)


def _last_step(m, p, now):  # on its last step (the hint as `finish_step(last_step=)` sets
    sid = _first_covered(p, now)  # it, the session kept paused): keyed by `hint`, not memo
    v = p.views[sid]
    v.hint = type(v.hint)(tool=v.tool, last_step=True)
    p._dirty.add(sid)


def _relearn_then_value(m, p, now):  # a pause learned with no search, then `session_value`
    p.graph.step_started("p7", "w1", now)  # (which refreshes `_token_now`, not `_token`)
    p.session_value("p8", now)
    _mark_all(p)


def _mark_all(p):
    p._dirty.update(p.groups)


@pytest.mark.parametrize("cls", [TTLPolicy, GraphPolicy])
@pytest.mark.parametrize("poke", [_resume_hint, _last_step], ids=["resume_hint", "last_step"])
def test_fast_path_declines_a_marked_session_needed_now_or_on_its_last_step(core, cls, poke):
    _poked(core, cls, poke, taken=False)


def test_graph_fast_path_declines_a_deferred_session(core):
    _poked(core, GraphPolicy, _defer, taken=False)


def test_ttl_fast_path_declines_after_a_pause_learned_and_a_session_value(core):
    # (graph has no `session_value`: its token is only the one its searches build)
    _poked(core, TTLPolicy, _relearn_then_value, taken=False)


def test_fast_path_is_taken_when_the_memo_covers_the_marks(core):
    for cls in (TTLPolicy, GraphPolicy):
        _poked(core, cls, lambda m, p, now: _mark_all(p) if _covered(p, now) else None,
               taken=True)


def test_ttl_fast_path_declines_a_session_past_its_ttl_that_the_memo_covers(core):
    """A paused session past its TTL is keyed as expired (`_key`): the fast path, whose
    memo holds its class's key at that grid point, declines it."""
    def past_ttl(m, p, now):
        sid = _first_covered(p, now)
        t0, ttl = p.views[sid].paused_at, p._memo[_sig(p, sid, now - p.views[sid].paused_at)][2]
        k, lo, hi = grid_index(ttl)
        assert lo < ttl < hi
        # Keyed once earlier in that grid cell (before its TTL: the memo keeps it) ...
        p._keys([sid], t0 + lo, {})
        assert _sig(p, sid, lo) in p._memo
        # ... and searched for past its TTL in the same cell.
        p._dirty.add(sid)
        t = t0 + ttl
        assert t - t0 >= ttl and grid_index(t - t0)[0] == k
        return t

    _poked(core, TTLPolicy, past_ttl, taken=False)


def test_graph_fast_path_with_trust_declines_after_trust_learns(core):
    """graph with `trust`: the fast path is taken on the bench shape with the same victims,
    and not after the trust's factors change (its version is in the keys' token)."""
    trusting = functools.partial(GraphPolicy, trust=True)
    _poked(core, trusting, lambda m, p, now: _mark_all(p) if _covered(p, now) else None,
           taken=True)

    def learn(m, p, now):
        for wf in ("w0", "w1", "w2"):
            p.trust.add(wf, "paused", 10.0, 1e-3, 1.0)
        _mark_all(p)

    _poked(core, trusting, learn, taken=False)
