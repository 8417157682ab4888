"""A move whose import went through but whose commit the sender refused (its hold was
over: the receiver's commit retry found it so) is answered 503 `session_move_failed`, as
a refused import is (review s51 diffray 2). The gateway read every such 503 as a refused
import and had the router cool the receiver off as a thief for every session for
`refused_move_s`, although it had room (its import worked): the cause was an overloaded
sender. The answer now says the import went through (`PULL_UNCOMMITTED_HEADER`), and the
receiver is kept from this session only, as after a 409."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("ray.serve")

from kvsaga.integrations.ray import handover  # noqa: E402
from kvsaga.integrations.ray.gateway import (  # noqa: E402
    PULL_REFUSED_HEADER,
    PULL_UNCOMMITTED_HEADER,
    routing_call,
)
from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_replicas import SID, copy_by_bookkeeping, gateway_answer  # noqa: E402
from tests.cluster.test_ray_commit_retry import FirstCommitFails  # noqa: E402
from tests.cluster.test_ray_handover import pair  # noqa: E402

ROOMY_IDLE = ReplicaStats(total_blocks=2048, free_blocks=2000)


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    copy_by_bookkeeping(monkeypatch)
    monkeypatch.setattr(handover, "_PULL_TIMEOUT_S", 0.3)


def _refused_move(monkeypatch, uncommitted: bool):
    """b's answer to a pull from a: the commit retry finds the hold over
    (`uncommitted`), else b has no room for the import."""
    if uncommitted:
        monkeypatch.setattr(handover, "_HANDOVER_HOLD_S", 0.05)  # over before the retry
        a, b, _ = pair(monkeypatch, pinned=FirstCommitFails)
    else:
        a, b, _ = pair(monkeypatch, b_blocks=4)
    err = asyncio.run(b._pull(SID, "t1", "a", True))
    assert err.status == 503 and err.code == "session_move_failed"
    assert err.headers[PULL_REFUSED_HEADER] == "a"
    assert SID in a.app.state.engine.manager.sessions  # the session stays on a
    assert SID not in b.app.state.engine.manager.sessions
    return err


def _relayed(monkeypatch, err) -> tuple[KvsagaRouter, str]:
    """A router that moved a step of a loaded a's session to b, told b's answer `err`."""
    body = json.dumps({"model": "m", "prompt": "hi", "session_id": "s",
                       "cache_salt": "t1"}).encode()
    key = routing_call(ServerSettings(model="x"), "POST", "/v1/completions", b"", [],
                       body)["session"]
    router = KvsagaRouter(["a", "b"])
    router.homes.update({key: "a", "o": "a"})
    loaded = ReplicaStats(total_blocks=64, free_blocks=40, queue_depth=3, running=2,
                          session_tokens={key: 20000, "o": 20000})
    move = router.route(RouteRequest(session=key), {"a": loaded, "b": ROOMY_IDLE})
    assert (move.replica, move.moved_from) == ("b", "a")
    gateway_answer(monkeypatch, router, move, err.status, body, headers=err.headers)
    router.finished(move, ran=False)
    return router, key


def test_a_commit_refused_after_the_import_cools_the_receiver_for_that_session_only(
        monkeypatch):
    err = _refused_move(monkeypatch, uncommitted=True)
    assert err.headers[PULL_UNCOMMITTED_HEADER] == "1"
    router, key = _relayed(monkeypatch, err)
    # Before: b was cooled off for every session (`_cooling`) for 30 s.
    assert "b" not in router._cooling
    assert (key, "b") in router._refused
    assert router.homes[key] == "a"


def test_a_refused_import_still_cools_the_receiver_for_every_session(monkeypatch):
    err = _refused_move(monkeypatch, uncommitted=False)
    assert PULL_UNCOMMITTED_HEADER not in err.headers
    router, key = _relayed(monkeypatch, err)
    assert "b" in router._cooling and (key, "b") not in router._refused
