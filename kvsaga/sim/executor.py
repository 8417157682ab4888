"""The simulator's side of `kvsaga.scheduler`'s executor protocol (`begin`, `allocate`,
`preempt`, `num_new_tokens`) and the end of a step (`_maybe_finish`): the manager calls a
scheduler decision makes, with the token accounting of `SimResult`. A mixin of
`kvsaga.sim.simulator.Simulator`, whose state it uses."""

from __future__ import annotations

from kvsaga.sim.request import SimRequest, SimTokens


class StepExecutor:
    """Carries out the scheduler's decisions on the simulator's manager."""

    def _hashes(self, tokens: SimTokens, num_blocks: int) -> list[bytes]:
        """The session's block hashes known, for lookups of a prompt of `num_blocks` full
        blocks: first the manager's hashes of the session's context (the same chain over
        the same ids: taken, not hashed again), then hashed here up to `num_blocks` only for
        a session the manager does not hold (its first prompt, whose shared prefix the
        lookups of its waiting step walk again and again) or for the trace oracle, which
        reads every hash; otherwise `lookup` hashes the prompt's new blocks as far as its
        hits go (to the first new block, which `begin_step` hashes with the rest)."""
        known = tokens.hashes
        if len(known) < num_blocks:
            s = self.manager.sessions.get(tokens.sid)
            if s is not None and len(s.block_hashes) > len(known):
                known += s.block_hashes[len(known):num_blocks]
            if (s is None or self.oracle is not None) and len(known) < num_blocks:
                self.manager.hasher.extend(known, tokens.root, tokens.ids, num_blocks)
            if self.oracle is not None:
                self.oracle.note_hashes(tokens.sid, known)
        return known

    def num_new_tokens(self, req: SimRequest) -> int:
        return req.attempt_len - req.num_computed if req.prefilling else 1

    def begin(self, req: SimRequest, now: float):
        s = req.session
        if self.oracle is not None:
            self.oracle.started(s.id)
        attempt_len = req.num_tokens
        start = self.manager.begin_step(s.id, req.tokens.prompt(attempt_len), now=now,
                                        salt=s.tenant, workflow=s.workflow)
        req.attempt_len = req.context_len = attempt_len
        req.num_computed = start.num_cached_tokens
        req.slots_ahead = 0
        req.prefilling = True
        self._counts["queried"] += attempt_len
        self._counts["hit"] += start.num_cached_tokens
        return start

    def allocate(self, req: SimRequest, num_tokens: int, now: float) -> None:
        """Prefill: slots for the chunk. Decode (num_tokens 1): make sure the token fed this
        step (sample number `num_sampled`) has a slot, allocating to its block's end."""
        if req.prefilling:
            self._slots(req, num_tokens)
            return
        pos = req.fed_position
        if req.slots_ahead:
            req.slots_ahead -= 1
        else:
            # Up to the block's end, but never the last output: it is not fed back.
            m = min(self.block_size - pos % self.block_size, req.num_out - req.num_sampled)
            if req.context_len < pos + m:
                self.manager.append_tokens(req.session.id,
                                           req.tokens.ids[req.context_len: pos + m])
                req.context_len = pos + m
            self._slots(req, m)
            req.slots_ahead = m - 1
            # The fed token's KV takes a block of the live context (kv_live_share, peak).
            self._set_live(req.session.id, pos + 1)
        req.tokens.high_water = max(req.tokens.high_water, pos + 1)

    def _slots(self, req: SimRequest, num_tokens: int) -> None:
        """allocate_slots for `num_tokens`, and the first-time / recomputed accounting."""
        self.manager.allocate_slots(req.session.id, num_tokens, now=self.now,
                                    return_slots=False)
        start = req.num_computed
        end = start + num_tokens
        req.num_computed = end
        if not req.prefilling:
            return  # decode: _allocate_decode counts tokens as they are fed
        s = req.session
        key = (s.tenant, s.shared_prefix.group)
        prefix_hw = self._prefix_high_water.get(key, 0)
        seen = max(req.tokens.high_water, prefix_hw)
        recomputed = max(0, min(end, seen) - start)
        self._counts["recomputed"] += recomputed
        if req.retried:
            # A retry redoes what its preemption threw away (the step's own tokens and the
            # hits it lost while requeued), not what eviction took while the session paused.
            self._counts["recomputed_preempted"] += recomputed
        self._counts["first"] += num_tokens - recomputed
        req.tokens.high_water = max(req.tokens.high_water, end)
        # Only the prefix's full blocks are shared (hits are whole blocks): its partial last
        # block is every session's own, computed the first time by each, not recomputed.
        shared = s.shared_prefix.tokens // self.block_size * self.block_size
        self._prefix_high_water[key] = max(prefix_hw, min(end, shared))

    def preempt(self, req: SimRequest, now: float) -> None:
        """`manager.preempt`, and the step's bookkeeping. Raised after the preempt (a policy
        hook, a cut after the release: the session paused), the scheduler requeues the
        request as a preempt's retry (`Scheduler._preempt_raised`), so the bookkeeping is
        done all the same; raised with nothing done, the step still runs, and the oracle
        hears so. Was: skipped on any raise, so the retry was not `retried` (its redone
        prefill not counted as recomputed after a preemption) and the preemption not
        counted, against the scheduler's count (review s57 vtier)."""
        sid = req.session.id
        if self.oracle is not None:  # (first: the release's hooks read it)
            self.oracle.preempted(sid)
        try:
            self.manager.preempt(sid, now=now)
        except BaseException:
            s = self.manager.sessions.get(sid)
            if s is not None and s.is_running:
                if self.oracle is not None:
                    self.oracle.started(sid)
            else:
                self._preempted(req)
            raise
        self._preempted(req)

    def _preempted(self, req: SimRequest) -> None:
        """The step's blocks went back (`preempt`): what it had yet to compute is abandoned,
        and its next attempt is a preempt's retry."""
        if req.prefilling:
            self._counts["abandoned"] += req.attempt_len - req.num_computed
        req.slots_ahead = 0
        req.retried = True
        self._counts["preemptions"] += 1

    # -- finishing ------------------------------------------------------------------------
    def _maybe_finish(self, req: SimRequest) -> int:
        if req.num_sampled < req.num_out:
            return 0
        s, k = req.session, req.k
        # The last sampled token joins the context (the next prompt holds it) without KV.
        end = req.base_len + req.num_out
        if req.context_len < end:
            self.manager.append_tokens(s.id, req.tokens.ids[req.context_len: end])
            req.context_len = end
        self._counts["steps"] += 1
        if k == s.num_steps - 1:
            if self.oracle is not None:
                self.oracle.ended(s.id)
            self._set_live(s.id, 0, 0)
            self.manager.end_session(s.id, now=self.now)
            self.scheduler.finish(req, self.now, ended=True)
            self._finished_at[s.id] = self.now
            del self._tokens[s.id]
            return 1
        step = s.steps[k]
        self._set_live(s.id, end - 1, end)  # the last output has no KV yet
        if self.oracle is not None:
            self.oracle.finished(s.id, self.now, step.tool_s)
        hints = self.config.hints
        self.manager.finish_step(
            s.id, now=self.now,
            tool=step.tool if hints != "none" else None,
            expected_s=step.tool_s if hints == "oracle" else None)
        self.scheduler.finish(req, self.now)
        self._push_event(self.now + step.tool_s, s, k + 1)
        return 0
