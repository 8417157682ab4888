"""StepCost (kvsaga.integrations.vllm.step_cost): the online fit of a step's duration the
connector uses to decide whether a held-back step may ride along in vLLM's batch."""

from __future__ import annotations

import pytest

from kvsaga.integrations.vllm.step_cost import StepCost


def _fed(fixed: float, per_token: float, tokens, **kw) -> StepCost:
    c = StepCost(**kw)
    for n in tokens:
        c.observe(n, fixed + per_token * n)
    return c


@pytest.mark.parametrize("fixed,per_token", [(0.8, 0.008), (0.1, 0.02), (0.03, 0.0005)])
def test_recovers_fixed_and_per_token_cost(fixed, per_token):
    c = _fed(fixed, per_token, [3, 250, 1, 2, 80, 4, 4, 300])
    got = c.fit()
    assert got == pytest.approx((fixed, per_token), rel=1e-6)


def test_no_answer_before_min_steps_or_without_spread_or_evidence():
    assert _fed(0.5, 0.01, [1, 100], min_steps=3).fit() is None  # two steps only
    assert _fed(0.5, 0.01, [8] * 20).fit() is None  # same tokens every step: no slope
    c = _fed(0.5, 0.01, [1, 100, 7])
    c.observe(0, 9.0)  # nothing ran: the interval is not a step
    c.observe(50, 0.0)  # the clock did not move
    assert c.steps == 3 and c.fit() == pytest.approx((0.5, 0.01))


def test_follows_a_machine_whose_cost_changes():
    c = _fed(0.1, 0.02, [1, 200, 5, 90] * 10, alpha=0.2)
    for n in [1, 200, 5, 90] * 10:
        c.observe(n, 0.8 + 0.008 * n)
    fixed, per_token = c.fit()
    assert fixed == pytest.approx(0.8, rel=0.05) and per_token == pytest.approx(0.008, rel=0.05)


def test_cheap_compares_the_added_tokens_with_steps_of_fixed_cost():
    prefill_bound = _fed(0.1, 0.02, [1, 200, 5])  # 300 tokens: 6 s, 60 steps' fixed cost
    step_bound = _fed(0.8, 0.008, [1, 200, 5])  # 300 tokens: 2.4 s, 3 steps'
    assert not prefill_bound.cheap(300, 10) and step_bound.cheap(300, 10)
    assert not step_bound.cheap(300, 2)
    assert not StepCost().cheap(1, 100)  # nothing fitted yet: not cheap


@pytest.mark.parametrize("kw", [{"alpha": 0}, {"alpha": 1.5}, {"alpha": "x"},
                                {"min_steps": 0}, {"min_steps": 2.5}])
def test_bad_parameters_are_named(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        StepCost(**kw)
