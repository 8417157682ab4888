"""SessionGate's `growth_charge` (kvsaga.integrations.vllm.gate_growth): a session whose step
is queued or running is charged its expected reply under "remaining", the whole step's
growth (observation and reply) under "step"; a paused session the whole step either way."""

from __future__ import annotations

import pytest

from kvsaga.integrations.vllm.gate import SessionGate

BS = 16


def _gate(charge: str, **kw) -> SessionGate:
    # 20 blocks; growth 16 tokens (1 block) per step until one is observed; one step of it
    # reserved at admission
    return SessionGate(20, BS, **{"prior_growth_tokens": 16, "horizon_steps": 1.0,
                                  "idle_admit_s": 100.0, "growth_charge": charge, **kw})


def _learned(charge: str, **kw) -> SessionGate:
    """A gate that saw session "a" grow 4 blocks from one finish to the next (an
    observation of 4 blocks less 2 tokens, a reply of 2 tokens), with a's next step, on a
    7-block prompt, running."""
    g = _gate(charge, **kw)
    assert g.admit("a", "w", 2 * BS, 0, now=0.0)
    g.started("a0")
    g.finished("a0", "a", 2 * BS + 2, 1.0, 10.0, False)  # reply 2 tokens
    assert g.admit("a", "w", 6 * BS, 0, now=2.0)
    g.started("a1")
    g.finished("a1", "a", 6 * BS + 2, 3.0, 10.0, False)  # step growth 4 blocks, reply 2
    assert g.admit("a", "w", 7 * BS, 0, now=4.0)
    g.started("a2")
    return g


def test_a_running_step_is_charged_its_reply_not_the_whole_step():
    step, remaining = _learned("step"), _learned("remaining")
    # "step": 7 blocks + 4 blocks of growth; "remaining": 7 blocks + 2 tokens (1 block)
    assert step.committed() == 11 and remaining.committed() == 8
    # b, 10 blocks on its prompt: "step" charges it 10 + 4, "remaining" 10 + 1
    assert not step.admit("b", "w", 10 * BS, 0, now=5.0)  # 11 + 14 > 20: waits
    assert remaining.admit("b", "w", 10 * BS, 0, now=5.0)  # 8 + 11 <= 20


def test_room_charges_a_running_step_its_reply_then_whole_steps():
    # room_steps 2: "step" 2 x 4 blocks; "remaining" the reply (2 tokens) + 4 blocks, 5 blocks
    assert _learned("step", room_steps=2.0).next_step_blocks() == 8
    assert _learned("remaining", room_steps=2.0).next_step_blocks() == 5


def test_a_paused_session_is_charged_the_whole_step_either_way():
    gates = [_learned(charge) for charge in ("step", "remaining")]
    for g in gates:  # a's step ends at 7 blocks + 2 tokens: paused on its next tool
        g.finished("a2", "a", 7 * BS + 2, 5.0, 10.0, False)
    # 7 blocks + 2 tokens + a step's growth (the mean of 4 blocks and 1 block: 40 tokens)
    assert [g.committed() for g in gates] == [10, 10]


def test_remaining_charges_the_whole_step_until_a_reply_is_seen():
    for charge in ("step", "remaining"):
        g = _gate(charge)
        assert g.admit("a", "w", 7 * BS, 0, now=0.0)
        g.started("a0")
        assert g.committed() == 8  # 7 blocks + the prior's 1 block of growth


def test_an_aborted_step_teaches_no_reply():
    g = _gate("remaining")
    assert g.admit("a", "w", 7 * BS, 0, now=0.0)
    g.finished("a0", "a", 7 * BS, 1.0, 10.0, False)  # never allocated: not a step done
    assert g.admit("a", "w", 7 * BS, 0, now=2.0)
    assert g.committed() == 8  # still the prior's whole step, not a reply of 0 tokens


@pytest.mark.parametrize("charge", ["reply", None, 1])
def test_a_bad_growth_charge_is_named(charge):
    with pytest.raises(ValueError, match="growth_charge"):
        SessionGate(20, BS, growth_charge=charge)
