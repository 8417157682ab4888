"""The session hand-over between engine replicas of kvsaga-serve on Ray Serve:
`SessionHandover`, a mixin of `deployment.EngineReplica` (split from deployment.py by
concept, as `gateway.py` was: the replica there runs the single-node server app and reports
its routing stats; moving a session between replicas is this module's).

When the router moved a session onto a replica, the replica pulls it from its previous one
(`SessionHandover._pull`): the token context always (so re-tokenization cannot split it
differently), and the KV too when the router chose migration (`kvsaga.migration`: exported
through host memory, imported byte for byte). The hand-over is two-phase: the previous
replica exports the session and holds it (`export_session`; no step of it runs there)
until the new one has imported it and commits (`finish_handover`: the previous replica
ends its copy, so a session lives in one place; docs/cluster_handover.md says when it
does not) or aborts (its import was refused: the session stays where it was, and
the step is answered 503 `session_move_failed`, which sends the session back there). A
holder whose importer is gone (Ray no longer lists it) frees the session when a step or
a pull meets the hold (`SessionHandover._reclaim`), not only when the hold runs out. A
session with a step in flight on its previous replica (or held there for another
importer) is not taken: the step gets a 409 `session_busy` naming why. While it pulls,
the new replica reserves the session's record (`_Reservation`), so a step of the session
that reaches it meanwhile gets its own 409.
"""

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any

from ray import serve

from kvsaga.integrations.ray.gateway import (
    ENGINE_DEPLOYMENT,
    PULL_REFUSED_HEADER,
    PULL_UNCOMMITTED_HEADER,
)
from kvsaga.migration import export_session, import_session
from kvsaga.serve.errors import APIError
from kvsaga.serve.sessions import SessionContext, SessionRegistry

log = logging.getLogger("kvsaga.ray")
_PULL_TIMEOUT_S = 60.0  # per call of a pull to the session's previous replica
# How long a replica holds a session it exported for the commit or abort of its importer
# (`EngineReplica.export_session`): the importer's import waits for its engine's step in
# progress, and its commit may take `_PULL_TIMEOUT_S`. A commit after it is refused (the
# importer undoes its import); meanwhile a step of the session there is answered 409,
# unless the importer is gone (`SessionHandover._reclaim`).
_HANDOVER_HOLD_S = 2 * _PULL_TIMEOUT_S
# How long a holder waits for its importer to answer whether it is still there
# (`SessionHandover._reclaim`): short, the step that asks waits for it; no answer in time
# keeps the hold.
_PROBE_TIMEOUT_S = 5.0
# How long a probe's "kept" outcome (the importer answered, or no telling) stands for the
# hold (`SessionHandover._reclaim`): a retry of the session's step meanwhile is answered
# 409 at once instead of probing (and waiting) again.
_PROBE_KEPT_S = 1.0
# The answer of a replica before session 47 for a session it cannot hand over (a step of it
# in flight): both ends spoke it, and a replica on that code still does while a rolling
# update replaces it (`export_session`, `_pull`).
_OLD_BUSY = "busy"
_FAILED = object()  # `EngineReplica._ask`: the call raised or timed out
# The clock of `finish_handover`'s committed holds (`_forget_commits`; tests move it).
_clock = time.monotonic


def _commit_kept_s() -> float:
    """How long a replica remembers a hold it committed (`finish_handover` answers a
    repeated commit True): past any retry of its importer. The first commit call is sent
    at most `_PULL_TIMEOUT_S` before the retry, which waits at most `_PULL_TIMEOUT_S` for
    its answer, so a retry reaches the sender within 2 x `_PULL_TIMEOUT_S` of the commit
    (plus `_PULL_TIMEOUT_S` of margin): one answered later is answered to no one (the
    importer took its call as failed and kept the import). Before, the latest 4096
    commits were kept whatever their age: more than 4096 others within the retry's window
    (a sender handing sessions over fast, which is when its calls time out) forgot the
    hold, the retry was answered False, and the importer undid an import whose sender had
    ended its copy: the session lived on neither replica (review s51 diffray 1)."""
    return _HANDOVER_HOLD_S + _PULL_TIMEOUT_S


@dataclasses.dataclass(frozen=True)
class Handover:
    """A session `EngineReplica.export_session` hands over, held by its replica until
    `finish_handover` names `id`.

    Attributes:
        id: the hold's id.
        context: the session's `SessionContext` fields (but `in_flight`, `last_used`).
        exported: its KV (`kvsaga.migration.SessionExport`), or None (not asked for, none
            cached, or its export failed: it is recomputed).
        commit_idempotent: the sender answers a repeated commit of this hold True, so its
            importer may retry a commit that failed (`_import_and_commit`). False from a
            sender before session 51 (a rolling update: the class default, its pickle has
            no such field), which answers it False, as for a hold that ran out.
    """

    id: str
    context: dict
    exported: Any
    commit_idempotent: bool = False


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


@dataclasses.dataclass
class _Hold:
    """A session `EngineReplica.export_session` holds for its importer (`_handovers`).

    Attributes:
        timer: frees the session when the hold runs out (`_expire`).
        importer: the importer's replica id (None: an importer that did not name itself,
            before session 47; never probed).
        probe: the probe of the importer under way (`_reclaim`), which every step or pull
            meeting the hold meanwhile awaits; None when none is.
        kept_at: when (the loop's clock) the last probe kept the hold (-inf: none did).
    """

    timer: asyncio.TimerHandle
    importer: str | None
    probe: asyncio.Future | None = None
    kept_at: float = float("-inf")


@dataclasses.dataclass(frozen=True)
class Busy:
    """What `EngineReplica.export_session` answers for a session it cannot hand over now:
    its record is reserved (`busy_cause` says by what).

    Attributes:
        cause: why, as `busy_cause` words it.
    """

    cause: str


_STEP_IN_FLIGHT = "a step of it is in flight"


def busy_cause(in_flight: str, importer: str | None) -> str:
    """Why a session whose record `in_flight` reserves is busy, for a log line and the 409:
    a hold of a hand-over (`export_session`; `importer` is the replica it is held for), a
    pull's reservation (`_Reservation`), else a step's request id."""
    if in_flight.startswith("handover-"):
        return f"it is held for a hand-over to replica {importer or '(unknown)'}"
    if in_flight.startswith("pull-"):
        return "a pull of it from another replica is under way"
    return _STEP_IN_FLIGHT


def _busy(sid: str, cause: str, headers: dict | None = None) -> APIError:
    """The 409 `session_busy` answer to a step of a session that is busy (`cause`)."""
    return APIError(409, f"session {sid.partition('/')[2]!r} is busy ({cause}); retry",
                    param="session_id", code="session_busy", headers=headers)


def _move_failed(sid: str, source: str, why: str, imported: bool = False) -> APIError:
    """The answer to a step whose session could not move here and stays on `source`: 503
    (retry), with the header that has the gateway's router take the session back there.
    `imported`: the import here went through, `source` refused the commit (its hold was
    over): the header that says so keeps the gateway's router from cooling this replica
    off for every session, as it does when an import is refused for want of room (review
    s51 diffray 2)."""
    headers = {PULL_REFUSED_HEADER: source, "Retry-After": "1"}
    if imported:
        headers[PULL_UNCOMMITTED_HEADER] = "1"
    return APIError(503, f"session {sid.partition('/')[2]!r} could not move to this replica "
                    f"({why}); retry: it continues on its previous replica",
                    param="session_id", code="session_move_failed", headers=headers)


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


class SessionHandover:
    """Moving a session between engine replicas, both ends: the importer's pull (`_pull`)
    and the exporter's two phases (`export_session`, `finish_handover`), and the holds of
    gone importers freed (`_reclaim`, `handover_alive`). A mixin of
    `deployment.EngineReplica`, whose state it uses: `app` (the server app and its
    engine), `replica_id`, `app_name`, `_sessions`, `_start`, `_seen_tokens` (an import's
    context is no service given here), `_handovers` (the exporter's holds: hold id ->
    `_Hold`) and `_committed` (the holds it committed -> when, oldest first, kept for
    `_commit_kept_s`: a repeated commit is answered True)."""

    async def _pull(self, sid: str, salt: str | None, source: str,
                    migrate: bool) -> APIError | None:
        """Take a moved session's context (and KV when `migrate`) from its previous replica;
        returns the error to answer instead of the step, or None to run the step here.

        A hand-over has two phases: `source` exports the session and holds it
        (`export_session`), this replica imports it, then has `source` end its copy
        (commit) or keep it (abort, on a refused import: no room, a failed copy;
        `finish_handover`). So a refused import loses nothing: the answer is
        `_move_failed`, and the gateway has the router take the session back to `source`.
        A session busy on `source` (a step in flight, held for another importer) is not
        taken either (opened here as well, it would live on two replicas): the answer is a
        409 `session_busy` naming why, with the header that sends the session back to
        `source`. The export call names this replica (`importer`): `source` asks it
        whether it is still there when a step meets the hold (`_reclaim`). A local record
        with a step queued (or a pull under way) is left to the server's 409; a local idle
        copy is one a failed pull left behind when the session moved on, so `source`'s copy
        replaces it, unless `source` holds none. If `source` cannot be reached (it died, it
        is stuck) the step continues a local copy, if any, or recomputes.

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
            got = await self._ask(source, "export_session", {
                "engine_sid": sid, "migrate": migrate, "importer": self.replica_id})
        except BaseException:  # cancelled: nothing was handed over
            held.end(keep=not held.fresh)
            raise
        if not isinstance(got, Handover):
            if not held.held:  # the client ended the session here meanwhile (the end route)
                return _ended_meanwhile(sid)
            held.end(keep=not held.fresh)
            if got == _OLD_BUSY:  # a sender before session 47 (a rolling update)
                got = Busy(_STEP_IN_FLIGHT)
            if isinstance(got, Busy):
                log.warning("kvsaga: %s cannot hand over %s (%s); answering 409", source,
                            sid, got.cause)
                return _busy(sid, f"on replica {source}: {got.cause}",
                             {PULL_REFUSED_HEADER: source})
            # "unknown" (a local copy is the session's), or "misrouted" or _FAILED (the
            # source is gone or stuck): continue or recompute
            await self._drop_if_stale(sessions, sid)
            return None
        # From here on the source holds the session for this replica: its commit or abort
        # must be sent even if this step is cancelled (else the session waits out the hold).
        return await asyncio.shield(self._take(held, salt, source, got))

    async def _ask(self, source: str, method: str, ask: dict,
                   timeout_s: float | None = None) -> Any:
        """A pinned call to `method` of replica `source`; `_FAILED` (logged) when it raised
        or took longer than `timeout_s` (None: `_PULL_TIMEOUT_S`)."""
        try:
            handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, self.app_name)
            return await asyncio.wait_for(handle.options(method_name=method).remote(
                {"kvsaga": 1, "pin": source, **ask}),
                _PULL_TIMEOUT_S if timeout_s is None else timeout_s)
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
        commit = {"engine_sid": sid, "id": got.id, "commit": True}
        done = await self._ask(source, "finish_handover", commit)
        if done is _FAILED and got.commit_idempotent:
            # Timed out (`source` at its request limit, say, the call cancelled unsent) or
            # `source` died. Taken as committed, the session lived on both replicas: the
            # hold ran out and `source` freed its copy, which idled out there. Asked again,
            # `source` answers True if a commit went through, False if its hold is over
            # uncommitted (it has the session back: the import is undone below). A sender
            # that does not say it answers so (before session 51) answers a repeated
            # commit False too: not asked again, lest both copies go (review s51 ray 3).
            done = await self._ask(source, "finish_handover", commit)
        if not held.held:
            return _ended_meanwhile(sid)
        if done is False:
            log.warning("kvsaga: %s no longer hands over %s; it stays there", source, sid)
            await engine.call(lambda e: self._forget(e, sid))
            return _move_failed(sid, source, "its previous replica took it back",
                                imported=True)
        # Else committed, or `source` is gone (its copy with it) or did not answer twice, or
        # once for a sender before session 51 (it frees its copy when the hold runs out;
        # that copy idles out there).
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

    async def export_session(self, call: dict) -> Handover | Busy | str:
        """Hand-over, phase one: a paused session's context, and its KV if asked. The
        session stays here, held: its record is reserved (a step of it is answered 409
        `session_busy`, the idle sweep passes it over) until `finish_handover` commits
        (ends it here) or aborts (frees it), or `_HANDOVER_HOLD_S` passed without either
        (the importer died or gave up): it is then freed, and sooner when the importer
        `call` names is gone (`_reclaim`, first). Else why not: `Busy` (a step of it is in
        flight here, or it is held for another importer), "unknown" (no such session here)
        or "misrouted" (the call reached another replica). An importer that names itself
        not (`importer`; one before session 47, during a rolling update) is answered the
        string "busy" instead of `Busy`, the only busy answer it knows: any other it took
        for a gone sender, and ran the step on its own copy while one was in flight here.
        A call for another replica is answered before the model load (`_start`): a pull
        from a dead replica reaches any other, maybe its replacement still loading, and
        its importer's step waited for that load (up to `_PULL_TIMEOUT_S`) to learn what
        "misrouted" tells it at once (review s49 ray 2)."""
        sid, sessions = call.get("engine_sid"), None
        if call.get("pin") == self.replica_id:
            await self._start()
            sessions = self._sessions
        if sessions is None:
            log.warning("kvsaga: export of %s reached %s, not %s", sid, self.replica_id,
                        call.get("pin"))
            return "misrouted"
        await self._reclaim(sid)
        ctx = sessions.get(sid)
        if ctx is None:
            log.warning("kvsaga: %s cannot hand over %s (unknown)", self.replica_id, sid)
            return "unknown"
        if ctx.in_flight is not None:
            cause = busy_cause(ctx.in_flight, self._importer(ctx.in_flight))
            log.warning("kvsaga: %s cannot hand over %s (%s)", self.replica_id, sid, cause)
            return Busy(cause) if call.get("importer") is not None else _OLD_BUSY
        hold = ctx.in_flight = f"handover-{uuid.uuid4().hex}"
        migrate = bool(call.get("migrate"))
        try:
            exported = await self.app.state.engine.call(lambda e: _export_kv(e, sid, migrate))
        except BaseException:  # (cancelled: the importer gave up) nothing was handed over
            self._release(sid, hold)
            raise
        self._handovers[hold] = _Hold(asyncio.get_running_loop().call_later(
            _HANDOVER_HOLD_S, self._expire, sid, hold), call.get("importer"))
        # What the session's cache holds (exact ids and text), not its local bookkeeping.
        context = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)
                   if f.name not in ("in_flight", "last_used")}
        return Handover(hold, context, exported, commit_idempotent=True)

    async def finish_handover(self, call: dict) -> bool | str:
        """Hand-over, phase two: `commit` ends the held session here (its importer has it),
        else the session is freed and stays here. True once ended, for a repeated commit
        too (an importer whose commit call failed asks again: `Handover.commit_idempotent`);
        False when not committed: an abort, or the hold is over (it ran out, or the
        session's client ended the session meanwhile); "misrouted" (the call reached
        another replica)."""
        sessions, sid, hold = self._sessions, call.get("engine_sid"), call.get("id")
        if call.get("pin") != self.replica_id or sessions is None:
            return "misrouted"
        held = self._handovers.pop(hold, None)
        if held is None:
            if call.get("commit") and hold in self._committed:
                return True
            log.warning("kvsaga: the hand-over of %s on %s is over already", sid,
                        self.replica_id)
            return False
        held.timer.cancel()
        ctx = sessions.get(sid)
        if not call.get("commit") or ctx is None or ctx.in_flight != hold:
            self._release(sid, hold)
            return False
        # The record goes before the await, as the end route's does, and the engine's copy
        # goes even if this call is cancelled (its caller gave up: it asks again).
        sessions.drop(sid)
        now = _clock()
        self._committed[hold] = now
        self._forget_commits(now)
        await asyncio.shield(self.app.state.engine.call(lambda e: self._forget(e, sid)))
        return True

    def _forget_commits(self, now: float) -> None:
        """Forget the committed holds older than `_commit_kept_s` (no retry of theirs can
        still be answered to anyone); the rest are kept however many there are."""
        committed, oldest = self._committed, now - _commit_kept_s()
        while committed and next(iter(committed.values())) < oldest:
            committed.popitem(last=False)

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

    def _importer(self, hold: str) -> str | None:
        """The importer a hold of this replica's is for (None: no such hold, or unnamed)."""
        held = self._handovers.get(hold)
        return held.importer if held is not None else None

    async def _reclaim(self, sid: str | None) -> None:
        """Free the session's record if one of this replica's holds reserves it for an
        importer that is gone: asked (`handover_alive`, at most `_PROBE_TIMEOUT_S`), Ray no
        longer lists it (the pinned call reached another replica, which answers
        "misrouted"). The importer died between the export and its commit or abort, which
        only it sends: the hold would keep the session busy here (409) until it ran out
        (`_HANDOVER_HOLD_S`). Called by a step (`handle`) or a pull (`export_session`) of
        the session here, the only ones a hold turns away. One probe per hold at a time:
        the steps and pulls that meet the hold while it is under way wait for it (each
        asking on its own, concurrent retries of a step held a request slot each for up to
        `_PROBE_TIMEOUT_S`, every one to get the same 409), and for `_PROBE_KEPT_S` after
        a probe kept the hold none is asked again (a retry gets its 409 at once)."""
        sessions = self._sessions
        ctx = sessions.get(sid) if sessions is not None and sid is not None else None
        hold = ctx.in_flight if ctx is not None else None
        held = self._handovers.get(hold) if hold is not None else None
        if held is None or held.importer is None:
            return
        if held.probe is None:
            loop = asyncio.get_running_loop()
            if loop.time() - held.kept_at < _PROBE_KEPT_S:
                return
            held.probe = loop.create_task(self._probe(sid, hold, held))
        # Shielded: a caller cancelled (its client went away) leaves it to the others.
        await asyncio.shield(held.probe)

    async def _probe(self, sid: str, hold: str, held: _Hold) -> None:
        """`_reclaim`'s probe of the importer of `held`, hold `hold` of session `sid`. On
        "misrouted" the session is freed as `_expire` frees it, so a commit after it is
        refused and undone (`finish_handover`): an importer wrongly taken for gone costs a
        failed move, never a second copy. Any other answer, a failure or no answer in time
        keeps the hold (noted, `_Hold.kept_at`)."""
        try:
            alive = await self._ask(held.importer, "handover_alive", {"engine_sid": sid},
                                    _PROBE_TIMEOUT_S)
        finally:
            held.probe = None
        if self._handovers.get(hold) is not held:
            return  # its commit or abort came meanwhile, or it ran out
        if alive != "misrouted":
            held.kept_at = asyncio.get_running_loop().time()
            return  # there, or no telling
        log.warning("kvsaga: the importer %s of %s is gone; %s frees the session",
                    held.importer, sid, self.replica_id)
        held.timer.cancel()
        del self._handovers[hold]
        self._release(sid, hold)

    async def handover_alive(self, call: dict) -> bool | str:
        """Whether this replica is there, for a holder of a session handed over to it
        (`_reclaim`): True, or "misrouted" when the call reached another replica (Ray no
        longer lists the one named). It does not wait for the model load (`_start`): a
        replica that imports is past it, and the holder's step waits for the answer."""
        return True if call.get("pin") == self.replica_id else "misrouted"

    def _held_busy(self, sid: str | None) -> APIError | None:
        """The 409 for a step of a session one of this replica's holds reserves, naming its
        importer (the server's own 409 says a request is in flight); None when none does."""
        sessions = self._sessions
        ctx = sessions.get(sid) if sessions is not None and sid is not None else None
        if ctx is None or ctx.in_flight not in self._handovers:
            return None
        return _busy(sid, busy_cause(ctx.in_flight, self._importer(ctx.in_flight)))
