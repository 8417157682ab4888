"""kvsaga-serve on Ray Serve: N engine replicas behind one OpenAI-compatible endpoint.

Two deployments (`build_application`):

- `KvsagaGateway` (the HTTP ingress, one replica; `gateway.py`): routes each request by
  session to an engine replica through a DeploymentHandle whose request router is
  `KvsagaRequestRouter`, relays the replica's response, merges every replica's /metrics.
- `KvsagaEngine` (N replicas, `EngineReplica`): each runs the single-node server app
  (`build_app`) in process and serves the forwarded request through it, so the API,
  sessions, errors and limits are exactly those of `kvsaga-serve`. When the router moved a
  session onto it, it first pulls the session from its previous replica: the token context
  always (so re-tokenization cannot split it differently), and the KV too when the router
  chose migration (`kvsaga.migration`: exported through host memory, imported byte for
  byte). The hand-over is two-phase: the previous replica exports the session and holds
  it (no step of it runs there) until the new one has imported it and commits (the
  previous replica ends its copy, so a session lives in one place; docs/cluster.md,
  "Moving a session", says when it does not) or aborts (its import was refused: the
  session stays where it was, and the step is answered 503 `session_move_failed`, which
  sends the session back there). A session with a step in flight on its previous replica
  is not taken: the step gets that replica's 409 `session_busy`. While it pulls, the new
  replica reserves the session's record, so a step of the session that reaches it
  meanwhile gets its own 409.
"""

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import RequestRouterConfig

from kvsaga._validate import is_int, is_number
from kvsaga.integrations.ray.gateway import (
    ENGINE_DEPLOYMENT,
    PULL_REFUSED_HEADER,
    KvsagaGateway,
)
from kvsaga.integrations.ray.router import routing_config
from kvsaga.migration import export_session, import_session
from kvsaga.routing import RAY_DEFAULT_ROUTER, REPLICA_ROUTERS, ReplicaStats
from kvsaga.serve.errors import APIError
from kvsaga.serve.sessions import SessionContext, SessionRegistry
from kvsaga.serve.settings import ServerSettings

log = logging.getLogger("kvsaga.ray")
_PULL_TIMEOUT_S = 60.0  # per call of a pull to the session's previous replica
# How long a replica holds a session it exported for the commit or abort of its importer
# (`EngineReplica.export_session`): the importer's import waits for its engine's step in
# progress, and its commit may take `_PULL_TIMEOUT_S`. A commit after it is refused (the
# importer undoes its import); meanwhile a step of the session there is answered 409.
_HANDOVER_HOLD_S = 2 * _PULL_TIMEOUT_S
# What `export_session` answers for a session with a step in flight on its replica.
EXPORT_BUSY = "busy"
_FAILED = object()  # `EngineReplica._ask`: the call raised or timed out
_LOAD_TIMEOUT_S = 600.0
# Tenants without a live session whose service a replica still reports (`_forget_tenants`).
_MAX_IDLE_TENANTS = 1024
# A replica whose engine has been inside one step this long fails its health check
# (`EngineReplica.check_health`). Generous: a step holds at most `max_num_batched_tokens`
# tokens; a device slow enough for such a step to come near it needs `build_application`'s
# `stuck_step_s` raised.
STUCK_STEP_S = 120.0


# -- running an ASGI app in process ---------------------------------------------------------


def _scope(call: dict) -> dict:
    path = call["path"]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": call["method"],
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": call.get("query", b""),
        "root_path": "",
        "headers": [(bytes(k), bytes(v)) for k, v in call["headers"]],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        "state": {},
    }


async def asgi_messages(app: Any, scope: dict, body: bytes) -> AsyncIterator[dict]:
    """Run one HTTP request through an ASGI app; yield the messages it sends.

    When the consumer stops early (its client went away), the app sees `http.disconnect`,
    as under a real server, so it aborts the request and releases its blocks.
    """
    sent: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(scope, receive, sent.put)
        finally:
            await sent.put(None)

    task = asyncio.create_task(run())
    try:
        while (msg := await sent.get()) is not None:
            yield msg
    finally:
        gone.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def _error_messages(err: APIError, scope: dict) -> AsyncIterator[dict]:
    """The ASGI messages of the single-node server's answer to `err` (OpenAI's error
    JSON)."""
    sent: list[dict] = []

    async def send(msg: dict) -> None:
        sent.append(msg)

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    await JSONResponse(err.body(), status_code=err.status, headers=err.headers)(
        scope, receive, send)
    for msg in sent:
        yield msg


# -- the engine replica -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Handover:
    """A session `EngineReplica.export_session` hands over, held by its replica until
    `finish_handover` names `id`.

    Attributes:
        id: the hold's id.
        context: the session's `SessionContext` fields (but `in_flight`, `last_used`).
        exported: its KV (`kvsaga.migration.SessionExport`), or None (not asked for, none
            cached, or its export failed: it is recomputed).
    """

    id: str
    context: dict
    exported: Any


def _export_kv(engine: Any, sid: str, migrate: bool) -> Any:
    """The session's KV when `migrate` and the engine holds it, else None; on the engine's
    thread. A failed host-tier copy (RuntimeError) exports nothing: the context moves
    without its KV, recomputed on the new replica."""
    if not migrate or sid not in engine.manager.sessions:
        return None
    try:
        return export_session(engine, sid)
    except Exception as e:
        log.warning("kvsaga: exporting the KV of %s failed (%s: %s); it moves without", sid,
                    type(e).__name__, e)
        return None


def _move_failed(sid: str, source: str, why: str) -> APIError:
    """The answer to a step whose session could not move here and stays on `source`: 503
    (retry), with the header that has the gateway's router take the session back there."""
    return APIError(503, f"session {sid.partition('/')[2]!r} could not move to this replica "
                    f"({why}); retry: it continues on its previous replica",
                    param="session_id", code="session_move_failed",
                    headers={PULL_REFUSED_HEADER: source, "Retry-After": "1"})


def _ended_meanwhile(sid: str) -> APIError:
    """The answer to a moved step whose session its client ended here while it was being
    pulled: the single-node server's to a step the end aborted before it was queued."""
    return APIError(400, f"the request was aborted: session {sid.partition('/')[2]!r} was "
                    "ended before this step was queued", param="session_id", code="aborted")


@dataclasses.dataclass
class _Reservation:
    """A pull's reservation of a session's record on the replica pulling it
    (`EngineReplica._pull`): the record's `in_flight` is `id`, as a step's request id
    reserves it (`Serving.complete`), so a step of the session meanwhile is answered 409
    `session_busy` and the idle sweep passes it over.

    Attributes:
        sessions: the server's sessions.
        sid: the session's engine id.
        ctx: its record.
        id: the reservation's id.
        fresh: the pull opened the record (there was none).
    """

    sessions: SessionRegistry
    sid: str
    ctx: SessionContext
    id: str
    fresh: bool

    @classmethod
    def take(cls, sessions: SessionRegistry, sid: str, fresh: bool) -> "_Reservation":
        """Reserve the session's record (opened if there is none); the caller checked that
        nothing reserves it, in the same turn of the event loop."""
        ctx = sessions.open(sid)
        ctx.in_flight = f"pull-{uuid.uuid4().hex}"
        return cls(sessions, sid, ctx, ctx.in_flight, fresh)

    @property
    def held(self) -> bool:
        """Whether the record is still this reservation's: the end route drops a record
        whatever reserves it."""
        return self.sessions.get(self.sid) is self.ctx and self.ctx.in_flight == self.id

    def end(self, keep: bool) -> None:
        """Free the record (`keep`) or drop it, if it is still this reservation's."""
        if self.held:
            self.ctx.in_flight = None
            if not keep:
                self.sessions.drop(self.sid)


def _wait_loaded(engine: Any, timeout_s: float) -> None:
    """Block until the engine's model is loaded, its load failed or the engine stopped, or
    `timeout_s` passed (`AsyncEngine.wait_ready` returns at each of those)."""
    engine.wait_ready(timeout_s)


class EngineReplica:
    """One engine and the single-node server app around it.

    Args:
        settings: the server's settings (model, KV budget, policy, auth, limits).
        factory: loads the engine (default: the one `settings` describe).
        torch_threads: torch intra-op threads (CPU replicas sharing a machine: its cores
            divided among them, or they spin against each other).
        stuck_step_s: seconds one engine step may run before the replica fails its health
            check (`check_health`).
    """

    def __init__(
        self, settings: ServerSettings, factory: Any = None, torch_threads: int | None = None,
        stuck_step_s: float = STUCK_STEP_S,
    ) -> None:
        from kvsaga.serve.app import build_app
        from kvsaga.serve.cli import engine_factory

        ctx = serve.get_replica_context()
        self.replica_id = ctx.replica_id.unique_id
        self.app_name = ctx.app_name
        self.settings = settings
        self.stuck_step_s = stuck_step_s
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.app = build_app(factory or engine_factory(settings), settings)
        # The model loads from now on, not at the first request: until it has, the replica
        # reports no routing stats and the router places no new session here; a failed
        # load fails `check_health` at once.
        self.app.state.engine.start()
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        self._seen_tokens: dict[str, int] = {}  # session -> context tokens at the last report
        self._service: dict[str, float] = {}  # tenant -> context tokens gained here
        # tenant -> when it last had a live session here (`_forget_tenants`)
        self._last_live: dict[str, float] = {}
        # hold id -> the timer that frees the session it holds for its importer
        self._handovers: dict[str, asyncio.TimerHandle] = {}

    async def _start(self) -> None:
        """Enter the app's lifespan (engine thread, model load) once, and wait for the model:
        a request for this replica waits instead of getting the loading 503."""
        async with self._lock:
            if self._stack is None:
                stack = contextlib.AsyncExitStack()
                await stack.enter_async_context(self.app.router.lifespan_context(self.app))
                self._stack = stack
        # Every caller waits, not only the first: a first caller cancelled while the model
        # loads (its client timed out) must not let the next ones in before it is ready.
        await asyncio.to_thread(_wait_loaded, self.app.state.engine, _LOAD_TIMEOUT_S)
        with contextlib.suppress(Exception):  # a failed load answers 503 per request
            self.app.state.server.serving()

    def check_health(self) -> None:
        """Ray Serve's health check: raising marks the replica unhealthy and Serve replaces
        it. A replica whose model failed to load or whose engine thread stopped would
        otherwise stay in rotation answering 503 to every request (the single-node server
        exits instead, `cli._exit_on_load_failure`); one whose engine is stuck inside a
        step (a forward pass that never returns) kept taking requests that all waited
        behind it.

        Raises:
            RuntimeError: the model failed to load, the engine thread stopped, or one step
                has run longer than `stuck_step_s`.
        """
        engine = self.app.state.engine
        if engine.load_error is not None:
            raise RuntimeError(f"the model failed to load: {engine.load_error}")
        if engine.stopped:
            raise RuntimeError(f"the engine stopped: {engine.stop_reason}")
        running = engine.step_running_s
        if running > self.stuck_step_s:
            raise RuntimeError(f"the engine is stuck: one step has run for {running:.1f} s "
                               f"(limit {self.stuck_step_s:g} s)")

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: stop the engine thread."""
        with contextlib.suppress(Exception):
            self.app.state.engine.stop()

    @property
    def _sessions(self) -> SessionRegistry | None:
        srv = self.app.state.server.serving_if_ready
        return srv.sessions if srv is not None else None

    async def handle(self, call: dict) -> AsyncIterator[dict]:
        """Serve one forwarded HTTP request; yields its ASGI response messages."""
        await self._start()
        if call.get("pin") not in (None, self.replica_id):
            yield {"type": "kvsaga.misrouted"}
            return
        route = call.get("route") or {}
        moved_from = route.get("moved_from")
        if moved_from and moved_from != self.replica_id and call.get("engine_sid"):
            refused = await self._pull(call["engine_sid"], call.get("salt"), moved_from,
                                       bool(route.get("migrate")))
            if refused is not None:
                async for msg in _error_messages(refused, _scope(call)):
                    yield msg
                return
        async for msg in asgi_messages(self.app, _scope(call), call.get("body", b"")):
            yield msg

    async def _pull(self, sid: str, salt: str | None, source: str,
                    migrate: bool) -> APIError | None:
        """Take a moved session's context (and KV when `migrate`) from its previous replica;
        returns the error to answer instead of the step, or None to run the step here.

        A hand-over has two phases: `source` exports the session and holds it
        (`export_session`), this replica imports it, then has `source` end its copy
        (commit) or keep it (abort, on a refused import: no room, a failed copy;
        `finish_handover`). So a refused import loses nothing: the answer is
        `_move_failed`, and the gateway has the router take the session back to `source`.
        A session with a step in flight on `source` is not taken either (opened here as
        well, it would live on two replicas): the answer is the 409 `session_busy` that
        replica gives a concurrent step. A local record with a step queued (or a pull
        under way) is left to the server's 409; a local idle copy is one a failed pull left
        behind when the session moved on, so `source`'s copy replaces it, unless `source`
        holds none. If `source` cannot be reached (it died, it is stuck) the step continues
        a local copy, if any, or recomputes.

        The pull reserves the session's record here for its whole length (`_Reservation`),
        in the same turn of the event loop as the check, as a step does: a step of the
        session that arrives meanwhile (the router sends the session's next steps here
        once this one is accepted) gets the server's 409, not a record and an engine
        request that the import would end under it; a second pull gets that 409 as well,
        without the header that would send the session back to `source`. An end of the
        session here meanwhile drops the reservation: the step is then answered as one the
        end aborted, whatever `source` answered (`_ended_meanwhile`)."""
        sessions = self._sessions
        if sessions is None:
            return None
        known = sessions.get(sid)
        if known is not None and known.in_flight is not None:
            return None
        held = _Reservation.take(sessions, sid, fresh=known is None)
        try:
            got = await self._ask(source, "export_session",
                                  {"engine_sid": sid, "migrate": migrate})
        except BaseException:  # cancelled: nothing was handed over
            held.end(keep=not held.fresh)
            raise
        if not isinstance(got, Handover):
            if not held.held:  # the client ended the session here meanwhile (the end route)
                return _ended_meanwhile(sid)
            held.end(keep=not held.fresh)
            if got == EXPORT_BUSY:
                log.warning("kvsaga: %s has a step of %s in flight; answering 409", source,
                            sid)
                return APIError(409, f"session {sid.partition('/')[2]!r} already has a "
                                "request in flight", param="session_id", code="session_busy",
                                headers={PULL_REFUSED_HEADER: source})
            # "unknown" (a local copy is the session's), or "misrouted" or _FAILED (the
            # source is gone or stuck): continue or recompute
            await self._drop_if_stale(sessions, sid)
            return None
        # From here on the source holds the session for this replica: its commit or abort
        # must be sent even if this step is cancelled (else the session waits out the hold).
        return await asyncio.shield(self._take(held, salt, source, got))

    async def _ask(self, source: str, method: str, ask: dict) -> Any:
        """A pinned call to `method` of replica `source`; `_FAILED` (logged) when it raised
        or took longer than `_PULL_TIMEOUT_S`."""
        handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, self.app_name)
        try:
            return await asyncio.wait_for(handle.options(method_name=method).remote(
                {"kvsaga": 1, "pin": source, **ask}), _PULL_TIMEOUT_S)
        except Exception as e:  # (a timeout's message is empty: its type names it)
            log.warning("kvsaga: %s of session %s on %s failed (%s: %s)", method,
                        ask["engine_sid"], source, type(e).__name__, e)
            return _FAILED

    async def _drop_if_stale(self, sessions: SessionRegistry, sid: str) -> None:
        """Nothing was handed over: drop an idle local record whose session the engine does
        not hold (the engine's own idle sweep ended it, say); the step then recomputes
        instead of trusting it."""
        ctx = sessions.get(sid)
        if ctx is None or ctx.in_flight is not None:
            return
        if not await self.app.state.engine.call(lambda e: sid in e.manager.sessions):
            sessions.drop(sid)

    async def _take(self, held: _Reservation, salt: str | None, source: str,
                    got: Handover) -> APIError | None:
        """Put the session `source` handed over in place of any local copy, commit the
        hand-over there, and free the pull's reservation (`held`) with the session's
        context in it; a failure drops it, whatever happens on the way."""
        took = False
        try:
            err = await self._import_and_commit(held, salt, source, got)
            took = err is None
            return err
        finally:
            held.end(keep=took)

    async def _import_and_commit(self, held: _Reservation, salt: str | None, source: str,
                                 got: Handover) -> APIError | None:
        """`_take`'s moves. A refused import aborts the hand-over; a commit `source`
        refuses (the hold ran out, or the session's client ended it there meanwhile)
        undoes the import. Either way the session stays with `source`, and the answer is
        `_move_failed`. The engine here is touched only while `held` still reserves the
        record: the end route drops a record whatever reserves it (and ends the engine's
        copy after any import queued before), and a step of the id may open a new one
        after it; an end here meanwhile is the client's, so the hand-over is committed
        (`source` ends its copy too) and the step answered as one the end aborted."""
        sid, engine = held.sid, self.app.state.engine
        if held.held:
            try:
                await engine.call(lambda e: self._replace(e, sid, got.exported, salt))
            except Exception as e:  # no room, a failed copy (RuntimeError): the import
                # changed nothing
                log.warning("kvsaga: importing %s from %s failed (%s: %s); it stays there",
                            sid, source, type(e).__name__, e)
                if held.held:
                    await self._ask(source, "finish_handover",
                                    {"engine_sid": sid, "id": got.id, "commit": False})
                    return _move_failed(sid, source,
                                        f"importing its KV failed: {type(e).__name__}")
        done = await self._ask(source, "finish_handover",
                               {"engine_sid": sid, "id": got.id, "commit": True})
        if not held.held:
            return _ended_meanwhile(sid)
        if done is False:
            log.warning("kvsaga: %s no longer hands over %s; it stays there", source, sid)
            await engine.call(lambda e: self._forget(e, sid))
            return _move_failed(sid, source, "its previous replica took it back")
        # Else committed, or `source` is gone (its copy with it) or did not answer (it frees
        # its copy when the hold runs out; that copy idles out there).
        for k, v in got.context.items():
            setattr(held.ctx, k, v)
        return None

    def _replace(self, engine: Any, sid: str, exported: Any, salt: str | None) -> None:
        """End any local copy of the session (the one handed over is newer), then import
        the handed-over KV, if any; on the engine's thread."""
        self._forget(engine, sid)
        if exported is not None and exported.num_blocks:
            self._import(engine, exported, salt)

    def _forget(self, engine: Any, sid: str) -> None:
        """End the session's engine copy here (the manager's and the scheduler's admission;
        on the engine's thread), waking the reader of any step of it the end aborts
        (`AsyncEngine.end_engine_session`): a pull reserves the record, so none should be
        running, but one that was would otherwise wait for good."""
        self.app.state.engine.end_engine_session(engine, sid)
        self._seen_tokens.pop(sid, None)

    def _import(self, engine: Any, exported: Any, salt: str | None) -> None:
        """Import a pulled session's KV (on the engine's thread) and count its context as
        seen here: tokens computed on another replica are no service given here
        (`_routing_stats`), which counted the whole imported context as new tenant service
        at the next report, twice across the fleet."""
        import_session(engine, exported, salt=salt)
        s = engine.manager.sessions.get(exported.session_id)
        if s is not None:
            self._seen_tokens[exported.session_id] = len(s.token_ids)

    async def export_session(self, call: dict) -> Handover | str:
        """Hand-over, phase one: a paused session's context, and its KV if asked. The
        session stays here, held: its record is reserved (a step of it is answered 409
        `session_busy`, the idle sweep passes it over) until `finish_handover` commits
        (ends it here) or aborts (frees it), or `_HANDOVER_HOLD_S` passed without either
        (the importer died or gave up): it is then freed. Else why not: `EXPORT_BUSY` (a
        step of it is in flight here), "unknown" (no such session here) or "misrouted"
        (the call reached another replica)."""
        await self._start()
        sessions, sid = self._sessions, call.get("engine_sid")
        if call.get("pin") != self.replica_id or sessions is None:
            log.warning("kvsaga: export of %s reached %s, not %s", sid, self.replica_id,
                        call.get("pin"))
            return "misrouted"
        ctx = sessions.get(sid)
        if ctx is None or ctx.in_flight is not None:
            log.warning("kvsaga: %s cannot hand over %s (%s)", self.replica_id, sid,
                        "unknown" if ctx is None else "a step is in flight")
            return "unknown" if ctx is None else EXPORT_BUSY
        hold = ctx.in_flight = f"handover-{uuid.uuid4().hex}"
        migrate = bool(call.get("migrate"))
        try:
            exported = await self.app.state.engine.call(lambda e: _export_kv(e, sid, migrate))
        except BaseException:  # (cancelled: the importer gave up) nothing was handed over
            self._release(sid, hold)
            raise
        self._handovers[hold] = asyncio.get_running_loop().call_later(
            _HANDOVER_HOLD_S, self._expire, sid, hold)
        # What the session's cache holds (exact ids and text), not its local bookkeeping.
        context = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)
                   if f.name not in ("in_flight", "last_used")}
        return Handover(hold, context, exported)

    async def finish_handover(self, call: dict) -> bool | str:
        """Hand-over, phase two: `commit` ends the held session here (its importer has it),
        else the session is freed and stays here. True once ended; False when not
        committed: an abort, or the hold is over (it ran out, or the session's client
        ended the session meanwhile); "misrouted" (the call reached another replica)."""
        sessions, sid, hold = self._sessions, call.get("engine_sid"), call.get("id")
        if call.get("pin") != self.replica_id or sessions is None:
            return "misrouted"
        timer = self._handovers.pop(hold, None)
        if timer is None:
            log.warning("kvsaga: the hand-over of %s on %s is over already", sid,
                        self.replica_id)
            return False
        timer.cancel()
        ctx = sessions.get(sid)
        if not call.get("commit") or ctx is None or ctx.in_flight != hold:
            self._release(sid, hold)
            return False
        # The record goes before the await, as the end route's does, and the engine's copy
        # goes even if this call is cancelled (its caller gave up).
        sessions.drop(sid)
        await asyncio.shield(self.app.state.engine.call(lambda e: self._forget(e, sid)))
        return True

    def _expire(self, sid: str, hold: str) -> None:
        """The hold ran out with neither commit nor abort: the session is free here again."""
        log.warning("kvsaga: the hand-over of %s on %s was neither committed nor aborted "
                    "within %g s; the session stays here", sid, self.replica_id,
                    _HANDOVER_HOLD_S)
        self._handovers.pop(hold, None)
        self._release(sid, hold)

    def _release(self, sid: str, hold: str) -> None:
        """Free the session's record of hand-over `hold`, if the hold still reserves it."""
        sessions = self._sessions
        ctx = sessions.get(sid) if sessions is not None else None
        if ctx is not None and ctx.in_flight == hold:
            ctx.in_flight = None

    async def metrics(self, call: dict) -> str | None:
        """This replica's /metrics text (None if the call reached the wrong replica). Not
        after the model load: a loading replica's metrics have no engine figures yet, and
        a scrape waited for the load (up to `_LOAD_TIMEOUT_S`)."""
        if call.get("pin") != self.replica_id:
            return None
        return self.app.state.server.metrics.render().decode()

    async def cache_state(self, call: dict) -> dict | None:
        """Blocks referenced and sessions held, after an integrity check (for tests and
        operators: every block should be back once nothing runs)."""
        if call.get("pin") != self.replica_id:
            return None
        await self._start()

        def look(engine) -> dict:
            mgr = engine.manager
            mgr.check_integrity()
            st = mgr.stats()
            return {"replica": self.replica_id, "used_blocks": st.num_used_blocks,
                    "busy": engine.has_unfinished(), "sessions": sorted(mgr.sessions),
                    "steps": len(engine.scheduler.running) + len(engine.scheduler.waiting)}

        return await self.app.state.engine.call(look)

    async def record_routing_stats(self) -> dict:
        """What `KvsagaRequestRouter` reads (`kvsaga.routing.ReplicaStats` fields), taken on
        the engine thread: blocks, queue, sessions, predicted resumes, each session's
        context size (for the migrate-or-recompute decision) and the service each tenant
        has had here (`tenant_service`). Nothing (`{}`) before the model has loaded, after a
        failed load or once the engine stopped: the router places no new session on a
        replica that has not reported (`KvsagaRequestRouter`). A loaded replica reports
        before its first request (which enters the app's lifespan): reporting nothing
        until then, it would never be given one."""
        engine = self.app.state.engine
        if engine.snapshot is None or engine.stopped:
            return {}
        return await self.app.state.engine.call(self._routing_stats)

    def _forget_tenants(self, live: set[str], now: float) -> None:
        """Forget the service of tenants with no live session here for longer than the
        session idle limit (their sessions are ended by then too: one that comes back
        starts afresh), and beyond `_MAX_IDLE_TENANTS` tenants without a live session,
        the longest idle first. A tenant is a client-chosen `cache_salt`: kept for good,
        each new one grew every report, and the router sums every report's map at every
        decision (`FairShare.observe`)."""
        for t in live:
            self._last_live[t] = now
        idle = [t for t in self._service if t not in live]
        limit = self.settings.session_idle_s
        gone = [t for t in idle if now - self._last_live.get(t, now) > limit]
        if len(idle) - len(gone) > _MAX_IDLE_TENANTS:
            kept = sorted(set(idle) - set(gone), key=lambda t: self._last_live.get(t, now))
            gone += kept[:len(kept) - _MAX_IDLE_TENANTS]
        for t in gone:
            del self._service[t]
            self._last_live.pop(t, None)

    def _routing_stats(self, engine) -> dict:
        """Routing stats of `engine` (runs on its thread), with the seconds its thread has
        spent in engine steps (`AsyncEngine.busy_s`). Service is counted as context
        tokens gained (prompt + generated) per tenant, read from the manager's sessions;
        an engine session id is `<tenant salt>/<session>` (`SessionRegistry.engine_id`);
        one-shot requests are not counted."""
        mgr = engine.manager
        tokens = {sid: len(s.token_ids) for sid, s in mgr.sessions.items()}
        live: set[str] = set()
        for sid, n in tokens.items():
            gained = n - self._seen_tokens.get(sid, 0)
            tenant, slash, _ = sid.partition("/")
            # A one-shot request's id ("oneshot-<request id>") names no tenant: counted as
            # a tenant of its own, each made the session tenants look over-served, and the
            # router then refused to steal for them.
            if slash:
                live.add(tenant)
                if gained > 0:
                    self._service[tenant] = self._service.get(tenant, 0.0) + gained
        self._seen_tokens = tokens
        self._forget_tenants(live, time.monotonic())
        stats = ReplicaStats.from_manager(
            mgr, queue_depth=len(engine.scheduler.waiting), tenant_service=self._service,
            busy_s=self.app.state.engine.busy_s)
        row = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats) if f.init}
        row["session_tokens"] = tokens
        row["taken_at"] = time.time()  # the router discounts its steps finished since
        return row


# -- the application --------------------------------------------------------------------------


def _router_config(router: str, router_kwargs: dict | None, stats_period_s: float,
                   session_idle_s: float | None = None) -> RequestRouterConfig:
    """The engine deployment's request router: kvsaga's adapter over `kvsaga.routing`, or
    Ray Serve's default (which reads no routing stats and takes no kwargs). The adapter
    forgets a session not routed for `session_idle_s` (the replicas' idle limit; None:
    the router's default)."""
    if router == RAY_DEFAULT_ROUTER:
        return RequestRouterConfig(
            request_router_class="kvsaga.integrations.ray.router.RayDefaultRequestRouter")
    idle = {} if session_idle_s is None else {"session_idle_s": session_idle_s}
    return RequestRouterConfig(
        request_router_class="kvsaga.integrations.ray.router.KvsagaRequestRouter",
        request_router_kwargs={"router": router, **idle, **(router_kwargs or {})},
        request_routing_stats_period_s=stats_period_s,
    )


def build_application(
    settings: ServerSettings,
    num_replicas: int,
    *,
    router: str = "kvsaga",
    router_kwargs: dict | None = None,
    ray_actor_options: dict | None = None,
    factory: Any = None,
    stats_period_s: float = 0.5,
    torch_threads: int | None = None,
    stuck_step_s: float = STUCK_STEP_S,
):
    """The Ray Serve application: the gateway in front of `num_replicas` engine replicas.

    Args:
        settings: the server settings every replica runs with.
        num_replicas: engine replicas (>= 1).
        router: a `kvsaga.routing` router name, or `ray-default` (Ray Serve's own default
            request router, `RayDefaultRequestRouter`).
        router_kwargs: `RoutingConfig` fields for the `kvsaga` router, over those of
            `settings.routing_config` (`kvsaga-serve --routing-config`), which it
            routes with when this is None.
        ray_actor_options: per replica (e.g. `{"num_gpus": 1}` on a GPU cluster).
        factory: loads an engine (tests pass a tiny model's); default from `settings`.
        stats_period_s: how often the router reads each replica's routing stats.
        torch_threads: torch threads per replica (None: torch's default).
        stuck_step_s: a replica whose engine has been inside one step for longer fails Ray
            Serve's health check, and Serve replaces it (inf: never).
    """
    if not is_int(num_replicas) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
    if not (is_number(stuck_step_s) and stuck_step_s > 0):  # nan fails too
        raise ValueError(f"stuck_step_s must be a number > 0 (inf: never), got "
                         f"{stuck_step_s!r}")
    if router not in REPLICA_ROUTERS:
        raise ValueError(f"unknown router {router!r}; choose one of {sorted(REPLICA_ROUTERS)}")
    router_kwargs = {**(settings.routing_config or {}), **(router_kwargs or {})}
    routing_config(router, router_kwargs)  # here, not later inside the router actor
    if router_kwargs:
        log.info("router %s with RoutingConfig fields %s", router, router_kwargs)
    engine = serve.deployment(
        EngineReplica,
        name=ENGINE_DEPLOYMENT,
        num_replicas=num_replicas,
        max_ongoing_requests=settings.max_num_seqs + settings.max_queue + 8,
        ray_actor_options=ray_actor_options or {},
        request_router_config=_router_config(router, router_kwargs, stats_period_s,
                                             settings.session_idle_s),
    ).bind(settings, factory, torch_threads, stuck_step_s)
    return KvsagaGateway.bind(engine, settings)
