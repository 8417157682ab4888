"""kvsaga-serve on Ray Serve: N engine replicas behind one OpenAI-compatible endpoint.

Two deployments (`build_application`):

- `KvsagaGateway` (the HTTP ingress, one replica; `gateway.py`): routes each request by
  session to an engine replica through a DeploymentHandle whose request router is
  `KvsagaRequestRouter`, relays the replica's response, merges every replica's /metrics.
- `KvsagaEngine` (N replicas, `EngineReplica`): each runs the single-node server app
  (`build_app`) in process and serves the forwarded request through it, so the API,
  sessions, errors and limits are exactly those of `kvsaga-serve`. When the router moved a
  session onto it, it first pulls the session from its previous replica, in a two-phase
  hand-over (`handover.py`, the `SessionHandover` mixin: the token context always, and
  the KV too when the router chose migration).

The module is split by concept: the HTTP ingress is `gateway.py`, moving a session between
replicas is `handover.py`; here are running a request through the server app in process,
the replica's life (start, health, routing stats) and the application that binds them.
"""

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import RequestRouterConfig

from kvsaga._validate import check_number, check_positive_int, is_int, is_number
from kvsaga.integrations.ray.gateway import (
    ENGINE_DEPLOYMENT,
    PULL_REFUSED_HEADER,  # noqa: F401  (re-exported: callers name deployment's)
    KvsagaGateway,
)
from kvsaga.integrations.ray.handover import (
    Handover,  # noqa: F401  (re-exported: callers name deployment's)
    SessionHandover,
    _Hold,
)
from kvsaga.integrations.ray.router import routing_config
from kvsaga.routing import RAY_DEFAULT_ROUTER, REPLICA_ROUTERS, ReplicaStats
from kvsaga.serve.errors import APIError
from kvsaga.serve.sessions import SessionRegistry
from kvsaga.serve.settings import ServerSettings

log = logging.getLogger("kvsaga.ray")
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


def replica_logging(level: str) -> None:
    """Log the `kvsaga` records of this replica's process at `level` to its standard error
    (Ray forwards it to the driver's, prefixed with the replica, and keeps it in the
    replica's log file). A Serve replica configures no handler for them: its root stays
    at WARNING, so the status line (`--log-stats-interval`, INFO) never appeared. Its own
    handler, not the root's: Ray's handlers on the root are left alone. Once per process."""
    from kvsaga.logs import StderrHandler

    logger = logging.getLogger("kvsaga")
    logger.setLevel(level.upper())
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler(logging.Formatter(
            "%(levelname)s %(asctime)s %(name)s: %(message)s", "%H:%M:%S")))
        logger.propagate = False  # a root handler Ray adds would print each line twice


def _wait_loaded(engine: Any, timeout_s: float) -> None:
    """Block until the engine's model is loaded, its load failed or the engine stopped, or
    `timeout_s` passed (`AsyncEngine.wait_ready` returns at each of those)."""
    engine.wait_ready(timeout_s)


class EngineReplica(SessionHandover):
    """One engine and the single-node server app around it; it hands sessions over to and
    from its sibling replicas (`SessionHandover`).

    Args:
        settings: the server's settings (model, KV budget, policy, auth, limits).
        factory: loads the engine (default: the one `settings` describe).
        torch_threads: torch intra-op threads (CPU replicas sharing a machine: its cores
            divided among them, or they spin against each other).
        stuck_step_s: seconds one engine step may run before the replica fails its health
            check (`check_health`).
        log_level: the level of the replica's `kvsaga` logger (`replica_logging`); None
            leaves its logging alone.
    """

    def __init__(
        self, settings: ServerSettings, factory: Any = None, torch_threads: int | None = None,
        stuck_step_s: float = STUCK_STEP_S, log_level: str | None = None,
    ) -> None:
        from kvsaga.serve.app import build_app
        from kvsaga.serve.cli import engine_factory

        if log_level is not None:
            replica_logging(log_level)
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
        # hold id -> the session it holds for its importer (`handover._Hold`: the timer
        # that frees it, the importer, which `SessionHandover._reclaim` asks about)
        self._handovers: dict[str, _Hold] = {}
        # the holds this replica committed -> when (`SessionHandover.finish_handover`: a
        # repeated commit is answered True), oldest first, for `handover._commit_kept_s`
        self._committed: collections.OrderedDict[str, float] = collections.OrderedDict()

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
        """Serve one forwarded HTTP request; yields its ASGI response messages. A session
        held here for an importer that is gone is freed first (`_reclaim`)."""
        await self._start()
        if call.get("pin") not in (None, self.replica_id):
            yield {"type": "kvsaga.misrouted"}
            return
        sid = call.get("engine_sid")
        await self._reclaim(sid)
        route = call.get("route") or {}
        moved_from = route.get("moved_from")
        if moved_from and moved_from != self.replica_id and sid:
            refused = await self._pull(sid, call.get("salt"), moved_from,
                                       bool(route.get("migrate")))
            if refused is not None:
                async for msg in _error_messages(refused, _scope(call)):
                    yield msg
                return
        messages = asgi_messages(self.app, _scope(call), call.get("body", b""))
        async for msg in messages:
            # The server's 409 (its only one: `session_busy`) says a request is in flight;
            # for a session held here, the answer names the hold instead.
            held = self._held_busy(sid) if msg.get("status") == 409 else None
            if held is not None:
                await messages.aclose()
                async for m in _error_messages(held, _scope(call)):
                    yield m
                return
            yield msg

    async def metrics(self, call: dict) -> str | None:
        """This replica's /metrics text (None if the call reached the wrong replica). Not
        after the model load: a loading replica's metrics have no engine figures yet, and
        a scrape waited for the load (up to `_LOAD_TIMEOUT_S`)."""
        if call.get("pin") != self.replica_id:
            return None
        return (await self.app.state.server.metrics.scrape()).decode()

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
        decision (`FairShare.observe`). Idle tenants are looked for in both maps: a tenant
        whose sessions here were all imported and left before they grew has no service
        here, and its `_last_live` entry was kept for good (review s49 ray 3)."""
        for t in live:
            self._last_live[t] = now
        idle = [t for t in self._service.keys() | self._last_live.keys() if t not in live]
        limit = self.settings.session_idle_s
        gone = [t for t in idle if now - self._last_live.get(t, now) > limit]
        if len(idle) - len(gone) > _MAX_IDLE_TENANTS:
            kept = sorted(set(idle) - set(gone), key=lambda t: self._last_live.get(t, now))
            gone += kept[:len(kept) - _MAX_IDLE_TENANTS]
        for t in gone:
            self._service.pop(t, None)
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


def router_tenant_weights(settings: ServerSettings) -> dict[str, float] | None:
    """The replicas' scheduler `tenant_weights` (`settings.scheduler_params`), keyed by the
    router's tenant names: a replica reports a tenant's service under its salt, "anon" for
    the anonymous tenant (the scheduler's None), as the gateway names a step's tenant.
    None when the replicas weigh every tenant 1. Before, the router's fair share weighed
    every tenant 1 whatever the replicas did: a tenant weighted 4:1 that got its weighted
    share looked 1.6x over-served and was held back from idle replicas (review s51 ray 2).
    A str "anon" key names no tenant a replica serves (salts are digests): left out."""
    weights = (settings.scheduler_params or {}).get("tenant_weights")
    if not weights:
        return None
    return {"anon" if t is None else t: float(w) for t, w in weights.items() if t != "anon"}


def _router_config(router: str, router_kwargs: dict | None, stats_period_s: float,
                   session_idle_s: float | None = None,
                   tenant_weights: dict[str, float] | None = None) -> RequestRouterConfig:
    """The engine deployment's request router: kvsaga's adapter over `kvsaga.routing`, or
    Ray Serve's default (which reads no routing stats and takes no kwargs). The adapter
    forgets a session not routed for `session_idle_s` (the replicas' idle limit; None:
    the router's default); the kvsaga router weighs the fleet's fair share by
    `tenant_weights` (`router_tenant_weights`; None: 1 each)."""
    if router == RAY_DEFAULT_ROUTER:
        return RequestRouterConfig(
            request_router_class="kvsaga.integrations.ray.router.RayDefaultRequestRouter")
    idle = {} if session_idle_s is None else {"session_idle_s": session_idle_s}
    if tenant_weights and router == "kvsaga":
        idle["tenant_weights"] = tenant_weights
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
    log_level: str | None = None,
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
        stats_period_s: how often the router reads each replica's routing stats, in
            seconds (> 0).
        torch_threads: torch threads per replica, an int >= 1 (None: torch's default).
        stuck_step_s: a replica whose engine has been inside one step for longer fails Ray
            Serve's health check, and Serve replaces it (inf: never).
        log_level: the level each replica logs its `kvsaga` records at, to its standard
            error (`replica_logging`; `kvsaga-serve --replicas` passes its `--log-level`);
            None leaves the replicas' logging as Ray Serve sets it (WARNING).
    """
    if not is_int(num_replicas) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
    if not (is_number(stuck_step_s) and stuck_step_s > 0):  # nan fails too
        raise ValueError(f"stuck_step_s must be a number > 0 (inf: never), got "
                         f"{stuck_step_s!r}")
    # Here, naming the argument: later, a bad one failed inside every replica actor
    # (torch's set_num_threads) or in Ray's config (its own field name), and a 0 was taken
    # for torch's default.
    check_positive_int("torch_threads", torch_threads, none_ok=True)
    check_number("stats_period_s", stats_period_s, lambda x: x > 0, "> 0")
    if log_level is not None and not (isinstance(log_level, str) and isinstance(
            logging.getLevelName(log_level.upper()), int)):
        raise ValueError(f"log_level must be a logging level name, got {log_level!r}")
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
                                             settings.session_idle_s,
                                             router_tenant_weights(settings)),
    ).bind(settings, factory, torch_threads, stuck_step_s, log_level)
    return KvsagaGateway.bind(engine, settings)
