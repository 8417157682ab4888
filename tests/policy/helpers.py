"""Shared set-up for the policy tests: a tiny manager, stub oracles, and the wait forecasts'
brute-force mixture and random feed."""

from __future__ import annotations

import contextlib
import math
import random
import zlib

from kvsaga import KVCacheManager, KVSpec, OutOfBlocks
from kvsaga.policy import POLICIES, EvictionPolicy

BS = 4


def make(policy: str | EvictionPolicy, num_blocks: int = 8, **kw) -> KVCacheManager:
    """A manager over 4-token blocks of a toy model; time comes only from `now=`."""
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, policy=policy,
                          clock=lambda: 0.0, **kw)


def run_step(m: KVCacheManager, sid: str, tokens: list[int], now: float, **finish) -> int:
    """Begin at `now`, allocate the uncached prompt, finish at `now`; return cached tokens."""
    st = m.begin_step(sid, tokens, now=now, workflow=finish.pop("workflow", "default"))
    m.allocate_slots(sid, len(tokens) - st.num_cached_tokens, now=now)
    m.finish_step(sid, now=now, **finish)
    m.check_integrity()
    return st.num_cached_tokens


def tokens(base: int, n: int) -> list[int]:
    """n distinct token ids starting at `base` (distinct bases never share a block)."""
    return list(range(base, base + n))


class HashOracle:
    """A deterministic, arbitrary future: next use is `now` plus 0..5 s, or never."""

    def next_use(self, session_id, block_hash, position, now):
        k = zlib.crc32(repr((session_id, block_hash, position)).encode()) % 7
        return math.inf if k == 6 else now + k


class TableOracle:
    """Next uses from a table: by session id for owned blocks, by position for plain ones."""

    def __init__(self, sessions: dict[str, float], plain: dict[int, float] | None = None):
        self.sessions = sessions
        self.plain = plain or {}
        self.calls = 0

    def next_use(self, session_id, block_hash, position, now):
        self.calls += 1
        if session_id is not None:
            return self.sessions.get(session_id, math.inf)
        return self.plain.get(position, math.inf)


def build(name: str, **kw) -> EvictionPolicy:
    """Any registered policy; oracle policies get `HashOracle` unless given one."""
    cls = POLICIES[name]
    if getattr(cls, "needs_oracle", False):
        kw.setdefault("oracle", HashOracle())
    return cls(**kw)


class FakeView:
    """A `BlockView` with no manager behind it: a test sets the per-block facts, then drives
    the policy's observer calls and hooks itself."""

    def __init__(self, num_blocks: int, block_size: int = BS, num_host_blocks: int = 0):
        self.num_gpu_blocks = num_blocks
        self.block_size = block_size
        self.num_host_blocks = num_host_blocks
        self.block_owner: list[str | None] = [None] * num_blocks
        self.block_position = [0] * num_blocks
        self.block_generation = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: set[int] = set()
        self.active = 0

    def usage(self) -> float:
        return self.active / self.num_gpu_blocks

    def is_cached(self, block_id: int) -> bool:
        return block_id in self.cached

    def cache(self, policy, block_id: int, owner: str | None, position: int) -> None:
        """Make a block CACHED with these facts and tell the policy, as the pool would."""
        self.block_owner[block_id] = owner
        self.block_position[block_id] = position
        self.cached.add(block_id)
        policy.block_cached(block_id)


BENCH_TOOLS = ("search", "edit", "test", "shell", "browse")


def bench_shape_walk(m: KVCacheManager, paused: int, extra: int = 160, events: bool = True,
                     every_other: bool = True):
    """bench/eviction_scaling.py's shape, small: `paused` sessions of four blocks paused on
    tools, then `extra` new ones allocating under eviction; with `events`, a paused one now
    and then resumes (learning: new statistics) or gets a pause hint. Time moves 1 ms a step
    (every other step with `every_other`, so that some allocations share an instant).
    Yields the time after each step, so a caller can record the state there."""
    per = 4
    now, ctx = 0.0, per * m.block_size
    rng = random.Random(3)
    for i in range(paused + extra):
        sid = f"p{i}"
        if events and i >= paused and rng.random() < 0.25:
            sid = f"p{rng.randrange(paused)}"
            s = m.sessions.get(sid)
            if s is None or s.is_running:
                continue
            if rng.random() < 0.5:
                m.pause_hint(sid, now=now, tool="edit", expected_s=rng.choice([0.005, 2.0]))
                continue
        prompt = [i * ctx * 4 + j for j in range(ctx)]
        with contextlib.suppress(OutOfBlocks):
            st = m.begin_step(sid, prompt, now=now, workflow=f"w{i % 3}")
            m.allocate_slots(sid, ctx - st.num_cached_tokens, now=now)
            m.finish_step(sid, now=now, tool=BENCH_TOOLS[i % len(BENCH_TOOLS)])
        now += 1e-3 if (i % 2 or not every_other) else 0.0
        yield now


def mixture_above(own: list[float], pool: list[float], prior: float,
                  waited: float) -> list[tuple[float, float]]:
    """The waits longer than `waited` as (wait, weight), own ones weighing 1 each, pooled ones
    `prior` in all: the mixture the wait forecasts read, for their brute-force definitions."""
    mine = [x for x in own if x > waited]
    pooled = [x for x in pool if x > waited]
    return [(x, 1.0) for x in mine] + [(x, prior / len(pooled)) for x in pooled]


def fed_at_random(w, rng: random.Random, n: int, sigma: float, size: int):
    """Feed the wait forecast `w` `n` waits (lognormal, `sigma`) of workflows "a" and "b"
    drawn from `rng`; after each, yield what a forecast keeping `size` waits a record
    holds: ({workflow: its own waits}, the pooled waits)."""
    own: dict[str, list[float]] = {"a": [], "b": []}
    pool: list[float] = []
    for _ in range(n):
        wf = rng.choice(["a", "b"])
        x = rng.lognormvariate(0.0, sigma)
        w.add(x, wf)
        own[wf] = (own[wf] + [x])[-size:]  # each record forgets its oldest past `size`
        pool = (pool + [x])[-size:]
        yield own, pool


def assert_index_matches_scan(m: KVCacheManager, k: int, now: float) -> None:
    """The policy's indexed eviction order equals its brute-force scan at `now`, and its
    first `k` victims are that order's head."""
    m.policy.check_integrity()
    got = m.policy.eviction_order(now)
    assert got == m.policy.scan_order(now)
    assert m.policy.choose_victims(k, now) == got[:k]
