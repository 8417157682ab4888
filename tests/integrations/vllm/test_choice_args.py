"""The vLLM integration's named settings (gate_args growth_charge and admission_order,
scheduler_args work, the offload tier's eviction) are checked by one helper,
`kvsaga._validate.check_one_of`: a ValueError naming the setting, every allowed value in
order, and what was given; an unhashable value is refused the same way, not a TypeError."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("vllm")

from kvsaga.integrations.vllm import offload_transfer_config  # noqa: E402
from kvsaga.integrations.vllm.gate_growth import GateGrowth  # noqa: E402
from kvsaga.integrations.vllm.gate_order import WaitingOrder  # noqa: E402
from kvsaga.integrations.vllm.scheduler import SessionRanker  # noqa: E402

CASES = [
    (lambda v: GateGrowth(64.0, 0.05, v), "gate parameter growth_charge",
     "step, remaining", "remaining"),
    (lambda v: WaitingOrder(v, 60.0, 4.0), "gate parameter admission_order",
     "fifo, predicted", "predicted"),
    (lambda v: SessionRanker(work=v), "scheduler_args work", "tokens, steps", "tokens"),
    (lambda v: offload_transfer_config(2**20, v), "eviction", "lru, arc, ttl, graph", "ttl"),
]


@pytest.mark.parametrize(("make", "label", "allowed", "good"), CASES)
@pytest.mark.parametrize("bad", ["bogus", "", None, ["lru"], {"a": 1}])
def test_a_value_outside_the_choices_is_named(make, label, allowed, good, bad):
    with pytest.raises(ValueError) as e:
        make(bad)
    assert str(e.value) == f"{label} must be one of {allowed}, got {bad!r}"
    make(good)  # an allowed value passes


def test_the_chosen_values_are_kept():
    assert GateGrowth(64.0, 0.05, "remaining").charge == "remaining"
    assert WaitingOrder("predicted", 60.0, 4.0).order == "predicted"
    assert SessionRanker(work="tokens").work == "tokens"
    assert re.search(r'"eviction_policy": "lru"', offload_transfer_config(2**20, "lru"))
