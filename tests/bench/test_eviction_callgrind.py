"""bench/eviction_callgrind.py: the eviction-scaling allocations counted under callgrind
(`count_child`, `instruction_counts`) and its dumps read (`_dump_figure`, `_miss_parts`,
`miss_split`); the counts themselves only where valgrind is installed."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.bench_scripts import load_bench


def load():
    """bench/eviction_callgrind.py, after the bench/allocator.py and
    bench/eviction_scaling.py it imports."""
    load_bench("allocator")
    load_bench("eviction_scaling")
    return load_bench("eviction_callgrind")


def test_count_child_makes_each_policys_allocations_through_operator_call(monkeypatch, capsys):
    # callgrind counts only inside operator.call: every timed allocation of each policy
    # (repeat at one instant, repeat 1 ms apart, the full re-key), in turn, goes through it;
    # the cache's build does not. The relearning periods come last, one JSON list.
    mod = load()
    through = []
    real = mod.operator.call
    monkeypatch.setattr(mod.operator, "call",
                        lambda f, *a, **kw: through.append(f.__self__.policy.name) or real(
                            f, *a, **kw))
    mod.count_child(8, ["lru", "saga"], repeat=2)
    assert through == ["lru"] * 5 + ["saga"] * 5
    periods = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert periods[0] == math.inf and periods[1] >= 1.0


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_instruction_counts_table_states_the_flatness_bound():
    mod = load()
    lines, figures = mod.instruction_counts([8], ("lru",), repeat=1)
    same, apart, amortized = figures["lru"][8]
    assert same > 100 and apart > 100  # instructions per allocated block, counted
    assert amortized == same  # lru keeps no index: nothing to re-key
    assert "| paused sessions | lru | worst / lru |" in lines


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_cache_misses_count_a_flushed_allocations_last_level_misses():
    # Each counted allocation follows a counted flush of the simulated caches (callgrind
    # simulates only while it counts), whose dump is dropped: a cold allocation misses the
    # last level at least once per block it writes a slot into, a warm one would not.
    mod = load()
    lines, figures = mod.instruction_counts([8], ("lru",), repeat=1, cache_misses=True)
    same, apart, amortized = figures["lru"][8]
    assert 1 < same < 1000 and 1 < apart < 1000
    assert amortized == same
    assert any(line.startswith("Last-level cache misses") for line in lines)
    assert "| paused sessions | lru | worst / lru |" in lines


def test_a_dumps_last_level_misses_are_read_by_event_name():
    mod = load()
    text = "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\ntotals: 900 80 70 6 5 4 3 2 1\n"
    assert mod._dump_figure(text, False) == 900
    assert mod._dump_figure(text, True) == 3 + 2 + 1
    # callgrind leaves trailing zero events off the totals line
    assert mod._dump_figure("events: Ir I1mr ILmr DLmr DLmw\ntotals: 50 7 4\n", True) == 4
    assert mod._dump_figure("events: Ir\n", False) is None


def test_instruction_counts_names_cache_misses_when_valgrind_is_missing(monkeypatch):
    mod = load()
    monkeypatch.setattr(mod.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="^--cache-misses counts with valgrind"):
        mod.instruction_counts([8], ("lru",), repeat=1, cache_misses=True)
    with pytest.raises(SystemExit, match="^--instructions counts with valgrind"):
        mod.instruction_counts([8], ("lru",), repeat=1)


# callgrind_annotate --inclusive=no --show=ILmr,DLmr,DLmw, trimmed: the totals line, then
# one line per function; the index's function holds all of one event's misses (100.0%).
ANNOTATE = """\
--------------------------------------------------------------------------------
ILmr           DLmr          DLmw
--------------------------------------------------------------------------------
1,250 (100.0%) 300 (100.0%) 60 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
ILmr          DLmr          DLmw          file:function
--------------------------------------------------------------------------------
  800 (64.00%)  .            50 (83.33%)  ???:_PyEval_EvalFrameDefault [/l/libpython3.12.so]
  400 (32.00%) 300 (100.0%)   .           ???:SessionHeap::runs [/k/_evict.so]
   50 (4.00%)   .            10 (16.67%)  ???:memmove [/l/libc.so.6]
"""


def test_miss_split_reads_every_function_and_leaves_out_the_totals_line():
    parts = load()._miss_parts(ANNOTATE)
    # interpreter, index (C++), manager core (C++), libc and libm, other
    assert parts == [850, 700, 0, 60, 0]


def test_miss_split_leaves_out_the_call_chains_roots_listed_with_the_totals():
    # callgrind_annotate (3.19, these dumps) lists main ... the eval loop at 100% each, as
    # their own cost: counted, the parts read 14x the totals (lru 381.3 a block for 25.6).
    roots = "".join(f"1,250 (100.0%) 300 (100.0%) 60 (100.0%)  ???:{f} [/l/libpython3.12.so]\n"
                    for f in ("main", "PyEval_EvalCode", "_PyEval_EvalFrameDefault"))
    parts = load()._miss_parts(ANNOTATE.replace("file:function\n" + "-" * 80 + "\n",
                                                "file:function\n" + "-" * 80 + "\n" + roots))
    assert parts == [850, 700, 0, 60, 0] and sum(parts) == 1250 + 300 + 60


def test_miss_split_requires_lru_before_counting(monkeypatch):
    mod = load()
    monkeypatch.setattr(mod.shutil, "which", lambda name: "/usr/bin/valgrind")

    def counted(*a, **kw):
        raise AssertionError("counted before lru was checked")

    monkeypatch.setattr(mod, "_callgrind_calls", counted)
    with pytest.raises(ValueError, match="^--miss-split: the totals are to lru"):
        mod.miss_split(8, ("ttl", "saga"))
