"""bench/allocator.py --eviction-scaling --search-split (bench/eviction_split.py) without
valgrind: each way's counted allocations (the search or the keying made before them, outside
`operator.call`), the index call read off callgrind_annotate's inclusive listing, and a
missing valgrind found before any counting."""

from __future__ import annotations

import pytest

from kvsaga.policy import ttl_fast
from kvsaga.policy.search import VictimSearch
from tests.bench_scripts import load_bench


def load():
    """bench/eviction_split.py, after the modules it imports."""
    load_bench("allocator")
    load_bench("eviction_scaling")
    load_bench("eviction_callgrind")
    return load_bench("eviction_split")


@pytest.mark.parametrize("way", ["as is", "search outside", "keying outside"])
def test_each_way_moves_its_part_out_of_the_counted_calls(way, monkeypatch):
    mod = load()
    inside = {"search": 0, "keying": 0, "calls": 0, "fast": 0}
    counting = [False]
    real_call = mod.operator.call
    search, keys = VictimSearch._index_victims, VictimSearch._keys

    def call(f, *a, **kw):
        counting[0] = True
        try:
            inside["calls"] += 1
            return real_call(f, *a, **kw)
        finally:
            counting[0] = False

    def counted(name, real):
        def wrapped(self, *a, **kw):
            # (the keying of the marked sessions passes its bases; a due session's, none)
            if counting[0] and (name == "search" or len(a) == 3 and a[2] is not None):
                inside[name] += 1
            return real(self, *a, **kw)
        return wrapped

    monkeypatch.setattr(mod.operator, "call", call)
    monkeypatch.setattr(VictimSearch, "_index_victims", counted("search", search))
    monkeypatch.setattr(VictimSearch, "_keys", counted("keying", keys))
    # ttl's usual search may take its fast path (ttl_fast.py), which ends in `finish`
    # instead of `_index_victims` and keys inline: a search all the same.
    fast_finish = ttl_fast.finish

    def finish(self, *a, **kw):
        if counting[0]:
            inside["search"] += 1
            inside["fast"] += 1
        return fast_finish(self, *a, **kw)

    monkeypatch.setattr(ttl_fast, "finish", finish)
    mod.split_child(64, ["ttl"], 2, way)
    assert inside["calls"] == 2 * 5  # a flush and an allocation each, 5 allocations
    if way == "as is":
        assert inside["search"] >= 4 and inside["keying"] >= 1
    elif way == "search outside":
        assert inside["search"] == 0 and inside["keying"] == 0
    else:  # the search inside, its keying of the marked sessions outside
        assert inside["search"] >= 4 and inside["keying"] == 0
        assert inside["fast"] == 0  # the general path's keying is what moves out


ANNOTATED = """\
--------------------------------------------------------------------------------
ILmr           DLmr           DLmw            file:function
--------------------------------------------------------------------------------
  800 (64.00%)    .              50 (83.33%)  ???:_PyEval_EvalFrameDefault [/l/libpython3.11.so]
  399 (25.51%)   218 (11.77%)   158 ( 7.63%)  ???:SessionHeap::refresh_victims(double) [/k/e.so]
  304 (19.44%)   102 ( 5.51%)    44 ( 2.12%)  ???:SessionHeap::refresh(double) [/k/_evict.so]
"""


def test_the_index_call_is_read_inclusive_of_its_callees(monkeypatch, tmp_path):
    mod = load()

    class Done:
        stdout = ANNOTATED

    monkeypatch.setattr(mod.subprocess, "run", lambda *a, **kw: Done())
    assert mod._index_call(tmp_path / "cg.out.1") == 399 + 218 + 158
    Done.stdout = ANNOTATED.replace("refresh_victims", "refresh_marked")  # (today's name)
    assert mod._index_call(tmp_path / "cg.out.1") == 399 + 218 + 158
    Done.stdout = ANNOTATED.replace("refresh_victims", "refresh_other")
    assert mod._index_call(tmp_path / "cg.out.1") == 0


def test_missing_valgrind_is_found_before_counting(monkeypatch):
    mod = load()
    monkeypatch.setattr(mod.require_valgrind.__globals__["shutil"], "which", lambda name: None)

    def counted(*a, **kw):
        raise AssertionError("counted without valgrind")

    monkeypatch.setattr(mod.subprocess, "run", counted)
    with pytest.raises(SystemExit, match="^--search-split counts with valgrind"):
        mod.search_split(8, ("lru", "ttl"))


def _listing(**calls) -> str:
    """A callgrind_annotate inclusive listing with these calls' misses (ILmr, DLmr, DLmw)."""
    return "\n".join(f"{a:,} (1.0%) {b:,} (1.0%) {c:,} (1.0%)  ???:{name}(x) [/k/m.so]"
                     for name, (a, b, c) in calls.items())


def test_call_split_charges_each_policys_excess_to_the_call_that_makes_it(monkeypatch, tmp_path):
    mod = load()
    monkeypatch.setattr(mod, "require_valgrind", lambda flag: None)
    # lru's and ttl's counted allocations, repeat 1: one at one instant, one 1 ms apart, the
    # full re-key; the fewest at one instant is each policy's first.
    totals = [1280, 9999, 9999, 2560, 9999, 9999]
    dumps = []
    for i, t in enumerate(totals):
        f = tmp_path / f"cg.out.{i}"
        f.write_text(f"events: Ir ILmr DLmr DLmw\ntotals: 1 {t} 0 0\n")
        dumps.append(f)
    monkeypatch.setattr(mod, "_callgrind_calls", lambda *a: (dumps, [1.0, 1.0]))
    listings = {dumps[0]: _listing(**{"ManagerCore::evict_head": (100, 28, 0)}),
                dumps[3]: _listing(**{"SessionHeap::refresh_marked": (200, 56, 0),
                                      "ManagerCore::victims_valid": (10, 0, 0),
                                      "ManagerCore::evict_blocks": (150, 86, 10),
                                      "Pool::notify": (64, 0, 0)})}
    monkeypatch.setattr(mod, "_annotated", lambda dump: listings[dump])
    lines = mod.call_split(8, ("lru", "ttl"), repeat=1)
    # per block of 128: total 20, over lru 10, index 2, core 2 - 1, notify 0.5, rest 7
    assert "| ttl | 20.0 | 10.0 | 2.0 | 1.0 | 0.5 | 7.0 |" in lines
    assert "lru: 10.0 a block, of it evict_head 1.0." in lines


def test_call_split_requires_lru_before_counting(monkeypatch):
    mod = load()
    monkeypatch.setattr(mod, "_callgrind_calls", lambda *a: pytest.fail("counted"))
    with pytest.raises(ValueError, match="^--call-split: the excess is over lru"):
        mod.call_split(8, ("ttl", "saga"))
