"""`graph(trust=True)` and infinite forecasts: a session graph evicted from while it forecast
it would never be back (demoted and released until an event, or hinted `expected_s=inf`) is
not scored, and its next `begin_step` works (it raised a math domain error from the trust's
log error, inside the manager's `begin_step`, with the session left RUNNING)."""

from __future__ import annotations

import contextlib
import math
import random

import pytest

from kvsaga import KVCacheManager, KVSpec, OutOfBlocks
from kvsaga.policy import GraphPolicy
from kvsaga.policy.trust import PredictionTrust
from tests.policy.helpers import BS, make, run_step, tokens


def test_a_demoted_released_session_evicted_from_resumes():
    p = GraphPolicy(trust=True)  # demoted_release: on by default
    m = make(p, num_blocks=8)
    run_step(m, "a", tokens(0, 16), now=0.0, tool="grep")  # a: 4 cached blocks
    p.session_deferred(m.sessions["a"], True, 0.5)  # the scheduler demotes a
    run_step(m, "b", tokens(100, 24), now=1.0, tool="grep")  # b needs 6: 2 of a's go
    assert "a" not in p._trust_pending  # its forecast was inf: nothing to score
    st = m.begin_step("a", tokens(0, 20), now=2.0)
    assert st.num_cached_tokens == 8  # the 2 blocks of a that survived
    m.allocate_slots("a", 20 - st.num_cached_tokens, now=2.0)  # evicts b's: a still runs
    m.finish_step("a", now=2.0, tool="grep")
    m.check_integrity()
    p.check_integrity()
    assert p.trust.errors == {}


def test_a_demoted_session_hinted_never_back_resumes():
    """demoted_release off: the demotion's forecast reads the hint, inf."""
    p = GraphPolicy(trust=True, demoted_release=False)
    m = make(p, num_blocks=8)
    run_step(m, "a", tokens(0, 16), now=0.0, tool="grep", expected_s=math.inf)
    p.session_deferred(m.sessions["a"], True, 0.5)
    run_step(m, "b", tokens(100, 24), now=1.0, tool="grep")
    assert "a" not in p._trust_pending
    st = m.begin_step("a", tokens(0, 20), now=2.0)
    assert m.sessions["a"].is_running and st.block_ids == m.sessions["a"].block_ids
    m.check_integrity()
    p.check_integrity()


def test_a_finite_forecast_is_still_scored():
    """The same demotion with a finite hint: graph's forecast is noted and scored."""
    p = GraphPolicy(trust=True, demoted_release=False)
    m = make(p, num_blocks=8)
    run_step(m, "a", tokens(0, 16), now=0.0, tool="grep", expected_s=3.0)
    p.session_deferred(m.sessions["a"], True, 0.5)
    run_step(m, "b", tokens(100, 24), now=1.0, tool="grep")
    wf, state, graph_s, _, at = p._trust_pending["a"]
    assert (wf, state, at) == ("default", "demoted", 1.0) and 0 < graph_s < math.inf
    m.begin_step("a", tokens(0, 20), now=2.0)
    n, s1, _, _ = p.trust.errors[("default", "demoted")]
    assert n == 1 and s1 == pytest.approx(
        min(max(math.log(1.0 / max(graph_s, 1e-3)), -5.0), 5.0))


@pytest.mark.parametrize("field", [2, 3, 4])
@pytest.mark.parametrize("bad", [math.inf, math.nan, -1.0, "1"])
def test_trust_refuses_a_non_finite_or_negative_time_and_changes_nothing(field, bad):
    t = PredictionTrust(prior=4.0)
    t.add("w", "paused", 2.0, 1.0, 1.0)
    before = {k: list(v) for k, v in t.errors.items()}, t.version
    args = ["w", "paused", 2.0, 1.0, 1.0]
    args[field] = bad
    name = ("observed_s", "graph_s", "recency_s")[field - 2]
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        t.add(*args)
    assert ({k: list(v) for k, v in t.errors.items()}, t.version) == before


def _walk(m: KVCacheManager, rng: random.Random, now: float) -> None:
    """One random event of a small agent workload: steps (resumes that keep some of their
    context), finishes with inf and huge hints, demotions, preemptions, ends, ticks."""
    p = m.policy
    running = sorted(k for k, v in m.sessions.items() if v.is_running)
    paused = sorted(k for k, v in m.sessions.items() if not v.is_running)
    op = rng.choice(["begin"] * 4 + ["finish"] * 3 + ["preempt", "end", "tick", "hint",
                                                     "resume", "defer", "undefer"])
    if op == "begin":
        sid = f"s{rng.randrange(6)}"
        s = m.sessions.get(sid)
        if s is not None and s.is_running:
            return
        old = list(s.token_ids[: s.num_computed]) if s is not None else []
        keep = rng.choice([len(old), len(old), len(old) // 2])
        prompt = (old[:keep] + [rng.randrange(40) for _ in range(rng.randrange(1, 14))])[-36:]
        st = m.begin_step(sid, prompt, now=now, workflow=f"w{rng.randrange(2)}")
        m.allocate_slots(sid, len(prompt) - st.num_cached_tokens, now=now)
    elif op == "finish" and running:
        m.finish_step(rng.choice(running), now=now, tool=rng.choice([None, "grep", "test"]),
                      expected_s=rng.choice([None, 0.0, 0.3, 5.0, math.inf, 1e300]))
    elif op == "preempt" and running:
        m.preempt(rng.choice(running), now=now)
    elif op == "end" and m.sessions:
        m.end_session(rng.choice(sorted(m.sessions)), now=now)
    elif op == "tick":
        m.tick(now)
    elif op == "hint" and paused:
        m.pause_hint(rng.choice(paused), now=now, tool="grep",
                     expected_s=rng.choice([None, 1.0, math.inf, 1e300]))
    elif op == "resume" and paused:
        m.resume_hint(rng.choice(paused), now=now)
    elif op in ("defer", "undefer") and paused:
        p.session_deferred(m.sessions[rng.choice(paused)], op == "defer", now)


@pytest.mark.parametrize("demoted_release", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_random_workloads_with_trust_never_fail_a_step(seed, demoted_release):
    """(On each core: conftest.py.) Every event either works or is refused with
    OutOfBlocks; no forecast noted for scoring is infinite, every error learned finite."""
    rng = random.Random(seed)
    p = GraphPolicy(trust=True, demoted_release=demoted_release)
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, policy=p, clock=lambda: 0.0)
    now = 0.0
    for _ in range(150):
        with contextlib.suppress(OutOfBlocks):
            _walk(m, rng, now)
        now += rng.choice([0.0, 1e-3, 0.3, 2.0, 40.0])
        m.check_integrity()
        p.check_integrity()
        assert all(v[2] < math.inf for v in p._trust_pending.values())
    assert all(math.isfinite(x) for e in p.trust.errors.values() for x in e)
