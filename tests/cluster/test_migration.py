"""Session KV export/import between managers (bookkeeping) and engines (byte-exact K/V)."""

from __future__ import annotations

import pytest

from kvsaga import InvalidRequest, KVCacheManager, KVSpec, OutOfBlocks, UnknownSession
from kvsaga.migration import SessionExport, plan_export, plan_import

SPEC = KVSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4)


def paused(mgr: KVCacheManager, sid: str, tokens: list[int], salt: str | None = None) -> None:
    mgr.begin_step(sid, tokens, salt=salt)
    mgr.allocate_slots(sid, len(tokens) - mgr.num_computed_tokens(sid))
    mgr.finish_step(sid)


def snapshot(mgr: KVCacheManager):
    st = mgr.stats()
    return (st.num_free_blocks, st.num_evictable_blocks, st.num_used_blocks,
            sorted(mgr.sessions), len(mgr.index))


def test_export_names_the_full_blocks_of_a_paused_session():
    mgr = KVCacheManager(SPEC, 16)
    paused(mgr, "s", list(range(10)))  # 2 full blocks + a partial tail
    plan = mgr.export_session("s")
    e = plan.export
    assert (e.num_blocks, e.token_ids) == (2, list(range(8)))
    assert [t for t, _ in plan.sources] == ["gpu", "gpu"]
    assert e.block_hashes == mgr.session("s").block_hashes[:2]
    mgr.begin_step("s", list(range(12)))
    with pytest.raises(InvalidRequest, match="step open"):
        plan_export(mgr, "s")
    with pytest.raises(UnknownSession):
        plan_export(mgr, "nope")


def test_export_stops_at_the_first_evicted_block_and_reads_host_copies():
    mgr = KVCacheManager(SPEC, 4, num_host_blocks=8)
    paused(mgr, "s", list(range(16)))  # 4 full blocks fill the pool
    paused(mgr, "t", [99] * 8)  # evicts (offloads) s's two tail blocks (released first)
    plan = plan_export(mgr, "s")
    assert [t for t, _ in plan.sources] == ["gpu", "gpu", "host", "host"]
    # Without a host tier the evicted blocks end the run.
    mgr2 = KVCacheManager(SPEC, 4)
    paused(mgr2, "s", list(range(16)))
    paused(mgr2, "t", [99] * 8)
    assert plan_export(mgr2, "s").export.num_blocks == 2


def test_import_reuses_shared_blocks_and_pauses_the_session():
    src, dst = KVCacheManager(SPEC, 16), KVCacheManager(SPEC, 16)
    paused(src, "s", list(range(13)), salt="t1")
    paused(dst, "other", list(range(8)) + [50, 51], salt="t1")  # shares the first 2 blocks
    e = src.export_session("s").export
    first, blocks = dst.import_session(e, salt="t1")
    assert first == 2 and len(blocks) == 1  # blocks 0-1 were already cached on dst
    s = dst.session("s")
    assert not s.is_running and s.num_computed == 12
    dst.check_integrity()
    start = dst.begin_step("s", list(range(14)))
    assert start.num_cached_tokens == 12  # the next step hits the whole import
    dst.check_integrity()


def test_an_import_the_importer_caches_whole_writes_nothing(core):
    """Every exported block the importer caches is reused, the last one too: an import
    computes no token. Until session 45 the import went through begin_step, which leaves
    the last token to compute, so the last block was handed out to be written anew (a
    duplicate that the pause freed), here evicting x's copy of it to make room."""
    src = KVCacheManager(SPEC, 8, core=core.name)
    dst = KVCacheManager(SPEC, 4, core=core.name)  # full: x's 3 blocks and y's, cached
    paused(src, "s", list(range(12)))
    paused(dst, "x", list(range(12)))
    paused(dst, "y", [99] * 4)
    e = src.export_session("s").export
    first, blocks = dst.import_session(e)
    assert (first, blocks) == (3, [])
    assert dst.session("s").block_ids == dst.session("x").block_ids
    assert dst.stats().num_evicted_blocks == 0 and dst.stats().num_evictable_blocks == 4
    dst.check_integrity()
    assert dst.begin_step("s", list(range(13))).num_cached_tokens == 12
    dst.check_integrity()


def test_import_rejects_bad_input_and_changes_nothing():
    src = KVCacheManager(SPEC, 16)
    paused(src, "s", list(range(12)), salt="a")
    e = src.export_session("s").export
    dst = KVCacheManager(SPEC, 16)
    before = snapshot(dst)
    with pytest.raises(InvalidRequest, match="another salt"):
        plan_import(dst, e, salt="b")
    with pytest.raises(InvalidRequest, match="layout"):
        plan_import(KVCacheManager(KVSpec(2, 2, 16, block_size=8), 16), e, salt="a")
    forged = SessionExport(**{**e.__dict__, "token_ids": [7] * 12})
    with pytest.raises(InvalidRequest, match="hashes do not match"):
        plan_import(dst, forged, salt="a")
    with pytest.raises(InvalidRequest, match="SessionExport"):
        plan_import(dst, {"session_id": "s"}, salt="a")
    assert snapshot(dst) == before
    dst.check_integrity()
    paused(dst, "s", [1, 2, 3], salt="a")
    with pytest.raises(InvalidRequest, match="already exists"):
        plan_import(dst, e, salt="a")


def test_import_out_of_blocks_changes_nothing():
    src = KVCacheManager(SPEC, 16)
    paused(src, "s", list(range(16)))
    e = src.export_session("s").export
    dst = KVCacheManager(SPEC, 4)
    dst.begin_step("busy", [5] * 8)
    dst.allocate_slots("busy", 8)  # 2 of 4 blocks referenced by a running step
    before = snapshot(dst)
    with pytest.raises(OutOfBlocks):
        plan_import(dst, e)
    assert snapshot(dst) == before
    dst.check_integrity()


def test_empty_export_imports_nothing():
    mgr = KVCacheManager(SPEC, 8)
    paused(mgr, "s", [1, 2, 3])  # no full block
    e = plan_export(mgr, "s").export
    assert e.num_blocks == 0
    assert plan_import(KVCacheManager(SPEC, 8), e) == (0, [])
