"""Hand-built traces for the cluster simulator's refusal tests."""

from __future__ import annotations

from kvsaga.sim.trace import Session, SharedPrefix, Step


def session(sid, arrival, group, steps):
    """Session `sid` of prefix group `group`: (input, output, tool pause) per step, the
    last ending the session."""
    st = [Step(i, o, "t", pause) for i, o, pause in steps]
    st[-1] = Step(st[-1].input_tokens, st[-1].output_tokens, None, 0.0)
    return Session(id=sid, workflow="w", arrival_s=arrival,
                   shared_prefix=SharedPrefix(group, 0), steps=tuple(st))
