"""TraceOracle: the answers it gives are the replay's true next uses."""

from __future__ import annotations

import math

from kvsaga.policy import BeladyPolicy
from kvsaga.sim.oracle import TraceOracle
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.trace import Session, SharedPrefix, Step
from kvsaga.sim.workloads import generate


def _session(sid: str, arrival: float, steps: list[Step], group: str = "sys") -> Session:
    return Session(id=sid, workflow="t", arrival_s=arrival,
                   shared_prefix=SharedPrefix(group, 40), steps=tuple(steps))


def test_answers_by_hand():
    a = _session("A", 0.0, [Step(30, 5, "read", 2.0), Step(20, 3)])
    b = _session("B", 10.0, [Step(30, 2)])
    c = _session("C", 1.0, [Step(30, 2)], group="other")
    o = TraceOracle([a, b, c], block_size=16)
    prefix = next(h for h, keys in o._prefix.items() if keys[0][1] == "sys")
    assert len(o._prefix) == 2 * 2  # two full 16-token blocks per 40-token prefix
    assert o.next_use("A", None, 3, 0.0) == 0.0  # not arrived: its arrival
    assert o.next_use(None, prefix, 0, 0.0) == 0.0  # A arrives at 0
    o.released("A")
    o.started("A")
    assert o.next_use(None, prefix, 0, 0.5) == 10.0  # A runs (holds it); B arrives at 10
    o.finished("A", 0.5, 2.0)
    assert o.next_use("A", None, 3, 0.6) == 2.5  # paused: finish + tool_s
    assert o.next_use(None, prefix, 0, 0.6) == 2.5  # A's next step reads the prefix
    o.released("A")
    assert o.next_use("A", None, 3, 2.6) == 2.6  # waiting: needed now
    o.note_hashes("A", [prefix, b"own-block"])
    assert o.next_use(None, b"own-block", 2, 2.6) == 2.6  # a plain block only A holds
    o.started("A")
    o.preempted("A")
    assert o.next_use("A", None, 3, 3.0) == 3.0
    o.started("A")
    o.ended("A")
    assert o.next_use("A", None, 3, 4.0) == math.inf
    assert o.next_use(None, b"own-block", 2, 4.0) == math.inf
    assert o.next_use(None, prefix, 0, 4.0) == 10.0
    assert o.next_use(None, prefix, 0, 11.0) == math.inf  # B arrived and left nothing behind
    assert o.next_use(None, None, 5, 0.0) == math.inf


class Recording(TraceOracle):
    """Notes every answer about a paused session's own blocks."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.answers: list[tuple[str, float, float]] = []

    def next_use(self, session_id, block_hash, position, now):
        t = super().next_use(session_id, block_hash, position, now)
        if session_id is not None and t > now:
            self.answers.append((session_id, now, t))
        return t


def test_paused_answers_are_the_true_resume_times():
    sessions = generate("swe", 8, seed=3, scale=0.05, arrival_rate=1.0)
    oracle = Recording(sessions, 16)
    sim = Simulator(sessions, SimConfig(num_gpu_blocks=600), policy=BeladyPolicy(oracle))
    ready: dict[str, list[float]] = {}
    release = sim._release_due_events

    def spy() -> None:  # note when each step really becomes ready
        for t, _, s, k in sim._events:
            if t <= sim.now and k:
                ready.setdefault(s.id, []).append(t)
        release()

    sim._release_due_events = spy
    sim.run()
    assert oracle.answers
    for sid, now, t in oracle.answers:
        # The answer is the first ready time after the question.
        assert t == min(r for r in ready[sid] if r >= now)


def test_an_owned_prefix_block_is_needed_when_its_group_next_reads_it():
    """Session 43: asked with its owner, a shared-prefix block answered the owner's resume,
    though another session of the prefix group arrives, and reads it, sooner."""
    a = _session("A", 0.0, [Step(30, 5, "read", 10.0), Step(20, 3)])
    b = _session("B", 1.0, [Step(30, 2)])
    o = TraceOracle([a, b], block_size=16)
    prefix = next(iter(o._prefix))
    o.released("A")
    o.started("A")
    o.finished("A", now=0.1, tool_s=10.0)  # A paused until 10.1
    assert o.next_use(None, prefix, 0, 0.5) == 1.0  # as plain cache: B's arrival
    assert o.next_use("A", prefix, 0, 0.5) == 1.0  # owned by A: still B's arrival
    assert o.next_use("A", None, 2, 0.5) == 10.1  # A's own tail: its resume
