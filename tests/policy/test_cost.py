"""The default cost model and the protocol."""

from __future__ import annotations

import pytest

from kvsaga.policy.cost import CostModel, PrefillCost

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True


def test_default_constants_by_hand():
    c = PrefillCost()
    assert isinstance(c, CostModel)
    assert c.recompute_s(16, 0) == pytest.approx(16 * 1e-4 + 3.3e-9 * 136)
    assert c.recompute_s(16, 1000) == pytest.approx(16 * 1e-4 + 3.3e-9 * (16_000 + 136))
    assert c.reload_s(1) == pytest.approx(2 * 2**20 / 25e9 + 10e-6)
    assert c.reload_s(0) == 0.0
    # 10k tokens from scratch: about a second on an A100 for an 8B model.
    assert 0.8 < c.recompute_s(10_000, 0) < 1.5
    # Reloading beats recomputing by an order of magnitude.
    assert c.reload_s(1) * 10 < c.recompute_s(16, 0)


def test_deeper_blocks_cost_more():
    c = PrefillCost()
    assert c.recompute_s(16, 0) < c.recompute_s(16, 16) < c.recompute_s(16, 10_000)


@pytest.mark.parametrize(
    "kw",
    [{"s_per_token": -1.0}, {"host_bandwidth": 0.0}, {"block_bytes": 0}, {"block_bytes": True}],
)
def test_bad_constants_name_the_field(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        PrefillCost(**kw)


def test_a_duck_typed_model_is_a_cost_model():
    class Flat:
        def recompute_s(self, num_tokens, context_tokens):
            return 1.0

        def reload_s(self, num_blocks):
            return 0.1

    assert isinstance(Flat(), CostModel)
