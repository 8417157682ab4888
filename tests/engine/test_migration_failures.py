"""A session migration between bundled engines either moves the true K/V or changes nothing.

Review findings (session 42), both giving other tokens silently with `check_integrity` passing:

- A failed `import_session` (its host-tier copy plan failing, or the write of the K/V) left
  the session open and paused on the importer, its blocks indexed over bytes never written,
  and the failed plan's host copies indexed though never written: the next step of that
  session, or of a session whose blocks the import had offloaded, hit garbage.
- `export_session` waited only on the plan it submitted itself, not on the engine's plans
  still copying (a resume hint's): it shipped the bytes of an offload not yet done (or
  failed), and the importer continued the session with other tokens.
"""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from kvsaga import kernels
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.migration import export_session, import_session, plan_export
from tests.policy_hooks import CachedFails

GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
BLOCK_BYTES = 8192  # the tiny model's KV block (16 tokens)
P_S = [(7 * i + 3) % 200 + 2 for i in range(50)]  # session s: 3 full blocks once answered
P_T = [(11 * i + 5) % 200 + 2 for i in range(100)]  # session t: 6 full blocks


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


class CopyHook:
    """The transfer engine's delay hook (run before each block copy on its worker): raises
    at the first copy after `fail()`, or sleeps before each copy while `slow`."""

    def __init__(self) -> None:
        self.failing = False
        self.slow = 0.0

    def fail(self) -> None:
        self.failing = True

    def __call__(self) -> None:
        if self.failing:
            self.failing = False
            raise RuntimeError("simulated copy failure")
        if self.slow:
            time.sleep(self.slow)


def ticks():
    """A clock that advances 10 ms a call: the policy's choices do not depend on how fast
    the machine runs."""
    n = itertools.count()
    return lambda: next(n) / 100


def make(model_dir, hook=None, gpu_blocks=8, host_blocks=32) -> LLMEngine:
    engine = LLMEngine(str(model_dir), device="cpu", progress=False,
                       kv_memory_bytes=gpu_blocks * BLOCK_BYTES,
                       host_memory_bytes=host_blocks * BLOCK_BYTES,
                       transfer_delay=hook, clock=ticks())
    assert engine.spec.bytes_per_block == BLOCK_BYTES
    return engine


def run(engine: LLMEngine, sid: str, prompt: list[int]):
    req = engine.add_request(prompt, GREEDY, session_id=sid)
    while engine.has_unfinished():
        engine.step()
    return engine.final_output(req)


def settled(engine: LLMEngine) -> None:
    """Nothing of a failed import stays: integrity holds, no block is referenced, and no
    plan is left to wait on or to drop."""
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0
    assert engine.copies.pending == [] and engine.copies.failed_plans == []


@pytest.fixture(scope="module")
def reference(model_dir):
    """s's and t's first and second steps on one engine with room for everything: the
    tokens a correct cache gives."""
    engine = make(model_dir, gpu_blocks=32)
    out_s = run(engine, "s", P_S)
    out_t = run(engine, "t", P_T)
    s2 = P_S + out_s.token_ids + [5, 6, 7, 8, 9]
    t2 = P_T + out_t.token_ids + [9, 9]
    return {"s1": out_s.token_ids, "t1": out_t.token_ids, "s2": s2, "t2": t2,
            "s2_out": run(engine, "s", s2).token_ids, "t2_out": run(engine, "t", t2).token_ids}


@pytest.fixture(scope="module")
def exported(model_dir, reference):
    """s's first step, exported from an engine with room (its KV on the GPU tier)."""
    a = make(model_dir, gpu_blocks=32)
    assert run(a, "s", P_S).token_ids == reference["s1"]
    exp = export_session(a, "s")
    assert exp.num_blocks == 3
    return exp


def test_a_failed_copy_during_import_takes_the_import_back(model_dir, reference, exported):
    """The importer's GPU tier is full of paused t: the import evicts t's blocks (offloads to
    the host tier) and the copy fails. Before the fix s stayed open with its 3 blocks indexed
    over unwritten bytes (its next step took 48 cached tokens and answered other tokens),
    and t's failed offload stayed in the host index (t's resume loaded garbage)."""
    hook = CopyHook()
    b = make(model_dir, hook)
    assert run(b, "t", P_T).token_ids == reference["t1"]
    hook.fail()
    with pytest.raises(RuntimeError, match="simulated copy failure"):
        import_session(b, exported)
    assert "s" not in b.manager.sessions
    settled(b)
    # Every block the failed plan was to write is gone from both tiers' indexes: t resumes
    # with its own tokens, s computes its context again and answers as the reference.
    assert run(b, "t", reference["t2"]).token_ids == reference["t2_out"]
    got = run(b, "s", reference["s2"])
    assert got.token_ids == reference["s2_out"]
    settled(b)


def test_a_failed_host_hit_load_during_import_takes_the_import_back(model_dir, reference,
                                                                   exported):
    """The importer holds s's second block in its host tier (u shares s's first two): the
    import takes it as a hit loaded from the host, and that copy plan fails. The import's own
    blocks are taken back before the failed loads are dropped (as `step` discards its
    chunks first), so that neither is left indexed over unwritten bytes."""
    hook = CopyHook()
    b = make(model_dir, hook)
    run(b, "u", P_S[:36])  # 2 full blocks of s's context
    assert run(b, "t", P_T).token_ids == reference["t1"]  # pushes u's blocks to the host
    m = b.manager
    h = exported.block_hashes[1]  # (the policy kept the first on the GPU)
    assert m.index.get(h) is None and m.host.index.get(h) is not None
    hook.fail()
    with pytest.raises(RuntimeError, match="simulated copy failure"):
        import_session(b, exported)
    assert "s" not in b.manager.sessions and "u" in b.manager.sessions
    settled(b)
    assert run(b, "t", reference["t2"]).token_ids == reference["t2_out"]
    assert run(b, "s", reference["s2"]).token_ids == reference["s2_out"]
    settled(b)


def test_a_failed_write_during_import_changes_nothing(model_dir, reference, exported,
                                                      monkeypatch):
    """The scatter of the K/V raises (no copy involved). The importer shares s's first two
    blocks (u's): those stay cached, the block the import allocated is freed and unindexed,
    and the pool is as before the import. Before the fix s stayed paused with num_computed
    48 over an unwritten third block."""
    b = make(model_dir, gpu_blocks=16)
    run(b, "u", P_S[:36])
    pool, index = b.manager.pool, b.manager.index
    before = (pool.num_free, sorted(index.items()), sorted(b.manager.sessions))

    def boom(*args, **kwargs):
        raise RuntimeError("simulated scatter failure")

    with monkeypatch.context() as m:
        m.setattr(kernels, "scatter_blocks", boom)
        with pytest.raises(RuntimeError, match="simulated scatter failure"):
            import_session(b, exported)
    assert (pool.num_free, sorted(index.items()), sorted(b.manager.sessions)) == before
    settled(b)
    got = run(b, "s", reference["s2"])
    assert got.token_ids == reference["s2_out"]
    assert got.num_cached_tokens == 32  # u's two blocks, not the import's unwritten third
    settled(b)


def test_an_import_after_a_failed_one_succeeds(model_dir, reference, exported):
    hook = CopyHook()
    b = make(model_dir, hook)
    run(b, "t", P_T)
    hook.fail()
    with pytest.raises(RuntimeError):
        import_session(b, exported)
    assert import_session(b, exported) == 48
    settled(b)
    got = run(b, "s", reference["s2"])
    assert got.num_cached_tokens >= 48
    assert got.token_ids == reference["s2_out"]


def test_an_import_whose_pause_hook_raises_is_taken_back(model_dir, reference, exported,
                                                         monkeypatch):
    """Review s49: the pause after the write (`finish_step`, whose policy hook raised) ran
    outside the take-back: s stayed RUNNING on its blocks, owned by no request, and the
    retry was refused ("already exists"). Now the import is taken back as a failed write
    is, and the retry imports it."""
    b = make(model_dir, gpu_blocks=16)
    policy = b.manager.policy
    step_finished = policy.step_finished

    def boom(session, now, hint):
        if session.session_id == "s":
            raise RuntimeError("simulated policy failure")
        step_finished(session, now, hint)

    with monkeypatch.context() as m:
        m.setattr(policy, "step_finished", boom)
        with pytest.raises(RuntimeError, match="simulated policy failure"):
            import_session(b, exported)
    assert "s" not in b.manager.sessions
    settled(b)
    assert import_session(b, exported) == 48
    got = run(b, "s", reference["s2"])
    assert got.num_cached_tokens >= 48
    assert got.token_ids == reference["s2_out"]
    settled(b)


def test_an_import_whose_release_hook_raises_is_taken_back_with_its_error(
        model_dir, reference, exported):
    """Review s49 gatediff finding 4: a pool hook that raised in the pause's release, after
    `step_finished` returned, left the session PAUSED; the take-back's `discard_writes` then
    raised InvalidRequest "no open step", which replaced the policy's error. The error
    propagates now, the session is absent, and the import's blocks are unindexed and
    freed; the retry imports it and continues it as the reference does."""
    policy = CachedFails()
    b = LLMEngine(str(model_dir), device="cpu", progress=False, policy=policy,
                  kv_memory_bytes=16 * BLOCK_BYTES, host_memory_bytes=32 * BLOCK_BYTES,
                  clock=ticks())
    policy.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        import_session(b, exported)
    policy.fail = False
    assert "s" not in b.manager.sessions and list(b.manager.index.items()) == []
    settled(b)
    assert b.manager.stats().num_free_blocks == b.manager.pool.num_blocks
    assert import_session(b, exported) == 48
    got = run(b, "s", reference["s2"])
    assert got.num_cached_tokens >= 48 and got.token_ids == reference["s2_out"]
    settled(b)


def hinted(model_dir, hook: CopyHook, fail: bool = False) -> tuple[LLMEngine, list]:
    """An engine whose GPU tier holds paused t and s, and s's true K/V; then t's resume hint
    evicts s's last block, whose offload runs in the plan the hint starts (which fails at
    its first copy if `fail`)."""
    a = make(model_dir, hook)
    run(a, "t", P_T)
    run(a, "s", P_S)
    m = a.manager
    truth = [a.storage.kv[m.index.get(h)].clone() for h in m.session("s").block_hashes[:3]]
    if fail:
        hook.fail()
    assert a.resume_hint("t") > 0
    assert [t for t, _ in plan_export(m, "s").sources] == ["gpu", "gpu", "host"]
    return a, truth


def imported_continues(model_dir, reference, exp) -> None:
    b = make(model_dir, gpu_blocks=32)
    assert import_session(b, exp) == exp.num_tokens
    got = run(b, "s", reference["s2"])
    assert got.num_cached_tokens >= exp.num_tokens
    assert got.token_ids == reference["s2_out"]


def test_an_export_waits_for_the_copies_in_flight(model_dir, reference):
    """The export reads s's last block from the host tier while the hint's plan is still
    copying it there (slow copies). Before the fix it shipped the bytes the host block held
    before the copy: the importer continued s with other tokens."""
    hook = CopyHook()
    hook.slow = 0.2
    a, truth = hinted(model_dir, hook)
    exp = export_session(a, "s")
    hook.slow = 0.0
    assert exp.num_blocks == 3
    for i in range(3):
        assert torch.equal(exp.kv[i], truth[i])
    settled(a)
    imported_continues(model_dir, reference, exp)


def test_an_export_over_a_failed_copy_raises_and_ships_nothing_unwritten(model_dir,
                                                                         reference):
    """The hint's plan fails: the export raises it (its plans dropped, as a step drops them)
    instead of shipping the host block the offload never wrote; exporting again ships the
    blocks that survived. Before the fix the export succeeded with that block's stale bytes."""
    a, truth = hinted(model_dir, CopyHook(), fail=True)
    with pytest.raises(RuntimeError, match="simulated copy failure"):
        export_session(a, "s")
    settled(a)
    exp = export_session(a, "s")
    assert exp.num_blocks == 2  # the failed offload's block is gone from both tiers
    for i in range(2):
        assert torch.equal(exp.kv[i], truth[i])
    imported_continues(model_dir, reference, exp)


def test_an_import_settles_the_copies_in_flight_first(model_dir, reference, exported):
    """The importer's own resume hint (u, sharing s's first two blocks) starts a plan that
    loads u's second block into a GPU block, indexed at once; that plan fails. Before the
    fix the import took the unwritten block as a hit (it waited only on its own plan), and
    s's K/V on the importer was wrong; now the import raises before it plans, the failed
    plan dropped, and importing again succeeds."""
    hook = CopyHook()
    b = make(model_dir, hook)
    run(b, "u", P_S[:36])
    run(b, "t", P_T)
    m = b.manager
    assert m.index.get(exported.block_hashes[1]) is None
    hook.fail()
    assert b.resume_hint("u") > 0
    assert m.index.get(exported.block_hashes[1]) is not None  # the load's target, unwritten
    with pytest.raises(RuntimeError, match="simulated copy failure"):
        import_session(b, exported)
    assert "s" not in m.sessions
    settled(b)
    assert import_session(b, exported) == 48
    got = run(b, "s", reference["s2"])
    assert got.token_ids == reference["s2_out"]
    assert run(b, "t", reference["t2"]).token_ids == reference["t2_out"]
    settled(b)
