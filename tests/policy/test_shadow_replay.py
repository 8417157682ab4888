"""A shadow cache must replay the real cache, not merely stay consistent with itself: with
one expert, its shadow ranks as the real expert does, so after every call it holds what the
real pool holds (the same hashed blocks, as many cached and free), under eviction pressure
and every hook `adaptive` passes on (hints, withdrawals, demotions, ticks, ends). The walk
in test_shadow_owners.py never evicts and sends none of those hooks; mutants that drop a
hook on its way to the shadows, or keep a block the manager frees, survived it."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from kvsaga.policy import AdaptivePolicy
from kvsaga.policy.shadow import _CACHED, _FREE, ShadowCache

from .helpers import BS, make, tokens

SESSIONS = 6
MAX_PROMPT = 36  # tokens: two running sessions (at most 10 blocks each) fit the pool
NUM_BLOCKS = 24


def _pools(m, sh: ShadowCache) -> tuple[tuple, tuple]:
    """(hashed cached blocks by content, cached blocks, free blocks) of the real pool and
    of the shadow."""
    p, n = m.pool, m.num_gpu_blocks
    real = (Counter(p.block_hash[b] for b in range(n)
                    if p.state[b] == 2 and p.block_hash[b] is not None),
            sum(p.state[b] == 2 for b in range(n)), sum(p.state[b] == 0 for b in range(n)))
    shadow = (Counter(sh.block_hash[b] for b in range(n)
                      if sh._state[b] == _CACHED and sh.block_hash[b] is not None),
              sh._state.count(_CACHED), sh._state.count(_FREE))
    return real, shadow


def _prompt(m, rng: random.Random, sid: str) -> list[int]:
    """The session's context and a few new tokens; a new session may start from another's
    context (a shared system prompt: the same blocks twice), or be that context alone; some
    prompts end on a block boundary (their last block is recomputed: a duplicate, unhashed,
    where its content is cached)."""
    s = m.sessions.get(sid)
    old = []
    if s is not None:
        old = list(s.token_ids[: s.num_computed])
    else:
        others = [o for o in m.sessions.values() if o.num_computed >= BS]
        if others and rng.random() < 0.5:
            o = rng.choice(sorted(others, key=lambda o: o.session_id))
            old = list(o.token_ids[: BS * rng.randint(1, o.num_computed // BS)])
            if rng.random() < 0.5:
                return old
    prompt = old + [rng.randrange(1000) for _ in range(rng.randint(1, 8))]
    if rng.random() < 0.3:
        prompt += [rng.randrange(1000) for _ in range(-len(prompt) % BS)]
    return prompt


def _event(m, p: AdaptivePolicy, rng: random.Random, now: float, deferred: set[str]) -> str:
    """One random call; `deferred`: the sessions demoted since their last step began."""
    running = sorted(k for k, v in m.sessions.items() if v.is_running)
    paused = sorted(k for k, v in m.sessions.items() if not v.is_running)
    op = rng.choice(["begin"] * 3 + ["finish"] * 3
                    + ["end", "hint", "withdraw", "phint", "defer", "tick"])
    if op == "begin" and len(running) < 2:
        sid = f"s{rng.randrange(SESSIONS)}"
        if sid in running:
            return "none"
        prompt = _prompt(m, rng, sid)
        if len(prompt) > MAX_PROMPT:  # too long to run: its session ends instead
            if sid not in m.sessions:
                return "none"
            m.end_session(sid, now=now)
            deferred.discard(sid)
            return "end"
        st = m.begin_step(sid, prompt, now=now)
        m.allocate_slots(sid, len(prompt) - st.num_cached_tokens, now=now)
        deferred.discard(sid)
    elif op == "finish" and running:
        sid = rng.choice(running)
        decoded = rng.randrange(4)  # the last one sampled, its KV not computed
        for k in range(decoded):
            m.append_tokens(sid, [2000 + rng.randrange(1000)])
            if k < decoded - 1:
                m.allocate_slots(sid, 1, now=now)
        m.finish_step(sid, now=now, tool=rng.choice([None, "grep"]),
                      expected_s=rng.choice([None, 0.1, 100.0]))
    elif op == "hint" and paused:
        m.resume_hint(rng.choice(paused), now=now)
    elif op == "withdraw" and paused:
        m.resume_withdrawn(rng.choice(paused), now=now)
    elif op == "phint" and paused:
        m.pause_hint(rng.choice(paused), now=now, tool="x",
                     expected_s=rng.choice([None, 0.1, 50.0]))
    elif op == "defer" and paused and not deferred - {sid := rng.choice(paused)}:
        # one demoted session at a time: ttl ranks them all alike (released, as sessions
        # that do not come back), and a tie falls to block ids, which differ between pools
        p.session_deferred(m.sessions[sid], rng.random() < 0.7, now)
        deferred.add(sid)
    elif op == "tick":
        m.tick(now)
    elif op == "end" and m.sessions:
        sid = rng.choice(sorted(m.sessions))
        m.end_session(sid, now=now)
        deferred.discard(sid)
    else:
        return "none"
    return op


def _walk(seed: int, expert: str) -> Counter:
    """A seeded walk; asserts the shadow holds what the real pool holds after each call.
    Returns the operations made."""
    rng = random.Random(seed)
    p = AdaptivePolicy(experts=(expert,))
    m = make(p, num_blocks=NUM_BLOCKS)
    sh = p._shadows[0]
    now = 0.0
    ops: Counter = Counter()
    deferred: set[str] = set()
    for i in range(250):
        op = _event(m, p, rng, now, deferred)
        ops[op] += 1
        now += rng.choice([0.0, 0.01, 0.5, 3.0, 30.0])
        real, shadow = _pools(m, sh)
        assert shadow == real, f"seed {seed}, call {i} ({op})"
        sh.check_integrity()
    m.check_integrity()
    ops["evicted"] = m.stats().num_evicted_blocks
    return ops


def test_a_one_expert_shadow_replays_the_real_pool_under_pressure_and_every_hook():
    # ttl: its ranking reads every hook and no block ids (graph's ties between equal
    # blocks fall to block ids, which differ between the pools).
    seen: Counter = Counter()
    for seed in range(12):
        seen += _walk(seed, "ttl")
    # The walk reached what it is for: evictions and every hook, many times.
    assert seen["evicted"] > 100
    for op in ("begin", "finish", "end", "hint", "withdraw", "phint", "defer", "tick"):
        assert seen[op] >= 20, (op, seen)


def _step(m, sid: str, prompt: list[int], now: float, decoded: tuple[int, ...] = (),
          **finish) -> None:
    """A prefill of `prompt`, the `decoded` tokens (each with its KV), the step's end."""
    st = m.begin_step(sid, prompt, now=now)
    m.allocate_slots(sid, len(prompt) - st.num_cached_tokens, now=now)
    for tok in decoded:
        m.append_tokens(sid, [tok])
        m.allocate_slots(sid, 1, now=now)
    m.finish_step(sid, now=now, **finish)


def _charges(sh: ShadowCache) -> list[float]:
    """What the shadow charges each step from now on."""
    out: list[float] = []
    started = sh.step_started

    def spy(session, now):
        out.append(started(session, now))
        return out[-1]
    sh.step_started = spy
    return out


def test_the_shadows_expert_gets_every_hook_the_real_one_gets():
    # A shadow's expert ranks as the real one only if it hears what the real one hears.
    p = AdaptivePolicy(experts=("ttl",))
    m = make(p, num_blocks=16)
    heard: dict[str, list] = {"real": [], "shadow": []}
    hooks = ("step_started", "step_finished", "session_deferred", "pause_hinted",
             "resume_hinted", "resume_withdrawn", "tick", "session_ended",
             "session_forgotten")

    def spy(f, hook: str, log: list):
        def call(*args):
            log.append((hook, getattr(args[0], "session_id", None)))  # (tick: a time)
            return f(*args)
        return call
    for who, pol in (("real", p.experts[0].policy), ("shadow", p._shadows[0].policy)):
        for hook in hooks:
            setattr(pol, hook, spy(getattr(pol, hook), hook, heard[who]))
    _step(m, "a", tokens(0, 9), 0.0, tool="grep")
    _step(m, "b", tokens(100, 9), 1.0, tool="grep")
    m.pause_hint("a", now=2.0, tool="x", expected_s=5.0)
    m.resume_hint("a", now=3.0)
    m.resume_withdrawn("a", now=4.0)
    p.session_deferred(m.sessions["b"], True, 5.0)
    m.tick(6.0)
    m.end_session("a", now=7.0)
    p.session_forgotten(m.sessions["b"], 8.0)
    assert {h for h, _ in heard["real"]} == set(hooks)
    assert heard["shadow"] == heard["real"]


def test_a_withdrawn_preempted_step_releases_its_blocks_in_the_shadow():
    # The real cache released the preempted step's blocks at once; the shadow waits for
    # the retry, and when the retry is withdrawn instead, releases them then.
    p = AdaptivePolicy(experts=("ttl",))
    m = make(p, num_blocks=8)
    sh = p._shadows[0]
    m.begin_step("a", tokens(0, 14), now=0.0)
    m.allocate_slots("a", 14, now=0.0)
    m.preempt("a", now=1.0)
    m.resume_withdrawn("a", now=2.0)
    assert not sh._running and sh._active == 0
    real, shadow = _pools(m, sh)
    assert shadow == real
    sh.check_integrity()


def test_a_block_aligned_duplicate_is_no_partial_tail_in_the_shadow():
    # b's prompt is a's (two full blocks, a shared system prompt): b recomputes its last
    # block (a prompt's last token is never a hit), a copy left unhashed as a's is
    # indexed. Its context ends on a block boundary, so the manager keeps no tail and
    # frees the copy; the shadow kept it cached as a partial tail.
    p = AdaptivePolicy(experts=("ttl",))
    m = make(p, num_blocks=16)
    sh = p._shadows[0]
    for sid, t in (("a", 0.0), ("b", 1.0)):
        _step(m, sid, tokens(0, 8), t, tool="search")
    assert m.sessions["b"].tail is None and "b" not in sh._tails
    real, shadow = _pools(m, sh)
    assert shadow == real and real[1:] == (2, 14)


def test_a_lost_block_past_an_unhashed_duplicate_is_charged():
    # b's context: h0 (a's), a copy of a's h1 (unhashed: h1 is indexed), b2, a partial
    # tail. After c evicts a's h1 and b's b2, b's next step hits h0 only and loses
    # positions 1 and 2: both are charged. The shadow remembered the count of b's hashed
    # blocks (2), not its full ones (3), as the last position lost, and charged one.
    p = AdaptivePolicy(experts=("lru",))
    m = make(p, num_blocks=6)
    charges = _charges(p._shadows[0])
    _step(m, "a", tokens(0, 8), 0.0, tool="t")
    _step(m, "b", tokens(0, 8), 1.0, decoded=tuple(range(100, 105)), tool="t")
    assert [m.pool.block_hash[b] is not None for b in m.sessions["b"].block_ids] == \
        [True, False, True, False]
    _step(m, "c", tokens(500, 13), 2.0, last_step=True)
    prompt = list(m.sessions["b"].token_ids) + [7, 8, 9]
    st = m.begin_step("b", prompt, now=3.0)
    assert st.num_cached_tokens == 4  # h0 only, in the real cache too
    assert charges[-1] == sum(p.block_costs(1, 3))


def test_the_charge_is_each_lost_block_and_decays_with_the_prompts_read():
    # a's three full blocks; c's step evicts a's tail block alone; a's next step hits the
    # first two and is charged the third's rebuild, exactly. The next step's prompt
    # decays it by exp(-its blocks / (shadow_memory pool sizes)).
    p = AdaptivePolicy(experts=("lru",), shadow_memory=2.0)
    m = make(p, num_blocks=6)
    e = p.experts[0]
    _step(m, "a", tokens(0, 12), 0.0, tool="t")
    _step(m, "c", tokens(500, 13), 1.0, last_step=True)
    assert e.charged == 0.0
    st = m.begin_step("a", tokens(0, 13), now=2.0)
    assert st.num_cached_tokens == 8
    m.allocate_slots("a", 5, now=2.0)
    m.finish_step("a", now=2.0, last_step=True)
    lost = sum(p.block_costs(2, 3))
    assert lost > 0 and e.charged == lost
    _step(m, "d", tokens(900, 9), 3.0, last_step=True)  # 2 full blocks read, none lost
    assert e.charged == pytest.approx(lost * math.exp(-2 / (2.0 * 6)), rel=1e-12)


def test_a_tie_at_zero_keeps_the_leader():
    # Neither shadow has rebuilt anything: no evidence, no switch (a leader that is
    # not the first expert keeps the lead).
    p = AdaptivePolicy(experts=("lru", "ttl"))
    make(p, num_blocks=8)
    lru, ttl = p.experts
    p.leader = ttl
    assert lru.charged == ttl.charged == 0.0
    p._elect()
    assert p.leader is ttl


def _import_pair():
    """An exporter holding paused session s (3 blocks), and a full 4-block importer with a
    one-expert `adaptive` (x paused on s's tokens, y on one block of its own) and its shadow."""
    src = make("lru", num_blocks=8)
    policy = AdaptivePolicy(experts=("ttl",))
    dst = make(policy, num_blocks=4)
    for m, sid, toks in ((src, "s", list(range(12))), (dst, "x", list(range(12))),
                         (dst, "y", [99] * 4)):
        st = m.begin_step(sid, toks)
        m.allocate_slots(sid, len(toks) - st.num_cached_tokens)
        m.finish_step(sid)
    return src, dst, policy._shadows[0]


def test_an_import_taken_whole_is_replayed_by_the_shadow():
    """An import the importer caches whole takes its last block as a hit too
    (`migration.plan_import`): the shadow did not, computed a duplicate of the last block
    and, in a full pool, evicted a block the real manager kept."""
    from kvsaga import KVCacheManager

    src, dst, sh = _import_pair()
    assert isinstance(dst, KVCacheManager)
    assert dst.import_session(src.export_session("s").export) == (3, [])
    assert dst.stats().num_evicted_blocks == 0
    real, shadow = _pools(dst, sh)
    assert real == shadow


def test_an_import_the_real_cache_holds_in_part_is_replayed_as_an_import():
    """The shadow told an import by the real cache's hits (every token computed at the
    start): an import the real cache held only in part, though the shadow held all of it
    (its expert ranked evictions its own way), was replayed as a step, its last block
    computed again in the shadow, which evicted a block for it (repro
    f4_shadow_partial_import). The manager marks an import's step (`Session.importing`)."""
    src, dst, sh = _import_pair()
    # the real pool loses x's first block (as another expert's eviction would), the
    # shadow keeps it: the import hits 0 blocks in the real pool, 3 in the shadow's
    dst._drop(dst.sessions["x"].block_ids[0])
    first, copied = dst.import_session(src.export_session("s").export)
    assert (first, len(copied)) == (0, 3)  # every block copied into the real pool
    assert not dst.sessions["s"].importing  # only while the policy's hook runs
    s, y = dst.sessions["s"].block_hashes, dst.sessions["y"].block_hashes
    cached = [sh.block_hash[b] for b in range(4) if sh._state[b] == _CACHED]
    assert sorted(cached) == sorted(s + y)  # before: y's block evicted for a duplicate
    assert [sh.block_hash[b] for b in sh._tables["s"]] == s
