"""Numbers a user writes take the ASCII digits 0-9 only (kvsaga/ascii_numbers.py).

Until session 53 Python's `int()`/`float()` (and `\\d` in `parse_bytes`' pattern) read any
Unicode decimal digit: `--kv-memory ٤GiB` was 4 GiB, `--port ٨٠٠٠` port 8000,
`KVSAGA_CPU_SERIAL_BELOW=٨` 8 bytes, and "1_000" a thousand; "4iB" was 4 bytes (an "i" with
no unit). `str.isdigit()` holds for "²", which `int()` then refuses: OMP_NUM_THREADS=²
raised out of the CPU thread governor's ceiling. Each reader now refuses such text with an
error naming it and the rule; what the docs show still parses to the same value."""

from __future__ import annotations

import argparse
import re

import pytest

from kvsaga import ascii_numbers, envs
from kvsaga.config import parse_bytes
from tests.exits import usage_error

ARABIC_4, FULLWIDTH_4, SUPERSCRIPT_2 = "\u0664", "\uff14", "\u00b2"
# Text that int() or float() read as a number, and that kvsaga refuses.
UNICODE_INTS = [ARABIC_4, FULLWIDTH_4, "1" + ARABIC_4, "1_000", "\u00a04", "4\u2003"]
RULE = "write numbers with the ASCII digits 0-9, no '_'"


@pytest.mark.parametrize("text", UNICODE_INTS)
def test_parse_int_and_parse_float_refuse_what_is_not_plain_ascii(text):
    assert int(text)  # Python's own readers take it
    with pytest.raises(ValueError) as e:
        ascii_numbers.parse_int(text)
    assert str(e.value) == f"{text!r} is not an integer ({RULE})"
    with pytest.raises(ValueError) as e:
        ascii_numbers.parse_float(text)
    assert str(e.value) == f"{text!r} is not a number ({RULE})"


@pytest.mark.parametrize("text,value", [("4", 4), (" 4 ", 4), ("+4", 4), ("-4", -4),
                                        ("0012", 12)])
def test_parse_int_reads_plain_integers_as_int_does(text, value):
    assert ascii_numbers.parse_int(text) == value == int(text)


@pytest.mark.parametrize("text", ["1.5", ".5", "5.", "-1e3", "inf", "nan", " 2 "])
def test_parse_float_reads_plain_numbers_as_float_does(text):
    got, want = ascii_numbers.parse_float(text), float(text)
    assert got == want or (got != got and want != want)


@pytest.mark.parametrize("parse", [ascii_numbers.int_arg, ascii_numbers.float_arg])
def test_the_argparse_types_say_what_argparse_says_plus_the_rule(parse):
    name = "int" if parse is ascii_numbers.int_arg else "float"
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse("abc")
    assert str(e.value) == f"invalid {name} value: 'abc'"
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse(ARABIC_4)
    assert str(e.value) == f"invalid {name} value: {ARABIC_4!r} ({RULE})"


# parse_bytes -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [ARABIC_4 + "GiB", FULLWIDTH_4 + "G", "\u0663",
                                  "\u00a04G", "4G\u2003", "1." + ARABIC_4 + "G"])
def test_parse_bytes_refuses_non_ascii_text(text):
    with pytest.raises(ValueError, match="^not a memory size: .*: write it with the ASCII "
                                         "digits 0-9 and a unit K, M, G or T"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["4iB", "4i", "4 iB"])
def test_parse_bytes_refuses_an_i_with_no_unit(text):
    with pytest.raises(ValueError, match=f"^not a memory size: {re.escape(repr(text))} \\(use"):
        parse_bytes(text)


@pytest.mark.parametrize("text,value", [
    ("4G", 4 << 30), ("4GiB", 4 << 30), ("4gib", 4 << 30), ("4GB", 4 << 30), ("4Gi", 4 << 30),
    ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("1048576", 1 << 20), ("7B", 7), (" 2 K ", 2048),
    ("1T", 1 << 40)])
def test_parse_bytes_reads_the_documented_forms(text, value):
    assert parse_bytes(text) == value


# KVSAGA_* ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["\u0668", "8_000"])
def test_a_byte_count_variable_refuses_non_ascii_digits(text, monkeypatch):
    monkeypatch.setenv("KVSAGA_CPU_SERIAL_BELOW", text)
    with pytest.raises(ValueError) as e:
        envs.check()
    assert str(e.value) == (f"KVSAGA_CPU_SERIAL_BELOW={text!r}: expected a whole number of "
                            f"bytes >= 0 ({RULE})")
    monkeypatch.setenv("KVSAGA_CPU_SERIAL_BELOW", " 8000 ")
    assert envs.KVSAGA_CPU_SERIAL_BELOW == 8000


# The command lines -------------------------------------------------------------------------

def _refused(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse(argv)
    return usage_error(e, capsys)


@pytest.mark.parametrize("flag", ["--max-tokens", "--temperature", "--top-p", "--top-k",
                                  "--seed"])
def test_kvsaga_generate_refuses_non_ascii_numbers(flag, capsys):
    from kvsaga.cli import build_parser

    kind = "int" if flag in ("--max-tokens", "--top-k", "--seed") else "float"
    line = _refused(build_parser().parse_args, ["generate", "hi", flag, ARABIC_4], capsys)
    assert line == f"kvsaga generate: error: argument {flag}: {ARABIC_4!r} is not a {kind} " \
                   f"({RULE})"


SIM_FLAGS = {"--sessions": "expected a number, got ", "--scale": "expected a number, got ",
             "--arrival-rate": "expected a number, got ",
             "--slo-factor": "expected a number, got ", "--kv-gib": "expected a number, got ",
             "--gpus": "expected a number, got ", "--jobs": "expected a number, got ",
             "--seed": "expected an integer, got ",
             "--report-period": "expected a number of seconds, got ",
             "--host-gib": "invalid float value: "}


@pytest.mark.parametrize("flag", sorted(SIM_FLAGS))
def test_kvsaga_sim_refuses_non_ascii_numbers(flag, capsys):
    from kvsaga.cli import build_parser

    pytest.importorskip("kvsaga.sim.cli")
    for text in (FULLWIDTH_4, "1_0"):
        line = _refused(build_parser().parse_args, ["sim", flag, text], capsys)
        assert line == f"kvsaga sim: error: argument {flag}: {SIM_FLAGS[flag]}{text!r} ({RULE})"


@pytest.mark.parametrize("flag", ["--kv-memory", "--host-memory"])
def test_kvsaga_sim_refuses_a_non_ascii_size(flag, capsys):
    from kvsaga.cli import build_parser

    pytest.importorskip("kvsaga.sim.cli")
    line = _refused(build_parser().parse_args, ["sim", flag, ARABIC_4 + "G"], capsys)
    assert line.startswith(f"kvsaga sim: error: argument {flag}: not a memory size: "
                           f"{ARABIC_4 + 'G'!r}: write it with the ASCII digits 0-9")


SERVE_NUMBERS = {"--port": "int", "--block-size": "int", "--max-num-seqs": "int",
                 "--max-num-batched-tokens": "int", "--max-model-len": "int",
                 "--max-graph-tokens": "int", "--max-queue": "int",
                 "--max-tokens-limit": "int", "--default-max-tokens": "int",
                 "--replicas": "int", "--session-idle": "float",
                 "--graceful-shutdown-s": "float", "--log-stats-interval": "float"}


@pytest.mark.parametrize("flag", sorted(SERVE_NUMBERS))
def test_kvsaga_serve_refuses_non_ascii_numbers(flag, capsys):
    serve_cli = pytest.importorskip("kvsaga.serve.cli")
    line = _refused(serve_cli.build_parser().parse_args, [flag, "8" + ARABIC_4], capsys)
    assert line == (f"kvsaga-serve: error: argument {flag}: invalid {SERVE_NUMBERS[flag]} "
                    f"value: {'8' + ARABIC_4!r} ({RULE})")
    args = serve_cli.build_parser().parse_args([flag, "84"])  # ASCII still parses
    assert getattr(args, flag[2:].replace("-", "_")) == 84


@pytest.mark.parametrize("flag", ["--kv-memory", "--host-memory", "--max-body"])
def test_kvsaga_serve_refuses_a_non_ascii_size(flag, capsys):
    serve_cli = pytest.importorskip("kvsaga.serve.cli")
    line = _refused(serve_cli.build_parser().parse_args, [flag, FULLWIDTH_4 + "M"], capsys)
    assert line.startswith(f"kvsaga-serve: error: argument {flag}: not a memory size: "
                           f"{FULLWIDTH_4 + 'M'!r}: write it with the ASCII digits 0-9")


def test_the_other_kvsaga_commands_refuse_non_ascii_numbers(capsys):
    from kvsaga.kernels import compile_check

    line = _refused(compile_check.main, ["--jobs", ARABIC_4], capsys)
    assert line.endswith(f"argument --jobs: invalid int value: {ARABIC_4!r} ({RULE})")
    bfcl = pytest.importorskip("kvsaga.sim.bfcl")
    line = _refused(bfcl.main, ["--seed", ARABIC_4], capsys)
    assert line.endswith(f"argument --seed: invalid int value: {ARABIC_4!r} ({RULE})")


# Other readers of user digits --------------------------------------------------------------

@pytest.mark.parametrize("text", [SUPERSCRIPT_2, ARABIC_4])
def test_omp_num_threads_in_other_digits_is_not_a_count(text, monkeypatch):
    from kvsaga.engine import cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", text)
    assert cpu_threads._omp_num_threads() is None  # "²" raised ValueError; "٤" read 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3,2")
    assert cpu_threads._omp_num_threads() == 3


def test_the_ray_gateway_reads_a_latin1_digit_content_length_as_no_length():
    """The gateway's Content-Length (decoded latin-1, so b"\\xb2" is "²") passed
    str.isdigit, then int() raised ValueError out of read_capped."""
    import asyncio

    pytest.importorskip("ray")
    from starlette.requests import Request

    from kvsaga.integrations.ray.gateway import read_capped

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/completions",
             "headers": [(b"content-length", SUPERSCRIPT_2.encode("latin-1"))]}
    assert asyncio.run(read_capped(Request(scope, receive), 1024)) == b"{}"
