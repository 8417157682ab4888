"""A moved session's hand-over between two replicas is two-phase (review session 45, repros
r4_refused_import_loses_source, r7_stale_copy_move_back, r8_timeout_log): the sender keeps
the session, held, until the receiver commits or aborts, so an import the receiver refuses
loses nothing; a hold nobody ends runs out; a copy a failed pull left behind is replaced
by the newer one when the session moves back; a timed-out pull is logged as one."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import deployment, handover  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from tests.cluster.ray_replicas import SID, SPEC, Pinned, copy_by_bookkeeping, paused, stub_replica  # noqa: E402
from tests.cluster.ray_replicas import BookkeepingEngine as Engine  # noqa: E402


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    copy_by_bookkeeping(monkeypatch)


def pair(monkeypatch, b_blocks: int = 64, pinned=Pinned, app=None):
    """Replica a holding paused session `SID` (20 tokens, 5 blocks; 3 steps), replica b
    (server app `app`) with `b_blocks` blocks and nothing, and b's pinned calls delivered
    to a."""
    ma, mb = KVCacheManager(SPEC, 64), KVCacheManager(SPEC, b_blocks)
    paused(ma)
    ra, rb = SessionRegistry(tokenizer=None), SessionRegistry(tokenizer=None)
    ra.open(SID).num_steps = 3
    a, b = stub_replica("a", Engine(ma), ra), stub_replica("b", Engine(mb), rb, app)
    handle = pinned(a)
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: handle)
    return a, b, handle


def test_a_refused_import_leaves_the_session_with_its_sender(monkeypatch):
    a, b, handle = pair(monkeypatch, b_blocks=4)  # no room on b for 5 blocks
    err = asyncio.run(b._pull(SID, "t1", "a", True))
    ma, ra = a.app.state.engine.manager, a._sessions
    assert SID in ma.sessions  # before the fix: ended on a before b tried the import
    assert ra.get(SID) is not None and ra.get(SID).in_flight is None  # free again
    assert SID not in b.app.state.engine.manager.sessions and b._sessions.get(SID) is None
    assert [m for m, _ in handle.asked] == ["export_session", "finish_handover"]
    assert handle.asked[1][1]["commit"] is False
    # The answer has the gateway take the session back to a (`move_refused`).
    assert err.status == 503 and err.code == "session_move_failed"
    assert err.headers[deployment.PULL_REFUSED_HEADER] == "a"
    ma.check_integrity()


def test_the_refusal_reaches_the_client_as_a_retry(monkeypatch):
    a, b, _ = pair(monkeypatch, b_blocks=4)
    call = {"kvsaga": 1, "method": "POST", "path": "/v1/completions", "headers": [],
            "body": b"{}", "engine_sid": SID, "salt": "t1",
            "route": {"replica": "b", "moved_from": "a", "migrate": True, "reason": "steal"}}

    async def go():
        return [m async for m in b.handle(call)]

    msgs = asyncio.run(go())
    assert msgs[0]["status"] == 503
    assert (b"x-kvsaga-pull-refused", b"a") in msgs[0]["headers"]
    err = json.loads(b"".join(m.get("body", b"") for m in msgs[1:]))["error"]
    assert err["code"] == "session_move_failed" and "'s'" in err["message"]


def test_the_sender_holds_the_session_until_the_commit(monkeypatch):
    a, b, _ = pair(monkeypatch)
    ma, ra = a.app.state.engine.manager, a._sessions

    async def go():
        got = await a.export_session({"pin": "a", "engine_sid": SID, "migrate": True})
        # Held: still on a (before the fix: ended already), a step of it there is
        # answered 409 and the idle sweep passes it over.
        assert SID in ma.sessions and ra.get(SID).in_flight == got.id
        assert not SessionRegistry.is_idle(ra.get(SID), -1.0)
        assert got.context["num_steps"] == 3 and got.exported.num_blocks == 5
        assert await a.finish_handover({"pin": "a", "engine_sid": SID, "id": got.id,
                                        "commit": True}) is True

    asyncio.run(go())
    assert SID not in ma.sessions and ra.get(SID) is None and a._handovers == {}
    ma.check_integrity()


def test_a_pull_that_commits_moves_the_session(monkeypatch):
    a, b, _ = pair(monkeypatch)
    assert asyncio.run(b._pull(SID, "t1", "a", True)) is None
    assert SID not in a.app.state.engine.manager.sessions and a._sessions.get(SID) is None
    assert SID in b.app.state.engine.manager.sessions
    assert b._sessions.get(SID).num_steps == 3 and b._sessions.get(SID).in_flight is None


def test_a_hold_nobody_ends_runs_out_and_a_late_commit_is_refused(monkeypatch):
    monkeypatch.setattr(handover, "_HANDOVER_HOLD_S", 0.0)
    a, b, _ = pair(monkeypatch)
    ma, ra = a.app.state.engine.manager, a._sessions

    async def go():
        got = await a.export_session({"pin": "a", "engine_sid": SID, "migrate": True})
        await asyncio.sleep(0.05)  # the importer never answers
        assert ra.get(SID).in_flight is None  # free again: its steps run there
        assert await a.finish_handover({"pin": "a", "engine_sid": SID, "id": got.id,
                                        "commit": True}) is False

    asyncio.run(go())
    assert SID in ma.sessions and ra.get(SID).num_steps == 3


def test_a_commit_the_sender_refuses_undoes_the_import(monkeypatch):
    monkeypatch.setattr(handover, "_HANDOVER_HOLD_S", 0.0)

    class Slow(Pinned):  # the commit arrives after the sender's hold ran out
        def options(self, method_name):
            call = super().options(method_name)
            remote = call.remote

            async def late(ask):
                if method_name == "finish_handover":
                    await asyncio.sleep(0.05)
                return await remote(ask)

            call.remote = late
            return call

    a, b, _ = pair(monkeypatch, pinned=Slow)
    err = asyncio.run(b._pull(SID, "t1", "a", True))
    assert err is not None and err.status == 503
    assert SID in a.app.state.engine.manager.sessions and a._sessions.get(SID) is not None
    assert SID not in b.app.state.engine.manager.sessions and b._sessions.get(SID) is None
    assert SID not in b._seen_tokens
    b.app.state.engine.manager.check_integrity()


def test_moving_back_to_a_stale_copy_takes_the_newer_one(monkeypatch):
    """A pull that failed while its sender was alive left a copy there (3 steps); the
    session went on elsewhere (7 steps). Moved back, the old copy is replaced."""
    ran = []

    async def app(scope, receive, send):  # b's server: the step's context
        ran.append(b._sessions.get(SID).num_steps)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    a, b, handle = pair(monkeypatch, app=app)  # b pulls from a, which holds the newer copy
    a._sessions.get(SID).num_steps = 7
    mb, rb = b.app.state.engine.manager, b._sessions
    mb.begin_step(SID, list(range(12)), salt="t1")  # the stale copy: 12 tokens, 3 steps
    mb.allocate_slots(SID, 12)
    mb.finish_step(SID)
    rb.open(SID).num_steps = 3
    call = {"kvsaga": 1, "method": "POST", "path": "/v1/completions", "headers": [],
            "body": b"{}", "engine_sid": SID, "salt": "t1",
            "route": {"replica": "b", "moved_from": "a", "migrate": True, "reason": "balance"}}

    async def go():
        return [m async for m in b.handle(call)]

    asyncio.run(go())
    assert [m for m, _ in handle.asked] == ["export_session", "finish_handover"]  # before
    # the fix: a never asked, the step ran on the stale copy and a kept the newer one
    assert ran == [7]
    assert len(mb.sessions[SID].token_ids) == 20
    assert SID not in a.app.state.engine.manager.sessions and a._sessions.get(SID) is None
    mb.check_integrity()


def test_a_source_that_knows_no_such_session_leaves_the_local_copy(monkeypatch):
    mb = KVCacheManager(SPEC, 64)
    paused(mb)
    rb = SessionRegistry(tokenizer=None)
    rb.open(SID).num_steps = 7
    b = stub_replica("b", Engine(mb), rb)
    handle = Pinned()  # "unknown"
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: handle)
    assert asyncio.run(b._pull(SID, "t1", "a", True)) is None
    assert len(handle.asked) == 1
    assert SID in mb.sessions and rb.get(SID).num_steps == 7


def test_a_pull_that_times_out_is_logged_as_one(monkeypatch, caplog):
    class Stuck:
        def options(self, **kwargs):
            return self

        async def remote(self, ask):
            await asyncio.sleep(10)

    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: Stuck())
    monkeypatch.setattr(handover, "_PULL_TIMEOUT_S", 0.01)
    b = stub_replica("b", Engine(KVCacheManager(SPEC, 8)), SessionRegistry(tokenizer=None))
    with caplog.at_level(logging.WARNING, logger="kvsaga.ray"):
        assert asyncio.run(b._pull(SID, "t1", "a", True)) is None
    # before the fix: "pulling session from a failed (); recomputing"
    assert any(SID in r.getMessage() and "TimeoutError" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
