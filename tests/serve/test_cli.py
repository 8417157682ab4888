"""kvsaga-serve's flags: sizes, keys from the environment, help on every flag."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvsaga import __version__
from kvsaga.serve.cli import build_parser, settings_from_args


def test_flags_to_settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KVSAGA_API_KEY", "env-a, env-b")
    args = build_parser().parse_args(["--kv-memory", "2G", "--port", "9001", "--policy", "lru"])
    s = settings_from_args(args)
    assert s.kv_memory_bytes == 2 * 2**30 and s.port == 9001 and s.host == "127.0.0.1"
    assert s.api_keys == ("env-a", "env-b") and s.url == "http://127.0.0.1:9001/v1"
    s = settings_from_args(build_parser().parse_args(["--api-key", "flag"]))
    assert s.api_keys == ("flag",)


def test_every_flag_has_help_stating_its_default():
    """`kvsaga-serve --help` lists every flag with its default (README)."""
    parser = build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        assert action.help, action.dest
        if action.option_strings and action.default is not argparse.SUPPRESS and not (
                action.const is True and action.default is False):  # store_true: off
            assert "(default" in formatter._get_help_string(action), action.dest


def _serve(*argv: str) -> subprocess.CompletedProcess:
    """kvsaga-serve in a child process; a server that hangs instead of exiting fails."""
    cmd = [sys.executable, "-m", "kvsaga.serve.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_missing_model_exits_non_zero_before_serving():
    r = _serve("--model", "/nope", "--port", "0")
    assert r.returncode == 2
    assert r.stderr == "kvsaga-serve: error: model path does not exist: /nope\n"


def test_an_unavailable_device_exits_non_zero_in_one_line():
    r = _serve("--device", "tpu", "--port", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "device 'tpu'" in r.stderr


def test_a_load_failure_after_start_exits_non_zero(tiny_dir: Path, tmp_path: Path):
    """Weights or tokenizer that fail while loading (after the port is bound) stop the
    server with one error line, not 503 forever; the traceback only under debug."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "tokenizer.json").unlink()
    r = _serve("--model", str(broken), "--port", "0", "--device", "cpu", "--log-level", "warning")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"kvsaga-serve: error: the model failed to load: {broken}: no tokenizer.json (only "
        "fast tokenizers are supported)")
    assert "Traceback" not in r.stderr


def test_version():
    r = _serve("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"kvsaga-serve {__version__}"
