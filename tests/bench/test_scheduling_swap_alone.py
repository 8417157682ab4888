"""bench/scheduling_swap_alone.py observes without changing: the probed candidate's run of a
mix's tenant alone on half the GPU gives the very TCT the AFS veto divides by
(`add_tenant_slowdowns`), its swap records are consistent with what it prints, and bad
arguments are refused."""

from __future__ import annotations

import pytest

from tests.bench_scripts import bench_modules
from tests.exits import usage_error

mod = bench_modules("scheduling_swap_alone")


def test_the_probe_gives_the_vetos_alone_tct_and_consistent_records(mod):
    from kvsaga.sim.compare import add_tenant_slowdowns
    from kvsaga.sim.metrics import tenant_key
    from kvsaga.sim.simulator import SimConfig, Simulator
    params = {"readmit_charge": "room_returns"}
    sessions, cfg = mod.alone_config("noisy", 102, 0.5, params)
    own = [s for s in sessions if tenant_key(s.tenant) == "a"]
    probe = mod.Probe(own, cfg)
    row, tct = probe.run()
    # the veto's own computation of tenant a's TCT alone, on the shared run's config
    full = SimConfig(preset=mod.PRESET, num_gpu_blocks=mod.capacity(sessions, 0.5, 2),
                     policy="graph", scheduler="workflow", scheduler_params=params)
    shared = Simulator(sessions, full).run().to_dict()
    add_tenant_slowdowns(shared, sessions, full)
    assert row["tct_mean_s"] == pytest.approx(shared["tenants"]["a"]["tct_alone_s"])
    assert probe.swaps, "room_returns swaps in this run"
    for r in probe.swaps:
        assert r["over"] > 0 and r["clears"] >= r["t"] and r["victims"]
        assert r["gain"] >= 0 and isinstance(r["queue_swaps"], bool)  # round 34's reading
        for v in r["victims"]:
            assert v["forecast_back"] is not None and v["forecast_wait"] >= 0
            if v["readmitted"] is not None:
                assert v["demoted_at"] is not None and v["back"] is not None
                assert r["t"] <= v["demoted_at"] <= v["back"] <= v["readmitted"]
    assert sum(tct.values()) / len(tct) == pytest.approx(row["tct_mean_s"])


def test_main_prints_its_tables_and_refuses_bad_arguments(mod, capsys):
    assert mod.main(["--seeds", "102", "--params", '{"readmit_charge": "room_returns_stay"}']) == 0
    out = capsys.readouterr().out
    assert "room_returns_stay" in out and out.count("| 102 |") == 4  # round 34's table too
    assert mod.main(["--seeds", "102", "--params", '{"readmit_charge": "room_returns"}',
                     "--base", '{"readmit_charge": "uncached"}']) == 0
    out = capsys.readouterr().out
    assert "{'readmit_charge': 'uncached'} vs {'readmit_charge': 'room_returns'}" in out
    # round 33's figure was 51.9 -> 67.6 under graph's constants then; with graph's
    # `demoted_release` on (the default since session 32) the same run read 48.4 -> 49.2,
    # and with `max_backfill` counted per waiting session (session 55) it reads:
    assert "| 102 | 48.3 -> 49.2 |" in out
    for bad, says in ((["--frac", "0.3"], "--frac: the noisy mix runs at"),
                      (["--tenant", "z"], "--tenant: the noisy mix has tenants"),
                      (["--point", "bfcl,1"], "--point must be FAMILY,LOAD,CAPACITY, got 'bfcl,1'"),
                      (["--params", "[1]"], "--params must be a JSON object"),
                      (["--base", "[1]"], "--base must be a JSON object")):
        with pytest.raises(SystemExit) as e:
            mod.main(bad)
        assert says in usage_error(e, capsys)
