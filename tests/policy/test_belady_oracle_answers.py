"""belady's and oracle-ttl's questions to the oracle: `session_ended` asks for every block
before it files any as dead (an oracle raising part way changes nothing), and every answer,
wherever it is asked, must be a real number (review s50 diff-hooks, findings 3 and 4).
"""

from __future__ import annotations

import math

import pytest

from kvsaga._core import cpp_available
from kvsaga.policy import BeladyPolicy, ClairvoyantTTLPolicy
from tests.policy.helpers import FakeView, make, run_step, tokens

CORES = ["python", *(["cpp"] if cpp_available() else [])]
READS_NO_CORE = True  # the managers here name their core; the rest runs on a FakeView


class Oracle:
    """Next use `now + 100 + position`; raises for plain blocks at position `bad`, and
    answers `answer` instead (when set) for the blocks `when(session_id, position)` picks."""

    bad: int | None = None
    answer: object = None
    when = staticmethod(lambda sid, pos: False)

    def next_use(self, session_id, block_hash, position, now):
        if session_id is None and position == self.bad:
            raise KeyError(f"no future for position {position}")
        if self.answer is not None and self.when(session_id, position):
            return self.answer
        return now + 100.0 + position


def belady_books(p: BeladyPolicy) -> tuple:
    return ({sid: list(g) for sid, g in p.groups.items()}, list(p.plain), list(p.dead),
            sorted(p._heap), sorted(p._expiry))


@pytest.mark.parametrize("core", CORES)
def test_belady_session_ended_whose_oracle_raises_part_way_changes_nothing(core):
    """Before the fix the group moved to `dead` first and the oracle was then asked block
    by block: the blocks after the raise sat in `dead` with no heap entry, so belady never
    named them and a later allocation that needed them failed ('named invalid victims')."""
    oracle = Oracle()
    p = BeladyPolicy(oracle=oracle)
    m = make(p, num_blocks=8, core=core)
    run_step(m, "a", tokens(0, 12), now=0.0)  # 3 blocks, positions 0-2, tail first: 2, 1, 0
    before = belady_books(p)
    oracle.bad = 1  # the second block asked
    with pytest.raises(KeyError, match="position 1"):
        m.end_session("a", now=2.0)
    oracle.bad = None
    assert "a" in m.sessions
    assert belady_books(p) == before
    p.check_integrity()
    m.check_integrity()
    run_step(m, "b", tokens(100, 32), now=3.0)  # needs all 8 blocks: a's 3 are evictable
    m.end_session("a", now=4.0)  # a's end goes through now
    p.check_integrity()


@pytest.mark.parametrize("answer", ["5", True, None, float("nan"), [5.0]])
def test_belady_refuses_an_answer_that_is_no_real_number_at_block_cached(answer):
    """The string "5" was accepted (converted by float()) and failed only at a later
    search, mid-way; now every non-number is refused, naming the block, and nothing is
    recorded."""
    oracle = Oracle()
    p = BeladyPolicy(oracle=oracle)
    view = FakeView(8)
    p.bind(view)
    p._now = 0.0
    view.cache(p, 0, None, 0)
    before = belady_books(p)
    oracle.answer, oracle.when = answer, (lambda sid, pos: pos == 3)
    if answer is None:  # (the Oracle's "unset": an oracle answering None)
        oracle.next_use = lambda sid, h, pos, now: None
    with pytest.raises((TypeError, ValueError), match="block 5 .*position 3"):
        view.cache(p, 5, None, 3)
    view.cached.discard(5)
    assert belady_books(p) == before
    p.check_integrity()


@pytest.mark.parametrize("answer", [7, 7.0, 7.5, math.inf])
def test_belady_takes_ints_and_floats_as_floats(answer):
    oracle = Oracle()
    oracle.answer, oracle.when = answer, (lambda sid, pos: True)
    p = BeladyPolicy(oracle=oracle)
    view = FakeView(8)
    p.bind(view)
    p._now = 0.0
    view.cache(p, 0, None, 0)
    assert p._heap[0][0] == -float(answer) and type(p._heap[0][0]) is float


def test_belady_refresh_whose_oracle_answers_no_number_keeps_the_block():
    """A plain block's answered time passes; at the refresh the oracle answers "5". Before
    the fix its expiry entry was popped and its stamp bumped before the failing `-nu`: the
    block lost its live heap entry and was never named again. Now the search raises naming
    the block, and once the oracle answers, the block is named as before."""
    oracle = Oracle()
    p = BeladyPolicy(oracle=oracle)
    view = FakeView(8)
    p.bind(view)
    p._now = 0.0
    view.cache(p, 0, None, 0)  # next use at 100
    view.cache(p, 1, None, 1)  # next use at 101
    oracle.answer, oracle.when = "5", (lambda sid, pos: pos == 0)
    with pytest.raises(TypeError, match="block 0 "):
        p.choose_victims(2, 100.5)  # block 0's answer has passed: asked again
    oracle.answer = None
    assert sorted(p.choose_victims(2, 100.5)) == [0, 1]
    p.check_integrity()


def test_belady_session_block_answer_must_be_a_number():
    """A live session's blocks are asked at each search: a str answer raised an operand
    TypeError mid-search; now the error names the block."""
    oracle = Oracle()
    p = BeladyPolicy(oracle=oracle)
    m = make(p, num_blocks=8)
    run_step(m, "a", tokens(0, 8), now=0.0, tool="x")
    oracle.answer, oracle.when = "5", (lambda sid, pos: sid == "a")
    with pytest.raises(TypeError, match=r"block \d+ \(session 'a'"):
        p.choose_victims(1, 1.0)
    oracle.answer = None
    assert len(p.choose_victims(1, 1.0)) == 1


def test_oracle_ttl_answer_must_be_a_number():
    oracle = Oracle()
    policy = ClairvoyantTTLPolicy(oracle)
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(0, 8), now=0.0, tool="x")
    oracle.answer, oracle.when = "5", (lambda sid, pos: sid == "a")
    with pytest.raises(TypeError, match=r"block \d+ \(session 'a'"):
        policy.eviction_order(1.0)
    oracle.answer = None
    assert len(policy.eviction_order(1.0)) == 2
