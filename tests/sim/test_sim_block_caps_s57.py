"""The GPU tier's block cap (review s57 readme F1): `kvsaga sim --kv-memory 2048T` was
accepted up to the C++ core's 2**30 blocks, and at ~300 B of host memory a block the run
ended in an out-of-memory kill; `SimConfig` had no cap on either tier. Every check here
runs before anything is allocated (`no_run` fails a test whose check came too late)."""

from __future__ import annotations

import pytest

from kvsaga.cli import main
from kvsaga.sim import SimConfig
from kvsaga.sim import cli as sim_cli
from kvsaga.sim.config import MAX_GPU_BLOCKS, MAX_HOST_BLOCKS

TINY = ["sim", "--workload", "swe", "--sessions", "3", "--scale", "0.05", "--arrival-rate", "1",
        "--policy", "lru", "--quiet", "--jobs", "1"]
BLOCK = 2 * 2**20  # the llama3-8b presets' block, bytes


@pytest.mark.parametrize("extra", [[], ["--gpus", "2"]])
@pytest.mark.parametrize(("flag", "size", "blocks"), [
    ("--kv-memory", "2048T", "1,073,741,824"),  # the old cap: accepted, then killed
    ("--kv-memory", "9T", "4,718,592"),
    ("--kv-gib", "9216", "4,718,592"),
])
def test_a_kv_memory_past_the_cap_is_refused_naming_flag_count_and_cap(
        flag, size, blocks, extra, capsys, no_run):
    assert main(TINY + [flag, size] + extra) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"kvsaga sim: error: {flag} ") and f" is {blocks} blocks of " in err
    assert "more than the simulator's 4,194,304 (8T)" in err and "host memory" in err


def test_the_cap_itself_is_accepted(capsys, no_run):
    """8T is exactly `MAX_GPU_BLOCKS` blocks: the arguments pass (no_run stops the run)."""
    assert MAX_GPU_BLOCKS == 8 * 2**40 // BLOCK
    assert main(TINY + ["--kv-memory", "8T"]) == 1
    assert "simulated before" in capsys.readouterr().err


@pytest.mark.parametrize(("kwargs", "shown"), [
    ({"num_gpu_blocks": MAX_GPU_BLOCKS + 1}, "SimConfig.num_gpu_blocks=4,194,305 is "),
    ({"kv_memory_bytes": 2048 * 2**40}, "SimConfig.kv_memory_bytes=2,251,799,813,685,248 B is "
                                        "1,073,741,824 blocks"),
    ({"num_host_blocks": MAX_HOST_BLOCKS + 1}, "SimConfig.num_host_blocks=4,194,305 is "),
    ({"host_memory_bytes": 9 * 2**40}, "SimConfig.host_memory_bytes=9,895,604,649,984 B is "
                                       "4,718,592 blocks"),
])
def test_simconfig_refuses_a_tier_past_its_cap(kwargs, shown):
    """The Python API had no cap at all: `Simulator(sessions, SimConfig(...))` allocated."""
    with pytest.raises(ValueError) as e:
        SimConfig(**kwargs)
    assert shown in str(e.value) and "more than the simulator's 4,194,304" in str(e.value)


def test_simconfig_takes_both_caps():
    config = SimConfig(num_gpu_blocks=MAX_GPU_BLOCKS, num_host_blocks=MAX_HOST_BLOCKS)
    assert (config.blocks(), config.host_blocks()) == (MAX_GPU_BLOCKS, MAX_HOST_BLOCKS)


def test_the_plot_sweep_skips_capacities_past_the_cap(tmp_path, capsys, monkeypatch):
    """--kv-memory within the cap but its 1.5x and 2x past it: those points are left out
    (the sweep's 1.5x raised the cap's error after the table had been simulated)."""
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(sim_cli, "MAX_GPU_BLOCKS", 1024)  # 2G of 2 MiB blocks
    out = tmp_path / "r.json"
    assert main(TINY + ["--kv-memory", "2G", "--plot", str(tmp_path / "p.png"),
                        "--json", str(out)]) == 0
    import json

    gibs = sorted({row["kv_gib"] for row in json.loads(out.read_text())["sweep"]})
    assert gibs == [1.0, 1.5, 2.0], gibs
