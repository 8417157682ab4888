"""bench/scheduling_gain_error.py observes without changing: the default's run with its swap
pricing and admissions spied on gives the very row it gives unspied, every pricing is kept
or counted as left out, the ratios are the forecasts over the actual waits, and the spies
are removed after."""

from __future__ import annotations

import math
import sys

import pytest

from tests.bench_scripts import bench_modules, import_bench

mod = bench_modules("scheduling_gain_error")


def test_the_probe_changes_nothing_and_accounts_for_every_pricing(mod):
    import kvsaga.scheduler.leave_forecast as leave_forecast
    import kvsaga.scheduler.room_swap as room_swap
    from kvsaga.sim.simulator import Simulator
    pays = room_swap.RoomSwap._swap_pays_queue
    admitted = leave_forecast.LeaveForecast._step_admitted
    alone = sys.modules["scheduling_swap_alone"]
    own, cfg = alone.point_config(("bfcl", 1.0, 0.5), 104, mod.DEFAULT)
    plain = Simulator(own, cfg).run().to_dict()
    p = mod.probe(own, cfg)
    assert room_swap.RoomSwap._swap_pays_queue is pays
    assert leave_forecast.LeaveForecast._step_admitted is admitted
    assert p["tct_mean_s"] == plain["tct_mean_s"]
    kept = p["kept"]
    assert p["priced"] > 0 and p["swapped"] > 0 and kept
    assert len(kept) + p["swapped"] + p["inf"] + p["zero"] + p["never"] == p["priced"]
    assert p["steps"] == sum(k["first"] for k in kept) > 0
    for k in kept:
        assert k["actual"] > 0 and math.isfinite(k["gain"])
        assert k["ratio"] == pytest.approx(k["gain"] / k["actual"])
        assert k["share"] > 0
    assert p["made"] > 0 and p["factor"] > 0


def test_the_scheduler_learns_what_the_probe_measures(mod):
    """The factor every value learns (`RoomSwap._gain_factor`) is exp(sum / (n + 1)) over
    one observation a step: the mean ln(actual / forecast) over its kept pricings, the
    inverse of the probe's ratios (no kept gain is 0 here)."""
    alone = sys.modules["scheduling_swap_alone"]
    own, cfg = alone.point_config(("bfcl", 1.0, 0.5), 104, mod.DEFAULT)
    p = mod.probe(own, cfg)
    steps: list[list[float]] = []
    for k in p["kept"]:
        if k["first"]:
            steps.append([])
        steps[-1].append(-math.log(k["ratio"]))
    total = sum(sum(x) / len(x) for x in steps)
    assert p["factor"] == pytest.approx(math.exp(total / (len(steps) + 1)))


def test_summary_reads_the_ratios():
    m = import_bench("scheduling_gain_error")
    kept = [{"ratio": r, "first": f} for r, f in ((0.5, True), (2.0, False), (4.0, True))]
    assert m.summary(kept) == "3 | 2 | 2.00 | 0.50 | 4.00 | 67% | 2.25"
    assert m.summary([]) == "0 | 0 | - | - | - | - | -"


def test_main_prints_one_row_a_run_and_the_pooled_tables(mod, capsys):
    assert mod.main(["--points", "bfcl,1,0.5", "--seeds", "104", "--alone-seeds", ""]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| run | swaps priced |") and out[2].startswith(
        "| bfcl 1x 50% seed 104 |")
    assert "| bfcl 1x 50%, workflow bfcl |" in "\n".join(out)
    assert out[2].count("|") == 14
    assert sum("overshoot" in x for x in out) == 6  # the default's and the step release's
    for bad in ("bfcl,1", "bfcl,x,0.5"):
        with pytest.raises(SystemExit):
            mod.main(["--points", bad, "--alone-seeds", ""])
        assert f"argument --points: '{bad}': want FAMILY,LOAD,CAPACITY" in capsys.readouterr().err
