"""The output phase of `LLMEngine.step()`: each sampled row's token recorded into its
request, the requests that ended finished (their sessions handed back to the manager, their
requests out of the core scheduler), and their outputs made; if an interrupt cuts that phase
short, every row is left whole (recorded, or taken back with its seeded generator restored).
A hand-back whose manager part raises (a policy hook) leaves the ended request (a sampled
end or an abort) out of the core scheduler and in `_ended` until a later step, `tick`, its
abort, its session's next request or `end_session` completes it.

A mixin of `kvsaga.engine.engine.LLMEngine`, split from engine.py so that both modules stay
under 600 lines: engine.py builds the engine, queues requests, runs sessions and the step up
to the forward pass; this module is what the step does with the pass's sampled tokens.
It uses the engine's `requests`, `scheduler`, `manager`, `tokenizer`, `max_model_len`,
`clock`, `_undelivered` and `_ended`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from kvsaga.engine.request import ListPrefix, Request, RequestOutput, RequestStatus
from kvsaga.engine.scheduler import ScheduledChunk

log = logging.getLogger(__name__)


class StepOutput:
    """`LLMEngine`'s output phase (see the module docstring)."""

    def _advance_all(self, sampled: list[ScheduledChunk], out, now: float,
                     draws: dict[str, tuple[torch.Generator, torch.Tensor]]) -> None:
        """Record each sampled row's token: `_record` works out what it changes (only the
        row's detokenizer takes the token), `_advance` writes that into the request and
        marks it ended if it ended; its output joins `_undelivered`. If anything raises on
        the way (an interrupt: on CUDA a Ctrl-C lands where `tolist` waits for the pass),
        `_cut_short` leaves every row whole before the exception propagates: a row recorded
        lost neither its token nor its end (else every later step raised: no token left
        to schedule, or a request that never ended), and the chunks of the rows not
        recorded are taken back. Then the requests that ended in this step are handed back
        (`_hand_back`): a hand-back that raises (a policy hook) propagates once every row
        is recorded, and the next step (or an abort) tries it again; one pending from an
        earlier step is retried by `step` alone (`_retry_hand_backs`: never raising)."""
        rows: list[_Row] = []
        outputs = self._undelivered
        start = len(outputs)
        pending = len(self._ended)  # (those that raised before: retried by `step` alone)
        try:
            # One device-to-host copy per tensor for the whole batch (not one per row).
            token_ids = out.token_ids.tolist()
            logprobs = out.logprobs.tolist()
            tops = None
            if out.top_token_ids is not None:
                tops = (out.top_token_ids.tolist(), out.top_logprobs.tolist())
            for i, c in enumerate(sampled):
                rows.append(self._record(c.request, token_ids[i], logprobs[i], tops, i))
                outputs.append(self._advance(c.request, rows[i], now))
        except BaseException:
            self._cut_short(sampled, rows, len(outputs) - start, now, draws)
            raise
        if len(self._ended) > pending:
            failed: list[str] = []
            try:
                self._hand_back_all(self._ended[pending:], failed)
            except Exception as e:
                # Only these requests' hand-backs failed (every row is recorded, its
                # output waits for `take_outputs` or the next step): a caller may fail
                # just them (kvsaga-serve).
                e.kvsaga_failed_request_ids = tuple(failed)
                raise

    def _cut_short(self, sampled: list[ScheduledChunk], rows: list[_Row], k: int, now: float,
                   draws: dict[str, tuple[torch.Generator, torch.Tensor]]) -> None:
        """After an exception in `_advance_all`: the row whose `_advance` it cut short is
        advanced again (each of its writes repeats harmlessly), and the chunks of the rows
        after it are taken back (`Scheduler.discard`, as for a failed pass: their K/V was
        written and counted, but their token is lost); their seeded generators go back to
        where they were, so they draw the same tokens again, and the first one's
        detokenizer, which may have taken its token, restarts from the tokens recorded.
        The rows after it are taken back even if advancing it raises again.
        `k`: the rows whose output is in `_undelivered` (returned with the next step's)."""
        after = k + 1 if len(rows) > k else k
        try:
            if len(rows) > k:
                self._undelivered.append(self._advance(sampled[k].request, rows[k], now))
        finally:
            rest = sampled[after:]
            if rest and len(rows) == after:
                req = rest[0].request
                req.detokenizer.restart(req.prompt_ids, req.output_ids)
            restore_generators(draws, rest)
            self.scheduler.discard(rest)

    def _record(self, req: Request, tok: int, lp: float,
                tops: tuple[list[list[int]], list[list[float]]] | None, row: int) -> _Row:
        """What recording `tok` (row `row` of the batch; `tops`: the batch's top token ids
        and logprobs, as lists) changes in `req`, worked out without changing it (but for
        its detokenizer, which takes the token, unless the token ends the request by its
        id and the stop is not kept: `include_stop_str_in_output`)."""
        p = req.params
        n = len(req.output_ids) + 1  # tokens generated with this one
        top = None
        if p.num_top_logprobs is not None:
            k = p.num_top_logprobs
            if k and tops is not None:
                top = list(zip(tops[0][row][:k], tops[1][row][:k], strict=True))
        else:
            lp = None
        reason = stop_reason = None
        eos = not p.ignore_eos and tok in self.tokenizer.eos_token_ids
        keep = p.include_stop_str_in_output
        if eos or tok in p.stop_token_ids:
            # Ended by its id (EOS or a stop token): as in vLLM, the token stays in the
            # output ids but not in the text (nor the deltas), unless the stop is kept;
            # a stop token is the stop reason, the EOS none (vLLM checks it first).
            reason = "stop"
            stop_reason = None if eos else tok
        if reason is None or keep:
            prev_len = len(req.text)
            req.detokenizer.add(tok)
            text = req.detokenizer.text  # (rewritten where the decoder rewrote emitted text)
            hit = find_stop(text, prev_len, p.stop) if p.stop else None
            if hit is not None:  # (in a kept stop token's text too: vLLM's reason then)
                text = text[: hit[0] + (len(hit[1]) if keep else 0)]
                reason, stop_reason = "stop", hit[1]
        else:
            text = req.detokenizer.text
        if reason is None and (
            n >= p.max_tokens or len(req.prompt_ids) + n >= self.max_model_len
        ):
            reason = "length"
        # Stream only text that no stop string can still claim: hold back its longest
        # possible beginning until the request finishes (a kept one claims none).
        end = len(text)
        if reason is None and p.stop and not keep:
            end -= max(len(x) for x in p.stop) - 1
        emitted = req.num_emitted_chars
        delta = text[emitted : max(end, emitted)]
        return _Row(tok, len(req.output_ids), lp, len(req.logprobs), top,
                    len(req.top_logprobs), text, emitted + len(delta), delta, reason,
                    stop_reason)

    def _advance(self, req: Request, row: _Row, now: float) -> RequestOutput:
        """Write `row` (`_record`'s) into `req`, and mark `req` ended if it ended (its
        hand-back comes after every row is recorded: `_advance_all`). Each write sets a
        value (no append), so a second call completes one that an interrupt cut short
        (`_cut_short`)."""
        req.output_ids[row.num_ids:] = (row.tok,)
        if row.lp is not None:
            req.logprobs[row.num_lps:] = (row.lp,)
        if row.top is not None:
            req.top_logprobs[row.num_tops:] = (row.top,)
        if req.first_token_time is None:
            req.first_token_time = now
        req.text = row.text
        req.num_emitted_chars = row.emitted
        if row.reason is None:
            req.pending_token = row.tok  # appended by the next step's batched decode_step
        else:
            req.pending_token = None  # (a finished request's last token gets no K/V)
            req.finish_reason = row.reason
            req.stop_reason = row.stop_reason
            req.status = RequestStatus.FINISHED
            self.requests.pop(req.request_id, None)
            if not any(r is req for r in self._ended):
                self._ended.append(req)
        return self._output(req, row.delta, [row.tok])

    def _abort(self, request_id: str) -> None:
        """`LLMEngine.abort`: `_finish` a request in flight; or complete the hand-back of
        one that ended (in a step, or an abort) whose hand-back raised."""
        req = self.requests.get(request_id)
        if req is not None and not req.finished:
            self._finish(req, "abort")
            return
        for req in self._ended:
            if req.request_id == request_id:
                self._hand_back(req)
                return

    def _session_busy(self, session_id: str) -> bool:
        """A request of the session is in flight, or ended and not handed back."""
        return (any(r.session_id == session_id for r in self.requests.values())
                or any(r.session_id == session_id for r in self._ended))

    def _id_ended(self, request_id: str) -> bool:
        """An ended request whose hand-back raised has this id (its final output may not
        be delivered yet: the id is still taken)."""
        return any(r.request_id == request_id for r in self._ended)

    def _finish(self, req: Request, reason: str) -> None:
        """End a request that has not ended (an abort), at once on the engine side: it is
        finished, out of `requests` and, by its hand-back (`_hand_back`), out of the core
        scheduler, so it runs no more. If the manager's part raises (a policy hook), the
        request waits in `_ended` like a sampled end whose hand-back raised (retried by
        the next step, its abort, its session's next request or `end_session`), and the
        error propagates."""
        self.scheduler.flush(req)  # an aborted request keeps its last token, as before
        # Aborted before it ran (or, preempted, before it ran again): the resume hint its
        # arrival sent, or the step start, no longer holds (`resume_withdrawn`).
        req.withdraws = req.status is not RequestStatus.RUNNING
        req.finish_reason = reason
        req.status = RequestStatus.FINISHED
        self.requests.pop(req.request_id, None)
        self._ended.append(req)
        self._hand_back(req)

    def _hand_back_ended(self, session_id: str) -> None:
        """Hand back the session's ended requests not handed back yet."""
        self._hand_back_all([r for r in self._ended if r.session_id == session_id])

    def _hand_back_all(self, reqs: list[Request], failed: list[str] | None = None) -> None:
        """Hand back `reqs` (in `_ended`): each is tried, and the first error is raised
        after the others were (`failed`: gets the ids of those that raised). An
        interrupt (a BaseException) stops at once, but first takes the requests not tried
        out of the core scheduler (they wait in `_ended` for their hand-back's retry), so
        none of them is scheduled again."""
        err: Exception | None = None
        for i, req in enumerate(reqs):
            try:
                self._hand_back(req)
            except Exception as e:
                err = err or e
                if failed is not None:
                    failed.append(req.request_id)
            except BaseException:
                self._leave_scheduler(reqs[i + 1:])
                raise
        if err is not None:
            raise err

    def _leave_scheduler(self, reqs: list[Request]) -> None:
        """Take the ended `reqs` (in `_ended`) out of the core scheduler (no manager
        call: their hand-back is retried later)."""
        now = self.clock()
        for req in reqs:
            if not req.left_scheduler:
                req.left_scheduler = True
                self.scheduler.remove(req, now, ended=req.owns_session or req.last_step)

    def _retry_hand_backs(self) -> None:
        """`step` and `tick`: retry the hand-backs that raised before. One that raises
        again is logged (at its 1st, 2nd, 4th, 8th... failure) and left for later, and the
        step goes on: its request has left the core scheduler, so a policy hook that
        keeps failing for one session stops no other. The session's own calls raise the
        error: its next `add_request` and the request's `abort` retry it; `end_session`
        ends the session without it."""
        for req in list(self._ended):
            try:
                self._hand_back(req)
            except Exception as e:
                req.hand_back_failures += 1
                n = req.hand_back_failures
                if n & (n - 1) == 0:
                    log.warning("the hand-back of request %r (session %r) failed again "
                                "(%d retries so far; its session waits): %s: %s",
                                req.request_id, req.session_id, n, type(e).__name__, e)

    def _end_stuck_sessions(self, limit: float, now: float) -> None:
        """`LLMEngine._end_idle_sessions`' second part: end the sessions whose ended
        request's hand-back has kept failing for more than `limit` seconds (its client may
        be gone: its blocks stayed held for good), by `_expire_session`."""
        if not self._ended:
            return
        queued = {r.session_id for r in self.requests.values()}
        stuck = {r.session_id for r in self._ended if r.hand_back_failed_at is not None
                 and now - r.hand_back_failed_at > limit and r.session_id not in queued}
        for sid in sorted(stuck):
            self._expire_session(sid)

    def _expire_session(self, session_id: str) -> None:
        """End a session a sweep found abandoned (idle past `session_idle_s`, or its
        hand-back failing that long), even where the policy's `session_ended` hook raises:
        the manager forgets it all the same (`end_session(force=True)`), so its blocks go
        back to the pool; a one-shot session whose end always raised was kept RUNNING with
        its blocks for good, the sweep's retry logged at every sweep. The hook's error is
        logged once per engine for each error type (then at debug level). Only a failure
        before the policy is told (the eviction of a paused session's tail) keeps the
        session, for the next sweep."""
        try:
            self._end_session(session_id, force=True)
        except Exception as e:
            ended = session_id not in self.manager.sessions
            key = (ended, type(e).__qualname__)
            seen = self._expiry_errors_logged
            level = logging.DEBUG if key in seen else logging.WARNING
            seen.add(key)
            log.log(level, "ending abandoned session %r: a policy hook raised (%s): %s: %s",
                    session_id, "the session was ended all the same" if ended
                    else "tried again at the next sweep", type(e).__name__, e)
            if not ended:
                return
        self.num_expired_sessions += 1

    def _hand_back(self, req: Request) -> None:
        """The hand-back of an ended request (in `_ended`): its session to the manager,
        the call chosen from the manager's state (`end_session` for a one-shot or last
        step; `finish_step` if its step is still open; `resume_withdrawn` for an abort
        before it ran; nothing if the manager already closed the step or forgot the
        session), then the request out of the core scheduler, even if the manager's part
        raised (once: the request never runs again); then it leaves `_ended`. If the
        manager's part raises, the request stays in `_ended` for a retry, unless the
        manager had already moved (a pool hook raising after the step was closed or the
        session forgotten: the call's change stands, `KVCacheManager.finish_step`); the
        error propagates."""
        mgr = self.manager
        sid = req.session_id
        ended = req.owns_session or req.last_step
        s = mgr.sessions.get(sid)
        running = s is not None and s.is_running
        done = True
        try:
            if s is not None:
                if ended:
                    mgr.end_session(sid)
                elif running:
                    mgr.finish_step(sid, tool=req.pause_tool, expected_s=req.pause_expected_s)
                elif req.withdraws:
                    mgr.resume_withdrawn(sid, now=self.clock())
        except BaseException:
            if req.hand_back_failed_at is None:
                req.hand_back_failed_at = self.clock()
            now_s = mgr.sessions.get(sid)
            done = now_s is None if ended else (running and (now_s is None
                                                             or not now_s.is_running))
            raise
        finally:
            if not req.left_scheduler:
                req.left_scheduler = True
                self.scheduler.remove(req, self.clock(), ended=ended)
            if done:
                self._ended[:] = [r for r in self._ended if r is not req]

    def _end_session(self, session_id: str, force: bool = False) -> list[str]:
        """`LLMEngine.end_session` (after its check): abort the session's requests in
        flight, then forget the session in the manager (`end_session`), which also
        completes the hand-backs of its requests that raised (theirs are not retried
        first: a hook that keeps failing there does not keep the session from ending).
        An abort whose hand-back raised is logged if the end then succeeds."""
        aborted = [r.request_id for r in self.requests.values() if r.session_id == session_id]
        for rid in aborted:
            try:
                self._abort(rid)
            except Exception as e:  # (its hand-back waits in `_ended`: the end covers it)
                log.warning("aborting request %r of ending session %r failed: %s: %s",
                            rid, session_id, type(e).__name__, e)
        mgr = self.manager
        try:
            if session_id in mgr.sessions:
                mgr.end_session(session_id, now=self.clock(), force=force)
        finally:
            if session_id not in mgr.sessions:  # (else its hook raised: retry the end)
                self._drop_ended(session_id)
                # A paused session has no request to abort: the scheduler must still let
                # it go (it may hold admission room for it), e.g. when it moves away.
                self.scheduler.forget_session(session_id, self.clock())
        return aborted

    def _drop_ended(self, session_id: str) -> None:
        """The session was forgotten: its requests leave `_ended`, each out of the core
        scheduler first if it has not left it (an interrupt cut its step's hand-backs
        short: else it stayed in the core's running list, and every later step raised)."""
        now = self.clock()
        for req in [r for r in self._ended if r.session_id == session_id]:
            if not req.left_scheduler:
                req.left_scheduler = True
                self.scheduler.remove(req, now, ended=True)
            self._ended[:] = [r for r in self._ended if r is not req]

    def _output(self, req: Request, delta: str, new_ids: list[int]) -> RequestOutput:
        """The request's output now. A running request's cumulative lists are read-only
        views of the request's (`ListPrefix`: no copy, which grew with the output at every
        step); a finished one's are copies."""
        view = list if req.finished else ListPrefix
        lps = tops = None
        if req.params.num_top_logprobs is not None:
            lps = view(req.logprobs)
            if req.top_logprobs:
                tops = view(req.top_logprobs)
        return RequestOutput(
            request_id=req.request_id,
            session_id=req.session_id,
            text=req.text,
            delta=delta,
            token_ids=view(req.output_ids),
            finish_reason=req.finish_reason,
            stop_reason=req.stop_reason,
            num_prompt_tokens=len(req.prompt_ids),
            num_cached_tokens=req.num_cached_tokens or 0,
            logprobs=lps,
            top_logprobs=tops,
            new_token_ids=new_ids,
        )

    def take_outputs(self) -> list[RequestOutput]:
        """The outputs of rows recorded by a `step` that then raised (a hand-back's policy
        hook: the error's `kvsaga_failed_request_ids` names the requests it belongs to),
        returned here once instead of at the head of the next step's list."""
        outputs, self._undelivered = self._undelivered, []
        return outputs

    def final_output(self, req: Request) -> RequestOutput:
        return self._output(req, "", [])


@dataclass(slots=True)
class _Row:
    """One sampled row's token and what it changes in its request (`StepOutput._record`):
    the values to set, with the list lengths they extend from (`num_*`); `lp` / `top`
    None: not asked for."""

    tok: int
    num_ids: int
    lp: float | None
    num_lps: int
    top: list[tuple[int, float]] | None
    num_tops: int
    text: str
    emitted: int
    delta: str
    reason: str | None
    stop_reason: int | str | None


def find_stop(text: str, prev_len: int, stop: tuple[str, ...]) -> tuple[int, str] | None:
    """Where `text` (`prev_len` characters of it seen before, none of them ending a stop
    string) is cut, and the stop string that cuts it; None if none ends in it. As in vLLM
    (0.32, measured against its server): the match that completes first wins, ties going
    to the one listed first. That is where generation would have stopped had the new text
    come a character at a time, so a token holding several stop strings ends the text
    where finer tokens would have: of [" answer", "swe"] in " answer", "swe" (" an")."""
    best: tuple[int, str] | None = None
    best_end = len(text) + 1
    for s in stop:
        # Only a match ending in the new text; a string's first is its first to complete.
        i = text.find(s, max(0, prev_len - len(s) + 1))
        if i != -1 and i + len(s) < best_end:
            best, best_end = (i, s), i + len(s)
    return best


def generator_states(chunks: list[ScheduledChunk]
                     ) -> dict[str, tuple[torch.Generator, torch.Tensor]]:
    """The state of the seeded generator of each chunk that will be sampled, by request id:
    a row taken back after the sampler drew draws again from there (`SamplingParams.seed`
    promises reproducible draws)."""
    return {c.request.request_id: (g, g.get_state()) for c in chunks
            if (g := c.request.generator) is not None and c.completes_context}


def restore_generators(draws: dict[str, tuple[torch.Generator, torch.Tensor]],
                       chunks: list[ScheduledChunk]) -> None:
    """Set the generators of `chunks`' requests back to the states in `draws`."""
    for c in chunks:
        got = draws.get(c.request.request_id)
        if got is not None:
            got[0].set_state(got[1])
