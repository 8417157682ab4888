"""Workload generators: determinism, validity, and statistics against their calibration."""

from __future__ import annotations

import numpy as np
import pytest

from kvsaga.sim.registry import UnknownNameError
from kvsaga.sim.workloads import WORKLOADS, generate


@pytest.fixture(scope="module")
def traces() -> dict:
    # A few hundred sessions per family: enough for broad bounds, ~1 s in all.
    return {name: generate(name, 300, seed=7) for name in WORKLOADS}


def test_registry_and_unknown_name():
    assert {"swe", "web", "bfcl", "assistant"} <= set(WORKLOADS)
    with pytest.raises(UnknownNameError, match="unknown workload 'nope'; known: .*swe"):
        generate("nope", 1, seed=0)
    with pytest.raises(ValueError):  # also a ValueError
        WORKLOADS["nope"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_sessions": -1}, "num_sessions"),
        ({"seed": -2}, "seed"),
        ({"arrival_rate": 0.0}, "arrival_rate"),
        ({"scale": float("nan")}, "scale"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"workload": "bfcl", "num_sessions": 2, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        generate(**args)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_deterministic_per_seed_and_prefix_stable(name):
    a = generate(name, 20, seed=3)
    assert a == generate(name, 20, seed=3)
    assert a != generate(name, 20, seed=4)
    # Session i does not depend on how many sessions are drawn.
    assert generate(name, 5, seed=3) == a[:5]


def test_sessions_are_well_formed(traces):
    for name, sessions in traces.items():
        spec = WORKLOADS[name]
        ids = [s.id for s in sessions]
        assert len(set(ids)) == len(ids)
        arrivals = [s.arrival_s for s in sessions]
        assert arrivals == sorted(arrivals) and arrivals[0] > 0
        tools = {t.name for t in spec.tools}
        for s in sessions:
            assert s.workflow == name
            assert s.shared_prefix.group == f"{name}-system"
            assert s.shared_prefix.tokens == spec.prefix_tokens
            assert s.total_tokens <= spec.max_context_tokens
            # Fewer than steps_min only when the context window cut the session short.
            assert 1 <= s.num_steps <= spec.steps_max
            assert {st.tool for st in s.steps[:-1]} <= tools


def test_tool_sequences_follow_the_chain(traces):
    # Every observed transition has nonzero probability, and the empirical frequencies of
    # the most common source match the specified row.
    for name, sessions in traces.items():
        spec = WORKLOADS[name]
        index = {t.name: i for i, t in enumerate(spec.tools)}
        counts = np.zeros((len(spec.tools),) * 2)
        for s in sessions:
            seq = [st.tool for st in s.steps[:-1]]
            for a, b in zip(seq, seq[1:], strict=False):
                counts[index[a], index[b]] += 1
        p = spec.transition_matrix()
        assert np.all(counts[p == 0] == 0), name
        src = int(np.argmax(counts.sum(axis=1)))
        empirical = counts[src] / counts[src].sum()
        assert np.abs(empirical - p[src]).max() < 0.05, (name, empirical, p[src])


def _stats(sessions):
    steps = np.array([s.num_steps for s in sessions])
    prompts = np.array([s.prompt_length(k) for s in sessions for k in range(s.num_steps)])
    outputs = np.array([st.output_tokens for s in sessions for st in s.steps])
    tool_s = np.array([st.tool_s for s in sessions for st in s.steps[:-1]])
    final = np.array([s.total_tokens for s in sessions])
    return steps, prompts, outputs, tool_s, final


def test_swe_matches_its_calibration(traces):
    steps, prompts, outputs, tool_s, final = _stats(traces["swe"])
    assert 20 <= steps.mean() <= 37  # [SAGA] 37, [Exgentic] 21.9
    assert 60 <= prompts.sum() / outputs.sum() <= 200  # [Manus] ~100:1
    assert 30_000 <= np.mean(final) <= 90_000  # [Continuum] 70K +- 20K
    assert np.percentile(final, 90) >= 80_000  # contexts grow to 30-100K
    assert 0.03 <= np.median(tool_s) <= 0.3  # file tools dominate: tens to hundreds of ms
    assert np.max(tool_s) >= 20  # test runs reach tens of seconds
    assert 0.5 <= tool_s.mean() <= 3.0  # [Continuum] 0.925 s mean, heavy tail


def test_web_has_larger_observations_and_slower_actions(traces):
    def mean_obs(sessions):
        return np.mean([st.input_tokens for s in sessions for st in s.steps[1:]])

    steps, _, outputs, tool_s, _ = _stats(traces["web"])
    assert 12 <= steps.mean() <= 22  # [SAGA] 18
    assert 50 <= outputs.mean() <= 200  # [SAGA] 50-200
    assert mean_obs(traces["web"]) > 1.5 * mean_obs(traces["swe"])
    assert 0.4 <= np.median(tool_s) <= 2.0  # seconds-long actions, [SAGA] web p50 0.85 s


def test_bfcl_has_few_turns(traces):
    steps, prompts, _, tool_s, _ = _stats(traces["bfcl"])
    assert 5 <= steps.mean() <= 7.5 and 1.5 <= steps.std() <= 3.5  # [Continuum] 6.3 +- 2.3
    assert 1.3 <= tool_s.mean() <= 2.8  # [Continuum] 1.92 +- 2.13 s
    assert 3_000 <= prompts.mean() <= 15_000  # [Mooncake] 8.6K input per request


def test_assistant_has_long_human_gaps(traces):
    steps, prompts, outputs, tool_s, _ = _stats(traces["assistant"])
    assert steps.mean() >= 50  # [TraceLab] ~84, cut by the context window
    assert np.median(tool_s) <= 0.5  # [TraceLab] median ~125 ms
    assert 5 <= tool_s.mean() <= 40 and tool_s.std() >= 60  # [Exgentic] 13 s, sd 176 s
    assert tool_s.max() >= 600  # human-paced idle gaps of many minutes
    assert prompts.sum() / outputs.sum() >= 120  # [TraceLab] 294:1


def test_arrivals_are_poisson_at_the_given_rate():
    sessions = generate("bfcl", 400, seed=1, arrival_rate=2.0)
    gaps = np.diff([0.0] + [s.arrival_s for s in sessions])
    assert gaps.mean() == pytest.approx(0.5, rel=0.15)
    assert gaps.std() == pytest.approx(0.5, rel=0.2)  # exponential: sd = mean


def test_scale_shrinks_tokens_and_times_but_keeps_structure():
    full = generate("swe", 10, seed=2)
    small = generate("swe", 10, seed=2, scale=0.1)
    for f, s in zip(full, small, strict=True):
        assert f.arrival_s == s.arrival_s
        assert [st.tool for st in f.steps] == [st.tool for st in s.steps]
        assert s.total_tokens < 0.2 * f.total_tokens
        for fs, ss in zip(f.steps, s.steps, strict=True):
            assert ss.tool_s == pytest.approx(0.1 * fs.tool_s)
            assert ss.input_tokens >= 1 and ss.output_tokens >= 1


def test_perturb_scales_latency_spread_steps_and_tokens():
    from kvsaga.sim.workloads import perturb

    base = WORKLOADS["swe"]
    v = perturb(base, "swe-x", latency=3.0, spread=1.5, steps=0.5, tokens=2.0)
    for a, b in zip(base.tools, v.tools, strict=True):
        assert b.p50_s == pytest.approx(3 * a.p50_s)
        assert b.sigma == pytest.approx(1.5 * a.sigma)
        assert b.observation_tokens == pytest.approx(2 * a.observation_tokens)
    assert v.steps_mean == pytest.approx(base.steps_mean / 2) and v.name == "swe-x"
    assert v.prefix_tokens == 2 * base.prefix_tokens
    lat = [s.tool_s for x in v.generate(200, 3) for s in x.steps if s.tool]
    base_lat = [s.tool_s for x in base.generate(200, 3) for s in x.steps if s.tool]
    assert np.median(lat) > 2 * np.median(base_lat)
    with pytest.raises(ValueError, match="latency"):
        perturb(base, "bad", latency=0.0)


def test_mixed_interleaves_by_arrival_and_rejects_clashing_ids():
    from kvsaga.sim.workloads import mixed

    a, b = generate("swe", 5, seed=1), generate("bfcl", 5, seed=1)
    m = mixed(a, b)
    assert len(m) == 10 and {s.workflow for s in m} == {"swe", "bfcl"}
    assert [s.arrival_s for s in m] == sorted(s.arrival_s for s in m)
    with pytest.raises(ValueError, match="distinct"):
        mixed(a, a)
