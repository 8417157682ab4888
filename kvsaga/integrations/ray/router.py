"""KvsagaRequestRouter: a Ray Serve request router that is a thin adapter over
`kvsaga.routing`; RayDefaultRequestRouter: Ray Serve's own default router, the baseline.

Ray Serve calls `choose_replicas` for each pending request to the engine deployment. A
kvsaga call carries a dict (`args[0]`) with the routing facts the gateway extracted from the
HTTP request: `session` (tenant-qualified), `tenant`, `prefix_key`, `context_tokens`,
`end_request` (an end request: to the session's home, never moved), or a
`pin` (a replica id: exports, imports and metrics go to one named replica). The router turns
each replica's `routing_stats` (what `EngineReplica.record_routing_stats` reports) into
`ReplicaStats`, asks the `kvsaga.routing` router, and writes its decision into the call as
`route`, so the chosen replica knows whether the step moved and whether to pull the
session's KV (`migrate`) or only its token context. A routed request loads its replica
(`Router.finished` releases it) until it completes, or until its caller gives up before
Ray Serve sent it to a replica (`_Routed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from kvsaga.integrations.ray import registry
from kvsaga.routing import ReplicaStats, Route, RouteRequest, RoutingConfig, make_router
from kvsaga.serve.settings import routing_config_of
from kvsaga.session import DEFAULT_SESSION_IDLE_S

log = logging.getLogger("kvsaga.ray")


def kvsaga_call(pending_request: PendingRequest | None) -> dict | None:
    """The kvsaga routing dict of a pending request, or None for any other request."""
    if pending_request is None or not pending_request.args:
        return None
    call = pending_request.args[0]
    return call if isinstance(call, dict) and call.get("kvsaga") == 1 else None


def stats_of(replica: RunningReplica) -> ReplicaStats | None:
    """A replica's last reported routing stats; None before its first report, while its
    model loads, after a failed load (`EngineReplica.record_routing_stats` reports
    nothing) or for a report that does not parse. Read as an idle replica, such a one
    drew every new session, each answered 503 by a replica whose load had failed."""
    try:
        row = replica.routing_stats
        return ReplicaStats(**row) if row else None
    except (TypeError, ValueError, AttributeError):
        return None


def pinned(router: RequestRouter, call: dict | None,
           candidates: list[RunningReplica]) -> list[list[RunningReplica]] | None:
    """The replica a pinned kvsaga call names (exports, imports, metrics and cache state
    are addressed to one replica), or None when the call is not pinned. A pin to a replica
    that is gone reaches another, which answers "misrouted"."""
    pin = call.get("pin") if call is not None else None
    if pin is None:
        return None
    by_id = {r.replica_id.unique_id: r for r in router._replicas.values()}
    return [[by_id[pin]]] if pin in by_id else [candidates]


def routing_config(router: str, config: dict[str, Any]) -> RoutingConfig | None:
    """The `kvsaga` router's RoutingConfig from the request router's kwargs (None for
    another router, which takes none).

    Raises:
        ValueError: fields given for another router (they would be dropped without a word),
            a field RoutingConfig does not have (listing those it has), or a bad value.
    """
    if router != "kvsaga":
        if config:
            raise ValueError(f"RoutingConfig fields {sorted(config)} apply to the kvsaga "
                             f"router only, not {router!r}")
        return None
    return routing_config_of(config)


class _Routed:
    """A routed request's decision and its tries. Ray Serve routes a request again after a
    replica rejects it (at `max_ongoing_requests`): each try has its own
    `PendingRequest.future` (reset on a retry), and every try that reached a replica gets
    one `on_request_completed`, a rejected one too. The route is released (its step no
    longer loads its replica) once every try seen has completed, or when the latest try's
    future is cancelled before it reached a replica (the caller gave up while the request
    waited for a slot)."""

    __slots__ = ("route", "future", "tries", "completed", "accepted")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.accepted = False  # a replica accepted a try (`on_request_routed`)
        self.future: asyncio.Future | None = None  # the latest try's
        self.tries = 0  # futures seen (one per try)
        self.completed = 0  # on_request_completed calls


class KvsagaRequestRouter(RequestRouter):
    """Routes kvsaga calls with a `kvsaga.routing` router (default `kvsaga`); other calls
    go to any available replica. Configure through the deployment's
    `request_router_config.request_router_kwargs`: `router` (a name of
    `kvsaga.routing.ROUTERS`), `session_idle_s` (how long an unrouted session is
    remembered: the replicas' idle limit, `ServerSettings.session_idle_s`),
    `tenant_weights` (the replicas' scheduler's, for the fleet's fair share) and any
    `RoutingConfig` field."""

    def initialize_state(self, router: str = "kvsaga",
                         session_idle_s: float | None = DEFAULT_SESSION_IDLE_S,
                         tenant_weights: dict[str, float] | None = None,
                         **config: Any) -> None:
        routing = routing_config(router, config)
        kwargs: dict[str, Any] = {"config": routing} if routing is not None else {}
        if tenant_weights is not None:  # the replicas' (`deployment.router_tenant_weights`)
            if router != "kvsaga":
                raise ValueError(f"tenant_weights apply to the kvsaga router only, not "
                                 f"{router!r}")
            kwargs["tenant_weights"] = tenant_weights
        self.kv_router = make_router(router, session_idle_s=session_idle_s, **kwargs)
        # Found by the gateway in `registry` (not in a class attribute: Ray pickles this
        # class by value, and loading it again resets or copies its attributes).
        registry.ROUTERS.add(self)
        self._routes: dict[str, _Routed] = {}  # internal request id -> its route
        # The loop Ray Serve runs this router's calls on (its own thread by default), seen
        # at the first routing decision: the gateway's calls run there (`_on_loop`).
        self._loop: asyncio.AbstractEventLoop | None = None

    def session_ended(self, session: str) -> None:
        """Forget `session` (its last step or end request succeeded); from any thread
        (`_on_loop`)."""
        self._on_loop(self.kv_router.session_ended, session)

    def move_refused(self, session: str, source: str, replica: str,
                     import_refused: bool = False) -> None:
        """The step that moved `session` off `source` was refused by `replica`: it met a
        step in flight there (409), or its import was refused (503, `import_refused`), or
        `replica` died before it answered (`Router.move_refused`); from any thread
        (`_on_loop`)."""
        self._on_loop(self.kv_router.move_refused, session, source, replica, import_refused)

    def move_unanswered(self, session: str, source: str, replica: str) -> None:
        """The step that moved `session` off `source` found `replica` unreachable
        (`Router.move_unanswered`: refused once `replica` is removed); from any thread
        (`_on_loop`)."""
        self._on_loop(self.kv_router.move_unanswered, session, source, replica)

    def move_taken(self, session: str, replica: str, source: str) -> None:
        """A step that moved `session` from `source` to `replica` was answered there
        (`Router.move_taken`); from any thread (`_on_loop`)."""
        self._on_loop(self.kv_router.move_taken, session, replica, source)

    def _on_loop(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the router's loop. The gateway calls in from its own thread,
        while Ray Serve runs every other entry point on the router's loop; `kv_router`'s
        state has no lock (a replica removed while sessions ended there raised
        "dictionary changed size during iteration" half-way, leaving sessions homed on a
        replica it no longer knew). It needs none: Ray Serve (2.60) runs
        `choose_replicas` and `on_request_routed` in its routing coroutines there,
        `update_replicas` from its long-poll listeners (`call_in_event_loop`), and
        `on_replica_actor_died` there; it queues `on_request_completed` onto the loop
        from the thread that sees the reply (`AsyncioRouter._register_completion_callback`),
        and `_try_done` is a callback of a future of that loop. `kv_router`'s methods do
        not await, so no two of them interleave. Before the first routing decision no
        session is known: nothing to do."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the router is gone
            loop.call_soon_threadsafe(fn, *args)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        ids = [r.replica_id.unique_id for r in replicas]
        lost = self.kv_router.sync(ids)
        if lost:
            log.warning("kvsaga: %d sessions lost their replica; they recompute", len(lost))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.kv_router.remove_replica(replica_id.unique_id)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        call = kvsaga_call(pending_request)
        if call is None or not candidate_replicas:
            return [candidate_replicas]
        self._loop = asyncio.get_running_loop()
        pin = pinned(self, call, candidate_replicas)
        if pin is not None:
            return pin
        by_id = {r.replica_id.unique_id: r for r in self._replicas.values()}
        rid = pending_request.metadata.internal_request_id
        routed = self._routes.get(rid)
        if routed is None or routed.route.replica not in by_id:  # routed once, even on retries
            if routed is not None:  # its replica is gone: the earlier tries still complete
                del self._routes[rid]
                self.kv_router.finished(routed.route)
            # Replicas that have not reported are left out: the router places no new step
            # on them while another replica is available (`Router.ready`).
            stats = {i: st for i, r in by_id.items() if (st := stats_of(r)) is not None}
            gone, routed = routed, _Routed(self.kv_router.route(
                RouteRequest(
                    session=call.get("session"),
                    tenant=call.get("tenant", ""),
                    prefix_key=call.get("prefix_key"),
                    context_tokens=int(call.get("context_tokens", 0)),
                    stay=bool(call.get("end_request")),  # an end goes home, never moved
                    affinity_only=bool(call.get("affinity_only")),  # a prompt_cache_key
                ),
                stats,
            ))
            if gone is not None:  # the same tries: the one waiting now is counted already
                routed.tries, routed.completed = gone.tries, gone.completed
                routed.future = gone.future
            self._routes[rid] = routed
        future = pending_request.future
        if routed.future is not future:  # a new try (Ray calls this again while one waits)
            routed.future = future
            routed.tries += 1
            future.add_done_callback(partial(self._try_done, rid))
        route = routed.route
        call["route"] = {
            "replica": route.replica,
            "moved_from": route.moved_from,
            "migrate": route.migrate,
            "reason": route.reason,
        }
        return [[by_id[route.replica]]]

    def _release(self, rid: str, routed: _Routed, ran: bool | None) -> None:
        if self._routes.get(rid) is routed:
            del self._routes[rid]
            self.kv_router.finished(routed.route, ran=ran)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: Any) -> None:
        """A replica accepted the request (Ray Serve calls this when replicas may reject):
        a move the route made is done, since the replica pulls the session before it runs
        the step, and this step, the first accepted there, is the one that pulls (its
        route owns the move's count, `KvsagaRouter.confirm_move`). Without this call
        (replicas that never reject), the replica's next report confirms the move
        (`Router.unconfirmed_move`), and a completed step is released with ran=None
        (unknown whether it ran)."""
        routed = self._routes.get(pending_request.metadata.internal_request_id)
        if routed is not None and routed.route.replica == replica_id.unique_id:
            routed.accepted = True
            if routed.route.session is not None:
                self.kv_router.confirm_move(routed.route.session, routed.route.replica,
                                            routed.route)

    def _try_done(self, rid: str, future: asyncio.Future) -> None:
        """A try's future is done: given a replica, the try is sent and its
        `on_request_completed` follows; cancelled (or failed), it never reached a replica,
        and when it is the latest try no other will come. The route is the request's
        current one (routed again if its replica went away while the try waited)."""
        routed = self._routes.get(rid)
        if routed is not None and future is routed.future and (
                future.cancelled() or future.exception() is not None):
            self._release(rid, routed, ran=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        routed = self._routes.get(internal_request_id)
        if routed is None:
            return
        routed.completed += 1
        # A rejected try completes too, and its retry may already be routed (Ray queues the
        # completion onto this loop from the thread that saw the reply, so it can come
        # after the retry's routing): the route is kept until every try is done.
        # Not seen accepted, it is unknown whether it ran: replicas that never reject get
        # no `on_request_routed` (None leaves a move's count to the thief's reports).
        if routed.completed >= routed.tries:
            self._release(internal_request_id, routed, ran=True if routed.accepted else None)


class RayDefaultRequestRouter(RequestRouterConfig().get_request_router_class()):
    """Ray Serve's own default request router (`RequestRouterConfig`'s default class: in
    ray 2.60 `PowerOfTwoChoicesRequestRouter`, which asks two random replicas for their
    queue length and takes the shorter), unchanged for every step: sessions are ignored,
    so a session's steps land wherever it sends them and no KV follows. Only kvsaga's
    pinned calls go to the replica they name, as under `KvsagaRequestRouter`, so that
    `/metrics` still reaches every replica. `--router ray-default`: the baseline a Ray
    Serve user has without kvsaga's router."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        pin = pinned(self, kvsaga_call(pending_request), candidate_replicas)
        if pin is not None:
            return pin
        return await super().choose_replicas(candidate_replicas, pending_request)
