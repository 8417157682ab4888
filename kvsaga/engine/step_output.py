"""The output phase of `LLMEngine.step()`: each sampled row's token recorded into its
request, the requests that ended finished (their sessions handed back to the manager, their
requests out of the core scheduler), and their outputs made; if an interrupt cuts that phase
short, every row is left whole (recorded, or taken back with its seeded generator restored).

A mixin of `kvsaga.engine.engine.LLMEngine`, split from engine.py so that both modules stay
under 600 lines: engine.py builds the engine, queues requests, runs sessions and the step up
to the forward pass; this module is what the step does with the pass's sampled tokens.
It uses the engine's `requests`, `scheduler`, `manager`, `tokenizer`, `max_model_len`,
`clock` and `_undelivered`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvsaga.engine.request import Request, RequestOutput, RequestStatus
from kvsaga.engine.scheduler import ScheduledChunk


class StepOutput:
    """`LLMEngine`'s output phase (see the module docstring)."""

    def _advance_all(self, sampled: list[ScheduledChunk], out, now: float,
                     draws: dict[str, tuple[torch.Generator, torch.Tensor]]) -> None:
        """Record each sampled row's token: `_record` works out what it changes (only the
        row's detokenizer takes the token), `_advance` writes that into the request and
        finishes it if it ended; its output joins `_undelivered`. If anything raises on the
        way (an interrupt: on CUDA a Ctrl-C lands where `tolist` waits for the pass),
        `_cut_short` leaves every row whole before the exception propagates: a row recorded
        lost neither its token nor its finish (else every later step raised: no token left
        to schedule, or a request that never ended), and the chunks of the rows not
        recorded are taken back."""
        rows: list[_Row] = []
        outputs = self._undelivered
        start = len(outputs)
        try:
            token_ids = out.token_ids.tolist()
            logprobs = out.logprobs.tolist()
            for i, c in enumerate(sampled):
                rows.append(self._record(c.request, token_ids[i], logprobs[i], out, i))
                outputs.append(self._advance(c.request, rows[i], now))
        except BaseException:
            self._cut_short(sampled, rows, len(outputs) - start, now, draws)
            raise

    def _cut_short(self, sampled: list[ScheduledChunk], rows: list[_Row], k: int, now: float,
                   draws: dict[str, tuple[torch.Generator, torch.Tensor]]) -> None:
        """After an exception in `_advance_all`: the row whose `_advance` it cut short is
        advanced again (each of its writes repeats harmlessly), and the chunks of the rows
        after it are taken back (`Scheduler.discard`, as for a failed pass: their K/V was
        written and counted, but their token is lost); their seeded generators go back to
        where they were, so they draw the same tokens again, and the first one's
        detokenizer, which may have taken its token, restarts from the tokens recorded.
        `k`: the rows whose output is in `_undelivered` (returned with the next step's)."""
        if len(rows) > k:
            self._undelivered.append(self._advance(sampled[k].request, rows[k], now))
            k += 1
        rest = sampled[k:]
        if rest and len(rows) == k:
            req = rest[0].request
            req.detokenizer.restart(req.prompt_ids, req.output_ids)
        restore_generators(draws, rest)
        self.scheduler.discard(rest)

    def _record(self, req: Request, tok: int, lp: float, out, row: int) -> _Row:
        """What recording `tok` (row `row` of `out`) changes in `req`, worked out without
        changing it (but for its detokenizer, which takes the token)."""
        p = req.params
        n = len(req.output_ids) + 1  # tokens generated with this one
        top = None
        if p.num_top_logprobs is not None:
            k = p.num_top_logprobs
            if k and out.top_token_ids is not None:
                ids = out.top_token_ids[row, :k].tolist()
                lps = out.top_logprobs[row, :k].tolist()
                top = list(zip(ids, lps, strict=True))
        else:
            lp = None
        prev_len = len(req.text)
        req.detokenizer.add(tok)
        text = req.detokenizer.text  # (rewritten where the decoder rewrote emitted text)
        reason = None
        if (not p.ignore_eos and tok in self.tokenizer.eos_token_ids) or tok in p.stop_token_ids:
            reason = "stop"
        if p.stop:  # (after a stop token too: its text may complete a stop string)
            # Search only where a stop string could newly end.
            lo = max(0, prev_len - max(len(s) for s in p.stop))
            hits = [i for s in p.stop if (i := text.find(s, lo)) != -1]
            if hits:
                text = text[: min(hits)]
                reason = "stop"
        if reason is None and (
            n >= p.max_tokens or len(req.prompt_ids) + n >= self.max_model_len
        ):
            reason = "length"
        # Stream only text that no stop string can still claim: hold back its longest
        # possible beginning until the request finishes.
        end = len(text)
        if reason is None and p.stop:
            end -= max(len(x) for x in p.stop) - 1
        emitted = req.num_emitted_chars
        delta = text[emitted : max(end, emitted)]
        return _Row(tok, len(req.output_ids), lp, len(req.logprobs), top,
                    len(req.top_logprobs), text, emitted + len(delta), delta, reason)

    def _advance(self, req: Request, row: _Row, now: float) -> RequestOutput:
        """Write `row` (`_record`'s) into `req`, and finish `req` if it ended. Each write
        sets a value (no append), and the finish does only what is not done yet, so a second
        call completes one that an interrupt cut short (`_cut_short`)."""
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
            self._finish_sampled(req, row.reason)
        return self._output(req, row.delta, [row.tok])

    def _finish_sampled(self, req: Request, reason: str) -> None:
        """`_finish` a request whose token was just recorded (so running). Once its status is
        FINISHED, a second call (`_cut_short`) does only the parts not done yet: the
        manager's (its session still running) and the core scheduler's (still running
        there)."""
        if not req.finished:
            self._finish(req, reason)  # (what it does before the status repeats harmlessly)
            return
        self.requests.pop(req.request_id, None)
        s = self.manager.sessions.get(req.session_id)
        if s is not None and s.is_running:
            self._release(req, was_running=True)
        elif any(r is req for r in self.scheduler.running):
            self.scheduler.remove(req, self.clock(), ended=req.owns_session or req.last_step)

    def _finish(self, req: Request, reason: str) -> None:
        self.scheduler.flush(req)  # an aborted request keeps its last token, as before
        req.finish_reason = reason
        was_running = req.status is RequestStatus.RUNNING
        req.status = RequestStatus.FINISHED
        self.requests.pop(req.request_id, None)
        self._release(req, was_running)

    def _release(self, req: Request, was_running: bool) -> None:
        """`_finish`'s hand-back: the session to the manager, then the request out of the
        core scheduler."""
        mgr = self.manager
        ended = req.owns_session or req.last_step
        if ended:
            if req.session_id in mgr.sessions:
                mgr.end_session(req.session_id)
        elif was_running:
            mgr.finish_step(req.session_id, tool=req.pause_tool, expected_s=req.pause_expected_s)
        elif req.session_id in mgr.sessions:
            # Aborted before it ran (or, preempted, before it ran again): the resume hint
            # its arrival sent, or the step start, no longer holds.
            mgr.resume_withdrawn(req.session_id, now=self.clock())
        self.scheduler.remove(req, self.clock(), ended=ended)

    def _output(self, req: Request, delta: str, new_ids: list[int]) -> RequestOutput:
        want_lp = req.params.num_top_logprobs is not None
        return RequestOutput(
            request_id=req.request_id,
            session_id=req.session_id,
            text=req.text,
            delta=delta,
            token_ids=list(req.output_ids),
            finish_reason=req.finish_reason,
            num_prompt_tokens=len(req.prompt_ids),
            num_cached_tokens=req.num_cached_tokens or 0,
            logprobs=list(req.logprobs) if want_lp else None,
            top_logprobs=list(req.top_logprobs) if want_lp and req.top_logprobs else None,
            new_token_ids=new_ids,
        )

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
