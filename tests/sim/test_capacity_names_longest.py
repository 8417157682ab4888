"""The capacity check names the trace's longest session (session 54, docsarch): the message
gives the blocks the trace needs. It named the first session that did not fit, so a user who
gave that many blocks was refused again, for a longer session further down the trace (the
docs' quickstart at 7,000 blocks: told 7,493, then refused at 7,493 for 7,499)."""

from __future__ import annotations

import pytest

from kvsaga.sim import SharedPrefix, SimConfig, Simulator, Step
from kvsaga.sim.trace import Session


def _session(sid: str, arrival: float, input_tokens: int) -> Session:
    return Session(id=sid, workflow="t", arrival_s=arrival,
                   shared_prefix=SharedPrefix("sys", 0), steps=(Step(input_tokens, 1),))


def test_the_longest_session_is_named_wherever_it_stands():
    # 48 tokens need 3 blocks of 16, 80 tokens 5; the shorter one comes first.
    sessions = [_session("short", 0.0, 48), _session("long", 1.0, 80), _session("tiny", 2.0, 8)]
    with pytest.raises(ValueError, match=r"session 'long' reaches 81 tokens .*\(5 blocks; "
                                         r".*more than the 2 blocks"):
        Simulator(sessions, SimConfig(num_gpu_blocks=2))
    Simulator(sessions, SimConfig(num_gpu_blocks=5))  # the figure named is enough


def test_of_equally_long_sessions_the_first_is_named():
    sessions = [_session("a", 0.0, 80), _session("b", 1.0, 80)]
    with pytest.raises(ValueError, match=r"session 'a' reaches 81 tokens"):
        Simulator(sessions, SimConfig(num_gpu_blocks=4))
