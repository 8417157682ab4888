"""Session 52's review of `kvsaga sim`'s flags (docs: /work/lanes/findings/s52/cli.md):

- L1: `--router ''` (an unset shell variable) ran all three routers, where `--router ,`,
  `--policy ''` and `--scheduler ''` are refused: `args.router or ...` took the empty
  string for "not given".
- L2: `--trace ''` said "--trace '': Is a directory" (the empty path read as the current
  folder); `--json ''` / `--plot ''` said "No such file or directory". Each now says the
  flag names no file, as argparse's usage error.
- L3: an unknown --policy, --scheduler or --router name was refused without the flag.
- L4: the cluster run's note on flags it ignores said "--jobs do not apply" of one flag
  (tests/sim/test_cli_cluster_flags.py checks the number now).
"""

from __future__ import annotations

import pytest

from kvsaga.cli import main
from tests.exits import usage_error

TINY = ["sim", "--workload", "swe", "--sessions", "2", "--scale", "0.02", "--seed", "101",
        "--kv-memory", "1G", "--jobs", "1", "--quiet", "--policy", "lru"]


def _error(err: str) -> str:
    """The one error line of `err` (a note that --jobs does not apply to a cluster run may
    come before it)."""
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("kvsaga sim: error: ")] == lines[-1:]
    return lines[-1]


@pytest.mark.parametrize("gpus", [[], ["--gpus", "2"]])
def test_an_empty_router_list_is_refused(gpus, capsys):
    assert main([*TINY, *gpus, "--router", ""]) == 2
    captured = capsys.readouterr()
    assert _error(captured.err) == "kvsaga sim: error: --router names no router"
    assert captured.out == ""


@pytest.mark.parametrize("flag", ["--trace", "--json", "--plot"])
def test_an_empty_path_is_refused_naming_the_flag(flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([*TINY, flag, ""])
    assert usage_error(e, capsys) == (f"kvsaga sim: error: argument {flag}: names no file "
                                      "(an empty path)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "lru,fifo"], "--policy: unknown policy 'fifo'; choose from adaptive, "),
    (["--gpus", "2", "--policy", "fifo"], "--policy: unknown policy 'fifo'; choose from "),
    (["--scheduler", "fcfs,lifo"], "--scheduler: unknown scheduler 'lifo'; choose from fcfs, "
     "workflow"),
    (["--gpus", "2", "--scheduler", "lifo"], "--scheduler: unknown scheduler 'lifo'"),
    (["--gpus", "2", "--router", "kvsaga,random"], "--router: unknown router 'random'; choose "
     "from round-robin, affinity, kvsaga"),
])
def test_an_unknown_name_is_refused_naming_the_flag(args, message, capsys):
    assert main([*TINY, *args]) == 2
    captured = capsys.readouterr()
    assert _error(captured.err).startswith(f"kvsaga sim: error: {message}"), captured.err
    assert captured.out == ""

