"""bench/'s numeric flags take ASCII digits only (bench/ascii_args.py), as kvsaga's commands do
(tests/test_cli_ascii_numbers.py): until session 53 `type=int` / `type=float` and the
comma lists' int() read "٤" or "４" as 4 and "1_000" as a thousand, and a `str.isdigit()`
check let "²" through to an int() that raised."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_scripts import import_bench

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
ARABIC_4, SUPERSCRIPT_2 = "\u0664", "\u00b2"
RULE = "write numbers with the ASCII digits 0-9, no '_'"


def _plain_number_types(path: Path) -> list[str]:
    """`file:line` of each call in `path` that passes `type=int` or `type=float`."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.name}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) for k in node.keywords
            if k.arg == "type" and isinstance(k.value, ast.Name)
            and k.value.id in ("int", "float")]


def test_no_bench_flag_reads_numbers_with_int_or_float():
    scripts = sorted(BENCH.rglob("*.py"))
    assert len(scripts) > 90
    assert [hit for path in scripts for hit in _plain_number_types(path)] == []


def test_the_check_sees_a_plain_type(tmp_path):
    script = tmp_path / "x.py"
    script.write_text("a('--n', type=int)\na('--f', type=float)\na('--g', type=int_arg)\n")
    assert _plain_number_types(script) == ["x.py:1", "x.py:2"]


def test_the_argparse_types_and_the_drop_ins():
    aa = import_bench("ascii_args")
    assert aa.int_arg(" 12 ") == 12 and aa.float_arg("-1.5e3") == -1500.0
    assert aa.ascii_int("+7") == 7 and aa.ascii_float(".5") == 0.5
    for text in (ARABIC_4, "1_000", "\uff14"):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            aa.int_arg(text)
        assert str(e.value) == f"invalid int value: {text!r} ({RULE})"
        with pytest.raises(ValueError, match="ASCII digits"):
            aa.ascii_int(text)
        with pytest.raises(ValueError, match="ASCII digits"):
            aa.ascii_float(text)
    with pytest.raises(argparse.ArgumentTypeError) as e:
        aa.float_arg("soon")
    assert str(e.value) == "invalid float value: 'soon'"  # what argparse says for type=float


def test_a_script_refuses_a_non_ascii_flag_value():
    """A fresh `python bench/omp_wait.py --threads ٤`, as a user runs it."""
    r = subprocess.run([sys.executable, str(BENCH / "omp_wait.py"), "--threads", ARABIC_4],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[-1].endswith(
        f"argument --threads: invalid int value: {ARABIC_4!r} ({RULE})")


def test_a_comma_list_refuses_non_ascii_digits():
    """bench/serial_below_ab.py's --seqs/--context lists (a clear exit) and bench/
    policies_cli.py's seed lists: int() read "1,٤" as [1, 4]."""
    serial_below_ab, policies_cli = import_bench("serial_below_ab", "policies_cli")
    assert serial_below_ab._csv_ints("1,4", "seqs") == [1, 4]
    with pytest.raises(SystemExit, match="--seqs must be comma-separated integers"):
        serial_below_ab._csv_ints(f"1,{ARABIC_4}", "seqs")
    assert policies_cli._ints("1,4") == [1, 4]
    with pytest.raises(ValueError, match="ASCII digits"):
        policies_cli._ints(f"1,{ARABIC_4}")


def test_extend_step_cases_refuse_a_superscript_digit():
    """"²".isdigit() holds: parse_cases passed it to int(), which raised ValueError (a
    traceback) instead of the case's own message."""
    extend_step = import_bench("extend_step")
    assert extend_step.parse_cases("8:2:1:0") == [{"P": 8, "N": 2, "S": 1, "D": 0}]
    with pytest.raises(SystemExit, match="is not P:N:S:D"):
        extend_step.parse_cases(f"8:2:1:{SUPERSCRIPT_2}")
