"""The workflow scheduler tells the eviction policy each waiting demoted step's room deficit
(`EvictionPolicy.session_admission_room`, `AdmissionOrder._tell_rooms`): on a constructed
queue, only on change, None when a step leaves the queue still demoted, nothing for a new
session's step or to a policy that does not listen; and the engine and the simulator, which
drive the same scheduler, tell the same deficits."""

from __future__ import annotations

import pytest

from kvsaga.policy import EvictionPolicy, LRUPolicy
from tests.scheduler.test_admission_rank_hook import _full_pool_and_queue


def _spy(m) -> list[tuple[str, int | None, float]]:
    calls: list[tuple[str, int | None, float]] = []
    m.policy.session_admission_room = lambda s, blocks, now: calls.append(
        (s.session_id, blocks, now))
    return calls


def test_rooms_told_on_a_constructed_queue_and_only_on_change():
    m, s, ex, _, reqs = _full_pool_and_queue()
    calls = _spy(m)
    assert not s.schedule(1.0, ex).admitted
    told = dict((sid, b) for sid, b, _ in calls)
    assert sorted(told) == ["d1", "d2"]  # new sessions: never told
    # `a` holds the pool: each demoted step lacks room, by what `room_deficit` measures
    running = s._running_reserve() if s.running else 0
    for sid in ("d1", "d2"):
        assert told[sid] == s.room_deficit(reqs[sid], running) > 0
    calls.clear()
    assert not s.schedule(2.0, ex).admitted  # nothing changed: nothing told
    assert calls == []
    assert s._dequeue(reqs["n1"])  # a scan, but the deficits are as they were
    assert not s.schedule(3.0, ex).admitted
    assert calls == []
    # d1's step leaves the queue while d1 is still demoted: None for it
    assert s._dequeue(reqs["d1"])
    assert not s.schedule(4.0, ex).admitted
    assert calls == [("d1", None, 4.0)]


def test_a_policy_that_does_not_listen_costs_no_measurement(monkeypatch):
    m, s, ex, _, _ = _full_pool_and_queue()
    measured = []
    monkeypatch.setattr(type(s), "room_deficit",
                        lambda self, req, running: measured.append(req) or 0)
    assert not s.schedule(1.0, ex).admitted  # lru: the base class's hook
    assert measured == []
    _spy(m)
    s._ranks_stale = True
    assert not s.schedule(2.0, ex).admitted
    assert len(measured) == 2


def test_the_base_policy_hook_is_a_no_op():
    assert EvictionPolicy().session_admission_room(None, 3, 0.0) is None


def _engine_and_sim_tells(tmp_path, monkeypatch) -> tuple[list, list]:
    """Every room tell (session, deficit) on the engine-simulator parity stream of
    tests/engine/test_scheduler.py with a 16-token growth prior, under which its shrink
    demotes a session whose step then waits at the gate: once run by the simulator, once
    by the CPU engine on a tiny random model."""
    pytest.importorskip("transformers")
    from kvsaga.sim.tokens import TokenSynthesizer
    from tests.engine.helpers import TINY_VOCAB
    from tests.engine.test_scheduler import run_engine, run_sim, stream
    from tests.helpers_models import build_tiny_model
    calls: list[tuple[str, int | None]] = []
    monkeypatch.setattr(LRUPolicy, "session_admission_room", lambda self, s, blocks, now:
                        calls.append((s.session_id, blocks)), raising=False)
    params = {"prior_growth_tokens": 16, "growth_charge": "step"}
    synth = TokenSynthesizer(vocab_size=TINY_VOCAB)
    counts: dict[str, int] = {}
    run_sim(stream(), synth, "workflow", params, counts)
    assert counts["demoted"] >= 1
    sim = list(calls)
    calls.clear()
    model_dir = build_tiny_model("llama_gqa4_untied", tmp_path / "m")
    run_engine(model_dir, stream(), synth, "workflow", params)
    return sim, list(calls)


def test_engine_and_simulator_tell_the_same_rooms_on_change_only(tmp_path, monkeypatch):
    sim, engine = _engine_and_sim_tells(tmp_path, monkeypatch)
    assert sim and engine == sim
    last: dict[str, int | None] = {}
    for sid, blocks in sim:  # on change only: never the same figure twice in a row
        assert last.get(sid, "none") != blocks
        last[sid] = blocks
