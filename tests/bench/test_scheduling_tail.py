"""bench/scheduling_tail.py: the slowest sessions under workflow, beside fcfs+lru's."""

from __future__ import annotations

from tests.bench_scripts import import_bench


def test_the_tail_lists_the_slowest_sessions_under_workflow():
    """bench/scheduling_tail.py on 16 bfcl sessions: the sessions listed are workflow's
    slowest, in order, each beside its own fcfs+lru TCT."""
    scheduling_tail, scheduling, scheduling_bound_gap = import_bench(
        "scheduling_tail", "scheduling", "scheduling_bound_gap")
    observe = scheduling_bound_gap.observe
    sessions = scheduling.trace("bfcl", 101, 2.0, 16)
    orig = scheduling_bound_gap.trace
    scheduling_bound_gap.trace = lambda f, sd, ld: sessions  # observe reads the bench's trace
    try:
        wf = observe("bfcl", 2.0, 0.25, 101, "graph", "workflow", None)
        fcfs = observe("bfcl", 2.0, 0.25, 101, "lru", "fcfs", None)
    finally:
        scheduling_bound_gap.trace = orig
    lines = scheduling_tail.tail_lines(101, {s.id: s for s in sessions}, wf, fcfs, top=3)
    slow = sorted(wf["sessions"], key=lambda sid: -wf["sessions"][sid]["tct"])[:3]
    assert len(lines) == 4 and lines[0].startswith("seed 101: workflow mean")
    for line, sid in zip(lines[1:], slow, strict=True):
        assert line.startswith(f"  {sid}: ")
        assert f"(fcfs+lru {fcfs['sessions'][sid]['tct']:.1f})" in line
