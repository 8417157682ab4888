"""Routing agent steps across engine replicas: the one implementation that both the Ray Serve
request router (`kvsaga.integrations.ray`) and the cluster simulator (`kvsaga.sim.cluster`)
call, so the simulator measures the code that serves. Pure Python, no torch.

A replica is named by a string. Before each decision the caller hands the router a
`ReplicaStats` per live replica (what the replica's manager and scheduler report, as fresh
as the caller has it); the router adds its own count of steps it sent that have not
finished, so a burst of decisions between two stats refreshes does not pile onto one
replica.

Routers, by name (`make_router`):
- `round-robin`: every step to the next replica, sessions ignored (the no-affinity baseline).
- `affinity`: a session's steps to the replica a consistent hash of its key names; keyless
  steps to the least loaded (the sticky baseline of consistent-hash routers). It moves only
  the sessions the ring re-homes when replicas join or leave (their KV recomputed), never
  by load, and never migrates KV.
- `kvsaga`: a new session goes to a replica with the fewest queued and running steps,
  preferring one where its shared prefix is cached, and stays there (affinity) unless
  that replica is loaded (`RoutingConfig.steal_min_waiting`, `steal_margin`, or
  overcommitted) while another has no step waiting and reports room for the session's
  context: then the step moves (work stealing),
  and the session's KV moves with it when migrating is cheaper than recomputing it.
  Tenants above their fair share of the fleet's service are
  not stolen for while a tenant below its share has work waiting, so an idle replica's
  capacity goes first to the tenants the fleet has served least. A replica whose
  accumulated busy time runs ahead of the fleet's mean (`ReplicaStats.busy_s`) hands its
  sessions' steps to idle replicas behind it, so the last long sessions do not keep a few
  replicas busy while the rest idle. A session is not moved while its last move is
  unconfirmed (`Router.unconfirmed_move`).

Under every router a step sent while another of its session is in flight goes where that
one went (`Router.route`): moved, it would pull the session from a replica still running
(or still pulling) it, and could run on a fresh copy, the session served by two replicas.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from kvsaga._validate import is_int
from kvsaga.fair_share import FairShare
from kvsaga.replica_stats import (  # noqa: F401  (re-exported: the routing API takes them)
    DEFAULT_RESUME_HORIZON_S,
    ReplicaStats,
    SessionTokens,
    count_predicted_resumes,
)
from kvsaga.routing_arrivals import ArrivalBook, RefusalBook
from kvsaga.routing_base import (  # noqa: F401  (re-exported: kvsaga.routing is the API)
    AffinityRouter,
    RoundRobinRouter,
    Route,
    Router,
    RouteRequest,
    affinity_key,
    prefix_key,
    session_key,
)
from kvsaga.routing_config import RoutingConfig
from kvsaga.routing_share import ShareCheck


class KvsagaRouter(ShareCheck, ArrivalBook, RefusalBook, Router):
    """Affinity + placement by predicted load + work stealing + migration + fleet fair
    share."""

    name = "kvsaga"
    # Seconds a replica that refused a move (`move_refused`) is not chosen as a thief
    # again: for any session when it refused the import (no room for the blocks, a failed
    # copy), for that session when the session was busy on its source. A steal checks the
    # thief's reported room for the session (`_room_for`), but a report lags (a stats
    # period and more: other routers' moves and sessions grown there show only in the
    # next one) and an import can fail for another reason: without the cool-off the
    # client's retry (`Retry-After: 1`), and every other session of the loaded home, could
    # be stolen for the same replica again and again, each try a full KV export on the
    # home. The simulator refuses an import short of room the same way
    # (`ClusterSimulator._refused`), on its monotone clock.
    refused_move_s = 30.0
    _MAX_REFUSED = 4096  # refusals remembered at most (the oldest go first)

    def __init__(self, replicas: Iterable[str] = (), config: RoutingConfig | None = None,
                 tenant_weights: Mapping[str, float] | None = None, **kwargs):
        """`tenant_weights`: the replica schedulers' (by the replicas' tenant names, as in
        `tenant_service`), for the fleet's fair share (`FairShare.weights`); None: 1 each.
        A None tenant (the scheduler's anonymous one) is refused: the router names that
        tenant as the replicas report it ("anon" under Ray Serve, what
        `deployment.router_tenant_weights` maps it to; `tenant_key`'s "default" in the
        cluster simulator), and a None key weighed nobody (review s51 diffray 3)."""
        # replica -> seconds added to the busy time it reports (`busy_time`), and the
        # replicas added since the last decision, which get theirs at the next one.
        self.busy_offset: dict[str, float] = {}
        self._joining: set[str] = set()
        if config is not None and not isinstance(config, RoutingConfig):
            # A dict (what --routing-config parses to) failed only at the first decision,
            # naming neither; an empty one silently became the defaults.
            raise ValueError("config must be a RoutingConfig (kvsaga.serve.settings."
                             "routing_config_of builds one from a dict), got "
                             f"{type(config).__name__} {config!r}")
        super().__init__(replicas, **kwargs)
        self.config = config if config is not None else RoutingConfig()
        self.fair = FairShare(weights=tenant_weights if tenant_weights is not None else {})
        if None in self.fair.weights:
            raise ValueError("tenant_weights: tenant None is no tenant of the router's: it "
                             "names tenants as the replicas report them, the anonymous one "
                             "(the scheduler's None) \"anon\" under Ray Serve; key its "
                             "weight \"anon\"")
        self._prefix_homes: OrderedDict[str, set[str]] = OrderedDict()  # where cached
        self.num_stolen = 0
        self.num_migrated = 0
        # (session, replica that refused it) -> when (it is not moved there again: `_cool`)
        self._refused: OrderedDict[tuple[str, str], float] = OrderedDict()
        # replica that refused an import -> when (it takes no session: `_cool`, `_thief`)
        self._cooling: dict[str, float] = {}
        # session -> (the replica that took it by a queue or memory steal, the one it took
        # it from), kept while the session stays there (`_steal_source`)
        self._stolen: dict[str, tuple[str, str]] = {}
        # session -> when a step of it last finished having run (`finished`, `_tokens`)
        self._step_done: dict[str, float] = {}
        self._init_arrivals()  # the steals a thief's report does not show yet (`_arriving`)

    def add_replica(self, replica: str) -> None:
        new = isinstance(replica, str) and replica not in self.in_flight
        super().add_replica(replica)
        if new:
            self._joining.add(replica)

    def remove_replica(self, replica: str) -> list[str]:
        for homes in self._prefix_homes.values():
            homes.discard(replica)
        self.busy_offset.pop(replica, None)
        self._joining.discard(replica)
        self._cooling.pop(replica, None)
        for s in [s for s, pair in self._stolen.items() if replica in pair]:
            del self._stolen[s]
        self._drop_arrivals_at(replica)
        return super().remove_replica(replica)

    def _forget(self, session: str) -> None:
        super()._forget(session)
        self._stolen.pop(session, None)
        self._step_done.pop(session, None)
        self._forget_arrival(session)

    def finished(self, route: Route, ran: bool | None = True) -> None:
        """`Router.finished`, and when a step of a session this router holds ran: a report
        of its home taken before then does not count what the step added (`_tokens`), and,
        when it was the step that moved the session, one of the replica it moved to taken
        after then counts the move (`_arrived`). A moving step that did not reach its
        replica (`ran=False`; not None, unknown) takes the move's tokens off that
        replica's room (`_unarrived`)."""
        super().finished(route, ran)
        if ran and route.session in self.homes:
            now = self._step_done[route.session] = self.clock()
            self._arrived(route, now)
        elif ran is False:
            self._unarrived(route)

    def move_refused(self, session: str, source: str, replica: str,
                     import_refused: bool = False) -> None:
        """`Router.move_refused`, and `replica`, the one that refused the session, is not a
        thief for `refused_move_s`: for any session when it refused the import
        (`import_refused`: short of room, it would refuse the home's other sessions as
        well), else (the session was busy on `source`) for this session only. The
        session's next steps run at home, or move to another replica whose report shows
        room for it (`_has_room`), instead of being stolen for this one again while it is
        still short of room. (Named by the caller: the session's home is no guide, a
        sibling step's refusal may have changed it.)"""
        super().move_refused(session, source, replica, import_refused)
        self._refuse_arrival(session, replica)  # back if a sibling takes it (`move_taken`)
        if replica == source or replica not in self.in_flight:
            return
        now = self.clock()
        if import_refused:
            self._cooling[replica] = now
            return
        self._refused.pop((session, replica), None)
        self._refused[(session, replica)] = now
        self._forget_refusals(now)

    def busy_time(self, r: str, stats: Mapping[str, ReplicaStats]) -> float:
        """Replica `r`'s accumulated busy time as the balance rules compare it: what it
        reports (`ReplicaStats.busy_s`, since it started) plus its offset, set when it
        joined the fleet this router had (`_join`): a replica added after the router's
        first decision starts level with the fleet's mean. Without it a replacement or
        newly added replica, at 0 beside replicas that had worked an hour, kept every old
        replica 'ahead': none took a step from another (`_lead_limit`) until it caught up.
        The fleet there at the first decision is read as it reports (offset 0): a router
        cannot tell a replica's age from its share of the work, so a restarted gateway
        still reads a replacement made before it started as behind."""
        return stats[r].busy_s + self.busy_offset.get(r, 0.0)

    def _join(self, stats: Mapping[str, ReplicaStats]) -> None:
        """Give the replicas added since the last decision, once they report, their busy
        time offset: the mean busy time of the replicas already counted less what the
        newcomer reports, so that it counts from the fleet's mean; 0 for the fleet there
        at the first decision (nobody is counted yet)."""
        ready = [r for r in self._joining if r in stats]
        if not ready:
            return
        known = [self.busy_time(r, stats) for r in self.replicas
                 if r in self.busy_offset and r in stats]
        mean = sum(known) / len(known) if known else None
        for r in ready:
            self.busy_offset[r] = 0.0 if mean is None else mean - stats[r].busy_s
            self._joining.discard(r)

    def predicted_load(self, r: str, stats: Mapping[str, ReplicaStats]) -> float:
        """Busy steps plus `resume_weight` x the paused sessions expected back soon: the
        load a replica will have, not only the load it has (an agent's sessions spend
        most of their time paused on tools, invisible to a queue-only count)."""
        st = stats.get(r)
        resumes = st.predicted_resumes if st else 0
        return self.busy(r, stats) + self.config.resume_weight * resumes

    def _remember_prefix(self, key: str | None, r: str) -> None:
        if key is None:
            return
        self._prefix_homes.setdefault(key, set()).add(r)
        self._prefix_homes.move_to_end(key)
        while len(self._prefix_homes) > self.config.prefix_memory:
            self._prefix_homes.popitem(last=False)

    def route(self, req: RouteRequest, stats: Mapping[str, ReplicaStats]) -> Route:
        stats = stats if isinstance(stats, dict) else dict(stats)  # read many times below
        if self._joining:
            self._join(stats)
        # Shares over the tenants with a session here or a step in flight, this one's too.
        self.fair.observe((stats.get(r) for r in self.replicas),
                          self.live_tenants() | {req.tenant})
        home = self.homes.get(req.session) if req.session is not None else None
        route = super().route(req, stats)
        self._note_steal(req.session, home, route)
        self._note_arrival(route)
        return route

    def _note_steal(self, session: str | None, home: str | None, route: Route) -> None:
        """Remember where a queue or memory steal (reason "steal") took `session`, and
        from where (the replica the step moved from; for a hint, which moves nothing, its
        `home` before the step), until the session is routed elsewhere (`_steal_source`)."""
        if session is None or session not in self.homes:
            return
        source = route.moved_from if route.moved_from is not None else home
        if route.reason == "steal" and source is not None:
            self._stolen[session] = (route.replica, source)
        elif session in self._stolen and self._stolen[session][0] != route.replica:
            del self._stolen[session]

    def _choose(self, req, stats):
        home = self.homes.get(req.session) if req.session is not None else None
        if home is None and req.session is not None and req.session not in self.lost:
            home = self._reported_home(req.session, stats)
        if home is None:
            r = self._place_new(req, stats)
            self._remember_prefix(req.prefix_key, r.replica)
            return r
        if req.stay:  # an end request goes home, never moved (adopted from a report too)
            return Route(home, reason="affinity")
        # Not moved while a step of it is in flight (the single-node server answers a
        # concurrent step 409 session_busy: moved, it would run on two replicas; kept here
        # for a home adopted from a report, `Router.route` keeps a known one) or while
        # its last move may not have arrived (`unconfirmed_move`: moved again, it would
        # leave a copy).
        if req.session in self.session_steps or req.session in self.moves:
            return Route(home, reason="affinity")
        target, reason = self._thief(home, req, stats)
        if target is None:
            return Route(home, reason="affinity")
        if req.affinity_only:  # no session to move: the hint's home changes, nothing else
            return Route(target, reason=reason)
        tokens = self._tokens(home, req, stats)
        migrate = self.config.should_migrate(tokens)
        self.num_stolen += 1
        self.num_migrated += migrate
        return Route(target, moved_from=home, migrate=migrate, reason=reason, tokens=tokens)

    def _reported_home(self, session: str, stats) -> str | None:
        """A replica whose report lists `session` (`session_tokens`), for a session this
        router holds no home for: it was placed before this router started (a gateway
        restart) or forgotten. It is adopted as the session's home, and the steal rules
        then apply to a step as to any home (an end request stays). Of several (a report
        taken before a move still listing it), the one holding the most of its context."""
        best, most = None, -1
        for r in self.replicas:
            st = stats.get(r)
            tokens = st.session_tokens.get(session) if st is not None else None
            if is_int(tokens) and tokens > most:
                best, most = r, tokens
        return best

    def _thief(self, home: str, req: RouteRequest, stats) -> tuple[str | None, str]:
        """The replica that steals this step from `home` and why ("steal" or "balance"),
        or (None, ""). The tenant must not be
        above its fleet share, and the thief must have no step waiting, not be too far
        ahead of the fleet's accumulated busy time (`_lead_limit`), not have refused
        an import, or a move of the session, in the last `refused_move_s`
        (`move_refused`), and, for a session (not a hint), report room for its context
        beside the sessions stolen for it that its report does not show yet (`_room_for`);
        then, in order:
        (queue) home has at least `steal_min_waiting` steps waiting and some replica is
        busy by at least `steal_margin` fewer steps; (memory) home is overcommitted and some
        replica with no more busy steps than home has room for the session below
        `max_commitment` (`_roomy`); of those, the one with the least predicted load
        steals. Else (balance) home's accumulated busy time is ahead of the fleet's and
        some replica with no more busy steps is behind it (`_behind`): the one furthest
        behind steals."""
        c = self.config
        busy_home = self.busy(home, stats)
        # Each rule's condition on home alone first: most steps stay home, and the lists
        # of candidates cost a pass over the fleet (64 GPUs: most of the routing time).
        queue = (self.waiting(home, stats) >= c.steal_min_waiting
                 and busy_home >= c.steal_margin)
        memory = self._overcommitted(home, stats)
        ahead = self._ahead(home, stats)
        if not (queue or memory or ahead):
            return None, ""
        idle = [x for x in self.ready(stats) if x != home and self.waiting(x, stats) == 0]
        lead = self._lead_limit(stats)
        if lead is not None:  # a replica ahead of the fleet's work takes no more of it
            idle = [x for x in idle if x not in stats or self.busy_time(x, stats) <= lead]
        if self._refused or self._cooling:  # nor one that refused a move lately
            now = self.clock()
            self._forget_refusals(now)
            idle = [x for x in idle if not self._refused_lately(req.session, x, now)]
        if self._held_back(req.tenant, idle, stats):
            return None, ""
        if idle and not req.affinity_only:  # (a hint moves no KV: no import to refuse)
            tokens = self._tokens(home, req, stats)
            idle = [x for x in idle if self._room_for(x, tokens, stats)]
        free = []
        if queue:
            free = [x for x in idle if self.busy(x, stats) <= busy_home - c.steal_margin]
        no_busier = [x for x in idle if self.busy(x, stats) <= busy_home]
        if not free and memory:
            free = self._roomy(home, req, stats, no_busier)
        if free:
            return min(free, key=lambda x: (self.predicted_load(x, stats),
                                            self._load(x, stats))), "steal"
        source = self._steal_source(req.session, home, lead, stats)
        if source is not None:
            no_busier = [x for x in no_busier if x != source]
        behind = self._behind(home, req, stats, no_busier, ahead)
        if behind:
            return min(behind, key=lambda x: (self.busy_time(x, stats),
                                              self._load(x, stats))), "balance"
        return None, ""

    @staticmethod
    def _has_room(x: str, tokens: int, stats) -> bool:
        """Whether replica `x`'s report shows room for a session of `tokens` moved there:
        its free plus evictable blocks hold them, the test the import itself makes
        (`plan_import` refuses with OutOfBlocks short of them; only for a prefix cached
        there, which needs fewer blocks, does this err towards keeping the session home).
        Without a report, no: the import could not be planned (a replica still loading
        its model takes no steal). A report lags (under Ray Serve about a stats period
        plus the step the engine is running): room it shows may be gone by the import
        (other routers' moves, sessions grown there), which then refuses and cools `x`
        off (`move_refused`). Before session 48 no steal checked the thief's free
        blocks: each idle replica without room was stolen for in turn and refused the
        import, one session of the loaded home after another, each a full KV export on
        the home."""
        st = stats.get(x)
        return (st is not None
                and (st.free_blocks + st.evictable_blocks) * st.block_size >= tokens)

    def _room_for(self, x: str, tokens: int, stats) -> bool:
        """Whether `x`'s report shows room (`_has_room`) for `tokens` beside the sessions
        this router moved to `x` that the report does not show yet (`_arriving`): two
        steals between two reports would otherwise both count the same room, and the
        second import be refused (review s48 roomdiff 2)."""
        st = stats.get(x)
        if st is not None:
            tokens += self._arriving(x, st)
        return self._has_room(x, tokens, stats)

    def _steal_source(self, session: str | None, home: str, lead: float | None,
                      stats) -> str | None:
        """The replica that `home` took `session` from by a queue or memory steal
        (`_note_steal`), while home is still no further ahead than the lead limit that let
        it steal (`lead`, `_lead_limit`): the balance steal does not hand the session back
        to it. Else None. Without this a replica ahead of the mean by between
        `busy_balance` x the mean and `busy_balance_min_s` (early in a run) stole a step
        and, holding the session beside other work, handed it straight back by the
        balance steal once the source's queue drained, its KV migrated each way while the
        busy times stood still (review s47 routingcore 3). A home whose lead grew past the
        limit may hand it back, and a balance steal to another replica behind is not
        blocked: only the undoing of the steal is. None for a home without a report (its
        `stats[home]` raised KeyError, which Ray Serve retried for good: review s51 ray 1)."""
        thief, source = self._stolen.get(session, (None, None))
        if (thief != home or lead is None or home not in stats
                or self.busy_time(home, stats) > lead):
            return None
        return source

    def _lead_limit(self, stats) -> float | None:
        """The accumulated busy time above which a replica is too far ahead of the fleet to
        take a step from another (a thief): more than `busy_balance` x the mean of the
        replicas that report one, and more than `busy_balance_min_s`, above that mean;
        None when the balance steal is off or nobody has worked. Without it the queue and
        memory steals, which count steps and memory only, kept handing work to the replica
        furthest ahead while the balance steal, blocked for room in a thrashing fleet, could
        not move it back: at assistant 32 GPUs x 16 sessions (fit seed 1) the busiest GPU
        stole 42 steps, 24 of them while already ahead, and sent 21 away."""
        c = self.config
        if not c.busy_balance:
            return None
        done = [self.busy_time(r, stats) for r in self.replicas if r in stats]
        mean = sum(done) / len(done) if done else 0.0
        if not mean > 0:
            return None
        return mean + max(c.busy_balance * mean, c.busy_balance_min_s)

    def _shared(self, home: str, stats) -> bool:
        """Whether a session resuming on `home` shares it with other work: steps in
        flight, or other sessions paused there (`paused` counts the resuming one too)."""
        st = stats.get(home)
        return self.busy(home, stats) > 0 or (st is not None and st.paused > 1)

    def _tokens(self, home: str, req: RouteRequest, stats) -> int:
        """The session's context as its home reports it, else the caller's guess; the
        larger of the two when the report was taken before a step of the session last
        finished (`finished`): an agent session grows by a whole step (prompt and
        output) between two of its steps, and sized from the older report the move's
        import, which carries the current context, was refused where the room test had
        passed (review s48 roomdiff 2)."""
        st = stats.get(home)
        tokens = st.session_tokens.get(req.session) if st is not None else None
        if not (is_int(tokens) and tokens >= 0):
            return req.context_tokens
        done = self._step_done.get(req.session)
        if st.taken_at is not None and done is not None and st.taken_at < done:
            return max(tokens, req.context_tokens)
        return tokens

    def _fits(self, x: str, tokens: int, stats, limit: float | None = None) -> bool:
        """Whether `tokens` more keep replica `x` at or below `limit` (default
        `max_commitment`; always, when `max_commitment` is off)."""
        if not self.config.max_commitment:
            return True
        limit = self.config.max_commitment if limit is None else limit
        with_session = self._commitment_with(x, tokens, stats)
        return with_session is not None and with_session <= limit

    @staticmethod
    def _commitment_with(x: str, tokens: int, stats) -> float | None:
        """Replica `x`'s commitment once `tokens` more land on it; None without its stats."""
        sx = stats.get(x)
        return None if sx is None else sx.commitment + tokens / sx.capacity_tokens

    def _roomy(self, home: str, req: RouteRequest, stats, cands: list[str]) -> list[str]:
        """Of `cands`, the replicas the session fits on below `max_commitment`, when its
        home is above it (else none: a home that is not overcommitted keeps it)."""
        if not self._overcommitted(home, stats) or not cands:
            return []
        tokens = self._tokens(home, req, stats)
        return [x for x in cands if self._fits(x, tokens, stats)]

    def _ahead(self, home: str, stats) -> tuple[dict[str, float], float] | None:
        """The accumulated busy time of the replicas that report it and its mean, when
        home's is above that mean by more than `busy_balance` x the mean and, for a home
        with no other work (`_shared`) whose lead is a quiet fleet's (at least
        `busy_balance_quiet` x the mean) or, with `busy_balance_alone`, whose session is
        alone in the fleet (`_alone`), by more than `busy_balance_min_s`; else None.
        The floor thus scales with the fleet's load: on a fleet that has worked, a lone
        session's home leads by a share of the mean, and its lead counts as any other."""
        c = self.config
        if not c.busy_balance or home not in stats:
            return None
        done = {r: self.busy_time(r, stats) for r in self.replicas if r in stats}
        mean = sum(done.values()) / len(done)
        lead = done[home] - mean
        if not mean > 0 or lead <= c.busy_balance * mean:
            return None
        if (lead <= c.busy_balance_min_s and not self._shared(home, stats)
                and (lead >= c.busy_balance_quiet * mean
                     or (c.busy_balance_alone and self._alone(home, stats)))):
            return None
        return done, mean

    def _alone(self, home: str, stats) -> bool:
        """Whether no replica but `home` holds any work: no step queued or running (as
        reported or sent by this router) and no paused session. A session resuming on a
        `home` that is not `_shared` is then alone in the fleet: moving it shortens nobody's
        wait (`RoutingConfig.busy_balance_alone`)."""
        for x in self.replicas:
            if x == home:
                continue
            st = stats.get(x)
            if self.busy(x, stats) > 0 or (st is not None and st.paused > 0):
                return False
        return True

    def _behind(self, home: str, req: RouteRequest, stats, cands: list[str],
                ahead: tuple[dict[str, float], float] | None) -> list[str]:
        """Of `cands`, the replicas whose accumulated busy time is below the mean and that
        have room for the session, when home is ahead (`_ahead`; else none); when none
        has room and home leads the mean by more than `busy_balance_force` x the mean and
        `busy_balance_min_s`, the least crowded of those behind (lowest commitment with
        the session). Room: the session keeps them at or below `max_commitment`, or, when
        `busy_balance_crowding` x home's commitment exceeds that, at or below this product
        (opt-in): when every pool overflows (a thrashing fleet's drain), a session is no
        more crowded on a replica behind than on the home ahead, which otherwise keeps
        recomputing what its sessions evict."""
        if ahead is None or not cands:
            return []
        done, mean = ahead
        tokens = self._tokens(home, req, stats)
        c = self.config
        limit = max(c.max_commitment, c.busy_balance_crowding * stats[home].commitment)
        behind = [x for x in cands if x in done and done[x] < mean]
        roomy = [x for x in behind if self._fits(x, tokens, stats, limit)]
        force = c.busy_balance_force
        if roomy or not force or done[home] - mean <= max(force * mean, c.busy_balance_min_s):
            return roomy
        # Far ahead (`busy_balance_force`): balance before room. The least crowded replica
        # behind takes the session; its KV displaces cached KV there (a replica behind has
        # time to recompute it), where home would keep recomputing its own.
        crowd = {x: self._commitment_with(x, tokens, stats) for x in behind if x in stats}
        return [min(crowd, key=lambda x: (crowd[x], done[x]))] if crowd else []

    def _overcommitted(self, r: str, stats) -> bool:
        st = stats.get(r)
        limit = self.config.max_commitment
        return bool(limit) and st is not None and st.commitment > limit

    def _place_new(self, req, stats) -> Route:
        """A session without a home: the replica with the least predicted load among those
        not overcommitted (all, if every one is), or one where its prefix is cached whose
        predicted load is within `prefix_slack` of it; of the replicas that have reported
        (`ready`)."""
        cands = self.ready(stats)
        pred = {r: self.predicted_load(r, stats) for r in cands}
        key = {r: (self._overcommitted(r, stats), pred[r], self._load(r, stats))
               for r in cands}
        best = min(cands, key=key.__getitem__)
        hot = self._prefix_homes.get(req.prefix_key, ()) if req.prefix_key is not None else ()
        warm = [r for r in cands if r in hot and key[r][0] == key[best][0]
                and pred[r] <= pred[best] + self.config.prefix_slack]
        if warm:
            return Route(min(warm, key=key.__getitem__), reason="prefix")
        return Route(best, reason="new")


ROUTERS: dict[str, type[Router]] = {
    r.name: r for r in (RoundRobinRouter, AffinityRouter, KvsagaRouter)
}
# `kvsaga-serve --replicas --router` also takes Ray Serve's own default request router
# (`kvsaga.integrations.ray.router.RayDefaultRequestRouter`): no kvsaga.routing decision,
# the baseline a Ray Serve user gets without kvsaga's router.
RAY_DEFAULT_ROUTER = "ray-default"
REPLICA_ROUTERS = (*ROUTERS, RAY_DEFAULT_ROUTER)


def make_router(name: str, replicas: Iterable[str] = (), **kwargs) -> Router:
    """A router by name (`ROUTERS`); kwargs go to its constructor (`config` for kvsaga,
    `session_idle_s` for any)."""
    try:
        cls = ROUTERS[name]
    except KeyError:
        raise ValueError(f"unknown router {name!r}; choose one of {sorted(ROUTERS)}") from None
    return cls(replicas, **kwargs)
