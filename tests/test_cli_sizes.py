"""A memory size past any float (`kvsaga.config.parse_bytes`): until session 52 it raised
OverflowError ("cannot convert float infinity to integer"), which argparse does not catch:
`kvsaga sim --kv-memory 999...9G` and `kvsaga-serve --kv-memory 999...9` (310 digits or
more) printed a traceback and exited 1. Now a ValueError, so each flag exits 2 naming it."""

from __future__ import annotations

import pytest

from kvsaga.config import parse_bytes
from tests.exits import usage_error

HUGE = ["9" * 310, "9" * 400 + "G", "1" * 300 + "T"]


@pytest.mark.parametrize("text", HUGE)
def test_a_size_past_any_float_is_a_value_error(text):
    with pytest.raises(ValueError, match=r"^not a memory size: '\d+[GT]?' is too large$"):
        parse_bytes(text)


def test_a_large_size_that_is_a_float_still_parses():
    assert parse_bytes("1" * 290 + "T") == int(float("1" * 290) * 2**40)


@pytest.mark.parametrize("flag", ["--kv-memory", "--host-memory"])
def test_kvsaga_sim_refuses_it_naming_the_flag(flag, capsys):
    from kvsaga.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sim", flag, HUGE[1]])
    assert usage_error(e, capsys).startswith(
        f"kvsaga sim: error: argument {flag}: not a memory size: '999")


@pytest.mark.parametrize("flag", ["--kv-memory", "--host-memory", "--max-body"])
def test_kvsaga_serve_refuses_it_naming_the_flag(flag, capsys):
    serve_cli = pytest.importorskip("kvsaga.serve.cli")
    with pytest.raises(SystemExit) as e:
        serve_cli.build_parser().parse_args([flag, HUGE[0]])
    line = usage_error(e, capsys)
    assert line.startswith(f"kvsaga-serve: error: argument {flag}: not a memory size: '999")
    assert line.endswith("' is too large")
