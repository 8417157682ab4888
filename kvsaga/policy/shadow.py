"""A shadow cache: one expert ranking run on a cache of its own, fed the real accesses.

`adaptive` with `shadow_cache` (adaptive.py) asks, at every step, which of its experts
would have recomputed less *had it ranked every eviction so far*. Ghost lists cannot say:
a ghost names what the real cache evicted, or would have evicted from the real cache's
contents, so an expert's earlier choices never shape what it is judged on. Epochs of
realized regret (each expert leads in turns) can say it only for the traffic of the epoch
it happened to lead (bench/RESULTS.md, "Why adaptive lost to both its experts").

This is miniature simulation (Waldspurger et al., "Cache Modeling and Optimization using
Miniature Simulations", USENIX ATC'17) at full size rather than sampled: the traces kvsaga
serves have tens to hundreds of sessions, too few for spatial sampling by session hash to
keep a shadow's contention like the real one's (SHARDS samples keys by the million). Each
shadow is a block pool of the real pool's size with its own expert instance bound to it
(`BlockView`): at each step start it looks the prompt's full blocks up by content hash (the
longest cached prefix, as the manager does), charges the rebuild seconds of the blocks
this session's context held at its last step end that are not found, and allocates the
rest, evicting by its own expert; at the step's end it allocates the decoded blocks (full
only where their KV was computed, `num_computed`) and releases the context tail first, as
the manager does, keeping a paused session's partial tail block cached (unhashed) for its
next step. Each shadow expert sees every hook
the real one sees, with the shadow's block table in place of the real one.

What a shadow does not replay: timing and admission (steps start when they start in the
real run, whichever expert leads), the host tier (a shadow has none:
an evicted block is rebuilt), and the scheduler's view of a working set. Its cost: the work
of one more expert per step and per victim (each shadow evicts about as much as the real
cache), O(log n) per victim where its expert is, and per-block tables of the pool's length
(five lists with the free stack, a bytearray, an int64 memoryview) and a hash index. A step's
per-block loops over those tables run as one C++ call each on the C++ core (kvsaga/policy/
shadow_loops.py): as Python they were about half of the shadows' cost in adaptive's whole
step at 4,000 paused sessions (bench/RESULTS.md, "adaptive's shadow replay in C++ loops").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvsaga.ownership import dead_blocks, disown, reown
from kvsaga.policy.base import EvictionPolicy
from kvsaga.policy.shadow_loops import ACTIVE as _ACTIVE
from kvsaga.policy.shadow_loops import CACHED as _CACHED
from kvsaga.policy.shadow_loops import FREE as _FREE
from kvsaga.policy.shadow_loops import make_shadow_loops


class _Seen:
    """A session as a shadow's expert sees it: the real session's fields, with the shadow's
    block table as `block_ids`. Made for one hook call, in which the real session does not
    change: the two fields every expert's hooks read (about twenty reads a step) are copied
    in, the rest read through."""

    __slots__ = ("_session", "block_ids", "session_id", "workflow")

    def __init__(self, session, block_ids: list[int]) -> None:
        self._session = session
        self.block_ids = block_ids
        self.session_id = session.session_id
        workflow = getattr(session, "workflow", _Seen)  # unset: read through, as the rest
        if workflow is not _Seen:
            self.workflow = workflow

    def __getattr__(self, name: str):
        return getattr(self._session, name)


class ShadowCache:
    """A pool of `num_blocks` full blocks ranked by `policy` alone (module docstring).

    It is the `BlockView` its policy binds to. `step_started` returns the rebuild seconds
    that this shadow's evictions cost the starting step.

    Args:
        policy: a fresh expert instance (it is bound here; nothing else may drive it).
        num_blocks: the shadow's size (the real pool's).
        block_size: tokens per block.
        block_costs: `block_costs(lo, hi)`, the seconds to rebuild the blocks at positions
            lo..hi-1 (each behind its surviving head), in position order: a step's charge is
            their sum, one slice of a remembered list rather than a Python call per lost
            block.
        core: the real manager's core (its `name`, "cpp" or "python", picks the expert's
            index structures), None for Python's.
    """

    num_host_blocks = 0

    def __init__(self, policy: EvictionPolicy, num_blocks: int, block_size: int,
                 block_costs: Callable[[int, int], Sequence[float]], core=None) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks!r}")
        n = num_blocks
        self.num_gpu_blocks = n
        self.block_size = block_size
        self.block_owner: list[str | None] = [None] * n
        self.block_position = [0] * n
        self.block_generation = memoryview(bytearray(8 * n)).cast("q")  # int64s in place
        self.block_hash: list[bytes | None] = [None] * n
        self._state = bytearray(n)
        self._ref = [0] * n
        self._free = list(range(n - 1, -1, -1))  # a stack: block 0 first
        self._active = 0
        self._index: dict[bytes, int] = {}
        self._tables: dict[str, list[int]] = {}  # the session's blocks at its last step
        self._known: dict[str, int] = {}  # full blocks of its context it held at its last step end
        # a paused session's partial tail: (block, generation, its tokens), as the manager's
        self._tails: dict[str, tuple[int, int, tuple[int, ...]]] = {}
        self._running: set[str] = set()
        # Per session, blocks it may still own that left its table (an abandoned branch,
        # a block past a gap in its hits): `session_ended` disowns them, as the manager's
        # `end_session` does its `_left_owned`.
        self._left_owned: dict[str, set[int]] = {}
        self._disowned: dict[str, dict[int, bytes]] = {}  # (the manager's, for `_reown`)
        self._block_costs = block_costs
        self.core = core
        self.policy = policy
        # The per-block loops of a step, over the tables above: C++ on the C++ core.
        self._loops = make_shadow_loops(
            getattr(core, "name", "") == "cpp", self._state, self._ref, self.block_generation,
            self.block_owner, self.block_position, self.block_hash, self._free, self._index,
            policy.name)
        policy.bind(self)

    # -- BlockView --------------------------------------------------------------------------
    def usage(self) -> float:
        return self._active / self.num_gpu_blocks

    def is_cached(self, block_id: int) -> bool:
        return self._state[block_id] == _CACHED

    # -- the real accesses ------------------------------------------------------------------
    def step_started(self, session, now: float) -> float:
        """The step's prompt hits what this shadow holds; returns the rebuild seconds of
        the session's earlier context that it does not hold."""
        sid = session.session_id
        if sid in self._running:  # preempted and retried: its blocks were released
            self._preempted(session, now)
        hashes, tokens, bs = session.block_hashes, session.token_ids, self.block_size
        # A step leaves its last token to compute (its logits are needed), an import
        # (`Session.importing`, `migration.plan_import`) none: it hits every full block
        # this shadow holds, the last one too, however much of it the real cache held.
        importing = getattr(session, "importing", False)
        max_hit = len(tokens) if importing else max(len(tokens) - 1, 0)
        limit = min(len(hashes), max_hit // bs)
        loops = self._loops
        hits = loops.hits(hashes, limit)
        lost = min(self._known.get(sid, 0), limit)
        charged = sum(self._block_costs(len(hits), lost)) if lost > len(hits) else 0
        # A reference each; a block shared by several sessions becomes plain cache.
        reclaimed = loops.take(hits, sid)
        if sid in self._disowned:  # (the manager's `_reown`: it compacted, then went back)
            self._reown(sid, hits)
        ref, state = self._ref, self._state
        tail = self._tails.pop(sid, None)
        if tail is not None:  # the partial tail kept at its pause, reused as the manager does
            b, gen, kept = tail
            if state[b] == _CACHED and self.block_generation[b] == gen:
                start = len(hits) * bs
                usable = 0
                if self.block_position[b] == len(hits):
                    for x, y in zip(kept, tokens[start:max_hit], strict=False):
                        if x != y:
                            break
                        usable += 1
                if usable:
                    ref[b] = 1
                    state[b] = _ACTIVE
                    reclaimed.append(b)
                    hits.append(b)
                else:
                    self._evict([b])  # no longer extends the context: dropped
        self._active += len(reclaimed)
        if reclaimed:
            self.policy.blocks_uncached(reclaimed)
        old = self._tables.get(sid)
        if old and old != hits[: len(old)]:  # (the manager's `_note_left`)
            owner, keep = self.block_owner, set(hits)
            left = [b for b in old if owner[b] == sid and b not in keep]
            if left:
                self._left_owned.setdefault(sid, set()).update(left)
        self._running.add(sid)
        self.policy.step_started(_Seen(session, list(hits)), now)
        table = self._tables[sid] = hits  # the references taken are in the table at once
        self._grow(sid, table, hashes, len(tokens), now)  # the prefill computes the prompt
        return charged

    def step_finished(self, session, now: float, hint) -> None:
        sid = session.session_id
        table = self._tables.get(sid, [])
        if sid in self._running:  # the decoded tokens: blocks up to those with KV computed
            done = self._computed(session)
            self._grow(sid, table, session.block_hashes, done, now)
        self.policy.step_finished(_Seen(session, table), now, hint)
        if sid in self._running:
            self._release(sid, table, keep_tail=True, tokens=session.token_ids[:done])
        if sid in self._left_owned:  # (the manager's `_disown_dead`)
            self._disown_dead(session, table, now)
        # the positions its next step may lose: the context's full blocks that this shadow
        # held (a duplicate of an indexed block, left unhashed, was held all the same)
        self._known[sid] = min(self._computed(session) // self.block_size, len(table))

    def _disown_dead(self, session, table: list[int], now: float) -> None:
        """Disown, as the manager's `finish_step` and `preempt` do, the blocks that left
        the session's `table` and hold none of its context now (past its hashes, or another
        hash there), the policy told of the cached ones first."""
        sid, owner = session.session_id, self.block_owner
        left = self._left_owned[sid]
        dead = dead_blocks(left, sid, table, owner, self.block_position, self.block_hash,
                           session.block_hashes)
        if dead:
            state = self._state
            self.policy.blocks_disowned(_Seen(session, table),
                                        [b for b in dead if state[b] == _CACHED], now)
            disown(dead, sid, owner, left, self._disowned, self.block_hash)
        if not left:
            del self._left_owned[sid]

    def blocks_disowned(self, session, now: float) -> None:
        """The manager disowned `session`'s dead blocks: at a finish, which this shadow's
        `step_finished` mirrored already (nothing left to do), or at a preempt, which it
        learns of only at the retry or the abort (`_preempted`): its own, by the same
        rule, now, so that its owners follow the manager's meanwhile."""
        sid = session.session_id
        if sid in self._left_owned:
            self._disown_dead(session, self._tables.get(sid, []), now)

    def _reown(self, sid: str, hits: list[int]) -> None:
        """The manager's `_reown` (`kvsaga.ownership.reown`), against this shadow's tables."""
        rec, tables = self._disowned[sid], self._tables
        reown(rec, sid, hits, self.block_owner, self.block_position, self.block_hash,
              lambda b, p: any(o != sid and len(t) > p and t[p] == b
                               for o, t in tables.items()))
        if not rec:
            del self._disowned[sid]

    def resume_withdrawn(self, session, now: float) -> None:
        """The session's next step was aborted before it ran. One this shadow still runs was
        preempted (the real cache released its blocks then, its partial tail too; this
        shadow waits for the retry): its blocks go back now, as they would have then."""
        sid = session.session_id
        if sid in self._running:
            self._preempted(session, now)
        self.policy.resume_withdrawn(self.seen(session), now)

    def _preempted(self, session, now: float) -> None:
        """The real cache preempted the session's step (this shadow learns it only now,
        at the retry or the abort): release its blocks, and disown a compacted context's
        dead blocks, as the manager's `preempt` did then."""
        sid = session.session_id
        table = self._tables.get(sid, [])
        self._release(sid, table, keep_tail=False)
        if sid in self._left_owned:
            self._disown_dead(session, table, now)

    def session_ended(self, session, now: float) -> None:
        self._end(session, now, self.policy.session_ended)

    def session_forgotten(self, session, now: float) -> None:
        self._end(session, now, self.policy.session_forgotten)

    def _end(self, session, now: float, tell) -> None:
        """The session ended or was forgotten: `tell` the policy (its hook of the two), and
        drop the session's table as the real cache drops its blocks."""
        sid = session.session_id
        table = self._tables.pop(sid, [])
        if sid in self._running:  # ended by its last step: what it decoded stays cached
            self._grow(sid, table, session.block_hashes, self._computed(session), now)
        tell(_Seen(session, table), now)
        if sid in self._running:
            self._release(sid, table, keep_tail=False)
        tail = self._tails.pop(sid, None)
        if tail is not None and self._state[tail[0]] == _CACHED \
                and self.block_generation[tail[0]] == tail[1]:
            self._evict([tail[0]])
        owner = self.block_owner
        for blocks in (table, self._left_owned.pop(sid, ())):
            for b in blocks:
                if owner[b] == sid:
                    owner[b] = None
        self._disowned.pop(sid, None)
        self._known.pop(sid, None)

    @staticmethod
    def _computed(session) -> int:
        """Tokens of `session` whose KV the real step computed (all, where not told)."""
        done = getattr(session, "num_computed", None)
        return len(session.token_ids) if done is None else done

    def seen(self, session) -> _Seen:
        """`session` with this shadow's block table, for the other hooks."""
        return _Seen(session, self._tables.get(session.session_id, []))

    def check_integrity(self) -> None:
        """Raise AssertionError unless every block is in exactly one state and accounted
        for: free blocks on the free stack once each, active blocks referenced by the
        running sessions' tables, cached blocks unreferenced, the index pointing at live
        blocks of its hashes; then the expert's own check, where it has one."""
        state, ref = self._state, self._ref
        assert state.count(_FREE) == len(self._free) == len(set(self._free))
        assert all(state[b] == _FREE for b in self._free)
        assert state.count(_ACTIVE) == self._active
        held = [0] * self.num_gpu_blocks
        for sid in self._running:
            for b in self._tables.get(sid, []):
                held[b] += 1
        for b in range(self.num_gpu_blocks):
            assert ref[b] == held[b], f"block {b}: {ref[b]} references, {held[b]} held"
            assert (ref[b] > 0) == (state[b] == _ACTIVE), f"block {b} state {state[b]}"
        for h, b in self._index.items():
            assert self.block_hash[b] == h and state[b] != _FREE
        check = getattr(self.policy, "check_integrity", None)  # lru keeps no groups
        if check is not None:
            check()

    # -- the pool ---------------------------------------------------------------------------
    def _grow(self, sid: str, table: list[int], hashes: list[bytes], computed: int,
              now: float) -> None:
        """Extend `table` to the blocks of `computed` tokens, as the manager's slots do:
        the full ones hashed and indexed (a partial tail that became full too), one
        unhashed block for a partial tail; fewer when the cached blocks cannot make room
        (the rest is not held)."""
        bs = self.block_size
        full = min(computed // bs, len(hashes))
        need = full + (1 if computed > full * bs else 0)
        if table and self.block_hash[table[-1]] is None and len(table) - 1 < full:
            self._loops.index_block(table[-1], hashes[len(table) - 1])  # the tail filled up
        self._allocate(sid, table, hashes, need - len(table), full, now)

    def _allocate(self, sid: str, table: list[int], hashes: list[bytes], need: int, full: int,
                  now: float) -> None:
        """`need` blocks appended to `table`, evicting by the expert (fewer when the cached
        blocks cannot make room), those at positions below `full` hashed and indexed."""
        if need <= 0:
            return
        free = self._free
        short = need - len(free)
        cached = self.num_gpu_blocks - len(free) - self._active
        if short > 0 and cached > 0:
            self._evict(self.policy.choose_victims(min(short, cached), now))
        self._active += self._loops.allocate(sid, table, hashes, need, full)

    def _evict(self, victims: list[int]) -> None:
        self._loops.evict(victims)
        self.policy.blocks_uncached(victims)
        self._loops.disown(victims)

    def _release(self, sid: str, table: list[int], keep_tail: bool,
                 tokens: list[int] | None = None) -> None:
        """Drop the step's references, tail first (as the manager does); with `keep_tail`
        (a pause) the partial tail block stays cached, unhashed, as the real pool keeps it
        for the session's next step (evictable like any cached block)."""
        tail = -1
        # a context ending on a block boundary has no partial tail, as the manager's
        # `_release_table` (its last block, unhashed as a duplicate of an indexed one, is freed)
        if keep_tail and table and tokens is not None and len(tokens) % self.block_size \
                and self.block_hash[table[-1]] is None:
            start = (len(table) - 1) * self.block_size
            if len(tokens) > start:
                tail = table[-1]
                self._tails[sid] = (tail, self.block_generation[tail],
                                    tuple(tokens[start:start + self.block_size]))
        to_cache, released = self._loops.release(table, tail)
        self._active -= released
        self._running.discard(sid)
        if to_cache:
            self.policy.blocks_cached(to_cache)
