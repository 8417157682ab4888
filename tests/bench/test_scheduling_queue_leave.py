"""bench/scheduling_queue_leave.py observes without changing: the default's run with its swap
pricing spied on gives the very row it gives unspied, its counts are consistent, and the
spy is removed after."""

from __future__ import annotations

import sys

import pytest

from tests.bench_scripts import bench_modules

mod = bench_modules("scheduling_queue_leave")


def test_the_probe_changes_nothing_and_counts_consistently(mod):
    import kvsaga.scheduler.room_swap as room_swap
    from kvsaga.sim.simulator import Simulator
    pays = room_swap.RoomSwap._swap_pays_queue
    alone = sys.modules["scheduling_swap_alone"]
    own, cfg = alone.point_config(("bfcl", 1.0, 0.5), 104, mod.DEFAULT)
    plain = Simulator(own, cfg).run().to_dict()
    p = mod.probe(own, cfg)
    assert room_swap.RoomSwap._swap_pays_queue is pays
    assert p["tct_mean_s"] == plain["tct_mean_s"]
    assert p["priced"] > 0 and 0 < p["made"] <= p["priced"]
    assert p["differ"] <= p["queue"] <= p["priced"]
    assert p["inf_l"] <= p["inf_q"]  # the queue leaving never makes a wait longer
    assert p["flips"] <= p["differ"]


def test_main_prints_one_row_a_run(mod, capsys):
    assert mod.main(["--points", "bfcl,1,0.5", "--seeds", "104", "--alone-seeds", ""]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| run | swaps priced |") and len(out) == 3
    assert out[2].startswith("| bfcl 1x 50% seed 104 |")
    for bad in ("bfcl,1", "bfcl,x,0.5"):
        with pytest.raises(SystemExit):
            mod.main(["--points", bad, "--alone-seeds", ""])
        assert f"argument --points: '{bad}': want FAMILY,LOAD,CAPACITY" in capsys.readouterr().err
