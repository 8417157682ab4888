"""A hand-over whose commit call fails (review s51 ray 3, the documented "commit timeout
after 60 s"): the receiver took it as committed, kept its import, and the sender's hold ran
out and freed its copy: the session lived on both replicas, the sender's copy idling out
there. A sender now answers a repeated commit True (`Handover.commit_idempotent`), so the
receiver asks again once: committed, or the hold is over and the sender has the session
back (the import is undone, the step answered 503 `session_move_failed`). A sender before
the fix (a rolling update) answers a repeated commit False, as a hold that ran out: it is
not asked again, lest both copies go."""

from __future__ import annotations

import asyncio
import collections
import dataclasses

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import handover  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from tests.cluster.ray_replicas import (  # noqa: E402
    SID,
    SPEC,
    BookkeepingEngine,
    Pinned,
    copy_by_bookkeeping,
    paused,
    stub_replica,
)
from tests.cluster.test_ray_handover import pair  # noqa: E402


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    copy_by_bookkeeping(monkeypatch)
    monkeypatch.setattr(handover, "_PULL_TIMEOUT_S", 0.3)


class FirstCommitFails(Pinned):
    """The first commit call fails on the caller's side: before it reaches the sender
    (`lands=False`: it waits past the timeout and is cancelled unsent, as a call queued at
    a sender at its request limit) or after the sender committed (`lands=True`: the answer
    is lost). Every other call goes through."""

    lands = False

    async def first_commit(self, ask) -> None:
        """What the first commit call does in place of going through."""
        if self.lands:
            await self.target.finish_handover(ask)
        await asyncio.sleep(10)  # past the timeout: cancelled

    def options(self, method_name):
        call = super().options(method_name)
        remote, pinned = call.remote, self

        async def first_fails(ask):
            if method_name == "finish_handover" and not getattr(pinned, "failed", False):
                pinned.failed = True
                pinned.asked.append((method_name, ask))
                await pinned.first_commit(ask)
            return await remote(ask)

        call.remote = first_fails
        return call


class AnswerLost(FirstCommitFails):
    lands = True


def commits(handle) -> int:
    return sum(1 for m, c in handle.asked if m == "finish_handover" and c["commit"])


def _one_copy_on_b(a, b) -> None:
    assert SID not in a.app.state.engine.manager.sessions and a._sessions.get(SID) is None
    assert a._handovers == {}
    assert SID in b.app.state.engine.manager.sessions and b._sessions.get(SID) is not None
    a.app.state.engine.manager.check_integrity()
    b.app.state.engine.manager.check_integrity()


def test_a_commit_that_failed_unsent_is_asked_again_and_lands(monkeypatch):
    a, b, handle = pair(monkeypatch, pinned=FirstCommitFails)
    assert asyncio.run(b._pull(SID, "t1", "a", True)) is None
    # Before: the sender still held its copy (freed at the hold's end, then idling there).
    _one_copy_on_b(a, b)
    assert commits(handle) == 2


def test_a_commit_whose_answer_was_lost_is_answered_true_again(monkeypatch):
    a, b, handle = pair(monkeypatch, pinned=AnswerLost)
    assert asyncio.run(b._pull(SID, "t1", "a", True)) is None
    _one_copy_on_b(a, b)  # the repeated commit is not taken for a hold that ran out
    assert commits(handle) == 2 and SID in b._seen_tokens


def test_a_retry_that_finds_the_hold_over_leaves_the_session_with_the_sender(monkeypatch):
    monkeypatch.setattr(handover, "_HANDOVER_HOLD_S", 0.05)  # over before the retry
    a, b, handle = pair(monkeypatch, pinned=FirstCommitFails)
    err = asyncio.run(b._pull(SID, "t1", "a", True))
    assert err is not None and err.status == 503 and err.code == "session_move_failed"
    assert SID in a.app.state.engine.manager.sessions
    assert a._sessions.get(SID) is not None and a._sessions.get(SID).in_flight is None
    assert SID not in b.app.state.engine.manager.sessions and b._sessions.get(SID) is None
    assert commits(handle) == 2
    b.app.state.engine.manager.check_integrity()


def test_a_sender_before_the_fix_is_not_asked_again(monkeypatch):
    """Its Handover has no `commit_idempotent` (the class default, False) and it answers a
    repeated commit False: asked again, the receiver would undo its import after the
    sender ended its copy. As before the fix, the import is kept."""
    a, b, handle = pair(monkeypatch, pinned=AnswerLost)
    export = a.export_session

    async def old_export(call):
        got = await export(call)
        return dataclasses.replace(got, commit_idempotent=False)

    a.export_session = old_export
    assert asyncio.run(b._pull(SID, "t1", "a", True)) is None
    assert commits(handle) == 1
    _one_copy_on_b(a, b)  # (the lost answer's commit went through)


def _sender():
    """Replica a holding paused session `SID`, on its own."""
    m = KVCacheManager(SPEC, 64)
    paused(m)
    reg = SessionRegistry(tokenizer=None)
    reg.open(SID)
    return stub_replica("a", BookkeepingEngine(m), reg), m, reg


def test_a_repeated_abort_or_an_unknown_hold_is_still_false():
    a, m, reg = _sender()

    async def go():
        got = await a.export_session({"pin": "a", "engine_sid": SID, "migrate": True})
        assert got.commit_idempotent
        fin = {"pin": "a", "engine_sid": SID, "id": got.id}
        assert await a.finish_handover({**fin, "commit": False}) is False  # aborted
        assert await a.finish_handover({**fin, "commit": True}) is False  # not committed
        assert await a.finish_handover({**fin, "id": "handover-x", "commit": True}) is False

    asyncio.run(go())
    assert SID in m.sessions and reg.get(SID).in_flight is None
    assert a._committed == collections.OrderedDict()
