"""With a host tier, `lookup` hashes the prompt only as far as the cached run goes (review
s50 hosttier, finding 2).

It hashed every full block of the prompt before walking the host tier, even when the walk
stopped at the first block (a miss on both tiers): the scheduler asks for every waiting
request at nearly every step, so a new session's long prompt cost one whole-prompt hash per
step (a 32k-token prompt: about 500 times a lookup without a host tier). Now it hashes a few
blocks at a time, doubling, while the walk still finds blocks, and answers as before (the
eager walk below is the old code, kept as the oracle). Both cores."""

from __future__ import annotations

import random

from kvsaga import KVCacheManager, KVSpec
from kvsaga.prefix import root_hash

BS = 4


class CountingHasher:
    """The manager's hasher, counting the blocks it hashes."""

    def __init__(self, inner) -> None:
        self.inner, self.hashed = inner, 0

    def extend(self, hashes, root, tokens, num_blocks=None) -> None:
        before = len(hashes)
        self.inner.extend(hashes, root, tokens, num_blocks)
        self.hashed += len(hashes) - before


def test_a_lookup_that_misses_hashes_a_few_blocks_not_the_prompt(core):
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 2048, core=core.name,
                       num_host_blocks=64, clock=lambda: 0.0)
    m.begin_step("a", list(range(40)))  # some cache on both tiers, none of it the prompt's
    m.allocate_slots("a", 40)
    m.finish_step("a")
    m.hasher = counting = CountingHasher(m.hasher)
    prompt = list(range(1000, 1000 + 2000 * BS + 1))  # 2000 full blocks, all misses
    got = m.lookup("new", prompt)
    assert got.num_cached_tokens == 0
    assert counting.hashed <= 2  # before the fix: 2000
    # a run on the host tier is hashed as far as it goes (and a few blocks past it)
    counting.hashed = 0
    assert m.lookup("other", list(range(40)) + prompt).num_cached_tokens == 40
    assert 10 <= counting.hashed <= 2 * 10 + 2


def eager_host_run(self, hashes, block_hashes, root, tokens, first, max_blocks):
    """The old lookup's host walk: the whole prompt hashed first."""
    if hashes is block_hashes or not isinstance(hashes, list):
        hashes = list(hashes)
    self._hash_to(hashes, root, tokens, max_blocks)
    return hashes, self._host_walk(hashes, first, max_blocks)


def test_lookups_answer_as_the_eager_walk_did(core):
    """Random sessions over a small GPU tier (evictions offload to the host tier), with
    lookups of prompts that share their prefixes at random lengths, with and without the
    caller's hashes: each answers as the eager walk."""
    rng = random.Random(1234)
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 12, core=core.name,
                       num_host_blocks=16, clock=lambda: 0.0)
    hasher = m.hasher
    contexts: dict[str, list[int]] = {}
    compared = host_hits = 0

    def prompt() -> list[int]:
        base = rng.choice([[], *contexts.values()])
        head = base[: rng.randint(0, len(base))]
        return (head + [rng.randint(0, 5) for _ in range(rng.randint(1, 14))])[-40:]

    for _ in range(300):
        sid = f"s{rng.randint(0, 5)}"
        p = prompt()
        if sid in contexts and rng.random() < 0.7:
            p = contexts[sid] + p[-rng.randint(1, 6):]
        p = p[-40:]  # (10 of the GPU tier's 12 blocks)
        hashes = None
        if sid not in m.sessions and rng.random() < 0.4:
            hashes = []
            hasher.extend(hashes, root_hash(None), p, rng.randint(0, (len(p) - 1) // BS))
        for q_sid, q in ((sid, p), (f"n{rng.randint(0, 99)}", prompt())):
            kw = {"block_hashes": hashes} if hashes is not None and q is p else {}
            lazy = m.lookup(q_sid, q, **kw)
            m._lookup_host_run = eager_host_run.__get__(m)
            try:
                eager = m.lookup(q_sid, q, **kw)
            finally:
                del m._lookup_host_run
            assert lazy == eager, (q_sid, q)
            compared += 1
            host_hits += lazy.host_hit_blocks > 0
        start = m.begin_step(sid, p)
        m.allocate_slots(sid, len(p) - start.num_cached_tokens)
        m.finish_step(sid)
        contexts[sid] = p
        m.take_transfers()
        if rng.random() < 0.1:
            m.end_session(sid)
            del contexts[sid]
    assert compared == 600 and host_hits > 20  # (the runs did reach the host tier)


def test_a_long_cached_run_is_hashed_in_a_few_rounds(core):
    """The host walk goes on from the blocks `_gpu_hits` hashed, doubling the total (review
    s50 diff-host 2): it restarted at 1 block, so a long run took many small hashing rounds
    (100 GPU + 400 host blocks: 9 past the GPU's, where the old eager walk took 1)."""
    bs, G, H = 16, 100, 400
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=bs), G + H + 4, core=core.name,
                       num_host_blocks=G + H + 8, clock=lambda: 0.0)
    p = [(7 * i + i // 97) % 1000 + 3 for i in range((G + H) * bs)]
    m.begin_step("a", p + [1])
    m.allocate_slots("a", len(p) + 1)
    m.finish_step("a")
    m.end_session("a")
    filler = [5000 + i for i in range((H + 3) * bs)]  # evicts (offloads) most of the run
    m.begin_step("f", filler)
    m.allocate_slots("f", len(filler))
    m.finish_step("f")
    m.take_transfers()
    calls = {"hash": 0}
    hash_to, gpu_hits = m._hash_to, m._gpu_hits

    def counted_hash_to(*a):
        calls["hash"] += 1
        return hash_to(*a)

    def counted_gpu_hits(*a, **kw):
        out = gpu_hits(*a, **kw)
        calls["by the GPU walk"] = calls["hash"]
        return out

    m._hash_to, m._gpu_hits = counted_hash_to, counted_gpu_hits
    got = m.lookup("new", p + [5])
    # the scenario's run: about G blocks on the GPU, then the rest on the host tier
    assert got.num_cached_tokens == (G + H) * bs and got.host_hit_blocks > 0.7 * H
    assert calls["by the GPU walk"] == 7  # 1, 3, 7, ..., 127 blocks
    assert calls["hash"] - calls["by the GPU walk"] <= 2  # before the fix: 9
