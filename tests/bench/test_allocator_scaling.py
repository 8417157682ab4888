"""bench/allocator.py --eviction-scaling (bench/eviction_scaling.py) on tiny counts: every
online policy measured in the four tables (one instant, 1 ms apart, amortized over
relearning, the whole step), the goals judged from them, and its section written alone
into RESULTS.md."""

from __future__ import annotations

import argparse
import sys

import pytest

from kvsaga.policy import AdaptivePolicy
from tests.bench_scripts import load_bench


def load():
    """bench/eviction_scaling.py, after the bench/allocator.py it imports, with the
    bench/eviction_callgrind.py its `scaling_main` imports (`counted_by`)."""
    load_bench("allocator")
    mod = load_bench("eviction_scaling")
    load_bench("eviction_callgrind")
    return mod


def counted_by():
    """bench/eviction_callgrind.py as `load` registered it."""
    return sys.modules["eviction_callgrind"]


def test_scaling_tables_cover_every_online_policy_and_state_the_goals(tmp_path):
    mod = load()
    lines, figures = mod.eviction_scaling([8, 16], repeat=1)
    assert set(figures) == set(mod.SCALING_POLICIES) >= {"lru", "ttl", "saga", "graph"}
    for p in mod.SCALING_POLICIES:
        for n in (8, 16):
            assert len(figures[p][n]) == 4 and all(x > 0 for x in figures[p][n])
    # lru never re-keys: its amortized figure is its first.
    assert figures["lru"][16][2] == figures["lru"][16][0]
    text = "\n".join(lines)
    assert text.count("| paused sessions |") == 4
    assert text.count("Growth from 8 to 16 paused sessions") == 4
    assert "the whole step 1 ms apart" in text
    out = tmp_path / "RESULTS.md"
    out.write_text("# Measured results\n\n## Other\n\nkept\n", encoding="utf-8")
    mod.write_section(mod.SCALING_SECTION, text, out, mod.SCALING_WRITER)
    mod.write_section(mod.SCALING_SECTION, text, out, mod.SCALING_WRITER)  # replaced
    doc = out.read_text(encoding="utf-8")
    assert doc.count(mod.SCALING_SECTION) == 1 and "## Other\n\nkept" in doc
    assert doc.count("<!-- begin: written by bench/allocator.py --eviction-scaling") == 1


def test_the_step_reading_times_begin_allocate_and_finish_together():
    # adaptive's shadow caches replay each step in begin_step and finish_step: the fourth
    # reading times the whole step, so their work is seen; the allocation readings stay
    # allocate_slots alone.
    mod = load()
    calls = []
    real = mod.KVCacheManager

    class Spy(real):
        def begin_step(self, sid, *a, **kw):
            calls.append(("begin", sid))
            return super().begin_step(sid, *a, **kw)

        def finish_step(self, sid, *a, **kw):
            calls.append(("finish", sid))
            return super().finish_step(sid, *a, **kw)

    stepped = []

    def step_timer(m, sid, tokens, now):
        stepped.append(sid)
        assert ("begin", sid) not in calls  # the timer begins it itself
        return mod.timed_step(m, sid, tokens, now)

    mod.KVCacheManager = Spy
    try:
        out = list(mod.bench_eviction_scaling(8, "adaptive", 2, step_timer=step_timer))
    finally:
        mod.KVCacheManager = real
    assert stepped == ["new4", "new5"]  # after 2 at one instant and 2 apart
    assert ("begin", "new4") in calls and ("finish", "new5") in calls
    assert len(out[-1]) == 4 and out[-1][3] > 0


def test_profile_names_the_policy_search_per_allocation():
    text = load().profile_eviction(8, "ttl", repeat=4, top=200)
    head, _, *rows = text.splitlines()
    assert head.startswith("ttl at 8 paused sessions, the cheaper 2 of 4 allocations")
    assert any("search.py:" in r and r.endswith(" choose_victims") for r in rows)


def test_policy_specs_with_constants_run_side_by_side_and_lru_is_required():
    mod = load()
    load_bench("policies")  # the spec parser eviction_scaling borrows
    specs = ("lru", "adaptive", "adaptive[shadow_share=1]")
    lines, figures = mod.eviction_scaling([8], repeat=1, policies=specs)
    assert set(figures) == set(specs)
    assert "| paused sessions | lru | adaptive | adaptive[shadow_share=1] | worst / lru |" in lines
    assert isinstance(mod.build("adaptive[shadow_share=1]"), AdaptivePolicy)
    assert mod.build("ttl") == "ttl"
    with pytest.raises(ValueError, match="lru"):
        mod.eviction_scaling([8], repeat=1, policies=("ttl",))


def scaling_args(**given) -> argparse.Namespace:
    """bench/allocator.py --eviction-scaling's arguments, tiny counts, `given` over them."""
    args = dict(paused="8", repeat=1, policies=None, instructions=None, cache_misses=None,
                write=False, write_results=False, json=None)
    return argparse.Namespace(**(args | given))


def untimed(mod, monkeypatch) -> None:
    """Any timed run from here on fails the test: the flags must be refused before it."""
    def timed(*a, **kw):
        raise AssertionError("timed before the flags were checked")
    monkeypatch.setattr(mod, "eviction_scaling", timed)
    monkeypatch.setattr(counted_by(), "instruction_counts", timed)


@pytest.mark.parametrize("flag", ["instructions", "cache_misses"])
@pytest.mark.parametrize("value", ["4k", "4000,x", "0", ","])
def test_a_bad_counts_list_is_refused_before_timing_naming_its_flag(monkeypatch, flag, value):
    mod = load()
    untimed(mod, monkeypatch)
    monkeypatch.setattr(counted_by().shutil, "which", lambda name: "/usr/bin/valgrind")
    name = "--" + flag.replace("_", "-")
    with pytest.raises(SystemExit, match=f"^{name} takes comma-separated integers") as e:
        mod.scaling_main(scaling_args(**{flag: value}))
    assert repr(value) in str(e.value)


@pytest.mark.parametrize("flag", ["instructions", "cache_misses"])
def test_missing_valgrind_is_found_before_timing_and_names_the_flag_given(monkeypatch, flag):
    mod = load()
    untimed(mod, monkeypatch)
    monkeypatch.setattr(counted_by().shutil, "which", lambda name: None)
    name = "--" + flag.replace("_", "-")
    other = "--cache-misses" if flag == "instructions" else "--instructions"
    with pytest.raises(SystemExit, match=f"^{name} counts with valgrind") as e:
        mod.scaling_main(scaling_args(**{flag: "4000"}))
    assert other not in str(e.value)


@pytest.mark.parametrize(("value", "limit", "text"), [
    (1.234, 2.0, "1.23x"), (2.3, 2.0, "2.30x"), (2.004, 2.0, "2.004x"), (1.996, 2.0, "1.996x"),
    (2.0004, 2.0, "2.0004x"), (1.9996, 2.0, "1.9996x"), (2.0, 2.0, "2.000x"),
    (1.504, 1.5, "1.504x"), (2.004, 1.5, "2.00x")])
def test_a_ratio_that_rounds_to_its_goals_limit_shows_which_side_it_is(value, limit, text):
    assert load().ratio(value, limit) == text


def test_the_tables_and_verdicts_print_a_ratio_near_the_limit_past_two_decimals():
    mod = load()
    figures = {"lru": {4000: [1000.0]}, "ttl": {4000: [2003.0]}}
    assert "| 4,000 | 1,000 | 2,003 | 2.003x |" in mod._table(
        figures, [4000], ("lru", "ttl"), 0, "{:,.0f}")
    assert mod.scaling_goals(figures, [4000], 0) == [
        "- every policy <= 2x lru at 4,000 paused sessions: **missed** (worst 2.003x; "
        "over it: ttl 2.003x)."]


def test_sweep_mib_sizes_the_cold_read_and_refuses_less_than_one(monkeypatch):
    """--sweep-mib replaces the 64 MiB read before each timed call (a host whose L3 is
    larger than 32 MiB needs twice its L3 to leave the calls cold); 0 is refused first."""
    mod = load()
    alloc = load_bench("allocator")
    seen = []
    monkeypatch.setattr(mod, "scaling_main", lambda args: seen.append(len(mod.SWEEP)))
    monkeypatch.setattr("sys.argv", ["allocator.py", "--eviction-scaling", "--sweep-mib", "2"])
    alloc.main()
    assert seen == [2 << 20]
    monkeypatch.setattr("sys.argv", ["allocator.py", "--eviction-scaling", "--sweep-mib", "0"])
    with pytest.raises(SystemExit, match="^--sweep-mib must be at least 1, got 0"):
        alloc.main()
    assert seen == [2 << 20]
