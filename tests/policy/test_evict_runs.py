"""The manager's C++ core evicting a grouped policy's runs (kvsaga/manager_evict.py,
`ManagerCore.evict_runs`, csrc/tail_runs.h; issue 11): ttl's, graph's and saga's usual search
(ttl's and graph's fast path or general search, saga's general search) answers with runs off
its sessions' tails, and the core evicts them with no list of victims and no call back into
the policy's `blocks_uncached`. The same walks run with that path on and off
(`evicts_runs = False`: the policy's list of victims, checked and evicted, the pool calling
`blocks_uncached`) must leave the same pool, prefix index, owners and policy state after
every call, with and without a host tier, a journal, prefix-shared blocks; a bad answer
changes nothing; the path is taken where it should be."""

from __future__ import annotations

import os

import pytest

from kvsaga import OutOfBlocks
from kvsaga.policy import make_policy
from kvsaga.policy.graph import GraphPolicy
from tests.policy.helpers import bench_shape_walk, make
from tests.policy.victim_record import WORKLOADS, seeded_walk

TOOLS = ("search", "edit", "test", "shell", "browse")


class _Counted:
    """The manager's core, its `evict_runs` calls counted (everything else passed on)."""

    def __init__(self, hot) -> None:
        self.hot, self.runs = hot, 0

    def __getattr__(self, name):
        return getattr(self.hot, name)

    taken = 0  # of them, those the core made (True)

    def evict_runs(self, *args):
        self.runs += 1
        done = self.hot.evict_runs(*args)
        self.taken += done
        return done


def _manager(name: str, runs: bool, num_blocks: int, host: int = 0, trust: bool = False):
    policy = make_policy(name)
    if trust:
        policy = GraphPolicy(trust=True)
    m = make(policy, num_blocks=num_blocks, num_host_blocks=host)
    if not runs:
        m.policy.evicts_runs = False
    if m._hot is not None:
        m._hot = _Counted(m._hot)
    return m


def _state(m) -> tuple:
    """Everything an eviction changes: the pool, the prefix index's blocks, the owners, and
    the policy's groups, queues, marks and bases (read without a search)."""
    pool, p = m.pool, m.policy
    n = pool.num_blocks
    index = [m.index.longest_prefix([h], 1) if h is not None else None
             for h in list(pool.block_hash)]
    where = bytes(p._where)
    return (list(pool.state), list(pool.generation), list(pool.block_hash), pool.free_ids(),
            pool.num_free, pool.num_cached, index, list(m.block_owner),
            {sid: list(g) for sid, g in p.groups.items()}, list(p.plain), list(p.dead),
            where, [p._owner[b] for b in range(n) if where[b] == 3 and pool.state[b] == 2],
            sorted(p._dirty), dict(p._base), p._plan, m._evicted_blocks, m.cache_version,
            m.stats())


def _order(m) -> list:
    """The policy's eviction order (a search: it changes the marks, so only at the end)."""
    return m.policy.eviction_order()


def _walk(m, workload: str, seed: int, calls: int) -> list:
    """Run the seeded walk (victim_record.py's), the state after every call."""
    out: list = []
    seeded_walk(m, workload, seed, calls, after=lambda: out.append(_state(m)))
    m.check_integrity()
    return out + [_order(m)]


def _bench_shape(m, paused: int) -> list:
    """bench/eviction_scaling.py's shape, small (test_fast_search.py's): sessions of four
    blocks paused on tools, new ones allocating under eviction 1 ms apart, now and then a
    paused one resuming or hinted. The state after every step."""
    out, m.walked_to = [], 0.0  # (the tests' own mark: when the shape ended)
    for now in bench_shape_walk(m, paused):
        out.append(_state(m))
        m.walked_to = now
    m.check_integrity()
    return out + [_order(m)]


def _cpp() -> bool:
    return os.environ["KVSAGA_CORE"] == "cpp"


def _needs_runs_path() -> None:
    """Skip a test comparing the runs path on and off unless the core is cpp: the Python
    core has no runs path (`m._hot` is None), so both managers would run the same code."""
    if not _cpp():
        pytest.skip("the Python core has no runs path to compare")


RUNS = ["ttl", "graph", "saga"]


@pytest.mark.parametrize("name", RUNS)
def test_the_policies_that_evict_runs(name):
    assert make_policy(name).evicts_runs
    for other in ("lru", "adaptive"):
        assert not make_policy(other).evicts_runs


def test_a_subclass_that_changes_the_runs_path_evicts_by_the_list():
    from kvsaga.policy.saga import SagaPolicy

    class Listed(SagaPolicy):
        def _take_runs(self, num_blocks, victims=True):
            return super()._take_runs(num_blocks, victims)

    class Chosen(SagaPolicy):
        def choose_victims(self, num_blocks, now, runs=False):
            return super().choose_victims(num_blocks, now)

    assert not Listed().evicts_runs and not Chosen().evicts_runs


@pytest.mark.parametrize("name", [*RUNS, "graph-trust"])
def test_runs_evicted_by_the_core_leave_the_state_of_the_list_on_the_bench_shape(name):
    _needs_runs_path()
    trust = name == "graph-trust"
    name = name.split("-")[0]
    on, off = (_manager(name, r, 200, trust=trust) for r in (True, False))
    assert _bench_shape(on, 100) == _bench_shape(off, 100)
    assert off._hot.runs == 0
    # (graph with trust reads its victims' list: the list's way)
    assert (on._hot.runs == 0) if trust else (on._hot.taken == on._hot.runs > 0)


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("host", [0, 16])
@pytest.mark.parametrize("name", RUNS)
def test_runs_evicted_by_the_core_leave_the_state_of_the_list_on_the_walks(
        name, host, workload):
    """The walks of victim_record.py: prefixes shared by several sessions (plain cache),
    ended sessions (dead), preempted ones, hints; with a host tier (offload: the list's way,
    the path then off) and without. (Their dead and plain cache make most searches general
    ones, answered as lists: the bench shape's test takes the runs path.)"""
    _needs_runs_path()
    on, off = (_manager(name, r, 64 - host, host) for r in (True, False))
    assert _walk(on, workload, 11, 900) == _walk(off, workload, 11, 900)
    assert off._hot.runs == 0
    if host:
        assert on._hot.runs == 0


def _journal_each_step(m) -> None:
    """Restart `m`'s journal after every begin_step (a change, which ends one), so that one
    is live at every allocation's evictions."""
    begin = m.begin_step

    def begin_then_journal(*args, **kwargs):
        out = begin(*args, **kwargs)
        m.start_journal()
        return out

    m.begin_step = begin_then_journal


@pytest.mark.parametrize("name", RUNS)
def test_a_journal_takes_the_list_and_reads_the_same_victims(name):
    _needs_runs_path()
    on, off = (_manager(name, r, 200) for r in (True, False))
    for m in (on, off):
        _journal_each_step(m)
    assert _bench_shape(on, 100) == _bench_shape(off, 100)
    assert on._hot.runs == 0


@pytest.mark.parametrize("name", RUNS)
def test_an_ended_journal_gives_the_runs_back(name):
    """A journal the walk's first step ends is dropped (kvsaga/manager_journal.py): the
    runs path comes back. Until session 45 the ended journal stayed kept, growing, and
    every eviction took the list."""
    on, off = (_manager(name, r, 200) for r in (True, False))
    on.start_journal()
    off.start_journal()
    assert _bench_shape(on, 100) == _bench_shape(off, 100)
    assert on._journal is None and on.journal() is None
    if _cpp():
        assert on._hot.runs > 0


def _at_a_usual_search(name: str):
    """A manager after the bench shape (its searches usual ones, answered as runs)."""
    m = _manager(name, True, 200)
    _bench_shape(m, 100)
    return m


@pytest.mark.parametrize("name", RUNS)
def test_a_failed_allocation_changes_nothing(name):
    """A running step holding most of the pool (its allocation evicted by the runs), then one
    asking for more than is free or evictable: OutOfBlocks, nothing changed."""
    m = _at_a_usual_search(name)
    hog = list(range(10**6, 10**6 + 4 * 150))
    st = m.begin_step("hog", hog, now=1.0)
    m.allocate_slots("hog", len(hog) - st.num_cached_tokens, now=1.0)
    m.begin_step("big", list(range(2 * 10**6, 2 * 10**6 + 4 * 60)), now=1.0)
    before = _state(m)
    with pytest.raises(OutOfBlocks):
        m.allocate_slots("big", 4 * 60, now=1.0)
    assert _state(m) == before
    m.allocate_slots("big", 4 * 40, now=1.0)  # what fits: evicted (runs), allocated
    m.check_integrity()
    if _cpp():
        assert m._hot.runs > 0


def _bad_runs(m) -> list:
    """Answers that are not `num_blocks` distinct cached blocks, each its group's head."""
    groups = m.policy.groups
    sids = sorted(groups, key=lambda s: -len(groups[s]))
    a = sids[0]
    k = len(groups[a])
    return [
        ([("nobody", 1)], 1),  # a session with no group
        ([(a, k + 1)], k + 1),  # more than its group holds
        ([(a, k), (a, k)], 2 * k),  # its blocks twice
        ([(a, k)], k + 1),  # not num_blocks
        ([(a, 0)], 0),  # a count < 1
        ([(a, "1")], 1),  # a count that is not an int
        ([[a, 1]], 1),  # not a tuple
        ((a, 1), 1),  # not a list
    ]


@pytest.mark.parametrize("name", RUNS)
def test_bad_runs_raise_and_change_nothing(name):
    if not _cpp():
        pytest.skip("the C++ core's call")
    m = _at_a_usual_search(name)
    p, hot = m.policy, m._hot.hot
    before = _state(m)
    for runs, n in _bad_runs(m):
        p._runs = runs
        with pytest.raises((RuntimeError, TypeError)):
            hot.evict_runs(p, n)
        assert _state(m) == before, runs
    g = p.groups[next(iter(p.groups))]
    b = g[0]
    g[0] = -1  # a group holding a block that is not a cached block id
    p._runs = [(next(iter(p.groups)), 1)]
    with pytest.raises(RuntimeError, match="cached block id"):
        hot.evict_runs(p, 1)
    g[0] = b
    p._runs, dirty = [], p._dirty_sets
    p._dirty_sets = [p._dirty]
    with pytest.raises(TypeError):
        hot.evict_runs(p, 0)
    p._dirty_sets = dirty
    assert _state(m) == before
    m.check_integrity()


class _Observer:
    """The policy's pool calls, passed on through another object (the pool's observer is
    then not the policy: the core must not make its uncaching)."""

    def __init__(self, policy) -> None:
        self.policy = policy
        for name in ("block_cached", "block_uncached", "blocks_cached", "blocks_uncached"):
            setattr(self, name, getattr(policy, name))


@pytest.mark.parametrize("name", RUNS)
def test_runs_go_the_lists_way_when_the_pool_observer_is_another(name):
    on, off = (_manager(name, r, 200) for r in (True, False))
    for m in (on, off):
        m.pool.observer = _Observer(m.policy)
    assert _bench_shape(on, 100) == _bench_shape(off, 100)
    if _cpp():
        assert on._hot.runs > 0 and on._hot.taken == 0


@pytest.mark.parametrize("name", RUNS)
def test_the_runs_path_evicts_the_searchs_runs_exactly(name):
    """One usual search answered as runs: its victims (the runs' heads of the groups) are
    what the list's way names, and after the core evicted them the pool, index, owners and
    groups are the list's, no block held twice or lost."""
    if not _cpp():
        pytest.skip("the C++ core's call")
    on, off = _at_a_usual_search(name), _manager(name, False, 200)
    _bench_shape(off, 100)
    assert _state(on) == _state(off)
    n, now = on.pool.num_free + 8, on.walked_to
    got = on.policy.choose_victims(n, now, True)
    want = off.policy.choose_victims(n, now)
    assert got is None and on.policy._plan is None
    assert on.policy._index.tail_victims(on.policy.groups, on.policy._runs) == want
    assert on._hot.evict_runs(on.policy, n)
    assert off._hot.victims_valid(want, n)
    off._hot.evict_blocks(want)
    assert _state(on) == _state(off)
    pool = on.pool
    assert pool.num_free + pool.num_cached + sum(s == 1 for s in pool.state) == pool.num_blocks
    on.check_integrity()


@pytest.mark.parametrize("cpp", [False, True])
def test_refresh_marked_runs_gives_the_runs_of_refresh_marked(cpp):
    """`refresh_marked_runs`: the runs of `refresh_marked`'s call, None in the victims'
    place, on both twins of the index."""
    from kvsaga._core import cpp_available
    from kvsaga.policy.session_heap import make_session_heap

    if cpp and not cpp_available():
        pytest.skip("the C++ core is not built")
    answers = []
    for victims in (True, False):
        index = make_session_heap(cpp)
        groups = {f"s{i}": [10 * i + j for j in range(3)] for i in range(6)}
        for i, sid in enumerate(groups):
            index.push(sid, (1, float(6 - i)), 10 * i, 3, float("inf"), 0.0, None)
        marked = {"s0", "gone"}
        call = index.refresh_marked if victims else index.refresh_marked_runs
        answers.append(call(1.0, marked, [], 7, 64, groups, {}))
    (due, runs, listed), (due2, runs2, none) = answers
    assert due is None and due2 is None and runs2 == runs and none is None
    assert listed == [b for sid, k in runs for b in [10 * int(sid[1:]) + j for j in range(k)]]
