"""The workflow scheduler tells the eviction policy each waiting demoted step's room deficit
(`EvictionPolicy.session_admission_room`, `AdmissionOrder._tell_rooms`): on a constructed
queue, only on change, None when a step leaves the queue still demoted, nothing for a new
session's step or to a policy that does not listen; and the engine and the simulator, which
drive the same scheduler, tell the same deficits."""

from __future__ import annotations

import pytest

from kvsaga.policy import EvictionPolicy, LRUPolicy
from kvsaga.session import Session
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import free_counts_while_refused, manager, toks, wf
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
    # `a` (admitted, its step done) holds the pool: each demoted step lacks room (the
    # figure itself, with a step running, is pinned by the test below)
    assert told["d1"] > 0 and told["d2"] > 0
    calls.clear()
    assert not s.schedule(2.0, ex).admitted  # nothing changed: nothing told
    assert calls == []
    assert s._dequeue(reqs["n1"], 2.0)  # a scan, but the deficits are as they were
    assert not s.schedule(3.0, ex).admitted
    assert calls == []
    # d1's step leaves the queue while d1 is still demoted: None for it
    assert s._dequeue(reqs["d1"], 3.0)
    assert not s.schedule(4.0, ex).admitted
    assert calls == [("d1", None, 4.0)]
    calls.clear()
    s._ranks_stale = True  # another scan: the None is not told again
    assert not s.schedule(5.0, ex).admitted
    assert calls == []
    # d1's step queues again, as short of room as before: told again (what was told of it
    # was dropped with the None, not kept)
    s.add(reqs["d1"], 5.5)
    assert not s.schedule(6.0, ex).admitted
    assert calls == [("d1", told["d1"], 6.0)]


def test_the_deficit_counts_the_running_steps_reserve():
    """With `a`'s step running (its prompt 44 tokens, 20 to decode: its reserve target 63
    tokens, 16 blocks of 4, the whole pool), demoted d1's 8-token step lacks its own 2
    blocks: 2 + 16 - 16 = 2, a figure worked out here, not read from `room_deficit` (without
    the running reserve it would read 2 - 4 free = -2)."""
    m = manager(16)
    s = wf(m, backfill_window=0, readmit_charge="room")  # the pool's deficit alone
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 44), max_new=20, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    calls = _spy(m)
    m.sessions["d1"] = Session("d1", "default", bytes(32))
    s._deferred.add("d1")
    s.add(ToyRequest("d1", toks(200, 8), max_new=1, arrival=0.1, resumed=False), 0.1)
    assert not s.schedule(1.0, ex).admitted
    assert [r.session_id for r in s.running] == ["a"] and m.pool.num_available == 4
    assert calls == [("d1", 2, 1.0)]


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


def test_the_room_is_measured_again_when_the_pool_changes(monkeypatch):
    """No queue change while `a` decodes, but its blocks grow: at each admission attempt
    where the pool's free count changed the told room is measured again (here a figure
    that reads the free count, so each change is a new tell), and only then."""
    m = manager(16)
    s = wf(m, backfill_window=0, readmit_charge="room")
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 44), max_new=20, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    calls = _spy(m)
    monkeypatch.setattr(type(s), "room_deficit",
                        lambda self, req, running: 100 + self.manager.pool.num_available)
    m.sessions["d1"] = Session("d1", "default", bytes(32))
    s._deferred.add("d1")
    s.add(ToyRequest("d1", toks(200, 8), max_new=1, arrival=0.1, resumed=False), 0.1)
    free = free_counts_while_refused(m, s, ex, 11)
    assert len(free) >= 2  # a's decode took blocks: the pool changed with no queue change
    assert [b for _, b, _ in calls] == [100 + f for f in free]
