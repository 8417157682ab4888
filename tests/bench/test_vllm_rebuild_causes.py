"""bench/vllm_rebuild_causes.py's bookkeeping (no vLLM needed): a session's rebuilt blocks
are charged to what released its retained blocks since its last finish."""

from __future__ import annotations

from tests.bench_scripts import load_bench


def test_rebuilt_blocks_are_charged_to_the_releases_since_the_sessions_last_finish() -> None:
    mod = load_bench("vllm_rebuild_causes")
    c = mod.RebuildCauses()
    c.finished("a", 10)
    c.release("a", "shrink", 10)
    c.allocated("a", 2)  # 8 of its 10 blocks not found again
    c.finished("b", 6)
    c.release("b", "expired", 3)
    c.release("b", "pressure:admit", 3)
    c.allocated("b", 0)  # two causes: mixed
    c.finished("d", 5)
    c.allocated("d", 5)  # everything found: nothing rebuilt
    c.finished("e", 4)
    c.allocated("e", 1)  # lost without a release of ours (vLLM's LRU)
    c.allocated("f", 0)  # never finished a step: a first step rebuilds nothing
    c.release("a", "pressure:headroom", 0)  # nothing released: not counted
    assert dict(c.rebuilt) == {"shrink": 8, "mixed": 6, "unreleased": 3}
    assert dict(c.released) == {"shrink": 10, "expired": 3, "pressure:admit": 3}
    assert c.row(7).startswith("| 7 | 17 | 8 (10) | 0 | 0 (3) | 0 (3) | 0 | 0 | 6 | 3 |")


def test_shrink_demotions_are_counted_by_how_the_session_was_admitted() -> None:
    mod = load_bench("vllm_rebuild_causes")
    c = mod.RebuildCauses()
    c.admitted("a", "waited")
    c.admitted("b", "room")
    c.admitted("a", "fit")  # admitted again: its latest admission counts
    for sid in ("a", "b", "z"):
        c.demoted(sid)
    assert dict(c.demoted_by) == {"fit": 1, "room": 1, "unknown": 1}
    assert c.row(0).endswith("| fit 1, room 1, unknown 1 |")
