"""A moved session's hand-over between two replicas is two-phase (review session 45, repros
r4_refused_import_loses_source, r7_stale_copy_move_back, r8_timeout_log): the sender keeps
the session, held, until the receiver commits or aborts, so an import the receiver refuses
loses nothing; a hold nobody ends runs out; a copy a failed pull left behind is replaced
by the newer one when the session moves back; a timed-out pull is logged as one. A hold
for a receiver that died before its commit is freed when a step or a pull meets it (review
s47, repros r1_receiver_dies_409, r3_third_replica_pull): before, it answered 409 (saying a
request was in flight) for up to 120 s."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace as NS

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import deployment, handover  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from tests.cluster.ray_replicas import (  # noqa: E402
    SID,
    SPEC,
    Fleet,
    Pinned,
    copy_by_bookkeeping,
    paused,
    stub_replica,
)
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



def server(sessions: SessionRegistry):
    """A server app that answers a step as the single-node server does, by the session's
    record: 409 `session_busy` while something reserves it, else 200."""

    async def app(scope, receive, send):
        ctx = sessions.get(SID)
        busy = ctx is not None and ctx.in_flight is not None
        body = {"error": {"message": "session 's' already has a request in flight",
                          "code": "session_busy"}} if busy else {}
        await send({"type": "http.response.start", "status": 409 if busy else 200,
                    "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return app


def fleet(monkeypatch, handle_of=Fleet):
    """Replica a holding paused session `SID` (3 steps; its server is `server`) and
    replica b with nothing; their pinned calls go through `handle_of(a, b)` (a `Fleet`:
    a call to any other replica meets a gone one). Returns a, b and that handle."""
    ma, mb = KVCacheManager(SPEC, 64), KVCacheManager(SPEC, 64)
    paused(ma)
    ra, rb = SessionRegistry(tokenizer=None), SessionRegistry(tokenizer=None)
    ra.open(SID).num_steps = 3
    a, b = stub_replica("a", Engine(ma), ra, server(ra)), stub_replica("b", Engine(mb), rb)
    handle = handle_of(a, b)
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: handle)
    return a, b, handle


def step(moved_from: str | None = None) -> dict:
    """A step of `SID` routed to a (moved from `moved_from`, its lost home, if given)."""
    return {"kvsaga": 1, "method": "POST", "path": "/v1/completions", "headers": [],
            "body": b"{}", "engine_sid": SID, "salt": "t1",
            "route": {"replica": "a", "moved_from": moved_from, "migrate": False,
                      "reason": "lost" if moved_from else "affinity"}}


async def answer(replica, call: dict) -> tuple[int, bytes]:
    msgs = [m async for m in replica.handle(call)]
    return msgs[0]["status"], b"".join(m.get("body", b"") for m in msgs[1:])


def export_for(importer: str) -> dict:
    return {"pin": "a", "engine_sid": SID, "migrate": True, "importer": importer}


@pytest.mark.parametrize("moved_from", [None, "r"])
def test_a_step_meeting_a_hold_for_a_gone_importer_frees_it(monkeypatch, moved_from):
    """r, the importer, died after a's export (Ray no longer lists it): the session's step
    on a (routed as lost from r, or home) runs on a's copy; r's late commit is refused."""
    a, _, handle = fleet(monkeypatch)
    ma, ra = a.app.state.engine.manager, a._sessions

    async def go():
        got = await a.export_session(export_for("r"))
        status, _ = await answer(a, step(moved_from))
        late = await a.finish_handover({"pin": "a", "engine_sid": SID, "id": got.id,
                                        "commit": True})
        return status, late

    status, late = asyncio.run(go())
    assert status == 200  # before the fix: 409 until the hold ran out (120 s)
    assert handle.asked[0][0] == "handover_alive" and handle.asked[0][1]["pin"] == "r"
    assert a._handovers == {} and late is False  # a commit after the release is undone
    assert SID in ma.sessions and ra.get(SID).num_steps == 3 and ra.get(SID).in_flight is None
    ma.check_integrity()


class Unanswered:
    """The handle of a probe of the importer that raises, or never answers."""

    def __init__(self, raises: bool) -> None:
        self.raises = raises

    def options(self, method_name: str):
        return self

    async def remote(self, call: dict):
        if self.raises:
            raise RuntimeError("the call failed")
        await asyncio.sleep(10)


@pytest.mark.parametrize("probe", ["alive", "raises", "silent"])
def test_a_hold_is_kept_unless_its_importer_is_known_gone(monkeypatch, probe):
    """The importer there (b), or no telling (the probe raised or timed out): the hold stays,
    and the step's 409 names it (before: "already has a request in flight")."""
    monkeypatch.setattr(handover, "_PROBE_TIMEOUT_S", 0.01, raising=False)  # (new)
    handle_of = Fleet if probe == "alive" else (lambda a, b: Unanswered(probe == "raises"))
    a, _, _ = fleet(monkeypatch, handle_of)
    importer = "b" if probe == "alive" else "r"

    async def go():
        got = await a.export_session(export_for(importer))
        return got, await answer(a, step())

    got, (status, body) = asyncio.run(go())
    err = json.loads(body)["error"]
    assert status == 409 and err["code"] == "session_busy"
    assert f"held for a hand-over to replica {importer}" in err["message"], err["message"]
    assert a._sessions.get(SID).in_flight == got.id and got.id in a._handovers


def test_a_pull_meeting_a_hold_for_a_gone_importer_takes_the_session(monkeypatch):
    """The router stole the session from a for b while a held it for r, which died: b's
    pull takes it (before: a answered busy, b 409 with the header that sent the session
    back to a, which answered 409 too)."""
    a, b, _ = fleet(monkeypatch)

    async def go():
        await a.export_session(export_for("r"))
        return await b._pull(SID, "t1", "a", True)

    assert asyncio.run(go()) is None
    assert SID not in a.app.state.engine.manager.sessions and a._sessions.get(SID) is None
    assert SID in b.app.state.engine.manager.sessions and b._sessions.get(SID).num_steps == 3
    assert a._handovers == {}


def test_a_pull_meeting_a_hold_for_a_live_importer_is_refused_naming_it(monkeypatch):
    a, b, _ = fleet(monkeypatch, lambda a, b: Fleet(a, b, stub_replica(
        "c", Engine(KVCacheManager(SPEC, 8)), SessionRegistry(tokenizer=None))))

    async def go():
        await a.export_session(export_for("c"))
        return await b._pull(SID, "t1", "a", True)

    err = asyncio.run(go())
    assert err.status == 409 and err.code == "session_busy"
    assert err.headers[deployment.PULL_REFUSED_HEADER] == "a"
    assert "held for a hand-over to replica c" in err.message, err.message
    assert SID in a.app.state.engine.manager.sessions and b._sessions.get(SID) is None


class Gated(Fleet):
    """A `Fleet` whose probes of an importer (`handover_alive`) wait for `gate`; `probing`
    is set once one has been asked."""

    def __init__(self, *replicas) -> None:
        super().__init__(*replicas)
        self.gate, self.probing = asyncio.Event(), asyncio.Event()

    def options(self, method_name: str):
        call = super().options(method_name)
        if method_name != "handover_alive":
            return call
        remote = call.remote

        async def gated(ask):
            self.probing.set()
            await self.gate.wait()
            return await remote(ask)

        return NS(remote=gated)


@pytest.mark.parametrize("what", ["commit", "abort", "expire"])
def test_a_hold_that_ends_while_its_importer_is_probed_is_left_alone(monkeypatch, what):
    """The hold's commit, abort or expiry lands while a step's probe of its (gone)
    importer waits (review s47 raydiff, repro p1_commit_during_probe): the probe then
    changes nothing. Without its check that the hold is still there, the step raised
    KeyError out of `handle`."""
    a, _, handle = fleet(monkeypatch, Gated)
    ma, ra = a.app.state.engine.manager, a._sessions

    async def go():
        got = await a.export_session(export_for("r"))
        stepping = asyncio.ensure_future(answer(a, step()))
        await handle.probing.wait()
        if what == "expire":
            a._expire(SID, got.id)
            done = None
        else:
            done = await a.finish_handover({"pin": "a", "engine_sid": SID, "id": got.id,
                                            "commit": what == "commit"})
        handle.gate.set()
        return done, await stepping

    done, (status, _) = asyncio.run(go())
    assert done is {"commit": True, "abort": False, "expire": None}[what]
    assert status == 200 and a._handovers == {}
    if what == "commit":  # the importer has it: a keeps no copy
        assert SID not in ma.sessions and ra.get(SID) is None
    else:  # a keeps its one copy, free
        assert SID in ma.sessions and ra.get(SID).num_steps == 3
        assert ra.get(SID).in_flight is None
    ma.check_integrity()


def test_steps_and_pulls_meeting_a_hold_share_one_probe(monkeypatch):
    """Concurrent steps and a pull of a session held for an importer that does not answer
    ask it once, and retries within `_PROBE_KEPT_S` of that answer not again (review s47
    raydiff, repro p2_herd: before, one probe per request, each waiting up to 5 s for the
    same 409). A waiter cancelled meanwhile leaves the probe to the others."""
    monkeypatch.setattr(handover, "_PROBE_TIMEOUT_S", 0.01)
    monkeypatch.setattr(handover, "_PROBE_KEPT_S", 3600.0, raising=False)  # (new)
    probes = []

    class Silent(Fleet):  # the importer's probes go unanswered, the rest through
        def options(self, method_name: str):
            if method_name != "handover_alive":
                return super().options(method_name)

            async def silent(call):
                probes.append(call)
                await asyncio.sleep(10)

            return NS(remote=silent)

    a, b, _ = fleet(monkeypatch, Silent)

    async def go():
        await a.export_session(export_for("r"))
        gave_up = asyncio.ensure_future(answer(a, step()))
        while not probes:  # its probe is under way
            await asyncio.sleep(0)
        gave_up.cancel()
        at_once = await asyncio.gather(*(answer(a, step()) for _ in range(10)),
                                       b._pull(SID, "t1", "a", True))
        retries = [await answer(a, step()) for _ in range(3)]
        return at_once, retries

    at_once, retries = asyncio.run(go())
    assert len(probes) == 1  # before the fix: 11, then 3 more
    assert {s for s, _ in at_once[:-1] + retries} == {409}
    assert at_once[-1].status == 409 and "held for a hand-over to replica r" in \
        at_once[-1].message
    monkeypatch.setattr(handover, "_PROBE_KEPT_S", 0.0)  # the outcome no longer stands

    async def retry():
        return await answer(a, step())

    assert asyncio.run(retry())[0] == 409 and len(probes) == 2


# A rolling update mixes replicas before and after session 47, which spoke the plain string
# "busy" for a session busy on the sender (review s47 raydiff, repro p3_old_importer).
# Before, each end took the other's busy answer for a gone sender and ran the step on its
# own copy while one was in flight on the sender.


def test_an_importer_that_does_not_name_itself_is_answered_the_old_busy(monkeypatch):
    """An importer before session 47 does not name itself: it is answered "busy", one
    that does `Busy`."""
    a, _, _ = fleet(monkeypatch)
    a._sessions.get(SID).in_flight = "cmpl-running"

    async def exports():
        old = await a.export_session({"pin": "a", "engine_sid": SID, "migrate": True})
        return old, await a.export_session(export_for("b"))

    old, new = asyncio.run(exports())
    assert old == "busy"
    assert new == handover.Busy("a step of it is in flight")


def test_an_old_senders_busy_is_a_409_that_sends_the_session_back(monkeypatch):
    _, b, _ = fleet(monkeypatch)

    class OldSender:
        def options(self, method_name: str):
            return self

        async def remote(self, call: dict):
            return "busy"

    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: OldSender())
    err = asyncio.run(b._pull(SID, "t1", "a", True))
    assert err is not None and err.status == 409 and err.code == "session_busy"
    assert err.headers[deployment.PULL_REFUSED_HEADER] == "a"
    assert "a step of it is in flight" in err.message and b._sessions.get(SID) is None


def test_an_export_for_another_replica_does_not_wait_for_the_model_load(monkeypatch):
    """A pull from a dead replica reaches another, maybe its replacement still loading its
    model: the export answers "misrouted" at once, as `handover_alive` and
    `finish_handover` do (review s49 ray 2). Before, it awaited the load first and the
    importer's step waited up to 60 s (`_PULL_TIMEOUT_S`) to recompute all the same. An
    export for this replica still waits for the load."""
    loading = stub_replica("a-new", Engine(KVCacheManager(SPEC, 64)),
                           SessionRegistry(tokenizer=None))

    async def exports():
        load = asyncio.Event()

        async def never_loaded() -> None:
            await load.wait()

        loading._start = never_loaded
        foreign = asyncio.create_task(loading.export_session(
            {"pin": "a-dead", "engine_sid": SID, "migrate": True, "importer": "b"}))
        own = asyncio.create_task(loading.export_session(
            {"pin": "a-new", "engine_sid": SID, "migrate": True, "importer": "b"}))
        for _ in range(10):
            await asyncio.sleep(0)
        answered = {"foreign": foreign.done(), "own": own.done()}
        load.set()  # (the model loads: the export for this replica goes on)
        return answered, await asyncio.gather(foreign, own)

    answered, (foreign, own) = asyncio.run(exports())
    assert answered == {"foreign": True, "own": False}  # before: foreign False
    assert foreign == "misrouted" and own == "unknown"
