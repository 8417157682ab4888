"""The steal-arrival book of `KvsagaRouter` (`kvsaga.routing`): the sessions a steal moved
to a replica whose reports do not show them yet. A steal's tokens count against the
thief's room until its report shows them (docs/cluster.md, "How a step is routed" and
"Limits (known)"): two steals between two reports of one replica would otherwise both
count the same room, and the second import be refused. Kept apart from the routing
decisions it serves, which read it only through `_arriving`; pure Python, no torch.
Beside it, `RefusalBook`: the cool-offs of the replicas that refused a move (when a steal may
target them again), the other book a move's outcome writes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace

from kvsaga.replica_stats import ReplicaStats
from kvsaga.routing_base import Route


class ArrivalBook:
    """Mixin, before `Router` in a router's bases (it extends `move_taken` and
    `confirm_move`, and reads `moves`, `session_steps`, `in_flight`, `_voided`,
    `_MAX_VOIDED`): which stolen sessions count in which replica's room (`_arriving`),
    and until when."""

    def _init_arrivals(self) -> None:
        # Sessions moved by a steal, by the replica they moved to: session -> (the move's
        # route, when that step was seen to finish there having run, None before), until a
        # report of that replica shows them (`_arriving`), the move is refused, its steps
        # all failed to reach the replica, the session is forgotten or routed elsewhere, or
        # the replica removed; `_arrival_of`: session -> that replica.
        self._arrivals: dict[str, dict[str, tuple[Route, float | None]]] = {}
        self._arrival_of: dict[str, str] = {}
        # session -> (replica, move's route) dropped by `move_refused`, restored by
        # `move_taken` (a sibling step of the move took the session), until the session is
        # routed again or forgotten; at most `_MAX_VOIDED` (the oldest go first).
        self._refused_arrivals: OrderedDict[str, tuple[str, Route]] = OrderedDict()

    def _forget_arrival(self, session: str) -> None:
        """The session is forgotten: none of its moves counts, nor can come back."""
        self._drop_arrival(session)
        self._refused_arrivals.pop(session, None)

    def _drop_arrivals_at(self, replica: str) -> None:
        """`replica` is removed: no move to it counts."""
        for s in list(self._arrivals.get(replica, ())):
            self._drop_arrival(s)

    def _refuse_arrival(self, session: str, replica: str) -> None:
        """`replica` refused `session`'s move: its tokens never come, unless a sibling
        step of the move takes it (`move_taken`), so the move is kept aside."""
        if self._arrival_of.get(session) == replica:
            saved = self._refused_arrivals
            saved.pop(session, None)
            saved[session] = (replica, self._arrivals[replica][session][0])
            while len(saved) > self._MAX_VOIDED:
                saved.popitem(last=False)
            self._drop_arrival(session)

    def move_taken(self, session: str, replica: str, source: str) -> None:
        """`Router.move_taken`, and the move's tokens, which `move_refused` took off
        `replica`'s room, count there again (`_arriving`): the session lives there now,
        and until a report of `replica` shows it a second steal counted the same room
        again (review s49 routingdiff 3). A finish of the move's own step seen before
        then was the refused one's, or came before the import: it is not counted."""
        acts = (self._voided.get(session) == (replica, source) and replica in self.in_flight)
        saved = self._refused_arrivals.pop(session, None) if acts else None
        super().move_taken(session, replica, source)
        if saved is not None and saved[0] == replica:
            self._add_arrival(session, replica, saved[1])

    def confirm_move(self, session: str, replica: str, route: Route | None = None) -> None:
        """`Router.confirm_move`, and when `route`, a step sent along the session's still
        unconfirmed move to `replica`, is the one `replica` accepted (Ray Serve's
        `on_request_routed`): that step pulls the session, so it owns the move's count
        (`_arrived`) with the move's tokens. A step accepted before the move's own one
        pulls, and the moving step is then answered 409 at once, before the import: as the
        owner its finish would have counted the move as arrived while the import still
        ran (review s49 routing3 1). An end request carries no tokens: its copy, the
        owner then, is no step's route, and the count waits for a report or the end."""
        m = self.moves.get(session)
        moved = self._arrivals.get(replica)
        entry = moved.get(session) if moved else None
        if (route is not None and m is not None and m.replica == replica
                and entry is not None and entry[1] is None
                and route.moved_from == entry[0].moved_from):
            owner = route if route.tokens else replace(route, tokens=entry[0].tokens)
            moved[session] = (owner, None)
        super().confirm_move(session, replica)

    def _note_arrival(self, route: Route) -> None:
        """Count a steal's tokens (`Route.tokens`) towards its thief's room from now
        (`_arriving`); a session routed to another replica than the one it was moving to
        is no longer counted there."""
        s = route.session
        if s is None:
            return
        self._refused_arrivals.pop(s, None)  # routed again: a late `move_taken` is void
        if self._arrival_of.get(s, route.replica) != route.replica:
            self._drop_arrival(s)
        # A step sent along a move already counted there (a sibling of the moving step,
        # routed before the move was confirmed) leaves the move's own step in place: only
        # that one's finish says the session arrived (`_arrived`).
        if route.tokens and route.moved_from is not None and s not in self._arrival_of:
            self._add_arrival(s, route.replica, route)

    def _add_arrival(self, session: str, replica: str, move: Route) -> None:
        """Count `move`'s tokens in `replica`'s room until its report shows the session
        (`_arriving`); not yet arrived."""
        self._drop_arrival(session)
        self._arrivals.setdefault(replica, {})[session] = (move, None)
        self._arrival_of[session] = replica

    def _arrived(self, route: Route, done: float) -> None:
        """A step that ran on `route.replica` finished at `done`: when it is the entry's
        owner, the session's KV is there (the replica pulled the session before it ran the
        step): a report of that replica taken after `done` counts it (`_arriving`). The
        owner is the step that made the move, or, when the caller says which step the
        replica accepted first while the move was unconfirmed (`confirm_move` with its
        route: Ray Serve does), that step: the one that pulls. Any other step of the
        session proves nothing: one sent there while the pull was still running (a
        concurrent step routed home once the move was confirmed, or a sibling along it) is
        answered 409 `session_busy` at once, before the import, and counted as done it let
        a report taken during the import drop the move (review s49 routingdiff 1). Without
        that word (the pure API, the simulator) the moving step stays the owner: a caller
        that sends two steps along one move and has the later one accepted first can still
        see the move counted at the 409'd one's finish."""
        moved = self._arrivals.get(route.replica)
        entry = moved.get(route.session) if moved else None
        if entry is not None and route is entry[0]:
            moved[route.session] = (entry[0], done)

    def _unarrived(self, route: Route) -> None:
        """A step that pulled its session to `route.replica` finished without reaching
        it (`ran=False`: its try was cancelled, or failed before a replica took it): when
        the move is still unconfirmed (no step of the session is known to have reached
        the replica: a sibling that did took the session there, review s49 routing3 2), no
        other step of the session is in flight there and no owner has been seen to arrive,
        the session's tokens are not coming: they leave that replica's room. Kept, they
        counted there until the session was forgotten (`session_idle_s`: 30 min) (review
        s49 routingdiff 2). A later step sent along the still unconfirmed move carries its
        tokens (`Router.route`) and counts them there again."""
        s = route.session
        moved = self._arrivals.get(route.replica)
        entry = moved.get(s) if moved and route.moved_from is not None else None
        m = self.moves.get(s)
        if (entry is not None and entry[1] is None
                and entry[0].moved_from == route.moved_from
                and m is not None and m.replica == route.replica
                and not self.session_steps.get(s, {}).get(route.replica)):
            self._drop_arrival(s)

    def _drop_arrival(self, session: str) -> None:
        """Stop counting `session`'s move in its thief's room (`_arriving`)."""
        replica = self._arrival_of.pop(session, None)
        if replica is not None:
            moved = self._arrivals[replica]
            del moved[session]
            if not moved:
                del self._arrivals[replica]

    def _arriving(self, x: str, st: ReplicaStats) -> int:
        """The tokens (`Route.tokens`) of the sessions stolen for `x` that its report `st`
        does not show yet; the moves it shows are no longer counted. A report shows a move
        when it lists the session and was taken at or after the move, or was taken after
        the moving step was seen to finish on `x` having run (`_arrived`). Both compare
        `x`'s stamp with this router's clock: no rule free of the clocks is sound (a report
        newer on `x`'s clock than any seen when the step finished may still have been
        taken during the import, a listing alone may be an earlier stay's), so skew moves
        the drop (docs/cluster.md, "Limits (known)"). The move's
        confirmation (`confirm_move`) is no sign: Ray Serve confirms a move when `x`
        accepts the step, before `x` pulls and imports the session, and a second steal
        between two reports then counted the same room again (review s49 ray 1); nor is a
        report taken after the move that does not list it (taken before the import). An
        unstamped report (a live view, as the simulator's) is taken to show every move:
        none is counted."""
        moved = self._arrivals.get(x)
        if not moved:
            return 0
        taken, listed = st.taken_at, st.session_tokens
        tokens, shown = 0, []
        for s, (m, done) in moved.items():
            if taken is None:
                if s in listed or done is not None:
                    shown.append(s)
            elif (s in listed and taken >= m.sent_at) or (done is not None and taken >= done):
                shown.append(s)
            else:
                tokens += m.tokens
        for s in shown:
            self._drop_arrival(s)
        return tokens

    def _most_room(self, idle: list[str], stats) -> float:
        """The most room (tokens) an idle replica's report shows beside the sessions
        arriving there (`KvsagaRouter._room_for`'s test: it has room for `tokens` exactly
        when `tokens` <= its room); -inf when no replica of `idle` reports. If it has no
        room for a session, none has (`KvsagaRouter._could_go`)."""
        most = -math.inf
        for y in idle:
            st = stats.get(y)
            if st is not None:
                room = (st.free_blocks + st.evictable_blocks) * st.block_size \
                    - self._arriving(y, st)
                if room > most:
                    most = room
        return most


class RefusalBook:
    """Mixin of `KvsagaRouter` (split from kvsaga/routing.py): when the cool-off of a
    replica that refused a move runs out. It reads `clock`-stamped entries of `_refused`
    ((session, replica) -> when) and `_cooling` (replica -> when), which
    `KvsagaRouter.move_refused` writes, and `refused_move_s`, `_MAX_REFUSED`."""

    def _cool(self, refused_at: float | None, now: float) -> bool:
        """Whether a cool-off from a refusal at `refused_at` (None: none) still runs at
        `now`: for `refused_move_s` from it, and over when `now` is before it (the router's
        clock is the wall clock: a step back of X seconds would otherwise keep it X seconds
        past its end, a step forward ends it early)."""
        return refused_at is not None and 0 <= now - refused_at < self.refused_move_s

    def _refused_lately(self, session: str, x: str, now: float) -> bool:
        """Whether replica `x` refused an import, or a move of `session`, whose cool-off
        still runs at `now` (`_cool`)."""
        return (self._cool(self._cooling.get(x), now)
                or self._cool(self._refused.get((session, x)), now))

    def _forget_refusals(self, now: float) -> None:
        """Drop the cool-offs that no longer run (`_cool`): the refusals from the oldest
        (they are added in the order they run out, unless the wall clock stepped: then
        `_refused_lately` tests each on its own), and the oldest beyond `_MAX_REFUSED`."""
        refused = self._refused
        while refused and (len(refused) > self._MAX_REFUSED
                           or not self._cool(next(iter(refused.values())), now)):
            refused.popitem(last=False)
        for x in [x for x, at in self._cooling.items() if not self._cool(at, now)]:
            del self._cooling[x]
