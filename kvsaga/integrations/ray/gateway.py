"""The HTTP side of kvsaga-serve on Ray Serve: `KvsagaGateway`, the ingress deployment in
front of the engine replicas (`deployment.EngineReplica`; `deployment.build_application`
binds the two).

`KvsagaGateway` (one replica) reads each request once, extracts the routing facts
(`kvsaga.routing.session_key` and `affinity_key`, tenant, prefix key, context size:
`routing_call`) and
forwards the raw request (method, path, headers, body) to the engine deployment through a
DeploymentHandle, whose request router is `KvsagaRequestRouter`. It relays the replica's
response message by message, so streaming stays streaming. `/metrics` fans out to every
replica and merges their families with a `replica` label. A replica that dies before
answering gives a 503 in OpenAI's error JSON (`code: replica_unavailable`); the session's
next step is routed to a live replica and recomputed there, unless the step was moving the
session: then the session goes back to the replica it was moving from (`_move_died`).

Ray Serve pickles the ingress class by value, so the work lives in `GatewayCore`, an
importable class the ingress only calls.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from kvsaga._validate import is_int
from kvsaga.integrations.ray import registry
from kvsaga.routing import affinity_key, prefix_key, session_key
from kvsaga.serve.errors import APIError
from kvsaga.serve.guard import check_key, too_large
from kvsaga.serve.sessions import SessionRegistry, tenant_salt
from kvsaga.serve.settings import ServerSettings

log = logging.getLogger("kvsaga.ray")
# The engine deployment's name: the gateway finds its replicas by it (`engine_replicas`),
# and a replica reaches its peers by it.
ENGINE_DEPLOYMENT = "KvsagaEngine"
_SESSION_PATHS = ("/v1/chat/completions", "/v1/completions")
# The header of an answer to a step whose session did not move (the pull met a step in
# flight on the source: 409; the import was refused: 503), with the source's id, which
# still holds the session: the gateway has the router take the session back there.
PULL_REFUSED_HEADER = "x-kvsaga-pull-refused"
# Beside it on a 503: the import went through but the source refused the commit (its hold
# was over; the receiver undid the import). The receiver had room: its router cools it off
# for this session only, not for every session as after a refused import.
PULL_UNCOMMITTED_HEADER = "x-kvsaga-pull-uncommitted"
_METRICS_TIMEOUT_S = 5.0  # per replica, for the gateway's merged /metrics

gateway_api = FastAPI(title="kvsaga-serve (Ray Serve)", docs_url=None, redoc_url=None)


class _Relay(Response):
    """A response that replays a replica's ASGI messages. A replica that dies mid-stream
    ends an event stream as one node's server ends a cut one: an error event
    (`replica_unavailable`) and `data: [DONE]`, so a cut answer never reads as complete
    (the connection was cut with neither). Any other answer is cut, its length unmet."""

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
        except (RayActorError, ActorUnavailableError) as e:
            if not _event_stream(self.first):
                raise
            log.warning("kvsaga: the replica died mid-stream (%s); the stream ends with "
                        "an error event", type(e).__name__)
            await send({"type": "http.response.body", "body": _cut_event(type(e).__name__),
                        "more_body": False})
            done = True  # nothing left to cancel: the replica is gone
        finally:
            if not done:  # the client went away: the replica's generator is cancelled, so
                self.rest.cancel()  # its app sees the disconnect and aborts the step


def _event_stream(first: dict) -> bool:
    """Whether a response start message opens a server-sent event stream."""
    kind = _header(first, "content-type")
    return kind is not None and kind.split(";")[0].strip().lower() == "text/event-stream"


def _cut_event(reason: str) -> bytes:
    """The end of a stream whose replica died: an error event in OpenAI's error JSON, then
    `data: [DONE]`, as one node's server ends a stream it cut."""
    message = (f"the replica serving this stream died ({reason}); the answer is cut off: "
               "retry, the session continues on another replica")
    err = {"error": {"message": message, "type": "replica_unavailable", "param": None,
                     "code": "replica_unavailable"}}
    return (f"data: {json.dumps(err, separators=(',', ':'))}\n\ndata: [DONE]\n\n").encode()


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
                     end_request=ending, session=SessionRegistry.engine_id(salt, sid))
    elif not ending and (key := affinity_key(parsed, hdrs)) is not None:
        # Routed by its prompt_cache_key: requests sharing that hint share a replica (and
        # its cache), but no session is opened or moved for them.
        facts.update(session=affinity_route_key(salt, key), affinity_only=True)
    return facts


def affinity_route_key(salt: str | None, key: str) -> str:
    """The router's key for an affinity-only `prompt_cache_key`: a namespace of its own
    ("pck:" before the tenant, where an engine session id has its salt or "anon"). In the
    sessions' namespace `prompt_cache_key: "abc"` was the session "abc": a steal of the
    hint re-homed the real session on a replica that never pulled its KV."""
    return "pck:" + SessionRegistry.engine_id(salt, key)


def ended_session(call: dict, status: object) -> bool:
    """Whether the replica's answer ended the call's session (the router forgets it): a
    last step or an end request answered 2xx, or an end request answered 404 (the replica
    knows no such session). A refused one (429 queue full, 409 session busy, 400) keeps
    the session where it lives."""
    if not call.get("ends") or not is_int(status):
        return False
    return 200 <= status < 300 or (bool(call.get("end_request")) and status == 404)


def _moved_here(call: dict, first: dict) -> bool:
    """Whether the answer is a 2xx to a step of a session that its route moved (so the
    replica holds the session now: `Router.move_taken`)."""
    route, status = call.get("route"), first.get("status")
    return (call.get("session") is not None and route is not None
            and bool(route.get("moved_from")) and is_int(status) and 200 <= status < 300)


def _move_died(call: dict, error: Exception) -> None:
    """The replica a step was moving its session to died before it answered (a
    `RayActorError`): the move is refused (`Router.move_refused`), so the session goes back
    to its source. On `ActorUnavailableError` (its node went away, or Ray has not confirmed
    its death; it may pass) the move stands until Serve removes the replica, and is refused
    then (`Router.move_unanswered`). Either the replica never committed the hand-over,
    and the source still holds the session with its KV (its hold freed once the importer
    is known gone, `SessionHandover._reclaim`), or it committed and died, and the source
    holds nothing: the step recomputes there, as it would anywhere. Ray Serve reports the
    request complete, which confirms the move, before it removes the dead replica, so
    that removal found no move to undo and marked the session lost: recomputed elsewhere
    while its source kept the whole KV."""
    route = call.get("route")
    if call.get("session") is None or route is None or not route.get("moved_from"):
        return
    for router in registry.routers_here():
        tell = (router.move_unanswered if isinstance(error, ActorUnavailableError)
                else router.move_refused)
        tell(call["session"], route["moved_from"], route["replica"])


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
    declared = request.headers.get("content-length")  # latin-1: "²" passes str.isdigit
    if (declared is not None and declared.isascii() and declared.isdigit()
            and int(declared) > limit):
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
            _move_died(call, e)
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
        route = call.get("route")
        if refused is not None and call.get("session") is not None and route is not None:
            import_refused = (first.get("status") == 503
                              and _header(first, PULL_UNCOMMITTED_HEADER) is None)
            for router in registry.routers_here():  # the move did not happen
                router.move_refused(call["session"], refused, route["replica"],
                                    import_refused=import_refused)
        elif _moved_here(call, first):
            for router in registry.routers_here():  # whatever a sibling's refusal said
                router.move_taken(call["session"], route["replica"], route["moved_from"])
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
