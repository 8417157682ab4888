"""`belady`'s plain-block heap when cached answers expire (fuzz2 lane).

A plain block's cached answer is asked again once its time has passed. That refresh used to
happen only when the block's heap entry was popped, after every entry with a later (but
possibly earlier than the refreshed) answer had been yielded: the plain stream came out of
order, the victim search evicted a block needed sooner than one it kept, and a second read
at the same time (the refresh done by then) gave another order.
"""

from __future__ import annotations

import math
import random

from kvsaga.policy import BeladyPolicy
from tests.policy.helpers import TableOracle, make, run_step, tokens


def _plain_session(oracle: TableOracle):
    """Session "a"'s three blocks (positions 0, 1, 2) left as plain cache at t = 0.5."""
    m = make(BeladyPolicy(oracle), num_blocks=16)
    run_step(m, "a", tokens(100, 12), now=0.0, tool="x")  # blocks 0, 1, 2
    m.end_session("a", now=0.5)
    return m


def test_expired_answer_is_ranked_by_its_refreshed_time():
    # Position 0 was next needed at t = 8, position 1 at t = 15, position 2 never.
    oracle = TableOracle({}, plain={0: 8.0, 1: 15.0})
    m = _plain_session(oracle)
    assert m.policy.eviction_order(1.0) == [2, 1, 0]
    oracle.plain[0] = 20.0  # t = 8 passed unused: block 0 is next needed at t = 20
    first = m.policy.eviction_order(10.0)
    second = m.policy.eviction_order(10.0)
    assert first == second == [2, 0, 1]


def test_victim_search_evicts_the_farthest_after_an_expiry():
    oracle = TableOracle({}, plain={0: 8.0, 1: 15.0})
    m = _plain_session(oracle)
    assert m.policy.eviction_order(1.0) == [2, 1, 0]
    oracle.plain[0] = 20.0
    # Never-used block 2, then block 0 (t = 20) before block 1 (t = 15).
    assert m.policy.choose_victims(2, 10.0) == [2, 0]
    m.check_integrity()


def test_random_expiries_reads_agree_and_follow_the_oracle():
    """Random plain answers that move only once passed (the oracle's stability contract):
    every read is in non-increasing order of the current answers (ties: deeper first), and
    a second read at the same time with no event between gives the same list."""
    rng = random.Random(20261205)
    for _ in range(40):
        n_sessions = rng.randint(1, 4)
        plain = {p: rng.choice([math.inf, rng.uniform(1.0, 10.0)]) for p in range(8)}
        oracle = TableOracle({}, plain=plain)
        m = make(BeladyPolicy(oracle), num_blocks=64)
        for i in range(n_sessions):  # same positions, so answers tie across sessions
            run_step(m, f"s{i}", tokens(1000 * i, 4 * rng.randint(1, 8)), now=0.0, tool="x")
            m.end_session(f"s{i}", now=0.5)
        now = 1.0
        for _ in range(6):
            now += rng.uniform(0.5, 6.0)
            for p, t in plain.items():
                if t < now:
                    plain[p] = rng.choice([math.inf, now + rng.uniform(0.0, 10.0)])
            first = m.policy.eviction_order(now)
            assert m.policy.eviction_order(now) == first
            pos = m.policy._pos
            keys = [(plain.get(pos[b], math.inf), pos[b]) for b in first]
            assert keys == sorted(keys, reverse=True)


def test_a_read_does_not_change_a_later_search():
    """Reads refresh cached answers, which the oracle's contract makes a memo: a search at a
    later time names the same victims whether or not a read came first."""
    rng = random.Random(1205)
    for _ in range(30):
        plain = {p: rng.choice([math.inf, rng.uniform(1.0, 10.0)]) for p in range(8)}
        later = {p: rng.choice([math.inf, rng.uniform(12.0, 30.0)]) for p in range(8)}
        sizes = [4 * rng.randint(1, 8) for _ in range(3)]
        managers = []
        for _twin in range(2):
            oracle = TableOracle({}, plain=dict(plain))
            m = make(BeladyPolicy(oracle), num_blocks=64)
            for i, n in enumerate(sizes):
                run_step(m, f"s{i}", tokens(1000 * i, n), now=0.0, tool="x")
                m.end_session(f"s{i}", now=0.5)
            managers.append((m, oracle))
        t1, t2 = rng.uniform(1.0, 11.0), 11.0
        for _m, oracle in managers:  # answers passed by t2 move past it (the contract)
            oracle.plain.update({p: later[p] for p, t in plain.items() if t < t2})
        with_read, alone = managers
        with_read[0].policy.eviction_order(t1)
        k = rng.randint(1, 8)
        assert with_read[0].policy.choose_victims(k, t2) == alone[0].policy.choose_victims(k, t2)
