"""kvsaga-serve on Ray Serve: N engine replicas behind one OpenAI-compatible endpoint.

Two deployments (`build_application`):

- `KvsagaGateway` (the HTTP ingress, one replica): reads each request once, extracts the
  routing facts (`kvsaga.routing.session_key`, tenant, prefix key, context size) and forwards
  the raw request (method, path, headers, body) to the engine deployment through a
  DeploymentHandle, whose request router is `KvsagaRequestRouter`. It relays the replica's
  response message by message, so streaming stays streaming. `/metrics` fans out to every
  replica and merges their families with a `replica` label. A replica that dies before
  answering gives a 503 in OpenAI's error JSON (`code: replica_unavailable`); the session's
  next step is routed to a live replica and recomputed there.
- `KvsagaEngine` (N replicas): each runs the single-node server app (`build_app`) in process
  and serves the forwarded request through it, so the API, sessions, errors and limits are
  exactly those of `kvsaga-serve`. When the router moved a session onto it, it first pulls
  the session from its previous replica: the token context always (so re-tokenization
  cannot split it differently), and the KV too when the router chose migration
  (`kvsaga.migration`: exported through host memory, imported byte for byte); the previous
  replica then ends its copy, so a session lives in one place (docs/cluster.md, "Moving a
  session", says when it does not). A session with a step in flight on its previous
  replica is not taken: the step gets that replica's 409 `session_busy`.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import RequestRouterConfig

from kvsaga._validate import is_int
from kvsaga.integrations.ray import registry
from kvsaga.integrations.ray.router import routing_config
from kvsaga.migration import export_session, import_session
from kvsaga.routing import (
    RAY_DEFAULT_ROUTER,
    REPLICA_ROUTERS,
    ReplicaStats,
    prefix_key,
    session_key,
)
from kvsaga.serve.errors import APIError
from kvsaga.serve.guard import check_key, too_large
from kvsaga.serve.sessions import SessionRegistry, tenant_salt
from kvsaga.serve.settings import ServerSettings

log = logging.getLogger("kvsaga.ray")
ENGINE_DEPLOYMENT = "KvsagaEngine"
_SESSION_PATHS = ("/v1/chat/completions", "/v1/completions")
_PULL_TIMEOUT_S = 60.0
# What `export_session` answers for a session with a step in flight on its replica.
EXPORT_BUSY = "busy"
# The header of a 409 answered because the pull met a step in flight on the source (the
# source's id): the gateway has the router take the session back there.
PULL_REFUSED_HEADER = "x-kvsaga-pull-refused"
_LOAD_TIMEOUT_S = 600.0
# Tenants without a live session whose service a replica still reports (`_forget_tenants`).
_MAX_IDLE_TENANTS = 1024
_METRICS_TIMEOUT_S = 5.0  # per replica, for the gateway's merged /metrics


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


def _wait_loaded(engine: Any, timeout_s: float) -> None:
    """Block until the engine's model is loaded, its load failed, or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while not engine.wait_ready(0.5):
        if engine.load_error is not None or time.monotonic() > deadline:
            return



class EngineReplica:
    """One engine and the single-node server app around it.

    Args:
        settings: the server's settings (model, KV budget, policy, auth, limits).
        factory: loads the engine (default: the one `settings` describe).
        torch_threads: torch intra-op threads (CPU replicas sharing a machine: its cores
            divided among them, or they spin against each other).
    """

    def __init__(
        self, settings: ServerSettings, factory: Any = None, torch_threads: int | None = None
    ) -> None:
        from kvsaga.serve.app import build_app
        from kvsaga.serve.cli import engine_factory

        ctx = serve.get_replica_context()
        self.replica_id = ctx.replica_id.unique_id
        self.app_name = ctx.app_name
        self.settings = settings
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
        exits instead, `cli._exit_on_load_failure`).

        Raises:
            RuntimeError: the model failed to load, or the engine thread stopped.
        """
        engine = self.app.state.engine
        if engine.load_error is not None:
            raise RuntimeError(f"the model failed to load: {engine.load_error}")
        if engine.stopped:
            raise RuntimeError(f"the engine stopped: {engine.stop_reason}")

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
        """Take a moved session's context (and KV when `migrate`) from its previous replica.
        A session with a step in flight there is not taken: the answer then is the 409
        `session_busy` that replica gives a concurrent step (opened here as well, the
        session would live on two replicas). Any other failure (the source died, it does
        not hold the session) leaves a recompute."""
        sessions = self._sessions
        if sessions is None or await self._holds(sessions, sid):
            return None
        handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, self.app_name)
        ask = {"kvsaga": 1, "pin": source, "engine_sid": sid, "migrate": migrate}
        try:
            got = await asyncio.wait_for(
                handle.options(method_name="export_session").remote(ask), _PULL_TIMEOUT_S
            )
        except Exception as e:  # the source is gone or stuck: recompute here
            log.warning("kvsaga: pulling session from %s failed (%s); recomputing", source, e)
            return None
        if got == EXPORT_BUSY:
            log.warning("kvsaga: %s has a step of %s in flight; answering 409", source, sid)
            return APIError(409, f"session {sid.partition('/')[2]!r} already has a request "
                            "in flight", param="session_id", code="session_busy",
                            headers={PULL_REFUSED_HEADER: source})
        if not isinstance(got, tuple):
            log.warning("kvsaga: %s did not hand over session %s (%s); recomputing",
                        source, sid, got)
            return None
        context, exported = got
        if exported is not None and exported.num_blocks:
            try:
                await self.app.state.engine.call(lambda e: self._import(e, exported, salt))
            except Exception as e:  # no room, the session appeared meanwhile, a failed
                # copy (RuntimeError): the import changed nothing, the context recomputes
                log.warning("kvsaga: importing %s failed (%s); recomputing", sid, e)
        ctx = sessions.open(sid)
        for k, v in context.items():
            setattr(ctx, k, v)
        return None

    async def _holds(self, sessions: SessionRegistry, sid: str) -> bool:
        """Whether the session lives here: a context record with a step in flight (still
        queued, its session may not be in the engine yet: the server answers a second step
        409 `session_busy`), or an idle one whose session the engine holds too. An idle
        record without it is stale (an export cancelled before the record was dropped left
        one): it is dropped, and the session pulled."""
        ctx = sessions.get(sid)
        if ctx is None:
            return False
        if ctx.in_flight is not None:
            return True
        if await self.app.state.engine.call(lambda e: sid in e.manager.sessions):
            return True
        sessions.drop(sid)
        return False

    def _import(self, engine: Any, exported: Any, salt: str | None) -> None:
        """Import a pulled session's KV (on the engine's thread) and count its context as
        seen here: tokens computed on another replica are no service given here
        (`_routing_stats`), which counted the whole imported context as new tenant service
        at the next report, twice across the fleet."""
        import_session(engine, exported, salt=salt)
        s = engine.manager.sessions.get(exported.session_id)
        if s is not None:
            self._seen_tokens[exported.session_id] = len(s.token_ids)

    async def export_session(self, call: dict) -> tuple[dict, Any] | str:
        """Hand a paused session over (context, and KV if asked) and end it here; else why
        not: `EXPORT_BUSY` (a step of it is in flight here), "unknown" (no such session
        here) or "misrouted" (the call reached another replica)."""
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
        aengine = self.app.state.engine

        def take(engine) -> Any:
            out = None
            try:
                if call.get("migrate") and sid in engine.manager.sessions:
                    out = export_session(engine, sid)
            except Exception as e:  # (a failed host-tier copy: RuntimeError) the context
                # moves without its KV, recomputed on the new replica
                log.warning("kvsaga: exporting the KV of %s failed (%s); it moves without",
                            sid, e)
            finally:
                engine.end_session(sid)  # the manager's copy and the scheduler's admission
            return out

        # The record goes before the await, as the end route's does, and the engine's copy
        # goes even if this call is cancelled (its caller gave up): a record left behind
        # named a session the engine no longer held, and a later pull here trusted it.
        sessions.drop(sid)
        exported = await asyncio.shield(aengine.call(take))
        # What the session's cache holds (exact ids and text), not its local bookkeeping.
        context = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)
                   if f.name not in ("in_flight", "last_used")}
        return context, exported

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


# -- the gateway ------------------------------------------------------------------------------

gateway_api = FastAPI(title="kvsaga-serve (Ray Serve)", docs_url=None, redoc_url=None)


class _Relay(Response):
    """A response that replays a replica's ASGI messages."""

    def __init__(self, first: dict, rest: AsyncIterator) -> None:
        super().__init__()
        self.first, self.rest = first, rest

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(self.first)
        done = False
        try:
            async for msg in self.rest:
                await send(msg)
            done = True
        finally:
            if not done:  # the client went away: the replica's generator is cancelled, so
                self.rest.cancel()  # its app sees the disconnect and aborts the step


def _error(status: int, message: str, code: str, headers: dict | None = None) -> Response:
    body = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


def _unavailable(reason: str) -> Response:
    return _error(503, f"the replica serving this request is unavailable ({reason}); retry: "
                  "the session continues on another replica", "replica_unavailable",
                  {"Retry-After": "1"})


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of the Authorization header; given twice, the last, as the
    replica's `Guard` reads it (the first named the session by another tenant than the
    replica served it under)."""
    value = None
    for k, v in headers:
        if k.lower() == b"authorization":
            value = v
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _header(msg: dict, name: str) -> str | None:
    """A header of an `http.response.start` message (`name` in lower case), or None."""
    for k, v in msg.get("headers", []):
        if bytes(k).lower() == name.encode():
            return bytes(v).decode("latin-1")
    return None


def routing_call(settings: ServerSettings, method: str, path: str, query: bytes,
                 headers: list[tuple[bytes, bytes]], body: bytes) -> dict:
    """The call the engine deployment receives: the raw request plus its routing facts."""
    call: dict[str, Any] = {"kvsaga": 1, "method": method, "path": path, "query": query,
                            "headers": headers, "body": body}
    ending = path.startswith("/v1/sessions/") and path.endswith("/end")
    if method != "POST" or not (path in _SESSION_PATHS or ending):
        return call
    try:
        parsed = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):  # (nested too deep for the parser)
        return call  # the replica answers the 400
    if not isinstance(parsed, dict):
        return call
    salt = parsed.get("cache_salt")
    if salt is not None and not (isinstance(salt, str) and salt):
        return call  # the replica answers the 400 naming cache_salt
    try:
        call.update(_routing_facts(settings, path, headers, body, parsed, ending))
    except UnicodeEncodeError:  # a lone surrogate in what is hashed (cache_salt, the system
        return call  # message): the replica answers the 400 naming it
    return call


def _routing_facts(settings: ServerSettings, path: str, headers: list[tuple[bytes, bytes]],
                   body: bytes, parsed: dict, ending: bool) -> dict[str, Any]:
    """`routing_call`'s facts of a parsed session request (its `cache_salt` None or a
    non-empty str).

    Raises:
        UnicodeEncodeError: a lone surrogate in `cache_salt` or the system message.
    """
    key = _bearer(headers)
    api_key = key if key in settings.api_keys else None
    salt = tenant_salt(api_key, parsed.get("cache_salt"))
    # A header given twice: the first, as the server reads it (Starlette's headers.get).
    hdrs: dict[str, str] = {}
    for k, v in headers:
        hdrs.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    # The end route takes ids with '/' ({session_id:path}; the path arrives %2F-decoded):
    # the id is everything between the prefix and the trailing /end.
    sid = (path[len("/v1/sessions/"):-len("/end")] or None) if ending \
        else session_key(parsed, hdrs)
    # A rough guess of the context size: the router prefers the session's real token count,
    # which its home replica reports (`session_tokens` in its routing stats).
    facts: dict[str, Any] = {"tenant": salt or "anon", "prefix_key": prefix_key(parsed),
                             "context_tokens": len(body) // 4}
    if sid is not None:
        hint = parsed.get("kvsaga")
        facts.update(engine_sid=SessionRegistry.engine_id(salt, sid), salt=salt,
                     ends=ending or bool(isinstance(hint, dict) and hint.get("last_step")),
                     end_request=ending)
        facts["session"] = facts["engine_sid"]
    return facts


def ended_session(call: dict, status: object) -> bool:
    """Whether the replica's answer ended the call's session (the router forgets it): a
    last step or an end request answered 2xx, or an end request answered 404 (the replica
    knows no such session). A refused one (429 queue full, 409 session busy, 400) keeps
    the session where it lives."""
    if not call.get("ends") or not is_int(status):
        return False
    return 200 <= status < 300 or (bool(call.get("end_request")) and status == 404)


def engine_replicas(app_name: str) -> list[str]:
    """Ids of the live engine replicas of an application (Serve names their actors)."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{ENGINE_DEPLOYMENT}#"
    return sorted(a["name"][len(prefix):] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(prefix))


def merge_metrics(texts: dict[str, str]) -> str:
    """Prometheus texts of several replicas as one exposition: each family once, every
    sample labelled with its `replica`."""
    families: dict[str, dict] = {}
    for rid, text in texts.items():
        current = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split()[2]
                fam = families.setdefault(name, {"meta": [], "samples": []})
                if line not in fam["meta"]:
                    fam["meta"].append(line)
                current = name
                continue
            if line.startswith("#") or current is None:
                continue
            name, _, rest = line.partition("{")
            label = f'replica="{rid}"'
            if rest:
                sample = f"{name}{{{label},{rest}"
            else:
                metric, _, value = line.partition(" ")
                sample = f"{metric}{{{label}}} {value}"
            families[current]["samples"].append(sample)
    lines = []
    for fam in families.values():
        lines += fam["meta"] + fam["samples"]
    return "\n".join(lines) + "\n"


async def read_capped(request: Request, limit: int) -> bytes:
    """The request's body, read up to `limit` bytes (`ServerSettings.max_body_bytes`): the
    gateway buffers no more than one node's server would (`kvsaga.serve.guard.Guard`),
    chunked encoding or not, before it parses the body and ships it through Ray.

    Raises:
        APIError: 413 `request_too_large` for a declared or read size over `limit`.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large(total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


class GatewayCore:
    """What the gateway does, in an importable class (Ray pickles the ingress class itself
    by value, with copies of the module globals it names)."""

    def __init__(self, engine: Any, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings

    async def metrics(self, headers: list[tuple[bytes, bytes]]) -> Response:
        """Every replica's /metrics, merged. Behind the API key under `metrics_auth`, as on
        one node. Each replica is asked for at most `_METRICS_TIMEOUT_S` (it renders
        without waiting for its model load): one that does not answer (stuck, or gone) is
        left out and logged instead of holding the whole scrape. One after another, not
        at once: Ray Serve gives the calls a request makes its own internal request id,
        and its router matches a pending call to the replica found for it by that id, so
        two calls in flight at once from one request are confused (in a live test one
        waited 9 s before it was sent)."""
        if self.settings.metrics_auth and self.settings.api_keys:
            try:
                check_key(self.settings.api_keys, dict(headers).get(b"authorization", b""))
            except APIError as e:
                return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
        texts = {}
        for rid in engine_replicas(serve.get_replica_context().app_name):
            text = await self._replica_metrics(rid)
            if text is not None:
                texts[rid] = text
        return Response(merge_metrics(texts), media_type="text/plain; version=0.0.4")

    async def _replica_metrics(self, rid: str) -> str | None:
        try:
            return await asyncio.wait_for(self.engine.options(method_name="metrics").remote(
                {"kvsaga": 1, "pin": rid}), _METRICS_TIMEOUT_S)
        except Exception as e:  # TimeoutError too: left out of this scrape
            log.warning("kvsaga: /metrics of replica %s failed (%s: %s); left out", rid,
                        type(e).__name__, e)
            return None

    async def forward(self, request: Request) -> Response:
        try:
            body = await read_capped(request, self.settings.max_body_bytes)
        except APIError as e:
            return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
        return await self.call(request.method, request.url.path, request.url.query.encode(),
                               list(request.headers.raw), body)

    async def call(self, method: str, path: str, query: bytes,
                   headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        call = routing_call(self.settings, method, path, query, headers, body)
        stream = self.engine.options(method_name="handle", stream=True).remote(call)
        try:
            first = await stream.__anext__()
        except (RayActorError, ActorUnavailableError) as e:  # died before answering
            return _unavailable(type(e).__name__)
        except Exception as e:
            log.exception("kvsaga: the engine replica failed")
            return _error(500, f"internal error in the engine replica: {type(e).__name__}",
                          "internal_error")
        if first.get("type") != "http.response.start":
            return _unavailable("misrouted")
        if ended_session(call, first.get("status")):
            for router in registry.routers_here():
                router.session_ended(call["session"])  # on the router's own loop
        refused = _header(first, PULL_REFUSED_HEADER)
        if refused is not None and call.get("session") is not None:
            for router in registry.routers_here():  # the move did not happen
                router.move_refused(call["session"], refused)
        route = call.get("route")
        if route is not None:  # where it ran and why, for clients and tests
            first = {**first, "headers": [*first.get("headers", []),
                                          (b"x-kvsaga-replica", route["replica"].encode()),
                                          (b"x-kvsaga-route", route["reason"].encode())]}
        return _Relay(first, stream)


@serve.deployment(name="KvsagaGateway", num_replicas=1, max_ongoing_requests=1000,
                  ray_actor_options={"num_cpus": 0})  # it only relays: no core of its own
@serve.ingress(gateway_api)
class KvsagaGateway:
    """The HTTP ingress: routes by session, relays responses, merges /metrics."""

    def __init__(self, engine: Any, settings: ServerSettings) -> None:
        self.core = GatewayCore(engine, settings)

    @gateway_api.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        return await self.core.metrics(list(request.headers.raw))

    @gateway_api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def forward(self, request: Request) -> Response:
        return await self.core.forward(request)


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
    """
    if not is_int(num_replicas) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
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
    ).bind(settings, factory, torch_threads)
    return KvsagaGateway.bind(engine, settings)
