"""`graph[demoted_release=1]`: a demoted session whose tool has not returned is released
(loss 0: after the dead blocks, before every live session's) until its tool returns, as
`ttl` releases it; then it is priced as graph prices any demoted session. Off (the default),
graph's decisions are unchanged (session 32; docs/policies.md)."""

from __future__ import annotations

import pytest

from kvsaga.policy import GraphPolicy, make_policy
from tests.policy.helpers import make, run_step, tokens
from tests.policy.test_scenarios import train


@pytest.mark.parametrize("value", ["yes", 2, None, 0.5])
def test_a_bad_demoted_release_flag_is_refused(value):
    with pytest.raises(ValueError, match="demoted_release"):
        GraphPolicy(demoted_release=value)


def test_the_flag_takes_a_bench_specs_number_and_is_on_by_default():
    """On by default since session 32 (the tune's walk chose it)."""
    assert GraphPolicy().demoted_release is True
    assert make_policy("graph").demoted_release is True
    assert GraphPolicy(demoted_release=0).demoted_release is False
    assert GraphPolicy(demoted_release=1).demoted_release is True
    assert make_policy("graph", demoted_release=1).demoted_release is True


def _demoted_on_its_tool(policy: GraphPolicy):
    """Demotions were seen to last 0.2-0.4 s. `d` paused at 0 on `lint` (back in 5 s, by
    the graph) and was demoted at 0.05 with its tool still out; `a` paused at 1.0 on the
    same tool with its context resident. Returns the manager at 1.0, when `d` is due back
    a second before `a`."""
    train(policy.graph, "lint", 5.0)
    for x in (0.2, 0.3, 0.4):
        policy.returns.deferred_wait.add(x)
    m = make(policy, num_blocks=8)
    run_step(m, "d", tokens(200, 12), now=0.0, tool="lint")  # 3 blocks
    policy.session_deferred(m.sessions["d"], True, 0.05)
    run_step(m, "a", tokens(100, 12), now=1.0, tool="lint")  # 3 blocks
    return m


@pytest.mark.parametrize("on", [False, True])
def test_a_demoted_session_on_its_tool_goes_first_only_with_the_option(on):
    """Off: `d`, due back sooner than `a` by its pause (the short demotions seen do not
    delay it), is kept and `a` loses its tail. On: `d` is released while its tool is out,
    so its tail goes first though its forecast is the sooner one."""
    policy = GraphPolicy(demoted_release=on)
    _demoted_on_its_tool(policy)
    p, wait, _ = policy._graph_time("d", 1.0, True, False)
    if on:
        assert (p, wait) == (0.0, float("inf"))
    else:
        assert p > 0 and wait < policy._graph_time("a", 1.0, True, False)[1]
    victims = policy.choose_victims(2, 1.0)
    assert {policy._owner[b] for b in victims} == ({"d"} if on else {"a"})
    # tail first either way
    positions = [policy._pos[b] for b in victims]
    assert positions == sorted(positions, reverse=True)


def test_once_its_tool_returns_the_demoted_session_is_priced_as_before():
    """The resume hint ends the release: `d` (tool back, still demoted) is priced exactly
    as graph without the option prices it, and `a` loses its tail again."""
    on, off = GraphPolicy(demoted_release=True), GraphPolicy(demoted_release=False)
    m_on, m_off = _demoted_on_its_tool(on), _demoted_on_its_tool(off)
    m_on.resume_hint("d", now=1.1)
    m_off.resume_hint("d", now=1.1)
    assert on._graph_time("d", 1.2, True, False) == off._graph_time("d", 1.2, True, False)
    assert on._graph_time("d", 1.2, True, False)[0] > 0
    assert {on._owner[b] for b in on.choose_victims(2, 1.2)} == {"a"}
    assert "d" in on._deferred  # still demoted: only the tool's return changed the price


def test_a_readmitted_session_is_no_longer_released():
    """Admitted again (`session_deferred` False), `d` is an ordinary paused session with the
    option on: priced by its pause, not released."""
    policy = GraphPolicy(demoted_release=True)
    m = _demoted_on_its_tool(policy)
    policy.session_deferred(m.sessions["d"], False, 1.0)
    p, wait, _ = policy._graph_time("d", 1.0, True, False)
    assert p > 0 and wait < float("inf")
    assert {policy._owner[b] for b in policy.choose_victims(2, 1.0)} == {"a"}
