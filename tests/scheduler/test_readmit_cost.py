"""What a demoted session's waiting step is ordered by (`readmit_cost`,
kvsaga/scheduler/admission_order.py): its whole context ("context", the default) or the part
of it not cached on the GPU ("uncached", what admitting it adds); its parameter's check; and
the scheduler state machine (tests/test_manager_stateful.py) run with it under every policy."""

from __future__ import annotations

import pytest

from kvsaga.scheduler import WorkflowScheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import BS, manager, toks, wf
from tests.test_manager_stateful import POLICIES, _scheduler_machine_for


def _demoted_and_new(cost: str, keep: int | None = None):
    """Session "big" (40 tokens) admitted, run and paused, then demoted (its blocks stay
    cached); its next step (45 tokens) and a new session "small" (12 tokens) queued at the
    same instant. Both of workflow "w", whose sessions were taught to take 3 steps, so
    their predicted remaining work differs by the context costed alone. `keep`: the next
    prompt keeps only its context's first `keep` tokens and rewrites the rest (45 tokens
    still); None: it extends the whole context."""
    m = manager(32)
    s = wf(m, admission_order="predicted", readmit_cost=cost)
    for _ in range(4):
        s._lengths.observe("w", 3)
    ex = ToyExecutor(m)
    big1 = ToyRequest("big", toks(100, 40), max_new=1, last=False, workflow="w")
    s.add(big1, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    assert "big" in s.sessions and not s.num_waiting
    s._demote_session("big", 1.0)
    assert "big" in s._deferred and "big" not in s.sessions
    prompt = (big1.prompt + big1.out + toks(500, 4) if keep is None
              else big1.prompt[:keep] + toks(900, 45 - keep))
    big2 = ToyRequest("big", prompt, max_new=1, last=False, resumed=True, arrival=2.0,
                      workflow="w")
    small = ToyRequest("small", toks(200, 12), max_new=1, arrival=2.0, workflow="w")
    s.add(big2, 2.0)
    s.add(small, 2.0)
    return m, s, big2, small


def _order(s) -> list[str]:
    s._sort_pending()
    return [r.session_id for r in s.waiting]


@pytest.mark.parametrize("cost,first", [("context", "small"), ("uncached", "big")])
def test_readmit_cost_orders_a_cached_demoted_step(cost, first):
    """Costed on its whole context (45 tokens) the demoted step sorts behind the new
    12-token session; costed on what it adds (its 40 cached tokens are 10 full blocks still
    on the GPU: 5 tokens) it sorts ahead."""
    m, s, big2, small = _demoted_and_new(cost)
    assert s._readmit_context(big2) == big2.num_tokens - 40 == 5
    assert _order(s)[0] == first
    m.check_integrity()


def test_uncached_follows_the_eviction_of_the_demoted_context():
    """Once the demoted session's blocks are evicted (another session takes the whole pool),
    what admitting it adds is its whole context again, and it sorts behind the new session:
    the order is read afresh though no scheduler event marked it changed."""
    m, s, big2, small = _demoted_and_new("uncached")
    assert _order(s)[0] == "big"
    m.begin_step("filler", toks(5000, 32 * BS), now=3.0)
    m.allocate_slots("filler", 32 * BS, now=3.0)
    m.end_session("filler", now=3.0)
    assert s._readmit_context(big2) == big2.num_tokens
    assert _order(s)[0] == "small"
    m.check_integrity()


@pytest.mark.parametrize("keep,adds,first", [(0, 45, "small"), (22, 45 - 20, "big")])
def test_uncached_reads_the_waiting_prompt_not_the_old_context(keep, adds, first):
    """A demoted session's next prompt that rewrites its context past `keep` tokens (the
    manager keeps only the common prefix: `begin_step`) adds all of it but the leading full
    blocks it still shares with the cached context (none of its 45 tokens, or all but 5
    blocks), its old 40 tokens all still cached notwithstanding, as the gate's lookup
    charges it: wholly rewritten, it sorts behind the new 12-token session (costed on the
    old context, 5 tokens, it went first); it is then admitted and run."""
    m, s, big2, small = _demoted_and_new("uncached", keep)
    assert all(m.index.get(h) is not None for h in m.sessions["big"].block_hashes)
    assert s.lookup(big2).gpu_hit_blocks * BS == big2.num_tokens - adds
    assert s._readmit_context(big2) == adds
    assert s.remaining_cost(big2) == s.session_cost("big", "w", adds)
    assert _order(s)[0] == first
    ex = ToyExecutor(m)
    t = 2.0
    while s.num_waiting or s.running:
        ex.run(s, s.schedule(t, ex), t)
        t += 1.0
    assert m.sessions["big"].token_ids[:45] == big2.prompt
    m.check_integrity()


def _counting_costs(s) -> list[str]:
    """The sessions whose cost `s` reads from now on, in order (its sorts' work)."""
    seen: list[str] = []
    cost = s.remaining_cost
    s.remaining_cost = lambda r: seen.append(r.session_id) or cost(r)
    return seen


def test_uncached_sorts_again_only_after_a_cache_change_with_a_demoted_step_waiting():
    """The demoted step's key reads the cache: sorted again once the cache changed (the
    order is then read afresh), not at a call that follows no change."""
    m, s, big2, small = _demoted_and_new("uncached")
    assert _order(s) == ["big", "small"]
    seen = _counting_costs(s)
    assert _order(s) == ["big", "small"] and not seen
    m.begin_step("other", toks(3000, 8), now=3.0)  # the cache changed, the hits did not
    m.end_session("other", now=3.0)
    assert _order(s) == ["big", "small"] and sorted(seen) == ["big", "small"]


def test_uncached_does_not_sort_again_for_a_demoted_session_away_on_its_tool():
    """A demoted session whose next step has not come (away on its tool) changes no waiting
    step's key: the new sessions waiting are not sorted again after a cache change."""
    m = manager(32)
    s = wf(m, admission_order="predicted", readmit_cost="uncached")
    ex = ToyExecutor(m)
    big1 = ToyRequest("big", toks(100, 40), max_new=1, last=False, workflow="w")
    s.add(big1, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    s._demote_session("big", 1.0)
    for sid, base in (("x", 200), ("y", 300)):
        s.add(ToyRequest(sid, toks(base, 12), max_new=1, arrival=2.0, workflow="w"), 2.0)
    assert "big" in s._deferred and _order(s) == ["x", "y"]
    seen = _counting_costs(s)
    m.begin_step("other", toks(3000, 8), now=3.0)
    m.end_session("other", now=3.0)
    assert _order(s) == ["x", "y"] and not seen


def test_uncached_leaves_new_sessions_and_the_whole_context_cost_alone():
    """A new session's cost is its whole context under either value (its GPU hits are a
    shared prefix, not its own context), and "context" costs a demoted one in full."""
    _, s_u, big_u, small_u = _demoted_and_new("uncached")
    _, s_c, big_c, small_c = _demoted_and_new("context")
    assert s_u.remaining_cost(small_u) == s_c.remaining_cost(small_c) == s_c.session_cost(
        "small", "w", small_c.num_tokens)
    assert s_c.remaining_cost(big_c) == s_c.session_cost("big", "w", big_c.num_tokens)
    assert s_u.remaining_cost(big_u) == s_u.session_cost("big", "w", 5)


def test_readmit_cost_names_every_value():
    with pytest.raises(ValueError, match="readmit_cost must be one of context, uncached, "
                                         "got 'cached'"):
        wf(manager(16), readmit_cost="cached")


def test_the_default_readmit_cost_is_unchanged():
    assert WorkflowScheduler.__init__.__kwdefaults__["readmit_cost"] == "context"


# The scheduler state machine (admission, preemption, chunked prefill: every invariant of the
# manager and the queues) with the cost on, under every policy.
for _name in POLICIES:
    globals()[f"TestSchedulerStateful_readmit_cost_{_name.replace('-', '_')}"] = (
        _scheduler_machine_for("workflow", _name, {"readmit_cost": "uncached"}))
