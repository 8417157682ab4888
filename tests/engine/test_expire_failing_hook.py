"""A session the engine's sweep ends as abandoned is ended even where the policy's
`session_ended` hook always raises (`StepOutput._expire_session`, the manager's
`end_session(force=True)`): a one-shot session whose end raised stayed RUNNING with its
blocks for good, the sweep's retry logged at every sweep; a paused idle session's failing
end raised out of `tick` (in kvsaga-serve, out of the engine thread)."""

from __future__ import annotations

import logging

import pytest

from kvsaga.config import KVSpec
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest
from kvsaga.manager import KVCacheManager
from kvsaga.policy import make_policy
from tests.engine.hand_back_helpers import PROMPT
from tests.engine.test_hand_back_stuck_sweep import Clock, always_fail

PARAMS = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)


def _engine(tiny_model_dir, policy, clock) -> LLMEngine:
    return LLMEngine(str(tiny_model_dir("llama_gqa4_untied")), device="cpu", progress=False,
                     kv_memory_bytes=4 << 20, policy=policy, clock=clock, session_idle_s=10.0)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "abandoned session" in r.getMessage()]


def test_a_one_shot_session_whose_end_always_raises_is_swept(tiny_model_dir, caplog):
    caplog.set_level(logging.DEBUG, logger="kvsaga.engine")
    p, clock = make_policy("lru"), Clock()
    e = _engine(tiny_model_dir, p, clock)
    free = e.manager.stats().num_free_blocks
    reqs = [e.add_request(PROMPT, PARAMS) for _ in range(2)]  # one-shot: session None
    for r in reqs:
        always_fail(p, "session_ended", r.session_id)  # (the second wraps the first)
    with pytest.raises(RuntimeError, match="simulated"):
        while e.has_unfinished():
            e.step()
            clock.t += 0.01
    assert e.manager.stats().num_used_blocks > 0
    for _ in range(20):  # many steps and sweeps past the limit
        clock.t += 3.0
        e.tick()
    assert not e._ended
    assert all(r.session_id not in e.manager.sessions for r in reqs)
    assert e.num_expired_sessions == 2
    stats = e.manager.stats()
    assert stats.num_used_blocks == 0
    # every block is back: free, or plain prefix cache anyone may evict
    assert stats.num_free_blocks + stats.num_evictable_blocks == free
    e.manager.check_integrity()
    assert not e.scheduler.core.running
    # the hook's error: one warning for both sessions and every sweep, the rest at debug
    assert len(_warnings(caplog)) == 1, _warnings(caplog)


def test_a_paused_idle_session_whose_end_raises_is_swept_not_raised(tiny_model_dir):
    p, clock = make_policy("lru"), Clock()
    e = _engine(tiny_model_dir, p, clock)
    a = e.add_request(PROMPT, PARAMS, session_id="sA")
    while e.has_unfinished():
        e.step()
        clock.t += 0.01
    assert e.manager.session("sA").state.name == "PAUSED"
    always_fail(p, "session_ended", "sA")
    clock.t += 11.0
    e.tick()  # raised the hook's error out of tick before
    assert "sA" not in e.manager.sessions and e.num_expired_sessions == 1
    assert e.manager.stats().num_used_blocks == 0
    e.manager.check_integrity()
    assert a.finished


@pytest.mark.parametrize("running", [True, False])
def test_forced_end_releases_and_then_raises_the_hook_error(running):
    mgr = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 16)
    free = mgr.stats().num_free_blocks
    mgr.begin_step("s", list(range(10)))
    mgr.allocate_slots("s", 10)
    if not running:
        mgr.finish_step("s")
    always_fail(mgr.policy, "session_ended", "s")
    with pytest.raises(RuntimeError, match="simulated"):  # not forced: nothing changes
        mgr.end_session("s")
    assert "s" in mgr.sessions
    with pytest.raises(InvalidRequest, match="force"):
        mgr.end_session("s", force=1)
    assert "s" in mgr.sessions
    with pytest.raises(RuntimeError, match="simulated"):  # forced: ended, then raised
        mgr.end_session("s", force=True)
    assert "s" not in mgr.sessions
    s = mgr.stats()
    assert s.num_used_blocks == 0 and s.num_free_blocks + s.num_evictable_blocks == free
    mgr.check_integrity()
