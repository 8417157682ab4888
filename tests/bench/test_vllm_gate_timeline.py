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


def test_an_expirys_demotion_is_recorded_at_the_expiry_clock() -> None:
    """The connector asks `expire(now)` before `admit`: a pause that expired is demoted at
    that call's `now`, not at the time of the call before it."""
    mod = load_bench("vllm_gate_timeline")
    expire = SessionGate.expire
    rec = mod.GateTimeline()
    with mod.recording(rec):
        g = SessionGate(40, BS, prior_growth_tokens=BS, horizon_steps=1.0,
                        pause_min_observed=1)
        for k, t in enumerate((0.0, 2.0)):  # a pause of 1 s observed: the limit is 1 s
            assert g.admit("a", "w", 4 * BS, 0, now=t)
            g.started(f"a{k}")
            g.finished(f"a{k}", "a", 4 * BS, t + 1.0, None, False)
        assert g.expire(10.0) == ["a"]
    assert SessionGate.expire is expire
    assert rec.row(0) == "seed 0:\n  a 0.0:Adirect(64) 1.0:f(64) 3.0:f(64) 10.0:demote(64)"
