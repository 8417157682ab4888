"""Policies run against the narrow `BlockView`, with no manager behind them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvsaga.policy import POLICIES, BlockView
from kvsaga.session import PauseHint
from tests.policy.helpers import FakeView, build


def _session(sid: str) -> SimpleNamespace:
    return SimpleNamespace(session_id=sid, workflow="w", block_ids=[], block_hashes=[])


def test_the_manager_and_the_fake_are_block_views():
    from tests.policy.helpers import make

    assert isinstance(make("lru"), BlockView)
    assert isinstance(FakeView(4), BlockView)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_orders_blocks_from_a_fake_view(name):
    view = FakeView(8)
    p = build(name)
    p.bind(view)
    a, b = _session("a"), _session("b")
    for s in (a, b):
        p.step_started(s, 0.0)
    for pos in (1, 0):  # released tail first, as the manager does
        view.cache(p, 4 + pos, "b", pos)
        view.cache(p, pos, "a", pos)
    p.step_finished(a, 0.0, PauseHint(tool="t"))
    p.step_finished(b, 0.0, PauseHint(last_step=True))
    view.cache(p, 7, None, 0)  # one plain block
    order = p.choose_victims(5, 1.0)
    assert sorted(order) == [0, 1, 4, 5, 7]
    # Tails before heads within each session.
    assert order.index(1) < order.index(0) and order.index(5) < order.index(4)
    if hasattr(p, "check_integrity"):
        p.check_integrity()
    view.cached.discard(1)
    p.block_uncached(1)
    assert 1 not in p.choose_victims(5, 2.0)
