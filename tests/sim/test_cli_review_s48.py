"""`kvsaga sim`'s outputs and sizes (review s48, command-line tools): output paths probed
for real before the run, files written before stdout, a closed stdout pipe a quiet 141,
--plot's format, the host tier's cap, size and seed errors naming the flag given, and the
cluster JSON's config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvsaga.cli import main
from kvsaga.sim import cli as sim_cli

TINY = ["sim", "--workload", "swe", "--sessions", "3", "--scale", "0.05", "--arrival-rate", "1",
        "--kv-memory", "1G", "--policy", "lru", "--quiet", "--jobs", "1"]
ROOT = Path(__file__).resolve().parents[2]


def _refused(args, capsys) -> str:
    assert main(TINY + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_dangling_symlink_or_a_path_through_a_missing_folder_fails_first(
        tmp_path, monkeypatch, capsys, no_run):
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path / "missing" / "x.json", "dangling.json")
    assert "--json 'dangling.json': No such file" in _refused(["--json", "dangling.json"],
                                                               capsys)
    assert "--json 'nosuchdir/../x.json': No such file" in _refused(
        ["--json", "nosuchdir/../x.json"], capsys)
    os.symlink("made.json", "link.json")  # into a folder that exists: fine, nothing left
    assert main(TINY + ["--json", "link.json"]) == 1  # the check passed: no_run stopped it
    assert "simulated before" in capsys.readouterr().err
    assert sorted(os.listdir()) == ["dangling.json", "link.json"]


def test_plot_suffix_matplotlib_cannot_write_fails_first(tmp_path, capsys, no_run):
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.json"
    err = _refused(["--json", str(out), "--plot", str(tmp_path / "p.txt")], capsys)
    assert "--plot" in err and "matplotlib writes no 'txt' file" in err and "png" in err
    assert not out.exists()  # no half set of outputs


def test_plot_without_a_suffix_writes_the_png_it_names(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "outplot"
    assert main(TINY + ["--plot", str(plot)]) == 0
    assert f"wrote {plot}" in capsys.readouterr().out
    assert plot.read_bytes().startswith(b"\x89PNG") and not (tmp_path / "outplot.png").exists()


def test_a_write_that_fails_after_the_run_names_the_flag(tmp_path, capsys, monkeypatch):
    def full(path, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sim_cli, "write_json", full)
    assert main(TINY + ["--json", str(tmp_path / "r.json")]) == 2
    assert "--json '" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--host-memory", "1000000000T"], "--host-memory 1,099,511,627,776,000,000,000 B is "),
    (["--host-memory", "9T"], "more than the simulator's 4,194,304 (8T)"),
    (["--kv-gib", "1e300"], "--kv-gib 1e+300 is too large to be a number of bytes"),
    (["--host-gib", "1e300"], "--host-gib 1e+300 is too large to be a number of bytes"),
    (["--kv-gib", "1e-300"], "--kv-gib 1e-300 is less than one byte"),
    (["--host-gib", "1e-300"], "--host-gib 1e-300 is less than one byte"),
    (["--kv-memory", "5000000T"], "--kv-memory 5,497,558,138,880,000,000 B is "
                                  "2,621,440,000,000 blocks of 2,097,152 B (preset "
                                  "a100-llama3-8b): more than the simulator's 4,194,304"),
])
def test_sizes_out_of_range_name_the_flag_given(args, message, capsys, no_run):
    argv = [a for a in TINY if a not in ("--kv-memory", "1G")] + args
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_negative_seed_names_the_flag(capsys):
    from tests.exits import usage_error

    with pytest.raises(SystemExit) as e:
        main(TINY + ["--seed", "-1"])
    assert "argument --seed: must be an integer >= 0, got '-1'" in usage_error(e, capsys)


def test_the_cluster_json_records_its_config(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(TINY + ["--gpus", "2", "--router", "round-robin,affinity", "--seed", "4",
                        "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    cfg = data["config"]
    assert (cfg["workload"], cfg["seed"], cfg["scale"], cfg["trace"]) == ("swe", 4, 0.05, None)
    assert cfg["gpus"] == 2 and cfg["routers"] == ["round-robin", "affinity"]
    assert cfg["preset"] == "a100-llama3-8b" and cfg["num_gpu_blocks"] == 512
    assert cfg["policies"] == ["lru"] and "slo_factor" not in cfg
    assert data["gpus"] == 2 and len(data["results"]) == 2


@pytest.mark.parametrize("unbuffered", [True, False])
@pytest.mark.parametrize("cluster", [False, True])
def test_a_closed_stdout_pipe_is_a_quiet_141_and_the_json_is_written(tmp_path, unbuffered,
                                                                       cluster):
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    argv = TINY + ["--json", str(out)] + (["--gpus", "2"] if cluster else [])
    read, write = os.pipe()
    os.close(read)  # the reader left before the command wrote anything
    try:
        proc = subprocess.run([sys.executable, "-m", "kvsaga.cli", *argv], stdout=write,
                              stderr=subprocess.PIPE, env=env, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr.decode()
    assert b"Exception ignored" not in proc.stderr and b"Traceback" not in proc.stderr
    assert json.loads(out.read_text())["results"]
