"""How long a sender remembers the hand-overs it committed (review s51 diffray 1): the
receiver's commit retry (`Handover.commit_idempotent`) can reach the sender up to about
2 x `_PULL_TIMEOUT_S` after the first commit landed. The sender kept the latest 4096
commits, whatever their age: more than 4096 others committed in that window (a sender
handing sessions over fast, which is when its calls time out) forgot the hold, the retry
was answered False, and the receiver undid an import whose sender had ended its copy: the
session lived on neither replica. Commits are now kept by age (`_commit_kept_s`)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray.serve")

from kvsaga.integrations.ray import handover  # noqa: E402
from tests.cluster.ray_replicas import SID, copy_by_bookkeeping  # noqa: E402
from tests.cluster.test_ray_commit_retry import (  # noqa: E402
    FirstCommitFails,
    _one_copy_on_b,
    _sender,
    commits,
)
from tests.cluster.test_ray_handover import pair  # noqa: E402

OTHERS = 4097  # one more than the old bound


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    copy_by_bookkeeping(monkeypatch)
    monkeypatch.setattr(handover, "_PULL_TIMEOUT_S", 0.3)


async def hand_over(a, sid: str, importer: str = "c") -> str:
    """Replica a hands over its session `sid` (opened if not) and commits it; the hold id."""
    if a._sessions.get(sid) is None:
        a._sessions.open(sid)
    got = await a.export_session({"pin": "a", "engine_sid": sid, "migrate": False,
                                  "importer": importer})
    assert await a.finish_handover({"pin": "a", "engine_sid": sid, "id": got.id,
                                    "commit": True}) is True
    return got.id


class OthersCommitWhileTheAnswerIsLost(FirstCommitFails):
    """The first commit lands on the sender, which then commits `OTHERS` other hand-overs
    before the answer is lost (the call fails, as one that timed out); every other call
    goes through."""

    async def first_commit(self, ask) -> None:
        assert await self.target.finish_handover(ask) is True
        for i in range(OTHERS):
            await hand_over(self.target, f"t1/other{i}")
        raise ConnectionError("the answer was lost")


def test_a_retry_after_many_other_commits_is_still_answered_true(monkeypatch):
    # All within the retry window (raising=False: a sender that keeps commits by count has
    # no clock).
    monkeypatch.setattr(handover, "_clock", lambda: 1000.0, raising=False)
    monkeypatch.setattr(handover, "_PULL_TIMEOUT_S", 60.0)  # the others' time: no timeout
    a, b, handle = pair(monkeypatch, pinned=OthersCommitWhileTheAnswerIsLost)
    assert asyncio.run(b._pull(SID, "t1", "a", True)) is None
    assert commits(handle) == 2
    # Before: the retry was answered False and b undid its import (on neither replica).
    _one_copy_on_b(a, b)
    assert len(a._committed) == OTHERS + 1


def test_committed_holds_are_forgotten_by_age_only(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(handover, "_clock", lambda: now[0])
    a, m, reg = _sender()
    kept = handover._commit_kept_s()
    assert kept >= 2 * handover._PULL_TIMEOUT_S  # past any retry's answer
    first = asyncio.run(hand_over(a, SID))
    now[0] += kept  # at the edge: kept
    second = asyncio.run(hand_over(a, "t1/x"))
    assert list(a._committed) == [first, second]
    fin = {"pin": "a", "engine_sid": SID, "id": first, "commit": True}
    assert asyncio.run(a.finish_handover(fin)) is True  # a retry is still answered True
    now[0] += 1.0  # past it: the first is forgotten at the next commit, the second not
    third = asyncio.run(hand_over(a, "t1/y"))
    assert list(a._committed) == [second, third]
    m.check_integrity()
