"""kvsaga.integrations.vllm.room_asks: what the connector releases when vLLM asks for room
before preempting (runs without vLLM; the connector's use of it is tested against vLLM's
scheduler in tests/integrations/vllm/test_connector.py)."""

from __future__ import annotations

import pytest

from kvsaga.integrations.vllm.room_asks import RoomAsks


def test_asks_double_while_they_go_on_up_to_a_step_and_end_with_a_step_without_one():
    asks = RoomAsks.for_budget(max_num_batched_tokens=100, block_size=16)
    assert asks.max_blocks == 8  # ceil(100 / 16) + the block a last token may open
    assert [asks.ask(), asks.step_done()] == [1, 1]  # a decode one block short: one
    assert [asks.ask(), asks.step_done()] == [2, 2]  # asked again next step: twice that
    assert [asks.ask(), asks.ask(), asks.step_done()] == [4, 8, 8]
    assert [asks.ask(), asks.step_done()] == [8, 8]  # capped at a step's blocks
    assert asks.step_done() == 0  # a step without an ask ends the run
    assert [asks.ask(), asks.step_done()] == [1, 1]
    with pytest.raises(ValueError, match="max_blocks"):
        RoomAsks(0)
