"""`PauseHint.expected_s` is a float once checked: an int too large for a float (a JSON
integer of 309+ digits is one) is refused at the hint, naming the field, instead of raising
OverflowError later in a policy's or the vLLM gate's float arithmetic (inside vLLM's
`schedule()`, which killed the engine core for every client)."""

from __future__ import annotations

import json
import math

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.errors import InvalidRequest
from kvsaga.session import PauseHint

HUGE = json.loads("1" + "0" * 400)  # valid JSON: json.loads gives a Python int


@pytest.mark.parametrize("value", [HUGE, -HUGE, 10**5000, 2**1024],
                         ids=["1e400", "-1e400", "1e5000", "2**1024"])
def test_an_int_too_large_for_a_float_is_refused_naming_the_field(value):
    with pytest.raises(InvalidRequest, match="expected_s"):
        PauseHint(tool="t", expected_s=value)


@pytest.mark.parametrize("value", [math.nan, -1, -0.5, -math.inf, True, "3", [1]])
def test_nan_negative_and_non_numbers_are_refused_as_before(value):
    with pytest.raises(InvalidRequest, match="expected_s"):
        PauseHint(expected_s=value)


@pytest.mark.parametrize("value", [0, 3, 2**1023, 1.5, 0.0, 1e308, 5e-324, math.inf],
                         ids=["0", "3", "2**1023", "1.5", "0.0", "1e308", "5e-324", "inf"])
def test_an_accepted_expected_s_is_stored_as_a_float(value):
    hint = PauseHint(tool="t", expected_s=value)
    assert type(hint.expected_s) is float
    assert hint.expected_s == float(value)
    assert hint == PauseHint(tool="t", expected_s=float(value))  # equal to the float's hint
    assert PauseHint().expected_s is None


@pytest.mark.parametrize("policy", ["ttl", "graph"])
def test_the_manager_refuses_it_and_keeps_the_step_open(policy):
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 8, policy=policy)
    m.begin_step("a", [1, 2, 3, 4, 5])
    m.allocate_slots("a", 5)
    with pytest.raises(InvalidRequest, match="expected_s"):
        m.finish_step("a", tool="t", expected_s=HUGE)
    assert m.session("a").is_running  # state unchanged: the step is still open
    m.finish_step("a", tool="t", expected_s=2**1000)  # a large int that fits: a float pause
    assert m.session("a").hint.expected_s == float(2**1000)
    with pytest.raises(InvalidRequest, match="expected_s"):
        m.pause_hint("a", tool="t", expected_s=HUGE)
    assert m.session("a").hint.expected_s == float(2**1000)
