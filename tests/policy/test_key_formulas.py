"""Class keys at every grid point (session_heap.py, timed modes 3 and 4): ttl's and graph's
keys of an unhinted pause computed from their class's log-normal pause model, by the
Python reference (`ttl_window_key`, `graph_rate`) and by the C++ index, equal to the float,
and equal to the keys the policies compute themselves; and on the eviction bench's shape,
a session crossing a grid point is re-keyed without Python whenever the statistics held
still, with the victims the Python keying names."""

from __future__ import annotations

import contextlib
import math
import random

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga import OutOfBlocks
from kvsaga.policy import make_policy
from kvsaga.policy.aeg import ExecutionGraph
from kvsaga.policy.lognormal import resume_window
from kvsaga.policy.search import grid_index
from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from kvsaga.policy.timed_keys import graph_rate, ttl_entry, ttl_window_key
from tests.policy.helpers import make
from tests.policy.test_timed_rekey import TOOLS, _indexed_parts, _watch

try:
    from kvsaga._evict import SessionHeap
except ImportError:  # not built: the Python index runs everywhere
    SessionHeap = None

needs_cpp = pytest.mark.skipif(SessionHeap is None, reason="kvsaga._evict is not built")

# Pause models from everyday to the far tails: a tiny sigma puts late grid points where the
# survival underflows (the Mills-ratio and mean-residual branches).
mus = st.floats(-8.0, 6.0)
sigmas = st.one_of(st.floats(0.0, 3.0), st.sampled_from([0.05, 0.051, 1e-3]))
p0s = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 0.9, 1.0]))
t0s = st.floats(0.0, 100.0)
elapsed = st.one_of(st.floats(0.0, 1e4), st.sampled_from([0.0, 1e-3, 2.5e-3, 7.0, 400.0]))
ttl_formulas = st.tuples(mus, sigmas, p0s, st.floats(1e-4, 10.0), st.floats(1e-6, 1.0),
                         st.integers(1, 64).map(float), st.floats(1e-7, 1e-2),
                         st.floats(1e-3, 1e5))
# (the last number, trust's hedge: 1.0 without trust, else within e^-5..e^5)
graph_formulas = st.tuples(mus, sigmas, p0s, st.floats(0.0, 50.0),
                           st.floats(0.01, 100.0), st.sampled_from([1e-3, 0.5]),
                           st.one_of(st.just(1.0), st.floats(math.exp(-5), math.exp(5))))


def _key_after(index, t0: float, e: float, mode: int, f: tuple, mult: float):
    """The key the index gives a session paused at t0 once its deadline passes, e seconds
    into its pause (its class's formula pushed with it)."""
    k, _, hi = grid_index(0.0)
    value = (0.5, *f) if mode == 4 else f
    index.push("s", (0, 0.0), 1, 1, t0 + hi, t0, (3, k, 1, value, mode, t0, math.inf,
                                                   math.inf, mult))
    now = t0 + e
    if now <= t0 + hi:
        return None  # not due yet
    assert index.due(now) == []  # re-keyed by the formula, not handed to Python
    return index.top()


@needs_cpp
@settings(max_examples=250, deadline=None)
@given(ttl_formulas, t0s, elapsed)
def test_cpp_ttl_formula_gives_the_python_reference_key(f, t0, e):
    want = _key_after(PySessionHeap(), t0, e, 3, f, 1.0)
    got = _key_after(make_session_heap(True), t0, e, 3, f, 1.0)
    assert got == want
    if want is not None:
        lo = grid_index((t0 + e) - t0)[1]  # the elapsed pause as the index reads it
        assert want[0] == ttl_window_key(f, t0, lo)


@needs_cpp
@settings(max_examples=250, deadline=None)
@given(graph_formulas, t0s, elapsed, st.floats(1e-6, 10.0))
def test_cpp_graph_formula_gives_the_python_reference_rate(f, t0, e, mult):
    py, cpp = PySessionHeap(), make_session_heap(True)
    want = _key_after(py, t0, e, 4, f, mult)
    got = _key_after(cpp, t0, e, 4, f, mult)
    assert got == want
    if want is not None:
        rate = graph_rate(f, grid_index((t0 + e) - t0)[1])
        assert want[0] == (1, rate * mult)
        assert py.base("s") == cpp.base("s") == rate


def _class_keys_over_time(index, f: tuple, t0s: list[float], steps: list[float]) -> list:
    """Sessions of one ttl class (formula `f`, pushed with each) paused at `t0s`, re-keyed
    by the index as time moves through `steps`: every (key, tail) the index holds after each
    step, lowest first. The C++ index keeps what a class's keys share between grid points
    (`TtlMemo`: the window's end, the mean), so this walks one class across many points."""
    k, _, hi = grid_index(0.0)
    for i, t0 in enumerate(t0s):
        index.push(f"s{i}", (0, 0.0), i, 1, t0 + hi, t0,
                   (7, k, 1, f, 3, t0, f[7], t0 + f[7], 1.0))
    out = []
    for now in steps:
        due = index.due(now)
        order = []
        while index.top() is not None:
            order.append((index.top(), index.pop()))
        index.restore()
        out.append((sorted(due), order))
    return out


@needs_cpp
@settings(max_examples=60, deadline=None)
@given(ttl_formulas, st.lists(st.floats(0.0, 50.0), min_size=1, max_size=12),
       st.lists(st.floats(1e-4, 30.0), min_size=1, max_size=12))
def test_cpp_ttl_class_keys_across_grid_points_give_the_python_reference(f, t0s, gaps):
    steps = [max(t0s)]
    for g in gaps:
        steps.append(steps[-1] + g)
    want = _class_keys_over_time(PySessionHeap(), f, t0s, steps)
    assert _class_keys_over_time(make_session_heap(True), f, t0s, steps) == want


@needs_cpp
@settings(max_examples=60, deadline=None)
@given(ttl_formulas, st.lists(st.floats(0.0, 20.0), min_size=2, max_size=12),
       st.lists(st.floats(1e-4, 5.0), min_size=1, max_size=8))
def test_a_python_keyed_class_fills_the_table_at_its_grid_points(f, t0s, gaps):
    """Sessions keyed in Python (pushed at their own grid points with their class's
    formula, as a full re-key pushes them) enter their class's key there; the class's
    sessions that reach those points later read it: the keys of both indexes agree, and
    equal the reference's."""
    start = max(t0s)
    steps = [start]
    for g in gaps:
        steps.append(steps[-1] + g)
    got = []
    for index in (PySessionHeap(), make_session_heap(True)):
        for i, t0 in enumerate(t0s):
            k, lo, hi = grid_index(start - t0)
            key = ttl_window_key(f, t0, lo)
            until = min(t0 + hi, t0 + f[7])
            index.push(f"s{i}", key, i, 1, until, start, (7, k, key[0], f, 3, t0, f[7],
                                                         t0 + f[7], 1.0))
        if isinstance(index, PySessionHeap):
            for t0 in t0s:  # each pushed point's key is in the table
                k, lo, _ = grid_index(start - t0)
                if start - t0 < f[7]:
                    assert index._table[7, k] == ttl_entry(f, lo)
        got.append(_class_keys_over_time(index, f, [], steps))
    assert got[0] == got[1]


def _learned_graph(seed: int) -> ExecutionGraph:
    """A graph that learned pauses of three tools in two workflows (one tool abandoned
    now and then), with heavy tails."""
    g, rng, now = ExecutionGraph(), random.Random(seed), 0.0
    for i in range(60):
        sid, wf = f"s{i}", f"w{i % 2}"
        g.step_started(sid, wf, now)
        for _ in range(rng.randrange(1, 5)):
            tool = rng.choice(("a", "b", "c"))
            g.step_finished(sid, tool, now)
            now += rng.lognormvariate(rng.choice((-3.0, 0.0, 1.5)), rng.choice((0.3, 1.5)))
            if rng.random() < 0.1:
                break
            g.step_started(sid, wf, now)
        g.session_ended(sid, now)
    return g


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_reference_window_is_the_graph_s_own(seed):
    g = _learned_graph(seed)
    for wf in ("w0", "w1", "w9"):
        for tool in ("a", "b", "c", "z"):
            for e in (0.0, 1e-3, 0.05, 1.0, 30.0, 1e4):
                for w in (0.0, 1e-3, 2.0, 500.0):
                    ref = resume_window(g.pause_dist(wf, tool), g.resume_share(wf, tool), e, w)
                    assert ref == g.resume_window(wf, tool, e, w)


def _bench_walk(name: str, timed: bool, formulas: bool = True, paused: int = 300
                ) -> tuple[list, list]:
    """bench/eviction_scaling.py's shape, small: sessions paused 1 ms apart on tools, then
    new sessions allocating 1 ms apart, and every 10 ms a paused session resuming (what it
    teaches the policy forgets every class key). No relearning's full re-key (it would key
    every class at every grid point its sessions sit at). Every victim search's answer,
    and the sessions keyed in Python at each step after the set-up."""
    per = 4
    m = make(make_policy(name), num_blocks=paused * per // 2)  # on each core (conftest)
    for p in _indexed_parts(m.policy):
        p.relearn_share = 1e9
        p.class_formulas = formulas
    bs = m.block_size
    keyed = _watch(m.policy, timed)
    out: list = []
    choose = m.policy.choose_victims
    m.policy.choose_victims = lambda n, now: out.append(choose(n, now)) or out[-1]
    counts: list[int] = []
    now, ctx = 0.0, per * bs
    rng = random.Random(7)
    for i in range(paused + 80):
        before = keyed[0]
        sid = f"p{i}"
        if i >= paused and i % 10 == 0:
            sid = f"p{rng.randrange(paused)}"  # resumes (or starts again, if it was evicted)
        with contextlib.suppress(OutOfBlocks):
            st = m.begin_step(sid, [i * ctx + j for j in range(ctx)], now=now,
                              workflow=f"w{i % 3}")
            m.allocate_slots(sid, ctx - st.num_cached_tokens, now=now)
            m.finish_step(sid, now=now, tool=TOOLS[i % len(TOOLS)])
        if i >= paused:
            counts.append(keyed[0] - before)
        now += 1e-3
    m.check_integrity()
    return out, counts


@pytest.mark.parametrize("name", ["ttl", "graph", "adaptive"])
def test_grid_crossings_are_keyed_without_python_and_name_the_same_victims(name):
    ref, _ = _bench_walk(name, False)
    table, by_table = _bench_walk(name, True, formulas=False)
    got, counts = _bench_walk(name, True)
    assert got == table == ref
    # Dozens of sessions cross a grid point each millisecond. From the table alone, Python
    # keys each crossing into a grid point its class holds no key at since the last resume;
    # from the formulas, one session per class after each resume (the walk measured 24 a
    # step against 6-26, half as many in all).
    assert sum(counts) < 0.6 * sum(by_table), (counts, by_table)


def _learned_policy(name: str):
    """A ttl or graph policy that watched sessions pause on three tools in two workflows
    (each tool's pauses from its own log-normal), the last of them still paused."""
    m = make(make_policy(name), num_blocks=400)
    p = _indexed_parts(m.policy)[0]
    p.class_formulas = True
    rng, now = random.Random(3), 0.0
    for i in range(40):
        sid, wf = f"s{i}", f"w{i % 2}"
        for step in range(rng.randrange(1, 4)):
            toks = [i * 1000 + step * 100 + j for j in range(8)]
            st = m.begin_step(sid, toks, now=now, workflow=wf)
            m.allocate_slots(sid, len(toks) - st.num_cached_tokens, now=now)
            tool = ("a", "b", "c")[(i + step) % 3]
            m.finish_step(sid, now=now, tool=tool)
            now += rng.lognormvariate((-3.0, 0.0, 1.5)[(i + step) % 3], 0.8)
    m.check_integrity()
    return p, now


@pytest.mark.parametrize("name", ["ttl", "graph"])
def test_the_reference_keys_are_the_policies_own(name):
    """`ttl_window_key` and `graph_rate` (what the C++ index is checked against) equal the
    keys ttl's `_key` / `_value` and graph's `_session_base` compute themselves, for each
    paused session at grid points from the first to far in its tail."""
    p, t_end = _learned_policy(name)
    checked = 0
    for d in (0.0, 2e-3, 0.05, 0.7, 3.0, 40.0, 600.0):
        now = t_end + d
        for sid, view in list(p.views.items()):
            g = p.groups.get(sid)
            if not g or view.needed_now or view.hint.last_step:
                continue
            p._memo.clear()  # the policy's own computation, not a key shared by its class
            p._prepare(now)
            _, lo, _ = grid_index(max(now - view.paused_at, 0.0))
            key, _, rec = p._timed_base(sid, g, now)
            if rec is None:
                continue  # past its TTL, queued or demoted: not a formula's key
            f = rec[3]
            if name == "ttl":
                own = p._key(sid, view, g, now, now - view.paused_at, lo, math.inf,
                             p._value(sid, view, g, now, lo))[0]
                assert key == own == ttl_window_key(f, view.paused_at, lo), (sid, d)
            else:
                assert key == p._session_base(sid, g, now)[0] == graph_rate(f[1:], lo)
            checked += 1
    assert checked >= 20
