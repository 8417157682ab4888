"""A policy hook that raises (a user's policy, or a policy bug) must leave the manager's books
as they were before the call, so the caller can retry it or go on.

Before the fix `begin_step` called `step_started` last, after it had taken references on the
hits, set the session RUNNING and counted the step: a raise left the session running with
its references held (a retry was refused: "already has an open step"), a new session
registered, and the hit counters moved. `finish_step` set the session PAUSED before
`step_finished` and released its table after: a raise left a paused session holding
references (check_integrity failed). `pause_hint` kept the hint its hook refused.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.policy import LRUPolicy
from kvsaga.policy.base import Action
from kvsaga.session import SessionState
from tests.test_core_parity import snapshot

BS = 4
CORES = ["python", *(["cpp"] if cpp_available() else [])]


class Flaky(LRUPolicy):
    """LRU whose hook `fail` names raises (until `fail` is None)."""

    fail: str | None = None
    victims: list[list[int]] = []  # victims to name, in turn, before LRU's
    started = -1  # the computed tokens of the last session `step_started` was told of

    def _maybe(self, hook: str) -> None:
        if self.fail == hook:
            raise RuntimeError(f"{hook} failed (a policy bug)")

    def step_started(self, session, now):
        self.started = session.num_computed
        self._maybe("step_started")
        super().step_started(session, now)

    def step_finished(self, session, now, hint):
        self._maybe("step_finished")
        super().step_finished(session, now, hint)

    def pause_hinted(self, session, now, hint):
        self._maybe("pause_hinted")
        super().pause_hinted(session, now, hint)

    def session_ended(self, session, now):
        self._maybe("session_ended")
        super().session_ended(session, now)

    def choose_victims(self, num_blocks, now, *args):
        self._maybe("choose_victims")
        if self.fail == "invalid victims":
            return []  # the eviction path's own RuntimeError
        if self.fail in ("iterator", "tuple"):  # not the list the contract asks for
            named = super().choose_victims(num_blocks, now, *args)
            return iter(named) if self.fail == "iterator" else tuple(named)
        if self.victims:
            return self.victims.pop(0)
        return super().choose_victims(num_blocks, now, *args)


def make(core: str, num_blocks: int = 16) -> tuple[KVCacheManager, Flaky]:
    policy = Flaky()
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, policy=policy,
                          clock=lambda: 0.0, core=core), policy


def books(m: KVCacheManager):
    """Everything the manager keeps but the cache's recency (`snapshot` less the policy's
    eviction order), its cache_version, and every session's step count, pause and hint."""
    sessions = {sid: (s.num_steps, s.paused_at, s.hint) for sid, s in m.sessions.items()}
    return snapshot(m)[:-1], sessions, m.pool.reused_s


def paused(m: KVCacheManager, sid: str, tokens: list[int]) -> None:
    """Run one step of `sid` over `tokens` (and a sampled token) and pause it on a tool."""
    m.begin_step(sid, tokens)
    m.allocate_slots(sid, len(tokens))
    m.append_tokens(sid, [99])
    m.finish_step(sid, tool="grep", expected_s=2.0)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("resumed", [False, True], ids=["new", "resumed"])
def test_begin_step_taken_back_when_step_started_raises(core, resumed):
    m, policy = make(core)
    context = list(range(10))  # 2 full blocks and a tail of 2 (+ the sampled token)
    paused(m, "other", list(range(50, 57)))
    if resumed:
        paused(m, "s", context)
        prompt = [*m.sessions["s"].token_ids, 7, 8]
    else:
        prompt = context
    before = books(m)
    policy.fail = "step_started"
    with pytest.raises(RuntimeError, match="step_started failed"):
        m.begin_step("s", prompt)
    m.check_integrity()
    assert books(m) == before  # before the fix: s RUNNING, its hits referenced
    assert ("s" in m.sessions) is resumed
    policy.fail = None
    start = m.begin_step("s", prompt)  # before the fix: "already has an open step"
    assert start.num_cached_tokens == (10 if resumed else 0)  # (its tail reused too)
    m.allocate_slots("s", len(prompt) - start.num_cached_tokens)
    m.finish_step("s")
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_a_rewritten_context_keeps_its_common_prefix_when_step_started_raises(core):
    # The prompt rewrites the context from token 5 on: the C++ core changed the context in
    # place past there, so the session keeps tokens 0-4, its computed part cut to the one
    # full block within them; its books hold and a retry goes as on a fresh pause there.
    m, policy = make(core)
    paused(m, "s", list(range(10)))
    free = m.pool.num_free
    prompt = [0, 1, 2, 3, 4, 70, 71, 72, 73]
    policy.fail = "step_started"
    with pytest.raises(RuntimeError, match="step_started failed"):
        m.begin_step("s", prompt)
    m.check_integrity()
    s = m.sessions["s"]
    assert s.state is SessionState.PAUSED and s.token_ids == [0, 1, 2, 3, 4]
    assert len(s.block_ids) == 1 and s.num_computed == 4 and s.tail is None
    assert m.pool.num_free == free + 1  # the tail it kept, which the prompt no longer continues
    policy.fail = None
    assert m.begin_step("s", prompt).num_cached_tokens == 4
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_finish_step_pause_hint_and_end_session_change_nothing_when_their_hook_raises(core):
    m, policy = make(core)
    m.begin_step("s", list(range(10)))
    m.allocate_slots("s", 10)
    for hook, call in [("step_finished", lambda: m.finish_step("s", tool="grep")),
                       ("session_ended", lambda: m.end_session("s"))]:
        before, version = snapshot(m), m.cache_version
        policy.fail = hook
        with pytest.raises(RuntimeError, match=f"{hook} failed"):
            call()
        m.check_integrity()  # before the fix (step_finished): a paused session held refs
        assert (snapshot(m), m.cache_version) == (before, version)
        assert m.sessions["s"].state is SessionState.RUNNING
    policy.fail = None
    m.finish_step("s", tool="grep", expected_s=1.0)
    hint = m.sessions["s"].hint
    policy.fail = "pause_hinted"
    with pytest.raises(RuntimeError, match="pause_hinted failed"):
        m.pause_hint("s", tool="cat", expected_s=5.0)
    assert m.sessions["s"].hint is hint  # before the fix: the refused hint stayed
    policy.fail = "session_ended"
    with pytest.raises(RuntimeError):
        m.end_session("s")
    policy.fail = None
    m.end_session("s")
    assert not m.sessions
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_allocate_slots_changes_no_books_when_choose_victims_raises(core):
    # Victims are chosen before anything is evicted or allocated: a raise leaves the books
    # (cache_version moves on: the eviction path counts a change before it asks).
    m, policy = make(core, num_blocks=5)
    paused(m, "old", list(range(100, 116)))  # its 4 full blocks cached, 1 free
    m.begin_step("s", list(range(8)))
    before = books(m)
    policy.fail = "choose_victims"
    with pytest.raises(RuntimeError, match="choose_victims failed"):
        m.allocate_slots("s", 8)  # 2 blocks, 1 free: one to evict
    m.check_integrity()
    assert books(m) == before
    policy.fail = None
    assert len(m.allocate_slots("s", 8)) == 8
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_begin_step_with_host_loads_is_taken_back_to_cached_blocks(core):
    # s's context went to the host tier; the failed resume loaded it back. The loads stay
    # (GPU blocks cached, their copies planned), everything else is as before, and the
    # retry hits the loaded blocks on the GPU.
    policy = Flaky()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 6, policy=policy, clock=lambda: 0.0,
                       core=core, num_host_blocks=8)
    paused(m, "s", list(range(12)))  # 3 full blocks
    paused(m, "f", list(range(100, 124)))  # 6 blocks: evicts (offloads) s's
    s = m.sessions["s"]
    prompt = [*s.token_ids, 5]
    fields = (list(s.token_ids), list(s.block_hashes), list(s.block_ids), s.num_computed,
              s.tail, s.num_steps, s.hint, s.state)
    stats = m.stats()
    assert m.pool.num_cached == 6  # f's blocks alone: s's are on the host tier only
    policy.fail = "step_started"
    with pytest.raises(RuntimeError, match="step_started failed"):
        m.begin_step("s", prompt)
    assert policy.started == 12  # it loaded them back
    m.check_integrity()
    assert (list(s.token_ids), list(s.block_hashes), list(s.block_ids), s.num_computed,
            s.tail, s.num_steps, s.hint, s.state) == fields
    assert m.pool.num_active == 0
    after = m.stats()
    assert (after.queried_tokens, after.hit_tokens, after.host_hit_tokens) == (
        stats.queried_tokens, stats.hit_tokens, stats.host_hit_tokens)
    policy.fail = None
    start = m.begin_step("s", prompt)
    assert start.num_cached_tokens == 12
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("resumed", [False, True], ids=["new", "resumed"])
def test_blocks_a_taken_back_begin_step_loaded_are_not_left_owned_for_good(core, resumed):
    """begin_step's host loads are owned by the session; `_unbegin` left them so: a new
    session was forgotten while its loaded blocks stayed owned by it, and a resumed one's
    were in neither its table nor its left-owned blocks, so end_session left them owned.
    Now a new session's are plain cache, a resumed one's left-owned."""
    policy = Flaky()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 7, policy=policy, clock=lambda: 0.0,
                       core=core, num_host_blocks=8)
    paused(m, "a", list(range(12)))  # 3 full blocks
    if not resumed:
        m.end_session("a")  # plain cache, which "s" hits
    sid = "a" if resumed else "s"
    paused(m, "f", list(range(100, 124)))  # evicts (offloads) a's blocks
    m.end_session("f")
    paused(m, "g", list(range(200, 212)))  # a's old blocks, so the loads go elsewhere
    policy.fail = "step_started"
    with pytest.raises(RuntimeError, match="step_started failed"):
        m.begin_step(sid, [*range(12), 5])
    assert policy.started == 12  # it loaded them back
    m.check_integrity()
    # Owned only as its table or its left-owned blocks (which end_session disowns).
    known = set(m.sessions[sid].block_ids) | m._left_owned.get(sid, set()) if resumed else ()
    assert [b for b, o in enumerate(m.block_owner) if o == sid and b not in known] == []
    policy.fail = None
    if resumed:
        m.end_session(sid)
    assert sid not in m.block_owner
    m.check_integrity()


def split_on_tiers(core: str, policy: Flaky | None = None) -> tuple[KVCacheManager, Flaky]:
    """A manager whose paused "s" (14 tokens computed: 3 full blocks and a tail of 2) has
    its block 1 on the host tier only, blocks 0 and 2 and the tail cached on the GPU, and
    no free GPU block: loading block 1 back must evict, after the hit on block 0, the
    resident block 2 and the tail (which continues them) were referenced. `policy`: a
    Flaky (a new one by default)."""
    policy = Flaky() if policy is None else policy
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 7, policy=policy, clock=lambda: 0.0,
                       core=core, num_host_blocks=8)
    paused(m, "s", list(range(14)))
    policy.victims = [[m.sessions["s"].block_ids[1]]]
    paused(m, "f", list(range(100, 116)))  # 4 blocks: 3 free, s's block 1 evicted
    m.take_transfers()
    assert m.pool.num_free == 0 and m.sessions["s"].tail is not None
    return m, policy


def host_books(m: KVCacheManager):
    """`books`, and the host tier's references and pins."""
    return books(m), list(m.host.pool.refcount), list(m.host._pinned)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("fail", ["choose_victims", "invalid victims"])
def test_begin_step_taken_back_when_its_host_loads_cannot_evict(core, fail):
    """The loads' eviction raised after `_open` had swapped the context in and the GPU hit,
    the resident block after it and the tail were referenced: before the fix all of that
    stayed (check_integrity: "refcount 1 but 0 running tables hold it"). Now the step is
    taken back as when `step_started` raises."""
    m, policy = split_on_tiers(core)
    prompt = [*m.sessions["s"].token_ids, 5]
    before = host_books(m)
    policy.fail = fail
    with pytest.raises(RuntimeError, match="choose_victims failed|invalid victims"):
        m.begin_step("s", prompt)
    m.check_integrity()
    assert host_books(m) == before
    policy.fail = None
    start = m.begin_step("s", prompt)
    assert start.num_cached_tokens == 14  # the load, the resident blocks and the tail
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_a_prompt_diverging_in_the_tail_is_not_served_the_tail_after_its_loads_raised(core):
    """The prompt keeps 1 of the tail's 2 tokens. Before the fix the failed prompt stayed as
    the context with the old tail and computed tokens, so a retry that extends it was
    served the tail's K/V for token 13, which the tail holds for another token (14 tokens
    cached). Now the session keeps the common prefix, as when `step_started` raises."""
    m, policy = split_on_tiers(core)
    policy.fail = "choose_victims"
    with pytest.raises(RuntimeError, match="choose_victims failed"):
        m.begin_step("s", [*range(13), 77])
    m.check_integrity()
    s = m.sessions["s"]
    assert s.state is SessionState.PAUSED and s.token_ids == list(range(13))
    assert s.num_computed == 12 and s.tail is None
    policy.fail = None
    assert m.begin_step("s", [*range(13), 77, 5]).num_cached_tokens == 12
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_prefetch_holds_nothing_when_its_loads_cannot_evict(core):
    """prefetch holds the session's resident head (block 0), the run's resident block 2 and
    the tail while its load makes room: before the fix a raising policy left them all
    referenced."""
    m, policy = split_on_tiers(core)
    before = host_books(m)
    policy.fail = "choose_victims"
    with pytest.raises(RuntimeError, match="choose_victims failed"):
        m.prefetch("s")
    m.check_integrity()
    assert host_books(m) == before
    policy.fail = None
    assert m.prefetch("s") == 1
    m.check_integrity()
    assert m.begin_step("s", [*m.sessions["s"].token_ids, 5]).num_cached_tokens == 14


def _one_to_evict(core: str) -> tuple[KVCacheManager, Flaky]:
    """A 5-block pool: "old" paused with 4 full blocks cached, "s" with 8 tokens to place
    (2 blocks, 1 free: one to evict) and, for a decode step, "d" running with its last
    block full (its next token needs a block: one to evict)."""
    m, policy = make(core, num_blocks=5)
    paused(m, "old", list(range(100, 116)))
    m.begin_step("s", list(range(8)))
    return m, policy


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("call", ["allocate_slots", "decode_step"])
def test_victims_named_by_an_iterator_are_refused_on_both_cores_with_nothing_changed(
        core, call):
    # The C++ core read the policy's victims once to check them (using the iterator up)
    # and again to evict them: it evicted nothing, counted the evictions, and handed the
    # caller the blocks still wanted, an int, as its slots. Both cores refuse anything but
    # a list or tuple alike now, before any change.
    m, policy = _one_to_evict(core)
    if call == "decode_step":
        m.allocate_slots("s", 4)  # s's first block full, 1 free block left
        m.begin_step("t", list(range(50, 54)))
        m.allocate_slots("t", 4)  # no free block: s's next token needs an eviction
    before, free, evicted = books(m), m.pool.num_free, m.stats().num_evicted_blocks
    policy.fail = "iterator"
    with pytest.raises(TypeError, match="^the policy's victims must be a list or tuple of "
                                        "block ids, got list_iterator$"):
        if call == "decode_step":
            m.decode_step(["s"], [7])
        else:
            m.allocate_slots("s", 8)
    m.check_integrity()
    assert (books(m), m.pool.num_free, m.stats().num_evicted_blocks) == (before, free, evicted)
    policy.fail = "tuple"  # a tuple is a sequence as good as a list
    out = m.decode_step(["s"], [7]) if call == "decode_step" else m.allocate_slots("s", 8)
    assert isinstance(out, list) and len(out) == (1 if call == "decode_step" else 8)
    assert m.stats().num_evicted_blocks == evicted + 1
    m.check_integrity()


@pytest.mark.skipif("cpp" not in CORES, reason="the C++ core is not built")
@pytest.mark.parametrize("call", ["allocate_slots", "decode_step"])
def test_an_eviction_that_made_no_room_raises_instead_of_handing_back_a_count(
        monkeypatch, call):
    # The C++ core answers a count (blocks to evict first) when it is short; the manager
    # evicts and asks again. Were it still short, the count went back as the slots.
    m, _ = _one_to_evict("cpp")
    if call == "decode_step":
        m.allocate_slots("s", 4)
        m.begin_step("t", list(range(50, 54)))
        m.allocate_slots("t", 4)
    monkeypatch.setattr(m, "_evict", lambda num_blocks, now: None)  # makes no room
    with pytest.raises(RuntimeError, match="^the core still needs 1 blocks after 1 were "
                                           "evicted for it$"):
        if call == "decode_step":
            m.decode_step(["s"], [7])
        else:
            m.allocate_slots("s", 8)
    m.check_integrity()


@pytest.mark.skipif("cpp" not in CORES, reason="the C++ core is not built")
def test_the_cores_eviction_calls_refuse_unchecked_victims_and_a_negative_count():
    # evict_blocks evicts the ids victims_valid read (never a second read of the policy's
    # answer): given other victims, or none checked, it refuses; evict_head names a
    # negative count (it raised vector::_M_default_append). Nothing changes.
    m, policy = _one_to_evict("cpp")
    hot, cached = m._hot, [b for b in range(5) if m.pool.state[b] == 2]
    before = books(m)
    with pytest.raises(RuntimeError, match="victims victims_valid just found valid"):
        hot.evict_blocks(cached[:1])
    assert hot.victims_valid(cached[:1], 1)
    with pytest.raises(RuntimeError, match="victims victims_valid just found valid"):
        hot.evict_blocks(list(cached[:1]))  # an equal list, not the one checked
    with pytest.raises(ValueError, match="^evict_head: num_blocks must be >= 0, got -1$"):
        hot.evict_head(policy._order, -1)
    m.check_integrity()
    assert books(m) == before


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize(("kind", "convert"), [("deque", collections.deque),
                                               ("ndarray", np.array)], ids=["deque", "ndarray"])
def test_victims_of_an_extension_type_are_refused_naming_the_type_alike_on_both_cores(
        core, kind, convert):
    # The C++ core named the type by its tp_name (`collections.deque`, `numpy.ndarray`),
    # the Python core by its __name__ (`deque`, `ndarray`): both by __name__ now.
    m, policy = _one_to_evict(core)
    before = books(m)
    policy.victims = [convert(policy._order.head(1))]
    with pytest.raises(TypeError, match="^the policy's victims must be a list or tuple of "
                                        f"block ids, got {kind}$"):
        m.allocate_slots("s", 8)
    m.check_integrity()
    assert books(m) == before


@pytest.mark.skipif("cpp" not in CORES, reason="the C++ core is not built")
def test_an_id_whose_index_re_enters_the_core_check_cannot_change_the_ids_it_evicts():
    # victims_valid read the ids straight into the kept ones: a nested victims_valid (an
    # id's __index__, Python code) reset them to its own, the outer call appended its own
    # after them, and evict_blocks evicted the nested call's block in place of the outer's.
    m, _ = _one_to_evict("cpp")
    hot, cached = m._hot, [b for b in range(5) if m.pool.state[b] == 2]

    class ReEntering:
        """A block id whose __index__ checks another list of victims first."""

        def __init__(self, block_id: int) -> None:
            self.block_id = block_id

        def __index__(self) -> int:
            assert hot.victims_valid([cached[2]], 1)
            return self.block_id

    outer = [cached[0], ReEntering(cached[1])]
    assert hot.victims_valid(outer, 2)
    hot.evict_blocks(outer)
    assert [m.pool.state[b] for b in cached] == [0, 0, 2, 2]  # the outer's two: FREE
    m.check_integrity()


class Rewriting(LRUPolicy):
    """LRU whose `action` hook (called while the host tier plans its copies: after the
    victims were checked, before they are evicted) rewrites the list its choose_victims
    answered, once, to `rewrite_to`."""

    rewrite_to: list[int] | None = None

    def choose_victims(self, num_blocks, now, *args):
        self.answered = list(super().choose_victims(num_blocks, now, *args))
        return self.answered

    def action(self, block_id, now):
        if self.rewrite_to is not None:
            self.answered[:], self.rewrite_to = self.rewrite_to, None
        return Action.OFFLOAD


@pytest.mark.parametrize("core", CORES)
def test_both_cores_evict_and_offload_the_victims_checked_when_a_hook_rewrites_the_list(core):
    # The C++ core evicted the ids it had checked, the Python core the list as rewritten
    # (unchecked), and the host tier planned copies for the list as the loop found it. The
    # manager copies the answer once now: checked, offloaded and evicted alike.
    policy = Rewriting()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 5, policy=policy, clock=lambda: 0.0,
                       core=core, num_host_blocks=8)
    paused(m, "old", list(range(100, 116)))
    m.begin_step("s", list(range(12)))  # 3 blocks: 2 to evict of the 4 cached
    cached = [b for b in range(5) if m.pool.state[b] == 2]
    named = policy._order.head(2)
    others = [b for b in cached if b not in named]
    policy.rewrite_to = list(others)
    m.allocate_slots("s", 12)
    m.check_integrity()
    assert sorted(b for b in cached if m.pool.state[b] == 2) == others
    assert [gpu for gpu, _ in m.take_transfers().offloads] == named


class RaisingAction(LRUPolicy):
    """LRU whose `action` hook raises at its `raise_at`-th call from now (0: never)."""

    raise_at = 0

    def action(self, block_id, now):
        self.raise_at -= 1
        if self.raise_at == 0:
            raise RuntimeError("action failed (a policy bug)")
        return Action.OFFLOAD


@pytest.mark.parametrize("core", CORES)
def test_an_eviction_whose_action_hook_raises_changes_neither_tier(core):
    # Two victims, both to be offloaded to a full host tier: before the fix the first one's
    # copy was planned (evicting the host's LRU copy for it) before `action` raised on the
    # second, and stayed so, although no GPU block was evicted and allocate_slots raised.
    from tests.test_error_atomicity_stateful import full_state

    policy = RaisingAction()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 5, policy=policy, clock=lambda: 0.0,
                       core=core, num_host_blocks=2)
    paused(m, "p", list(range(8)))  # 2 full blocks
    paused(m, "q", list(range(100, 112)))  # 3 more: the pool is full
    paused(m, "r", list(range(200, 208)))  # evicts p's 2 blocks: their copies fill the host
    m.take_transfers()
    assert m.host.pool.num_cached == 2 and m.host.pool.num_free == 0
    m.begin_step("s", list(range(300, 308)))

    def state():
        hp = m.host.pool
        return full_state(m), list(hp.generation), hp.free_ids(), m.host.num_kept

    before = state()
    policy.raise_at = 2
    with pytest.raises(RuntimeError, match="action failed"):
        m.allocate_slots("s", 8)  # evicts 2 of q's blocks
    m.check_integrity()
    assert state() == before
    assert m.stats().discarded_blocks == 0
    assert len(m.allocate_slots("s", 8)) == 8
    assert len(m.take_transfers().offloads) == 2
    m.check_integrity()
