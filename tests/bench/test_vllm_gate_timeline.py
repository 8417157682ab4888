"""bench/vllm_gate_timeline.py's recording (no vLLM needed: the gate is plain Python): each
session's admissions with their reason, demotions and finishes, at the gate's clock."""

from __future__ import annotations

from kvsaga.integrations.vllm.gate import SessionGate
from tests.bench_scripts import load_bench

BS = 16


def test_the_gates_decisions_are_recorded_per_session_and_the_gate_restored() -> None:
    mod = load_bench("vllm_gate_timeline")
    admit = SessionGate.admit
    rec = mod.GateTimeline()
    with mod.recording(rec):
        g = SessionGate(20, BS, prior_growth_tokens=BS, horizon_steps=1.0)
        assert g.admit("a", "w", 8 * BS, 0, now=0.0)
        g.started("a0")
        assert g.admit("b", "w", 8 * BS, 0, 0.5)  # the connector passes `now` by position
        g.started("b0")
        assert not g.admit("c", "w", 8 * BS, 0, now=0.7)  # deferred: nothing recorded
        g.finished("b0", "b", 8 * BS, 1.0, 10.0, False)
        # a's finish at 15 blocks: 15 + 8 > 20, so the shrink demotes b (latest, paused)
        assert g.finished("a0", "a", 15 * BS, 2.0, 10.0, False) == ["b"]
    assert SessionGate.admit is admit
    assert rec.row(3) == ("seed 3:\n"
                          "  a 0.0:Adirect(128) 2.0:f(240)\n"
                          "  b 0.5:Adirect(128) 1.0:f(128) 2.0:demote(128)")
