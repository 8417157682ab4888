"""bench/vllm_growth_split.py's bookkeeping (no vLLM needed): the gate's growth samples are
split into finish-to-finish growth and the reply, as `GateGrowth.finished` feeds them."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_bench


def test_the_samples_split_into_step_growth_and_reply() -> None:
    mod = load_bench("vllm_growth_split")
    s = mod.GrowthSplit()
    s.finished(prompt=100, context=110, last_finish=None)  # first step: a reply only
    s.finished(prompt=300, context=330, last_finish=110)  # step growth 220, reply 30
    s.finished(prompt=400, context=410, last_finish=330)  # step growth 80, reply 10
    s.finished(prompt=500, context=490, last_finish=410)  # truncated: a reply of 0
    assert s.steps == [220, 80, 80]
    assert s.replies == [10, 30, 10, 0]
    s.admitted = {"waited": 2, "fit": 1}
    assert s.row(3) == ("| 3 | 3 | 80 | 126.7 | 4 | 10 | 12.5 | 0.12 "
                        "| fit 1, waited 2 |")


def test_a_replay_without_the_gates_samples_is_an_error() -> None:
    mod = load_bench("vllm_growth_split")
    with pytest.raises(ValueError, match="seed 5: the gate saw no finished step"):
        mod.GrowthSplit().row(5)


def test_the_recording_feeds_the_split_and_restores_the_gate() -> None:
    pytest.importorskip("kvsaga.integrations.vllm.gate")
    from kvsaga.integrations.vllm import gate as gate_mod
    from kvsaga.integrations.vllm.gate_growth import GateGrowth

    mod = load_bench("vllm_growth_split")
    before = (GateGrowth.finished, gate_mod.SessionGate.__init__)
    s = mod.GrowthSplit()
    with mod.recording(s):
        g = GateGrowth(64.0, 0.05, "step")
        g.finished("swe", 100, 120, None)
        g.finished("swe", 200, 215, 120)
    assert (s.steps, s.replies) == ([95], [20, 15])
    assert g.steps.mean("swe") != 64.0  # the gate's own table still learned
    assert (GateGrowth.finished, gate_mod.SessionGate.__init__) == before
