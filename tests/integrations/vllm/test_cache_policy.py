"""KVSagaCachePolicy inside vLLM's own CPUOffloadingManager (loaded by module path, as vLLM's
OffloadingConnector loads it): offloaded chunks are evicted in kvsaga's order."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key  # noqa: E402
from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager  # noqa: E402

from kvsaga.integrations.vllm import CACHE_POLICY_CLASS, CACHE_POLICY_MODULE  # noqa: E402


def _manager(policy: str, chunks: int) -> CPUOffloadingManager:
    if policy == "lru":
        return CPUOffloadingManager(chunks, cache_policy="lru")
    return CPUOffloadingManager(
        chunks, cache_policy=policy, cache_policy_module_path=CACHE_POLICY_MODULE
    )


def _keys(tag: str, n: int):
    return [make_offload_key(f"{tag}-{i}".encode().ljust(32, b"."), 0) for i in range(n)]


def _store(mgr: CPUOffloadingManager, req: str, keys, hint: dict | None) -> ReqContext:
    """One request offloads its blocks (head first) and finishes, as the connector drives it."""
    ctx = ReqContext(req, kv_transfer_params={"kvsaga": hint} if hint is not None else None)
    for pos, k in enumerate(keys):
        ctx.set_offload_key_position(k, (pos + 1) * 16)
    mgr.on_new_request(ctx)
    mgr.touch(keys, ctx)
    out = mgr.prepare_store(keys, ctx)
    assert out is not None, "the store could not evict enough chunks"
    mgr.complete_store(out.keys_to_store, ctx)
    mgr.on_request_finished(ctx)
    return ctx


def _resident(mgr, keys) -> int:
    probe = ReqContext("probe")
    return sum(mgr.lookup(k, probe) is LookupResult.HIT for k in keys)


@pytest.mark.parametrize("policy", [CACHE_POLICY_CLASS, "KVSagaGraphCachePolicy"])
def test_paused_session_outlives_ended_and_anonymous_chunks(policy):
    """A (paused on a short tool) stored first, so LRU evicts it first; kvsaga evicts the
    ended session B's chunks instead."""
    a, b, c, d = _keys("a", 4), _keys("b", 4), _keys("c", 2), _keys("d", 4)
    results = {}
    for name in ("lru", policy):
        mgr = _manager(name, 10)
        _store(mgr, "a1", a, {"session_id": "A", "tool": "run_tests", "expected_s": 5})
        _store(mgr, "b1", b, {"session_id": "B", "last_step": True})
        _store(mgr, "c1", c, None)
        _store(mgr, "d1", d, {"session_id": "D", "tool": "search", "expected_s": 5})
        results[name] = _resident(mgr, a)
    assert results["lru"] == 0  # plain LRU drops the oldest: the paused session
    assert results[policy] == 4  # kvsaga dropped B (ended) instead


def test_ttl_drops_the_longer_pause_first_and_tails_first():
    """Two paused sessions, one back in 1 s, one in an hour: pressure takes the hour-long
    one's chunks, tail first, and leaves the other whole."""
    soon, late = _keys("soon", 4), _keys("late", 4)
    for order in ((soon, late), (late, soon)):
        mgr = _manager(CACHE_POLICY_CLASS, 8)
        for keys in order:
            sid, pause = ("S", 1.0) if keys is soon else ("L", 3600.0)
            _store(mgr, f"r-{sid}", keys, {"session_id": sid, "tool": "t", "expected_s": pause})
        _store(mgr, "new", _keys("new", 2), None)
        assert _resident(mgr, soon) == 4
        kept = [mgr.lookup(k, ReqContext("p")) is LookupResult.HIT for k in late]
        assert kept == [True, True, False, False]


def test_protected_and_pinned_chunks_are_never_evicted_and_failure_changes_nothing():
    mgr = _manager(CACHE_POLICY_CLASS, 4)
    a = _keys("a", 4)
    ctx = _store(mgr, "a1", a, {"session_id": "A", "tool": "t", "expected_s": 1})
    mgr.prepare_load(a[:3], ctx)  # three chunks pinned by a load in flight
    assert mgr.prepare_store(_keys("x", 2), ReqContext("x")) is None
    assert _resident(mgr, a) == 4  # nothing was evicted by the failed store
    out = mgr.prepare_store(_keys("y", 1), ReqContext("y"))
    assert out is not None and out.evicted_keys == [a[3]]
    mgr.complete_load(a[:3], ctx)


def test_reset_and_malformed_hint():
    mgr = _manager(CACHE_POLICY_CLASS, 4)
    _store(mgr, "bad", _keys("bad", 2), {"session_id": 5})  # ignored: plain cache
    assert _resident(mgr, _keys("bad", 2)) == 2
    mgr.reset_cache()
    assert _resident(mgr, _keys("bad", 2)) == 0
    _store(mgr, "after", _keys("n", 4), {"session_id": "N", "tool": "t"})
    assert _resident(mgr, _keys("n", 4)) == 4


def test_the_two_classes_rank_with_ttl_and_graph():
    """`KVSagaCachePolicy` is ttl whatever kvsaga's DEFAULT_POLICY is (graph, ttl from
    dfea371 until its revert; graph is what `KVSagaGraphCachePolicy` offers): the two
    differ."""
    from kvsaga.integrations.vllm.cache_policy import KVSagaCachePolicy, KVSagaGraphCachePolicy
    from kvsaga.policy import make_policy

    assert CACHE_POLICY_CLASS == "KVSagaCachePolicy"
    for cls, name in ((KVSagaCachePolicy, "ttl"), (KVSagaGraphCachePolicy, "graph")):
        assert cls.policy_name == name
        assert type(cls(8).policy) is type(make_policy(name))


def _policy(mgr: CPUOffloadingManager):
    return mgr._policy


def test_chunks_never_stored_leave_no_owner_and_an_ended_id_starts_again():
    """A request whose store finds no room (every chunk pinned by a store in flight) files
    no owner for the chunks it never stored (before, each such key stayed in the policy's
    owner map for good); and a session id reused after its last step is a new session, not
    anonymous cache for ever."""
    mgr = _manager(CACHE_POLICY_CLASS, 4)
    pol = _policy(mgr)
    held = ReqContext("held", kv_transfer_params={"kvsaga": {"session_id": "H", "tool": "t",
                                                              "expected_s": 5}})
    keys = _keys("h", 4)
    mgr.on_new_request(held)
    assert mgr.prepare_store(keys, held) is not None  # in flight: pinned, not yet complete
    late = _keys("late", 2)
    ctx = ReqContext("late", kv_transfer_params={"kvsaga": {"session_id": "L", "tool": "t",
                                                             "expected_s": 5}})
    mgr.on_new_request(ctx)
    mgr.touch(late, ctx)
    assert mgr.prepare_store(late, ctx) is None  # no room: nothing stored
    mgr.on_request_finished(ctx)
    assert not any(k in pol._owner for k in late)
    mgr.complete_store(keys, held)
    mgr.on_request_finished(held)
    assert all(pol._owner[k][0] == "H" for k in keys)
    mgr.reset_cache()
    first, again = _keys("e1", 2), _keys("e2", 2)
    _store(mgr, "e1", first, {"session_id": "E", "last_step": True})
    assert "E" in pol._ended and all(pol._owner[k][0] is None for k in first)
    _store(mgr, "e2", again, {"session_id": "E", "tool": "t", "expected_s": 5})
    assert "E" not in pol._ended and all(pol._owner[k][0] == "E" for k in again)


def _lifecycle(pol) -> list:
    """Record the kvsaga policy's lifecycle calls (name, session id) into the list returned
    (`session_forgotten` of the ttl policy calls its own `session_ended`: FORGOTTEN)."""
    calls: list = []
    for name in ("step_started", "step_finished", "session_ended", "session_forgotten"):
        told = getattr(pol.policy, name)

        def record(session, *a, _told=told, _name=name, **k):
            calls.append((_name, session.session_id))
            return _told(session, *a, **k)

        setattr(pol.policy, name, record)
    return calls


FORGOTTEN = [("session_forgotten", "S"), ("session_ended", "S")]


def _children(mgr, n: int) -> list[ReqContext]:
    """vLLM's n children of request `p-abcd1234` (ids `{i}_{parent}`), of session S."""
    hint = {"kvsaga": {"session_id": "S", "tool": "t", "expected_s": 30}}
    kids = [ReqContext(f"{i}_p-abcd1234", kv_transfer_params=hint) for i in range(n)]
    for c in kids:
        mgr.on_new_request(c)
    return kids


def _stores_nothing(mgr, ctx: ReqContext) -> None:
    """Request `ctx` offers one chunk of its own and its store fails: the tier saw it (its
    `touch`, a key at its finish), yet it leaves no chunk."""
    (key,) = _keys(f"failed-{ctx.req_id}", 1)
    ctx.set_offload_key_position(key, 16)
    out = mgr.prepare_store([key], ctx)
    assert out is not None and out.keys_to_store == [key]
    mgr.complete_store([key], ctx, success=False)


def test_a_late_child_of_a_forgotten_session_adds_no_step():
    """An n = 2 step that stores nothing: the first child's finish ends the step and S,
    holding no chunk, is forgotten. The second (late) child was then a step of its own on a
    new record (started, finished and forgotten again); it adds nothing now."""
    mgr = _manager(CACHE_POLICY_CLASS, 8)
    pol = _policy(mgr)
    calls = _lifecycle(pol)
    first, late = _children(mgr, 2)
    for c in (first, late):
        _stores_nothing(mgr, c)
        mgr.on_request_finished(c)
    assert calls == [("step_started", "S"), ("step_finished", "S"), *FORGOTTEN]
    assert "S" not in pol._sessions and not pol._running and not pol._owner


def test_a_late_child_filing_chunks_under_a_forgotten_session_keeps_them_the_sessions():
    """The second child stores a chunk of its own after S was forgotten: its store adds no
    step, but at its finish the chunk is S's, so S gets a record again (a step of its own,
    as a later step of a forgotten id): no chunk is owned by a session the policy has no
    record of."""
    mgr = _manager(CACHE_POLICY_CLASS, 8)
    pol = _policy(mgr)
    calls = _lifecycle(pol)
    first, late = _children(mgr, 2)
    _stores_nothing(mgr, first)
    mgr.on_request_finished(first)
    (key,) = _keys("own", 1)
    late.set_offload_key_position(key, 16)
    mgr.touch([key], late)
    assert mgr.prepare_store([key], late) is not None
    mgr.complete_store([key], late)
    assert calls == [("step_started", "S"), ("step_finished", "S"), *FORGOTTEN]
    mgr.on_request_finished(late)
    assert calls[4:] == [("step_started", "S"), ("step_finished", "S")]
    assert pol._owner[key] == ("S", 0) and pol._owned == {"S": 1} and "S" in pol._sessions
    assert not pol.policy.views["S"].running and not pol._running
