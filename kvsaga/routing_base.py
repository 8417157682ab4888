"""The routers' common part (split from kvsaga/routing.py, whose docstring says what routing
is for): a step's routing request and decision (`RouteRequest`, `Route`; the keys read from
a request body are in kvsaga/routing_keys.py), and `Router`, the bookkeeping every router
shares (each session's home and its steps in flight, replicas joining and leaving, sessions
forgotten after the idle limit, moves until confirmed, the load of a replica), with the two
baselines built on it alone: `RoundRobinRouter` and `AffinityRouter`. kvsaga's own router,
with work stealing, migration and the fleet's fair share, is `kvsaga.routing.KvsagaRouter`.
Pure Python, no torch."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from kvsaga._validate import is_int
from kvsaga.replica_stats import ReplicaStats
from kvsaga.routing_keys import affinity_key, prefix_key, session_key  # noqa: F401 (re-exported)
from kvsaga.session import DEFAULT_SESSION_IDLE_S, check_session_idle


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """One step to place.

    Attributes:
        session: the session key (tenant-qualified if sessions are per tenant), or None for
            a one-shot request.
        tenant: who pays for the step, for fair share.
        prefix_key: a key of the prompt's shared prefix (e.g. a hash of its system prompt),
            so that new sessions with the same prefix meet where it is cached.
        context_tokens: tokens of the session's context before this step (what a move
            would have to migrate or recompute).
        stay: the request must reach the session's home (an end request, which deletes
            what a move would pull): never moved, no KV migrated for it.
        affinity_only: `session` is a routing hint (a `prompt_cache_key`) that no replica
            holds a session for: a steal re-homes the hint only, so it migrates nothing
            and is not counted as a steal.
    """

    session: str | None = None
    tenant: str = ""
    prefix_key: str | None = None
    context_tokens: int = 0
    stay: bool = False
    affinity_only: bool = False

    def __post_init__(self) -> None:
        """Refuse a field of the wrong kind, by name: a negative or fractional
        `context_tokens` went into the steal's room test and a move's size, and a None
        tenant into the fair share's tenants, without a word (review s52 routing 4)."""
        # One test for the common case (the callers' own: str ids, an int count >= 0,
        # bools); the field-by-field messages only when it fails: it runs every step.
        if not (type(self.tenant) is str and type(self.context_tokens) is int
                and self.context_tokens >= 0
                and (self.session is None or type(self.session) is str)
                and (self.prefix_key is None or type(self.prefix_key) is str)
                and type(self.stay) is bool and type(self.affinity_only) is bool):
            _refuse_request(self)


def _refuse_request(req: RouteRequest) -> None:
    """ValueError naming the first field of `req` that is not what `RouteRequest` takes."""
    for name in ("session", "prefix_key"):
        v = getattr(req, name)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"RouteRequest.{name} must be a str or None, got {v!r}")
    if not isinstance(req.tenant, str):
        raise ValueError(f"RouteRequest.tenant must be a str (the anonymous tenant is named, "
                         f"\"anon\" under Ray Serve), got {req.tenant!r}")
    if not is_int(req.context_tokens) or req.context_tokens < 0:
        raise ValueError("RouteRequest.context_tokens must be an int >= 0, got "
                         f"{req.context_tokens!r}")
    for name in ("stay", "affinity_only"):
        if not isinstance(getattr(req, name), bool):
            raise ValueError(f"RouteRequest.{name} must be a bool, got {getattr(req, name)!r}")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a step goes.

    Attributes:
        replica: the replica that runs it.
        moved_from: the session's previous replica when the step moves (stealing, or the
            previous replica is gone); None otherwise.
        migrate: the moved session's KV should be exported from `moved_from` and imported
            on `replica` (cheaper than recomputing it); False: recompute.
        reason: why, for logs and tests ("new", "prefix", "affinity", "steal", "balance",
            "lost", "round-robin", "hash", "least-loaded").
        sent_at: set by `Router.route`: when the router sent the step (`Router.clock`).
        session: set by `Router.route`: the session of the step (None: one-shot).
        tenant: set by `Router.route`: the tenant of the step.
        tokens: set by `KvsagaRouter` on a move: the session's context as the move read it,
            which the new home's room test counts until the new home's report shows it
            (`KvsagaRouter._arriving`); carried by `Router.route` into a step it sends along
            an unconfirmed move (not an end request, which moves no KV).
    """

    replica: str
    moved_from: str | None = None
    migrate: bool = False
    reason: str = ""
    sent_at: float = field(default=math.nan, compare=False, repr=False)
    session: str | None = field(default=None, compare=False, repr=False)
    tenant: str = field(default="", compare=False, repr=False)
    tokens: int = field(default=0, compare=False, repr=False)


def _count(counts: dict[str, dict[str, int]], key: str, replica: str, add: int) -> None:
    """Add `add` to counts[key][replica], dropping entries that reach 0."""
    per = counts.setdefault(key, {})
    n = per.get(replica, 0) + add
    if n > 0:
        per[replica] = n
    else:
        per.pop(replica, None)
        if not per:
            del counts[key]


def _count_in(index: dict, replica: str, tenant: str | None, session: str, add: int) -> None:
    """Add `add` to index[replica][tenant][session] (`Router.replica_sessions`), dropping
    entries that reach 0."""
    _count(index.setdefault(replica, {}), tenant, session, add)
    if not index[replica]:
        del index[replica]


def _replica_names(replicas: Iterable[str]) -> list[str]:
    """The names as a list; ValueError for one str (its characters are not replicas)."""
    if isinstance(replicas, (str, bytes)):
        raise ValueError(f"replicas must be a list of replica names, got the str {replicas!r}")
    return list(replicas)


class Router:
    """Base: live replicas, in-flight counts, least-loaded choice, and session homes.

    `clock`: the wall clock that replicas stamp their reports with
    (`ReplicaStats.taken_at`); a test may set another.

    `session_idle_s`: a session not routed for this long (and with no step in flight) is
    forgotten (`homes`, `lost`, `moves`): a client that stops coming back never sends a
    last step or an end request. Default `kvsaga.session.DEFAULT_SESSION_IDLE_S`, the
    replicas' own idle limit, after which they have ended it too; None: never. At most
    `max_sessions` are remembered (the least recently routed go first): a session
    forgotten while its replica still holds it is adopted back from that replica's
    report (`KvsagaRouter`).
    """

    name = "base"
    clock = staticmethod(time.time)
    # Finished steps remembered per replica for `busy`'s discount (a bound: they are
    # dropped once a report taken after they finished has been read).
    _MAX_DONE = 256
    max_sessions = 1 << 20
    _MAX_VOIDED = 4096  # refused moves remembered for `move_taken` at most (oldest go first)

    def __init__(self, replicas: Iterable[str] = (), *,
                 session_idle_s: float | None = DEFAULT_SESSION_IDLE_S) -> None:
        self.session_idle_s = check_session_idle(session_idle_s)
        self._last_routed: dict[str, float] = {}  # session -> when, least recent first
        self.replicas: list[str] = []
        self._order: dict[str, int] = {}  # replica -> when it was added (a stable tie-break)
        self._added = itertools.count()
        self.in_flight: dict[str, int] = {}
        self.routed: dict[str, int] = {}  # replica -> steps routed there so far
        self.homes: dict[str, str] = {}  # session key -> replica that holds its KV
        self.lost: dict[str, str] = {}  # session key -> its removed replica, until rerouted
        # session key -> its latest move, until the step that moved it is known to have
        # reached the new home (`confirm_move`, a finished step, or the home's report).
        self.moves: dict[str, Route] = {}
        # session key -> (the replica that refused its move, the move's source), from that
        # refusal (`move_refused`) until the session is routed again: `move_taken` acts on
        # this move only.
        self._voided: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # session key -> (the move's source, the replica it moved to), for a step that moved
        # the session and failed with that replica unreachable (`move_unanswered`), until
        # that replica is removed (the move is then refused) or the session is forgotten.
        self._unanswered: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # tenant -> replica -> this router's steps of that tenant there, not yet finished
        self.tenant_steps: dict[str, dict[str, int]] = {}
        # session -> replica -> this router's steps of that session there, not yet finished
        self.session_steps: dict[str, dict[str, int]] = {}
        # replica -> the session's tenant (`_session_tenant`, None: none) -> session -> the
        # same counts: a decision reads one tenant's sessions on one replica, no more
        self.replica_sessions: dict[str, dict[str | None, dict[str, int]]] = {}
        # session remembered (`_last_routed`) -> its tenant, and tenant -> how many
        # (`live_tenants`)
        self._session_tenant: dict[str, str] = {}
        self._tenant_sessions: dict[str, int] = {}
        # Per replica: the latest `taken_at` read (replicas that stamp their reports), and
        # this router's steps there that finished since (sent, finished), for `busy`.
        self._taken: dict[str, float] = {}
        self._done: dict[str, deque[tuple[float, float]]] = {}
        for r in _replica_names(replicas):
            self.add_replica(r)

    # -- membership -------------------------------------------------------------------
    def add_replica(self, replica: str) -> None:
        if not isinstance(replica, str) or not replica:
            raise ValueError(f"replica must be a non-empty str, got {replica!r}")
        if replica not in self.in_flight:
            self.replicas.append(replica)
            self._order[replica] = next(self._added)
            self.in_flight[replica] = 0
            self.routed.setdefault(replica, 0)
            self._done[replica] = deque(maxlen=self._MAX_DONE)

    def remove_replica(self, replica: str) -> list[str]:
        """Forget a replica (it died or was scaled down). Returns the sessions that lived
        there: their next steps recompute elsewhere. A session whose unconfirmed move
        (`unconfirmed_move`) targets it is not lost: its context and KV are still on the
        move's source, which is its home again when alive (routed as lost, the session was
        recomputed elsewhere while the source kept its copy until its idle limit); nor is
        one whose moving step found the replica unreachable (`move_unanswered`)."""
        if replica not in self.in_flight:
            return []
        self.replicas.remove(replica)
        del self.in_flight[replica]
        del self.routed[replica]  # a replica added again starts afresh (it holds nothing)
        del self._order[replica]  # (kept, every replica ever seen stayed: ids are unique)
        self._taken.pop(replica, None)
        del self._done[replica]
        for steps in (self.tenant_steps, self.session_steps):
            for k in [k for k, where in steps.items() if replica in where]:
                _count(steps, k, replica, -steps[k][replica])
        self.replica_sessions.pop(replica, None)
        for s, (source, _) in [(s, m) for s, m in self._unanswered.items() if m[1] == replica]:
            del self._unanswered[s]
            if self.homes.get(s) == replica:  # not routed elsewhere since
                self.move_refused(s, source, replica)
        for s, m in [(s, m) for s, m in self.moves.items() if m.replica == replica]:
            if m.moved_from in self.in_flight:
                self.homes[s] = m.moved_from
                del self.moves[s]
        lost = [s for s, r in self.homes.items() if r == replica]
        for s in lost:
            self.lost[s] = self.homes.pop(s)
        for s in [s for s, m in self.moves.items() if replica in (m.replica, m.moved_from)]:
            del self.moves[s]
        return lost

    def sync(self, live: Iterable[str]) -> list[str]:
        """Make the replica set equal `live`; returns sessions lost with removed replicas."""
        live = _replica_names(live)
        keep = set(live)
        lost: list[str] = []
        for r in [r for r in self.replicas if r not in keep]:
            lost += self.remove_replica(r)
        for r in live:
            self.add_replica(r)
        return lost

    # -- bookkeeping ------------------------------------------------------------------
    def finished(self, route: Route, ran: bool | None = True) -> None:
        """A routed step finished (or failed): it no longer loads its replica. `ran`: True,
        it reached its replica (a move it made is then done, `confirm_move`); False, it
        did not (it was never sent, or cancelled or failed before a replica took it, or
        its move was refused); None, the caller cannot tell (Ray Serve with replicas that
        never reject: no acceptance is seen). Only True confirms a move; only False tells
        `KvsagaRouter` the move's tokens are not coming."""
        if ran and route.session is not None:
            self.confirm_move(route.session, route.replica)
        r = route.replica
        if self.in_flight.get(r, 0) > 0:
            self.in_flight[r] -= 1
            if self.tenant_steps.get(route.tenant, {}).get(r):
                _count(self.tenant_steps, route.tenant, r, -1)
            if route.session is not None and self.session_steps.get(route.session, {}).get(r):
                _count(self.session_steps, route.session, r, -1)
                _count_in(self.replica_sessions, r, self._session_tenant.get(route.session),
                          route.session, -1)
            if not math.isnan(route.sent_at):
                # A report taken between its sending and now counts it still (`busy`).
                self._done[r].append((route.sent_at, self.clock()))

    def move_refused(self, session: str, source: str, replica: str,
                     import_refused: bool = False) -> None:
        """The step that moved `session` off `source` was refused by `replica`, the one it
        reached (a step of it was still in flight on `source`, or `replica`'s import was
        refused: `import_refused`, which routers that remember refusals read; `source` keeps
        the session, `replica` holds nothing of it; or `replica` died before it answered):
        `source`, when live, is its home again, and the move is void. The session is not
        lost then, even if `replica` was removed first (Ray Serve removes a dead replica
        after it reports the step complete, which confirmed the move). Remembered for
        `move_taken` until the session is routed again. A refusal for a session that has
        ended or been forgotten since (the gateway answers it apart from the end) changes
        nothing."""
        if session not in self.homes and session not in self.lost:
            # Ended or forgotten before the refusal came: homed again it would never be
            # forgotten (`_expire` walks `_last_routed`), nor would a late `move_taken`.
            return
        self.moves.pop(session, None)
        if source in self.in_flight:
            self.homes[session] = source
            self.lost.pop(session, None)
        voided = self._voided
        voided.pop(session, None)
        voided[session] = (replica, source)
        while len(voided) > self._MAX_VOIDED:
            voided.popitem(last=False)

    def move_unanswered(self, session: str, source: str, replica: str) -> None:
        """The step that moved `session` off `source` failed with `replica` unreachable
        (Ray's `ActorUnavailableError`: its node went away, or its death is not confirmed
        yet; it may also pass). Once `replica` is removed (its death is then certain) the
        move is refused (`move_refused`: the session goes back to `source`, which may
        still hold it with its KV), unless the session was routed elsewhere meanwhile;
        at once if `replica` is gone already. Before, the removal marked the session lost
        and it was recomputed elsewhere while `source` kept the whole KV. Remembered until
        then, or until the session is forgotten (at most `_MAX_VOIDED`, the oldest go
        first)."""
        if replica not in self.in_flight:
            self.move_refused(session, source, replica)
            return
        pending = self._unanswered
        pending.pop(session, None)
        pending[session] = (source, replica)
        while len(pending) > self._MAX_VOIDED:
            pending.popitem(last=False)

    def move_taken(self, session: str, replica: str, source: str) -> None:
        """A step that moved `session` from `source` to `replica` ran there (its pull took
        the session, or it recomputed there) after a sibling step of the same move was
        refused (`move_refused`): `replica`, when live, is its home again. Two steps routed
        along one move before `replica` accepted the first both pull: the first can be
        refused (its refusal sends the session back to `source`) and the second then take
        it; the session lived on `replica` while its next step went to `source`. It acts
        only while that refusal is the session's latest word: a step routed since (it may
        have moved the session on: the late answer of an older move must not undo a newer
        one) or its end (the session is forgotten) leaves it alone. A session marked lost
        meanwhile (`source` was removed) lives on `replica`: it is homed there."""
        if self._voided.get(session) != (replica, source) or replica not in self.in_flight:
            return
        del self._voided[session]
        self.lost.pop(session, None)
        self.homes[session] = replica
        self.confirm_move(session, replica)

    def session_ended(self, session: str) -> None:
        self._forget(session)
        self._last_routed.pop(session, None)

    def _forget(self, session: str) -> None:
        """Drop what this router holds of `session` but its `_last_routed` entry."""
        self.homes.pop(session, None)
        self.lost.pop(session, None)
        self.moves.pop(session, None)
        self._voided.pop(session, None)
        self._unanswered.pop(session, None)
        self._set_tenant(session, None)

    def _set_tenant(self, session: str, tenant: str | None) -> None:
        """Record `session`'s tenant (None: the session is forgotten), for `live_tenants`;
        its steps in flight move to that tenant in `replica_sessions`."""
        old = self._session_tenant.pop(session, None)
        for x, n in self.session_steps.get(session, {}).items():
            _count_in(self.replica_sessions, x, old, session, -n)
            _count_in(self.replica_sessions, x, tenant, session, n)
        if old is not None:
            self._tenant_sessions[old] -= 1
            if not self._tenant_sessions[old]:
                del self._tenant_sessions[old]
        if tenant is not None:
            self._session_tenant[session] = tenant
            self._tenant_sessions[tenant] = self._tenant_sessions.get(tenant, 0) + 1

    def live_tenants(self) -> set[str]:
        """The tenants with a session this router remembers or a step it sent in flight."""
        return set(self._tenant_sessions) | set(self.tenant_steps)

    def _expire(self, now: float) -> None:
        """Forget the sessions not routed for more than `session_idle_s`, and the least
        recently routed beyond `max_sessions`; those with a step in flight are kept, as if
        routed now (forgotten, a concurrent step of one was placed afresh, on another
        replica while the first still ran: they are bounded by the steps in flight)."""
        seen, limit = self._last_routed, self.session_idle_s
        kept: list[str] = []
        while seen:
            s, t = next(iter(seen.items()))
            over = len(seen) + len(kept) > self.max_sessions
            if not over and (limit is None or now - t <= limit):
                break
            del seen[s]
            if s in self.session_steps:
                kept.append(s)
            else:
                self._forget(s)
        for s in kept:
            seen[s] = now

    def confirm_move(self, session: str, replica: str, route: Route | None = None) -> None:
        """A step of `session` reached `replica`: a move there is done (the replica pulled
        the session before running the step). `route`: that step's, when the caller knows
        it (`KvsagaRouter` makes it the move's owner)."""
        m = self.moves.get(session)
        if m is not None and m.replica == replica:
            del self.moves[session]

    def unconfirmed_move(self, session: str, stats: Mapping[str, ReplicaStats]) -> Route | None:
        """The session's latest move while no step is known to have reached its new home:
        the step that moved it may have been refused by that replica (Ray Serve routes it
        again) or given up before it was sent, and the session's KV is then still on
        `moved_from`. A report of the new home taken after the move that lists the
        session confirms it too."""
        m = self.moves.get(session)
        if m is None:
            return None
        st = stats.get(m.replica)
        if (st is not None and session in st.session_tokens
                and (st.taken_at is None or st.taken_at >= m.sent_at)):
            del self.moves[session]
            return None
        return m

    def home(self, session: str) -> str | None:
        return self.homes.get(session)

    # -- choice -----------------------------------------------------------------------
    def busy(self, r: str, stats: Mapping[str, ReplicaStats]) -> int:
        """Steps queued or running on a replica: what it reports, or what this router sent
        there and has not seen finish, whichever is more (reports lag; other routers'
        steps show only in reports).

        A report lags the other way too: taken while a step of this router ran, it counts
        the step after the router has seen it finish. So a report stamped with the time it
        was taken (`ReplicaStats.taken_at`) loses the steps this router sent before that
        time and saw finish after it. Without this, a lone session's home, whose last
        report (up to a period old: 0.5 s under Ray Serve) still showed the session's own
        finished step running, looked shared at the session's next step: that skipped the
        quiet fleet's floor of the balance steal (`KvsagaRouter._ahead`) and moved the
        session, with its KV, to an idle replica. A step that reached the replica after the
        report was taken is taken off too, though the report never counted it, and so is
        one seen to finish late by a router whose clock runs behind the replica's: the
        error lasts until the next report, and the count of this router's unfinished steps
        still bounds the result from below. An unstamped report (a live view, as the
        simulator's) is taken as it is."""
        st = stats.get(r)
        if st is None:
            return self.in_flight[r]
        reported = st.queue_depth + st.running
        taken = st.taken_at
        if taken is not None:
            ended = self._done[r]
            if taken > self._taken.get(r, -math.inf):
                self._taken[r] = taken
                while ended and ended[0][1] <= taken:  # (appended in finishing order)
                    ended.popleft()
            for sent, done in ended:
                if sent <= taken < done:
                    reported -= 1
        return max(reported, self.in_flight[r])

    def waiting(self, r: str, stats: Mapping[str, ReplicaStats]) -> int:
        """Steps waiting for admission on a replica (reported, or sent and not running)."""
        st = stats.get(r)
        if st is None:
            return self.in_flight[r]
        return max(st.queue_depth, self.in_flight[r] - st.running)

    def _load(self, r: str, stats: Mapping[str, ReplicaStats]) -> tuple:
        """Sort key: fewer busy steps, then less memory pressure, then fewer paused
        sessions expecting to resume, then fewer steps routed there so far (ties are
        common when replicas idle: taking the first in order would load the first replicas
        most over a run), then the replica's order."""
        st = stats.get(r) or ReplicaStats()
        return (
            self.busy(r, stats),
            round(st.memory_pressure, 3),
            st.predicted_resumes,
            st.paused,
            self.routed[r],
            self._order[r],
        )

    def ready(self, stats: Mapping[str, ReplicaStats]) -> list[str]:
        """The replicas that have reported stats, or all when none has. A replica that has
        not reported (under Ray Serve: still loading its model, or its load failed) looks
        idle; given new sessions, they wait for its load or get its 503s."""
        return [r for r in self.replicas if r in stats] or self.replicas

    def least_loaded(self, stats: Mapping[str, ReplicaStats], exclude: str | None = None):
        cands = [r for r in self.ready(stats) if r != exclude]
        return min(cands, key=lambda r: self._load(r, stats)) if cands else None

    def route(self, req: RouteRequest, stats: Mapping[str, ReplicaStats]) -> Route:
        """Place one step. Raises RuntimeError when no replica is live."""
        if not self.replicas:
            raise RuntimeError("no live replica to route to")
        s = req.session
        move = self.unconfirmed_move(s, stats) if s is not None else None
        if s in self.homes and (req.stay or (s in self.session_steps
                                             and not req.affinity_only)):
            # An end request goes home; so does a step sent while another of its session
            # is in flight, under every router: moved, it would pull from a replica whose
            # own step (or pull) holds the session, and could run on a fresh copy there
            # while the session runs at home (two replicas serving one session). A
            # `prompt_cache_key` hint (`affinity_only`) holds no session: it is not kept.
            route = Route(self.homes[s], reason="affinity")
        else:
            route = self._choose(req, stats)
        # An end request does not pull a dead replica's session (its KV died with it).
        dead = self.lost.pop(s, None) if s is not None and not req.stay else None
        if dead is not None:  # its KV died with its replica: recompute where it lands
            route = Route(route.replica, moved_from=dead, reason="lost")
        elif move is not None and route.moved_from is None and route.replica == move.replica:
            # The step that moved it may not have arrived: the new home pulls the session
            # (a no-op there if it did arrive); for an end request its context only, so
            # that the previous replica ends its copy too.
            # A step that pulls carries the move's size: `KvsagaRouter` counts it in the new
            # home's room again if the step that moved it never reached there.
            route = replace(route, moved_from=move.moved_from,
                            migrate=move.migrate and not req.stay,
                            tokens=0 if req.stay else move.tokens)
        route = replace(route, sent_at=self.clock(), session=s, tenant=req.tenant)
        _count(self.tenant_steps, req.tenant, route.replica, 1)
        self.in_flight[route.replica] += 1
        self.routed[route.replica] += 1
        if s is not None:
            _count(self.session_steps, s, route.replica, 1)
            _count_in(self.replica_sessions, route.replica, self._session_tenant.get(s), s, 1)
            self.homes[s] = route.replica
            self._voided.pop(s, None)  # a refused move's late sibling answers change nothing
            self._last_routed.pop(s, None)
            self._last_routed[s] = route.sent_at
            if self._session_tenant.get(s) != req.tenant:
                self._set_tenant(s, req.tenant)
            self._expire(route.sent_at)
            if route.moved_from is None or dead is not None:
                self.moves.pop(s, None)
            elif move is None or move.replica != route.replica:
                self.moves[s] = route
        return route

    def _choose(self, req: RouteRequest, stats: Mapping[str, ReplicaStats]) -> Route:
        raise NotImplementedError


class RoundRobinRouter(Router):
    """Every step to the next replica in turn (but a step sent while another of its session
    is in flight: `Router.route` keeps it home)."""

    name = "round-robin"

    def __init__(self, replicas: Iterable[str] = (), **kwargs) -> None:
        super().__init__(replicas, **kwargs)
        self._turn = itertools.count()

    def _choose(self, req, stats):
        r = self.replicas[next(self._turn) % len(self.replicas)]
        prev = self.homes.get(req.session) if req.session else None
        return Route(r, moved_from=prev if prev not in (None, r) else None, reason="round-robin")


def _ring_point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class AffinityRouter(Router):
    """Sticky by a consistent hash of the session key (virtual nodes per replica), so
    adding or removing a replica moves only the sessions the ring re-homes (recomputed
    there: it never migrates KV)."""

    name = "affinity"
    vnodes = 64

    def __init__(self, replicas: Iterable[str] = (), **kwargs) -> None:
        self._ring: list[tuple[int, str]] = []
        self._ring_sorted = True
        super().__init__(replicas, **kwargs)

    def add_replica(self, replica: str) -> None:
        new = replica not in self.in_flight
        super().add_replica(replica)
        if new:  # sorted at the next lookup: one sort for a fleet, not an insort per point
            self._ring.extend((_ring_point(f"{replica}#{v}"), replica)
                              for v in range(self.vnodes))
            self._ring_sorted = False

    def remove_replica(self, replica: str) -> list[str]:
        self._ring = [p for p in self._ring if p[1] != replica]
        return super().remove_replica(replica)

    def _choose(self, req, stats):
        if req.session is None:
            return Route(self.least_loaded(stats), reason="least-loaded")
        if not self._ring_sorted:
            self._ring.sort()
            self._ring_sorted = True
        i = bisect.bisect(self._ring, (_ring_point(req.session), "")) % len(self._ring)
        r = self._ring[i][1]
        prev = self.homes.get(req.session)
        return Route(r, moved_from=prev if prev not in (None, r) else None, reason="hash")
