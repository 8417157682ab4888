"""The Agent Execution Graph learns a synthetic workflow's chain and pause distributions."""

from __future__ import annotations

import math
import random

import pytest

from kvsaga.policy.aeg import END, NO_TOOL, START, ExecutionGraph

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

# A workflow whose truth we know. After an LLM step the session calls `search` or `read`,
# or ends (END: that step was the last). Paused on a tool, it is abandoned (ends while
# paused) with probability ABANDON[tool], else resumes after a log-normal pause.
NEXT = {
    START: {"search": 1.0},
    "search": {"search": 0.3, "read": 0.6, END: 0.1},
    "read": {"search": 0.5, END: 0.5},
}
PAUSE = {"search": (math.log(0.5), 0.8), "read": (math.log(2.0), 0.3)}  # (mu, sigma)
ABANDON = {"search": 0.0, "read": 0.2}
ARRIVAL_S = 2.0


def pick(rng: random.Random, probs: dict[str, float]) -> str:
    x, acc = rng.random(), 0.0
    for k, p in probs.items():
        acc += p
        if x < acc:
            return k
    return k


def replay(graph: ExecutionGraph, num_sessions: int, seed: int = 0) -> list[int]:
    """Feed the graph `num_sessions` sessions; return each one's number of LLM steps."""
    rng = random.Random(seed)
    steps = []
    for i in range(num_sessions):
        sid, t = f"s{i}", i * ARRIVAL_S
        graph.step_started(sid, "w", t)
        kind, n = START, 1
        while True:
            t += 0.3  # the LLM step
            kind = pick(rng, NEXT[kind])
            if kind == END:
                graph.session_ended(sid, t)  # ended while running: that was the last step
                break
            graph.step_finished(sid, kind, t)
            if rng.random() < ABANDON[kind]:
                graph.session_ended(sid, t + 1.0)
                break
            mu, sigma = PAUSE[kind]
            t += rng.lognormvariate(mu, sigma)
            graph.step_started(sid, "w", t)
            n += 1
        steps.append(n)
    return steps


@pytest.fixture(scope="module")
def learned():
    g = ExecutionGraph()
    steps = replay(g, 4000)
    return g, steps


def test_pause_distributions_converge(learned):
    g, _ = learned
    for kind, (mu, sigma) in PAUSE.items():
        d = g.pause_dist("w", kind)
        assert d.mu == pytest.approx(mu, abs=0.05)
        assert d.sigma == pytest.approx(sigma, abs=0.05)
        assert g.resume_share("w", kind) == pytest.approx(1 - ABANDON[kind], abs=0.03)
        p = g.predict("w", kind, 0.0)
        assert p.p_resume == pytest.approx(1 - ABANDON[kind], abs=0.03)
        assert p.expected_s == pytest.approx(math.exp(mu), rel=0.07)  # the median


def test_steps_and_arrivals_converge(learned):
    g, steps = learned
    assert g.mean_steps("w") == pytest.approx(sum(steps) / len(steps), rel=0.01)
    assert g.arrival_interval("w") == pytest.approx(ARRIVAL_S)
    assert g.workflows["w"].num_sessions == 4000


def test_predictions_follow_elapsed_time(learned):
    g, _ = learned
    # A read that has taken 10x its median has probably been abandoned, and a long pause is
    # expected to go on longer (log-normal residual time grows).
    p0, p1 = g.predict("w", "read", 0.0), g.predict("w", "read", 20.0)
    assert p1.p_resume < 0.05 < 0.7 < p0.p_resume
    s1, s2 = g.predict("w", "search", 1.0), g.predict("w", "search", 10.0)
    assert s2.expected_s > s1.expected_s
    # Nothing seen: the prior, and fallbacks from specific to general.
    assert g.predict("other", "search", 0.0).expected_s == pytest.approx(
        g.pause_dist("w", "search").median
    )
    assert 0 < g.predict("w", "never-seen", 0.0).p_resume < 1


def test_resume_window_matches_its_definition():
    g = ExecutionGraph()
    replay(g, 300, seed=1)
    d, p0 = g.pause_dist("w", "read"), g.resume_share("w", "read")
    e, w = 1.0, 3.0
    p, held = g.resume_window("w", "read", e, w)
    s = p0 * d.sf(e) + 1 - p0
    assert p == pytest.approx(p0 * (d.sf(e) - d.sf(e + w)) / s)
    # E[time held within the window] by numerical integration of the survival function.
    n = 4000
    integral = sum(p0 * d.sf(e + (i + 0.5) * w / n) + 1 - p0 for i in range(n)) * w / n
    assert held == pytest.approx(integral / s, rel=1e-4)
    assert g.resume_window("w", "read", e, 0.0) == (0.0, 0.0)


def test_resume_window_is_remembered_until_a_resume_or_an_abandonment_changes_it():
    g = ExecutionGraph()
    g.step_started("a", "w", 0.0)
    g.step_finished("a", "read", 0.0)
    first = g.resume_window("w", "read", 0.5, 2.0)
    assert g.resume_window("w", "read", 0.5, 2.0) is first  # the same question, remembered
    g.step_started("a", "w", 9.0)  # a 9 s pause on read: the fit moves
    moved = g.resume_window("w", "read", 0.5, 2.0)
    assert moved != first
    g.step_finished("a", "read", 9.0)
    g.session_ended("a", 9.5)  # abandoned while paused: p0 falls
    assert g.resume_window("w", "read", 0.5, 2.0) not in (first, moved)


def test_no_tool_pauses_that_end_learn_p_zero():
    g = ExecutionGraph()
    for i in range(20):
        g.step_started(f"s{i}", "chat", i)
        g.step_finished(f"s{i}", None, i + 0.5)
        g.session_ended(f"s{i}", i + 0.5)  # finish_step(tool=None) then end_session
    node = g.workflows["chat"].nodes[NO_TOOL]
    assert (node.resumed, node.abandoned) == (0, 20)
    # Smoothed by the prior pseudo-counts (1 resume, 0.1 abandon): 1 / 21.1.
    assert g.predict("chat", None, 0.0).p_resume == pytest.approx(1 / 21.1)


def test_preempted_retry_is_not_a_resume_and_relabel_moves_the_pause():
    g = ExecutionGraph()
    g.step_started("a", "w", 0.0)
    assert g.step_started("a", "w", 0.1) is None  # the same step, retried
    g.step_finished("a", None, 1.0)
    g.relabel("a", "search")  # the tool became known after the pause began
    assert g.step_started("a", "w", 3.0) == ("search", 2.0)
    assert g.workflows["w"].nodes["search"].resumed == 1


def test_a_withdrawn_step_is_neither_resumed_twice_nor_abandoned():
    """A resumed step preempted, then aborted while requeued (`resume_withdrawn`): the resume
    was learned once; the step that replaces it, or an end while it waits, learns nothing."""
    g = ExecutionGraph()
    g.step_started("a", "w", 0.0)
    g.step_finished("a", "search", 1.0)
    assert g.step_started("a", "w", 3.0) == ("search", 2.0)
    g.step_withdrawn("a")
    assert g.step_started("a", "w", 9.0) is None  # the retry of the withdrawn step
    g.step_finished("a", "search", 10.0)
    assert g.step_started("a", "w", 10.5) == ("search", 0.5)  # later pauses learn again
    g.step_withdrawn("a")
    g.session_ended("a", 40.0)  # gone while its withdrawn step waited
    node = g.workflows["w"].nodes["search"]
    assert (node.resumed, node.abandoned) == (2, 0)
    assert g.workflows["w"].num_steps == 2  # the two completed steps
    g.step_withdrawn("nobody")  # unknown sessions are ignored

