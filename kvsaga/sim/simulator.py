"""A discrete-event simulator of one GPU serving agent sessions with continuous batching.

It drives the real `KVCacheManager` and eviction policy (the objects the engine uses, not
copies); a cost model stands in for the model, so time advances by `StepCostModel.step_time`.

The life of a session: it arrives at `arrival_s`; each step waits in a FCFS queue, is
admitted with `begin_step` (prefix hits), prefills its missing prompt tokens in chunks under a
per-step token budget (`allocate_slots`), samples its first output token when the prompt is
done, then decodes one token per batch step; after the last output token, `finish_step`
pauses it on its tool (`tool_s` seconds, then the next step is queued), or `end_session`
closes it after its last step. `tick(now)` runs once per batch step.

Scheduling follows vLLM v1: running requests first, in admission order (a decode takes one
token of the budget, a prefill chunk up to the rest), then waiting requests while budget and
sequence slots remain. When a running request cannot get a block (`OutOfBlocks`), the
youngest running request is preempted (`preempt`: its full blocks stay cached) and requeued
at the front, until the allocation fits or the request preempted itself. A waiting request
is admitted only if the blocks for its hits and first chunk are available (head-of-line
blocking, as vLLM), so admission never preempts.

Manager calls during decode are made per KV block, not per token: when a request's next fed
token starts a block, the simulator appends the tokens it will feed up to that block's end
and allocates their slots at once. A block is taken exactly when the per-token engine would
take it, so eviction timing and every policy callback are unchanged; only the manager's view
of the tokens inside the block currently being written runs ahead.

The host tier (`SimConfig.num_host_blocks` / `host_memory_bytes`): the manager offloads victims
the policy wants kept and loads host hits back; each batch step the simulator takes the
manager's `TransferPlan` and queues it on one PCIe copy stream (FIFO, the preset's one-way
bandwidth, as the transfer engine runs plans). A GPU block may not be read (a load) or
overwritten (an offload) before its copy ends, so a batch step whose running requests hold
such a block waits for it; the copies overlap the step's compute layer by layer, so only
their excess over the GPU time adds (`StepCostModel.step_time`'s rule). Copies no step waits for
(prefetches, offloads of blocks nobody reuses yet) take link time and nothing else.
"""

from __future__ import annotations

import heapq
import inspect
import math
from collections import deque
from collections.abc import Sequence

from tqdm.auto import tqdm

from kvsaga.errors import OutOfBlocks
from kvsaga.manager import KVCacheManager
from kvsaga.policy import POLICIES, EvictionPolicy, make_policy
from kvsaga.pool import ACTIVE, CACHED
from kvsaga.prefix import root_hash
from kvsaga.sim.config import SimConfig
from kvsaga.sim.cost import attention_pairs
from kvsaga.sim.metrics import SimResult, UsageRecorder, percentile
from kvsaga.sim.oracle import TraceOracle
from kvsaga.sim.tokens import TokenSynthesizer
from kvsaga.sim.trace import Session


class _Tokens:
    """One trace session's token ids (a list, for the manager) and their block hashes."""

    __slots__ = ("sid", "ids", "hashes", "root", "high_water")

    def __init__(self, sid: str, ids: list[int], root: bytes) -> None:
        self.sid = sid
        self.ids = ids
        self.hashes: list[bytes] = []
        self.root = root
        self.high_water = 0  # tokens [0, high_water) have had their KV computed


class _Request:
    """One step of a session as the scheduler sees it (it survives preemptions)."""

    __slots__ = ("session", "k", "tokens", "base_len", "num_out", "num_sampled",
                 "attempt_len", "num_computed", "context_len", "slots_ahead", "prefilling",
                 "retried", "bypassed")

    def __init__(self, session: Session, k: int, tokens: _Tokens) -> None:
        self.session = session
        self.k = k
        self.tokens = tokens
        self.base_len = session.prompt_length(k)
        self.num_out = session.steps[k].output_tokens
        self.num_sampled = 0
        self.attempt_len = 0  # the current attempt's prompt: base + tokens sampled before it
        self.num_computed = 0  # tokens of the context with KV slots
        self.context_len = 0  # tokens of the context the manager holds
        self.slots_ahead = 0  # decode slots allocated beyond the token fed now
        self.prefilling = True
        self.retried = False  # preempted at least once: later attempts redo lost work
        self.bypassed = 0  # later requests admitted ahead of it while it headed the queue

    @property
    def fed_position(self) -> int:
        """Position of the token a decode step feeds: the last one sampled."""
        return self.base_len + self.num_sampled - 1


class Simulator:
    """Replays sessions through a `KVCacheManager` and a cost model.

    Args:
        sessions: the trace; ids must be unique.
        config: capacity, preset, policy and scheduler limits.
        policy: an already built policy instance, used instead of `config.policy` (for
            policies that need the trace, such as an offline oracle).
    """

    def __init__(self, sessions: Sequence[Session], config: SimConfig | None = None,
                 policy: EvictionPolicy | None = None) -> None:
        self.config = config or SimConfig()
        self.cost = self.config.cost
        self.sessions = list(sessions)
        ids = [s.id for s in self.sessions]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"session ids must be unique; {dup!r} repeats")
        num_blocks = self.config.blocks()
        spec = self.cost.kv_spec
        for s in self.sessions:
            if spec.num_blocks_for(s.total_tokens) > num_blocks:
                raise ValueError(
                    f"session {s.id!r} reaches {s.total_tokens} tokens "
                    f"({spec.num_blocks_for(s.total_tokens)} blocks), more than the "
                    f"{num_blocks} blocks of KV capacity")
        self.synth = TokenSynthesizer()
        self.block_size = spec.block_size
        # The future, for offline policies: built here for those made by name; a policy
        # given built may carry its own TraceOracle, which the replay then drives too.
        self.oracle: TraceOracle | None = None
        if policy is None:
            policy = self._make_policy(self.config.policy)
        elif isinstance(getattr(policy, "oracle", None), TraceOracle):
            self.oracle = policy.oracle
        self.manager = KVCacheManager(spec, num_blocks, policy=policy, clock=self._clock,
                                      num_host_blocks=self.config.host_blocks())
        self.pool = self.manager.pool
        self.recorder = UsageRecorder(self.pool)
        self.now = 0.0
        # The PCIe copy stream: when it is next idle, and the GPU blocks whose copy (in or
        # out) ends in the future, with that time.
        self._link_free = 0.0
        self._copy_done: dict[int, float] = {}
        self._block_s = self.cost.transfer_time(self.cost.block_bytes)
        self._live_blocks: dict[str, int] = {}  # live sessions' context blocks
        self._live_total = 0
        self._peak_live = 0
        self._events: list[tuple[float, int, Session, int]] = []
        self._seq = 0
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self._tokens: dict[str, _Tokens] = {}
        # Prefix tokens computed so far per (tenant, group): the shared prefix is content
        # that any session of the group may have computed first.
        self._prefix_high_water: dict[tuple[str | None, str], int] = {}
        self._finished_at: dict[str, float] = {}
        self._counts = dict(prompt=0, queried=0, hit=0, first=0, recomputed=0, abandoned=0,
                            recomputed_preempted=0,
                            decode=0, preemptions=0, batch_steps=0, steps=0, offloaded=0,
                            loaded=0)
        self._load_wait = 0.0
        self._busy = 0.0
        self._ran = False
        for s in sorted(self.sessions, key=lambda s: (s.arrival_s, s.id)):
            self._push_event(s.arrival_s, s, 0)

    def _make_policy(self, name: str) -> EvictionPolicy:
        """Build a policy by name, priced with this run's cost model when it takes one."""
        cls = POLICIES.get(name)
        if cls is None:
            return make_policy(name)  # raises, listing the known names
        if getattr(cls, "needs_oracle", False):
            self.oracle = TraceOracle(self.sessions, self.block_size, self.synth)
            return cls(oracle=self.oracle, cost=self.cost)
        if "cost" in inspect.signature(cls).parameters:
            return cls(cost=self.cost)
        return cls()

    @property
    def recomputed_so_far(self) -> int:
        """Prompt tokens recomputed so far in this run (they only grow)."""
        return self._counts["recomputed"]

    def _clock(self) -> float:
        return self.now

    # -- events ---------------------------------------------------------------------------
    def _push_event(self, t: float, session: Session, k: int) -> None:
        heapq.heappush(self._events, (t, self._seq, session, k))
        self._seq += 1

    def _release_due_events(self) -> None:
        while self._events and self._events[0][0] <= self.now:
            _, _, session, k = heapq.heappop(self._events)
            tokens = self._tokens.get(session.id)
            if tokens is None:
                ids = self.synth.token_ids(session).tolist()
                tokens = _Tokens(session.id, ids, root_hash(session.tenant))
                self._tokens[session.id] = tokens
            self.waiting.append(_Request(session, k, tokens))
            self._counts["prompt"] += session.prompt_length(k)
            if self.oracle is not None:
                self.oracle.released(session.id)
            self._set_live(session.id, session.prompt_length(k))
            if k and self.config.resume_hints:
                # The tool returned: a real engine learns it when the next request arrives.
                self.manager.resume_hint(session.id, now=self.now)

    def _set_live(self, sid: str, num_tokens: int) -> None:
        """Track the blocks of live sessions' contexts (for the peak working set)."""
        n = self.cost.kv_spec.num_blocks_for(num_tokens) if num_tokens else 0
        self._live_total += n - self._live_blocks.pop(sid, 0)
        if num_tokens:
            self._live_blocks[sid] = n
        self._peak_live = max(self._peak_live, self._live_total)

    def _take_transfers(self) -> None:
        """Queue the manager's pending copies on the link (offloads first, as the plan)."""
        plan = self.manager.take_transfers()
        if not plan:
            return
        t = max(self.now, self._link_free)
        done = self._copy_done
        for b, _ in plan.offloads:
            t += self._block_s
            done[b] = t  # b may not be overwritten before its copy-out ends
        for _, b in plan.loads:
            t += self._block_s
            done[b] = t  # b may not be read before its copy-in ends
        self._link_free = t
        self._counts["offloaded"] += len(plan.offloads)
        self._counts["loaded"] += len(plan.loads)

    def _copy_wait(self) -> float:
        """Seconds until every copy into or out of a block held by a running step ends."""
        if not self._copy_done:
            return 0.0
        now, state, wait = self.now, self.pool.state, 0.0
        for b, t in list(self._copy_done.items()):
            if t <= now:
                del self._copy_done[b]
            elif state[b] == ACTIVE:
                wait = max(wait, t - now)
        return wait

    def _advance(self, t: float) -> None:
        self.recorder.advance(t)
        self.now = t

    # -- the loop -------------------------------------------------------------------------
    def run(self, progress: bool = False) -> SimResult:
        """Serve the whole trace.

        Args:
            progress: show a progress bar of finished sessions.

        Returns:
            The run's metrics.
        """
        if self._ran:
            raise RuntimeError("a Simulator runs once; build a new one to run again")
        self._ran = True
        with tqdm(total=len(self.sessions), disable=not progress, unit="session",
                  desc=f"sim {self.manager.policy.name}") as bar:
            while self._events or self.waiting or self.running:
                self._release_due_events()
                if not self.waiting and not self.running:
                    self._advance(self._events[0][0])
                    self.manager.tick(self.now)
                    self._take_transfers()
                    continue
                done = self.step()
                bar.update(done)
        return self._result()

    def step(self) -> int:
        """Schedule and run one batch step; returns how many sessions finished in it."""
        budget = self.config.max_num_batched_tokens
        prefill: list[tuple[_Request, int]] = []  # (request, chunk)
        decode: list[_Request] = []
        preemptions = self._counts["preemptions"]
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            if req.prefilling:
                chunk = min(req.attempt_len - req.num_computed, budget)
                if not self._allocate(req, chunk):
                    break  # it preempted itself: everything after it is gone too
                prefill.append((req, chunk))
                budget -= chunk
            else:
                if not self._allocate_decode(req):
                    break
                decode.append(req)
                budget -= 1
            i += 1
        # As vLLM: a step that had to preempt admits nobody.
        preempted = self._counts["preemptions"] > preemptions
        while (not preempted and budget > 0 and self.waiting
               and len(self.running) < self.config.max_num_seqs):
            chunk = self._admit(budget)
            if not chunk:
                break
            prefill.append((self.running[-1], chunk))
            budget -= chunk
        if not prefill and not decode:
            raise RuntimeError("scheduler made no progress: a request cannot fit the pool")
        return self._execute(prefill, decode)

    def _execute(self, prefill: list[tuple[_Request, int]], decode: list[_Request]) -> int:
        pairs = ctx = 0
        for req, chunk in prefill:
            before = req.num_computed - chunk
            pairs += attention_pairs(chunk, before)
            ctx += before
        decode_ctx = sum(r.fed_position + 1 for r in decode)
        dt = self.cost.step_time(prefill_tokens=sum(c for _, c in prefill),
                                 prefill_attention_pairs=pairs, prefill_context_tokens=ctx,
                                 decode_batch=len(decode), decode_context_tokens=decode_ctx)
        self._take_transfers()
        wait = self._copy_wait()
        if wait:
            # Copies overlap compute layer by layer: only their excess over it counts.
            longer = self.cost.step_overhead_s + wait
            if longer > dt:
                self._load_wait += longer - dt
                dt = longer
        self._advance(self.now + dt)
        self._busy += dt
        self._counts["batch_steps"] += 1
        self._counts["decode"] += len(decode)
        finished = 0
        for req, _ in prefill:
            if req.num_computed == req.attempt_len:
                req.prefilling = False
                req.num_sampled += 1  # the prompt's last position yields a token
                finished += self._maybe_finish(req)
        for req in decode:
            req.num_sampled += 1
            finished += self._maybe_finish(req)
        self.manager.tick(self.now)
        return finished

    # -- admission and allocation ---------------------------------------------------------
    def _admit(self, budget: int) -> int:
        """Begin one waiting request and allocate its first chunk, if they fit.

        Which request: the head of the queue, or under "reserve" admission a warm one
        (`_pick_waiting`). The check is exact: the full-block hits that begin_step will find
        are looked up first (without side effects), and the chunk ends where the check
        assumed. A retained partial tail, if begin_step also reclaims it, stands in for the
        new block that the chunk's first tokens would otherwise take.

        Returns:
            The chunk's size, or 0 if the request must wait (nothing changed).
        """
        reserve_mode = self.config.admission == "reserve"
        idx = self._pick_waiting() if reserve_mode else 0
        req = self.waiting[idx]
        attempt_len = req.base_len + req.num_sampled
        hit_blocks, reclaimed, host_blocks = self._peek_hits(req.tokens, attempt_len)
        end = min(attempt_len, (hit_blocks + host_blocks) * self.block_size + budget)
        # Host hits take fresh GPU blocks to load into, like the chunk's new blocks.
        blocks_for = self.cost.kv_spec.num_blocks_for
        need = blocks_for(end) - hit_blocks
        if need + reclaimed > self.pool.num_available:
            return 0
        if reserve_mode and self.running:
            # The whole prompt and some decode headroom, for it and for every running step:
            # admitting what the pool cannot carry to completion only defers a preemption.
            # With nothing running the first chunk suffices (progress is guaranteed).
            full = blocks_for(self._reserve_target(req, attempt_len)) - hit_blocks
            if full + reclaimed + self._running_reserve() > self.pool.num_available:
                return 0
        if idx:
            self.waiting[0].bypassed += 1
        del self.waiting[idx]
        s = req.session
        if self.oracle is not None:
            self.oracle.started(s.id)
        start = self.manager.begin_step(s.id, req.tokens.ids[:attempt_len], now=self.now,
                                        salt=s.tenant, workflow=s.workflow)
        req.attempt_len = req.context_len = attempt_len
        req.num_computed = start.num_cached_tokens
        req.slots_ahead = 0
        req.prefilling = True
        self.running.append(req)
        self._counts["queried"] += attempt_len
        self._counts["hit"] += start.num_cached_tokens
        # A reclaimed tail may cover tokens past `end`: compute at least one token, inside
        # the tail block, so no block beyond the check is needed.
        chunk = max(end - req.num_computed, 1)
        try:
            self._slots(req, chunk)
        except OutOfBlocks as e:  # the check above promised room
            raise RuntimeError(f"admission of {s.id!r} step {req.k} found no room for its "
                               f"first chunk: {e}") from e
        return chunk

    def _reserve_target(self, req: _Request, context_len: int) -> int:
        """Tokens a step will hold after `reserve_decode_tokens` more decode tokens (never
        past its last fed token: the step's output limit, as max_tokens is to an engine)."""
        last_fed = req.base_len + req.num_out - 1
        return max(context_len, min(context_len + self.config.reserve_decode_tokens, last_fed))

    def _running_reserve(self) -> int:
        """Blocks the running steps will take soon: the rest of each prompt and the next
        `reserve_decode_tokens` decode tokens of each (the watermark admission keeps)."""
        blocks_for = self.cost.kv_spec.num_blocks_for
        total = 0
        for r in self.running:
            ctx = r.attempt_len if r.prefilling else r.fed_position + 1
            total += max(0, blocks_for(self._reserve_target(r, ctx)) - blocks_for(r.num_computed))
        return total

    def _is_warm(self, req: _Request) -> bool:
        """A resumed step whose context is mostly still on the GPU: the block at the middle
        of its prompt is resident (policies evict tails first, so the head up to it almost
        surely is too). O(1), unlike a full prefix lookup."""
        if req.k == 0 and not req.retried:
            return False
        mid = (req.base_len + req.num_sampled) // (2 * self.block_size)
        hashes = req.tokens.hashes
        return mid < len(hashes) and self.manager.index.get(hashes[mid]) is not None

    def _pick_waiting(self) -> int:
        """Index of the waiting request to admit next.

        Rule: a preempted retry at the head goes first (it holds its lost work's place);
        otherwise the first warm request (`_is_warm`) among the first `admission_window`,
        because admitting it evicts little and keeps its resident blocks from being evicted
        for colder work. Bound: once `max_bypass` requests have been admitted ahead of the
        head, the head goes next; so a request waits for at most its position x
        (`max_bypass` + 1) admissions, and FIFO order is kept among the cold ones.
        """
        head = self.waiting[0]
        if head.retried or head.bypassed >= self.config.max_bypass:
            return 0
        for i in range(min(self.config.admission_window, len(self.waiting))):
            if self._is_warm(self.waiting[i]):
                return i
        return 0

    def _peek_hits(self, tokens: _Tokens, attempt_len: int) -> tuple[int, int, int]:
        """What begin_step would find: full-block GPU hits, how many of them are CACHED now,
        and the host-tier hits that continue them (each to be loaded into a new block)."""
        bs = self.block_size
        max_blocks = (attempt_len - 1) // bs
        if len(tokens.hashes) < max_blocks:
            self.manager.hasher.extend(tokens.hashes, tokens.root,
                                       tokens.ids[: max_blocks * bs])
            if self.oracle is not None:
                self.oracle.note_hashes(tokens.sid, tokens.hashes)
        hits = self.manager.index.longest_prefix(tokens.hashes, max_blocks)
        state = self.pool.state
        host = 0
        if self.manager.host_pool is not None:
            host_get, hashes = self.manager.host_index.get, tokens.hashes
            while len(hits) + host < max_blocks and host_get(hashes[len(hits) + host]) is not None:
                host += 1
        return len(hits), sum(1 for b in hits if state[b] == CACHED), host

    def _allocate(self, req: _Request, num_tokens: int) -> bool:
        """Slots for a running request, preempting the youngest until they fit.

        Returns:
            False if `req` itself had to be preempted.
        """
        while True:
            try:
                self._slots(req, num_tokens)
                return True
            except OutOfBlocks:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is req:
                    return False

    def _allocate_decode(self, req: _Request) -> bool:
        """Make sure the token fed this step (sample number `num_sampled`) has a slot."""
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
            if not self._allocate(req, m):
                return False
            req.slots_ahead = m - 1
        req.tokens.high_water = max(req.tokens.high_water, pos + 1)
        return True

    def _slots(self, req: _Request, num_tokens: int) -> None:
        """allocate_slots for `num_tokens`, and the first-time / recomputed accounting."""
        self.manager.allocate_slots(req.session.id, num_tokens, now=self.now)
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
        self._prefix_high_water[key] = max(prefix_hw, min(end, s.shared_prefix.tokens))

    def _preempt(self, req: _Request) -> None:
        if self.oracle is not None:
            self.oracle.preempted(req.session.id)
        self.manager.preempt(req.session.id, now=self.now)
        self.running.remove(req)
        if req.prefilling:
            self._counts["abandoned"] += req.attempt_len - req.num_computed
        req.slots_ahead = 0
        req.retried = True
        self.waiting.appendleft(req)
        self._counts["preemptions"] += 1

    # -- finishing ------------------------------------------------------------------------
    def _maybe_finish(self, req: _Request) -> int:
        if req.num_sampled < req.num_out:
            return 0
        s, k = req.session, req.k
        # The last sampled token joins the context (the next prompt holds it) without KV.
        end = req.base_len + req.num_out
        if req.context_len < end:
            self.manager.append_tokens(s.id, req.tokens.ids[req.context_len: end])
            req.context_len = end
        self.running.remove(req)
        self._counts["steps"] += 1
        if k == s.num_steps - 1:
            if self.oracle is not None:
                self.oracle.ended(s.id)
            self._set_live(s.id, 0)
            self.manager.end_session(s.id, now=self.now)
            self._finished_at[s.id] = self.now
            del self._tokens[s.id]
            return 1
        step = s.steps[k]
        self._set_live(s.id, end)
        if self.oracle is not None:
            self.oracle.finished(s.id, self.now, step.tool_s)
        hints = self.config.hints
        self.manager.finish_step(
            s.id, now=self.now,
            tool=step.tool if hints != "none" else None,
            expected_s=step.tool_s if hints == "oracle" else None)
        self._push_event(self.now + step.tool_s, s, k + 1)
        return 0

    # -- results --------------------------------------------------------------------------
    def _result(self) -> SimResult:
        self.recorder.advance(self.now)
        c = self._counts
        tct = [self._finished_at[s.id] - s.arrival_s for s in self.sessions]
        span = self.now
        area = self.pool.num_blocks * span if span > 0 else math.inf
        rec = self.recorder
        stats = self.manager.stats()
        return SimResult(
            policy=self.manager.policy.name,
            preset=self.cost.name,
            num_gpu_blocks=self.pool.num_blocks,
            num_sessions=len(self.sessions),
            num_steps=c["steps"],
            prompt_tokens=c["prompt"],
            queried_tokens=c["queried"],
            hit_tokens=c["hit"],
            computed_tokens=c["first"] + c["recomputed"],
            first_time_tokens=c["first"],
            recomputed_tokens=c["recomputed"],
            recomputed_after_preemption_tokens=c["recomputed_preempted"],
            abandoned_tokens=c["abandoned"],
            decode_tokens=c["decode"],
            num_preemptions=c["preemptions"],
            num_batch_steps=c["batch_steps"],
            num_evicted_blocks=stats.num_evicted_blocks,
            makespan_s=span,
            busy_s=self._busy,
            tct_mean_s=float(sum(tct) / len(tct)) if tct else math.nan,
            tct_p95_s=percentile(tct, 95),
            kv_utilization=(rec.active_s + rec.reused_cached_s) / area,
            kv_occupancy=rec.occupied_s / area,
            kv_active=rec.active_s / area,
            bytes_offloaded=c["offloaded"] * self.cost.block_bytes,
            bytes_reloaded=c["loaded"] * self.cost.block_bytes,
            num_host_blocks=self.manager.num_host_blocks,
            host_hit_tokens=stats.host_hit_tokens,
            prefetched_blocks=stats.prefetched_blocks,
            load_wait_s=self._load_wait,
            peak_live_blocks=self._peak_live,
        )


def simulate(sessions: Sequence[Session], config: SimConfig | None = None, *,
             policy: EvictionPolicy | None = None, progress: bool = False) -> SimResult:
    """Serve a trace on one simulated GPU and measure it.

    Args:
        sessions: the trace.
        config: capacity, preset, policy and scheduler limits (defaults: `SimConfig()`).
        policy: a built policy instance to use instead of `config.policy`.
        progress: show a progress bar.

    Returns:
        The run's `SimResult`.
    """
    return Simulator(sessions, config, policy=policy).run(progress=progress)
