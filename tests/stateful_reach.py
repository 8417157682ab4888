"""What the manager state machines reached, so their TestCases fail when they stop reaching it.

A random machine over a 12-block pool checks eviction, a refused allocation and the host tier
only if its steps fill the pool; invalid calls on purpose and partial allocations undone by
end or preempt can keep it from ever filling, and then those checks never run while the test
still passes. `reach_case` wraps a machine's TestCase: after all its examples it asserts each
event below happened at least once (the host ones where the machine has a host tier)."""

from __future__ import annotations

from collections import Counter

import hypothesis
import hypothesis.strategies as st

EVENTS = ("evictions", "out_of_blocks", "host_copies", "host_loads")
# Counts per machine class for the run in progress (set by reach_case's runTest).
_COUNTS: dict[type, Counter] = {}


def resume_prompt(context: list[int], new: list[int], most: int) -> list[int]:
    """A session's context followed by its new tokens, at most `most` long. When it is too
    long the old context loses its end, not its start, so the prompt still begins with the
    blocks the session cached (on the GPU or the host) and the step can hit them: cutting the
    front instead shifts every block and the host tier is never read back."""
    keep = min(len(context), most - min(len(new), most // 4))
    return (context[:keep] + new)[:most]


def whole_steps(sessions: list[str], max_tokens: int = 24, most: int = 3):
    """One to `most` whole steps, each (session, new tokens, stay running): long prompts over
    a wide alphabet, so blocks are rarely shared and a few steps fill the pool; two in three
    steps stay running, so later ones are refused."""
    step = st.tuples(st.sampled_from(sessions),
                     st.lists(st.integers(0, 63), min_size=4, max_size=max_tokens),
                     st.sampled_from([False, True, True]))
    return st.lists(step, min_size=1, max_size=most)


class Reach:
    """Mixin for a RuleBasedStateMachine: adds each example's manager stats to its class's
    counts when the example ends. `reach_manager()` names the manager to read."""

    def reach_manager(self):
        return self.m

    def note_out_of_blocks(self):
        counts = _COUNTS.get(type(self))
        if counts is not None:
            counts["out_of_blocks"] += 1

    def teardown(self):
        counts = _COUNTS.get(type(self))
        if counts is None:
            return
        st_ = self.reach_manager().stats()
        counts["evictions"] += st_.num_evicted_blocks
        counts["host_copies"] += st_.offloaded_blocks
        counts["host_loads"] += st_.loaded_blocks + st_.prefetched_blocks


def reach_case(machine: type, settings, host: bool):
    """`machine.TestCase` under `settings`, failing unless its examples together reached
    evictions and OutOfBlocks, and (with `host`) host copies and loads.

    Its examples are derandomized: how far random examples get varies a lot from seed to seed
    (one CI run's sixty error-atomicity examples evicted 20 blocks and loaded none back where
    other seeds evict hundreds), so a random run would make this a flaky test. A fixed seed
    makes the guard mean what it says: these examples, every run, reach these events."""
    base = machine.TestCase
    want = EVENTS if host else EVENTS[:2]

    class Case(base):
        def runTest(self):
            _COUNTS[machine] = Counter()
            try:
                super().runTest()
                got = _COUNTS[machine]
            finally:
                del _COUNTS[machine]
            missing = [e for e in want if not got[e]]
            assert not missing, f"{machine.__name__} never reached {missing}: {dict(got)}"

        runTest.is_hypothesis_test = True

    Case.settings = hypothesis.settings(settings, derandomize=True)
    Case.__name__, Case.__qualname__ = base.__name__, base.__qualname__
    return Case
