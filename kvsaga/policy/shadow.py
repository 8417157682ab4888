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
rest, evicting by its own expert; at the step's end it allocates the decoded blocks and
releases the context tail first, as the manager does. Each shadow expert sees every hook
the real one sees, with the shadow's block table in place of the real one.

What a shadow does not replay: timing and admission (steps start when they start in the
real run, whichever expert leads), partial tail blocks, the host tier (a shadow has none:
an evicted block is rebuilt), and the scheduler's view of a working set. Its cost: the work
of one more expert per step and per victim (each shadow evicts about as much as the real
cache), O(log n) per victim where its expert is, and three lists of the pool's length.
"""

from __future__ import annotations

from collections.abc import Callable

from kvsaga.policy.base import EvictionPolicy

_FREE, _ACTIVE, _CACHED = 0, 1, 2


class _Seen:
    """A session as a shadow's expert sees it: the real session's fields, with the shadow's
    block table as `block_ids`."""

    __slots__ = ("_session", "block_ids")

    def __init__(self, session, block_ids: list[int]) -> None:
        self._session = session
        self.block_ids = block_ids

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
        block_cost: seconds to rebuild the block at a position (behind its surviving head).
        core: the real manager's core (its `name`, "cpp" or "python", picks the expert's
            index structures), None for Python's.
    """

    num_host_blocks = 0

    def __init__(self, policy: EvictionPolicy, num_blocks: int, block_size: int,
                 block_cost: Callable[[int], float], core=None) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks!r}")
        n = num_blocks
        self.num_gpu_blocks = n
        self.block_size = block_size
        self.block_owner: list[str | None] = [None] * n
        self.block_position = [0] * n
        self.block_generation = [0] * n
        self.block_hash: list[bytes | None] = [None] * n
        self._state = bytearray(n)
        self._ref = [0] * n
        self._free = list(range(n - 1, -1, -1))  # a stack: block 0 first
        self._active = 0
        self._index: dict[bytes, int] = {}
        self._tables: dict[str, list[int]] = {}  # the session's blocks at its last step
        self._known: dict[str, int] = {}  # full blocks of its context at its last step end
        self._running: set[str] = set()
        self._block_cost = block_cost
        self.core = core
        self.policy = policy
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
            self._release(sid, self._tables.get(sid, []))
        hashes = session.block_hashes
        limit = min(len(hashes), max(len(session.token_ids) - 1, 0) // self.block_size)
        index, hits = self._index, []
        for h in hashes[:limit]:
            b = index.get(h)
            if b is None:
                break
            hits.append(b)
        cost = self._block_cost
        charged = sum(cost(p) for p in range(len(hits), min(self._known.get(sid, 0), limit)))
        ref, state, owner = self._ref, self._state, self.block_owner
        reclaimed = []
        for b in hits:
            if ref[b] == 0:
                state[b] = _ACTIVE
                reclaimed.append(b)
            ref[b] += 1
            if owner[b] != sid:
                owner[b] = None  # shared by several sessions: plain cache
        self._active += len(reclaimed)
        if reclaimed:
            self.policy.blocks_uncached(reclaimed)
        self._running.add(sid)
        self.policy.step_started(_Seen(session, list(hits)), now)
        self._tables[sid] = hits + self._allocate(sid, len(hits), hashes, now)
        return charged

    def step_finished(self, session, now: float, hint) -> None:
        sid = session.session_id
        table = self._tables.get(sid, [])
        if sid in self._running:
            table += self._allocate(sid, len(table), session.block_hashes, now)
        self.policy.step_finished(_Seen(session, table), now, hint)
        if sid in self._running:
            self._release(sid, table)
        self._known[sid] = len(table)

    def session_ended(self, session, now: float) -> None:
        sid = session.session_id
        table = self._tables.pop(sid, [])
        self.policy.session_ended(_Seen(session, table), now)
        if sid in self._running:
            self._release(sid, table)
        owner = self.block_owner
        for b in table:
            if owner[b] == sid:
                owner[b] = None
        self._known.pop(sid, None)

    def seen(self, session) -> _Seen:
        """`session` with this shadow's block table, for the other hooks."""
        return _Seen(session, self._tables.get(session.session_id, []))

    # -- the pool ---------------------------------------------------------------------------
    def _allocate(self, sid: str, first: int, hashes: list[bytes], now: float) -> list[int]:
        """Blocks for `hashes[first:]` (positions first...), evicting by the expert; fewer
        when the cached blocks cannot make room (the rest is not held)."""
        need = len(hashes) - first
        if need <= 0:
            return []
        free = self._free
        short = need - len(free)
        cached = self.num_gpu_blocks - len(free) - self._active
        if short > 0 and cached > 0:
            self._evict(self.policy.choose_victims(min(short, cached), now))
        ids = [free.pop() for _ in range(min(need, len(free)))]
        ref, state, gen = self._ref, self._state, self.block_generation
        owner, position, block_hash, index = (self.block_owner, self.block_position,
                                              self.block_hash, self._index)
        for i, b in enumerate(ids, first):
            ref[b] = 1
            state[b] = _ACTIVE
            gen[b] += 1
            owner[b] = sid
            position[b] = i
            h = hashes[i]
            if h in index:  # the same content held twice: the first copy stays indexed
                block_hash[b] = None
            else:
                index[h] = b
                block_hash[b] = h
        self._active += len(ids)
        return ids

    def _evict(self, victims: list[int]) -> None:
        state, block_hash, index, free = self._state, self.block_hash, self._index, self._free
        for b in victims:
            if state[b] != _CACHED:
                raise RuntimeError(f"shadow {self.policy.name!r} named block {b}, not cached")
            state[b] = _FREE
            h = block_hash[b]
            if h is not None and index.get(h) == b:
                del index[h]
            block_hash[b] = None
            free.append(b)
        self.policy.blocks_uncached(victims)
        owner = self.block_owner
        for b in victims:
            owner[b] = None

    def _release(self, sid: str, table: list[int]) -> None:
        """Drop the step's references, tail first (as the manager does)."""
        ref, state, block_hash, free = self._ref, self._state, self.block_hash, self._free
        to_cache = []
        for b in reversed(table):
            r = ref[b] - 1
            ref[b] = r
            if r:
                continue
            self._active -= 1
            if block_hash[b] is not None:
                state[b] = _CACHED
                to_cache.append(b)
            else:
                state[b] = _FREE
                free.append(b)
        self._running.discard(sid)
        if to_cache:
            self.policy.blocks_cached(to_cache)
