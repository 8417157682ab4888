"""Migrating a session between two bundled engines moves its K/V byte for byte, and the
receiving engine continues it with the same greedy output as the engine it left."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from kvsaga import InvalidRequest  # noqa: E402
from kvsaga.engine.engine import LLMEngine  # noqa: E402
from kvsaga.engine.sampling import SamplingParams  # noqa: E402
from kvsaga.migration import export_session, import_session, plan_export  # noqa: E402
from tests.helpers_models import build_tiny_model  # noqa: E402

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("migrate-tiny"))


def engine(path: Path, **kw) -> LLMEngine:
    kw.setdefault("kv_memory_bytes", 2**20)
    return LLMEngine(path, device="cpu", progress=False, **kw)


def run_step(eng: LLMEngine, sid: str, prompt: list[int], salt: str | None = None):
    req = eng.add_request(prompt, GREEDY, session_id=sid, salt=salt)
    while eng.has_unfinished():
        eng.step()
    return eng.final_output(req)


def block_data(eng: LLMEngine, sid: str, n: int) -> list:
    """K/V of the first n blocks of a paused session, found by hash."""
    mgr = eng.manager
    return [eng.storage.kv[mgr.index.get(h)].clone() for h in mgr.session(sid).block_hashes[:n]]


def test_migrated_session_is_byte_exact_and_continues_identically(tiny_dir: Path):
    a, b = engine(tiny_dir), engine(tiny_dir)
    p1 = [(7 * i + 3) % 200 + 2 for i in range(45)]
    out1 = run_step(a, "s", p1, salt="tenant")
    exported = export_session(a, "s")
    assert exported.num_blocks == (45 + 8 - 1) // 16  # full blocks of prompt + output
    tokens = import_session(b, exported, salt="tenant")
    assert tokens == exported.num_blocks * 16
    b.manager.check_integrity()
    for x, y in zip(block_data(a, "s", exported.num_blocks),
                    block_data(b, "s", exported.num_blocks), strict=True):
        assert torch.equal(x, y)
    p2 = p1 + out1.token_ids + [5, 6, 7, 8, 9]
    ref = run_step(a, "s", p2, salt="tenant")
    got = run_step(b, "s", p2, salt="tenant")
    assert got.num_cached_tokens >= tokens
    assert got.token_ids == ref.token_ids
    for eng in (a, b):
        assert eng.manager.stats().num_used_blocks == 0
        eng.manager.check_integrity()


def test_an_import_the_engine_caches_whole_writes_no_block(tiny_dir: Path):
    """The importer ran the same context under another id (x): every exported block is a
    hit, the last included, none is written, and the session continues as on the exporter
    (until session 45 the last block was written anew into a block its pause freed)."""
    a, b = engine(tiny_dir), engine(tiny_dir)
    p1 = [(3 * i + 5) % 200 + 2 for i in range(40)]
    out1 = run_step(a, "s", p1)
    run_step(b, "x", p1)
    exported = export_session(a, "s")
    n = exported.num_blocks
    assert import_session(b, exported) == n * 16
    assert b.manager.session("s").block_ids == b.manager.session("x").block_ids[:n]
    assert b.manager.stats().num_evicted_blocks == 0
    b.manager.check_integrity()
    p2 = p1 + out1.token_ids + [5, 6, 7]
    assert run_step(b, "s", p2).token_ids == run_step(a, "s", p2).token_ids
    b.manager.check_integrity()


def test_export_reads_offloaded_blocks_from_the_host_tier(tiny_dir: Path):
    bpb = engine(tiny_dir, kv_memory_bytes=2**16).spec.bytes_per_block
    a = engine(tiny_dir, kv_memory_bytes=6 * bpb, host_memory_bytes=16 * bpb)
    p1 = [(5 * i + 1) % 200 + 2 for i in range(40)]
    run_step(a, "s", p1)
    run_step(a, "t", [3] * 60)  # pushes some of s's blocks to the host tier
    tiers = [t for t, _ in plan_export(a.manager, "s").sources]
    assert "host" in tiers
    exported = export_session(a, "s")
    b = engine(tiny_dir)
    import_session(b, exported)
    ref = engine(tiny_dir)  # the same step computed from scratch
    run_step(ref, "s", p1)
    for i, h in enumerate(exported.block_hashes):
        assert torch.equal(exported.kv[i], ref.storage.kv[ref.manager.index.get(h)])
    b.manager.check_integrity()


def test_import_rejects_a_payload_of_the_wrong_shape(tiny_dir: Path):
    a, b = engine(tiny_dir), engine(tiny_dir)
    run_step(a, "s", list(range(2, 40)))
    exported = export_session(a, "s")
    bad = type(exported)(**{**exported.__dict__, "kv": exported.kv[:1]})
    got = re.escape(f"got a tensor of shape {tuple(exported.kv[:1].shape)}")
    with pytest.raises(InvalidRequest, match=f"carries no K/V.*{got}"):
        import_session(b, bad)
    assert "s" not in b.manager.sessions
    b.manager.check_integrity()


def test_malformed_engine_imports_are_refused(tiny_dir: Path):
    """An export that is not one, or whose K/V is not a tensor: InvalidRequest, and the
    engine unchanged (they raised AttributeError from `export.kv.shape`; fuzz3 lane)."""
    a, b = engine(tiny_dir), engine(tiny_dir)
    run_step(a, "s", list(range(5, 45)))
    good = export_session(a, "s")
    before = (b.manager.stats(), sorted(b.manager.sessions), b.storage.kv.clone())
    for bad in ({"session_id": "s"}, None,
                dataclasses.replace(good, kv=good.kv.tolist()),
                dataclasses.replace(good, kv=good.kv.numpy())):
        with pytest.raises(InvalidRequest, match="SessionExport|K/V"):
            import_session(b, bad)
        stats, sessions, kv = before
        assert b.manager.stats() == stats and sorted(b.manager.sessions) == sessions
        assert torch.equal(b.storage.kv, kv)
    assert import_session(b, good) == good.num_tokens
    b.manager.check_integrity()


def test_engine_import_names_a_layout_mismatch_and_checks_fields_first(tiny_dir: Path):
    """An export from another block size is refused for its layout, as `plan_import`
    refuses it, not as a K/V of the wrong shape; a malformed block_hashes is an
    InvalidRequest, not a TypeError (the tensor check read `num_blocks` first)."""
    a = engine(tiny_dir)
    run_step(a, "s", list(range(2, 50)))
    good = export_session(a, "s")
    for b, bad, match in (
        (engine(tiny_dir, block_size=32), good, "exported KV layout .*block_size 16.*32"),
        (engine(tiny_dir), dataclasses.replace(good, block_hashes=None), "block_hashes"),
        (engine(tiny_dir), dataclasses.replace(good, block_hashes=7), "block_hashes"),
    ):
        before = (b.manager.stats(), b.storage.kv.clone())
        with pytest.raises(InvalidRequest, match=match):
            import_session(b, bad)
        assert "s" not in b.manager.sessions and b.manager.stats() == before[0]
        assert torch.equal(b.storage.kv, before[1])
        b.manager.check_integrity()
