"""kvsaga-serve's flags: sizes, keys from the environment, help on every flag."""

from __future__ import annotations

import pytest

from kvsaga.serve.cli import build_parser, settings_from_args


def test_flags_to_settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KVSAGA_API_KEY", "env-a, env-b")
    args = build_parser().parse_args(["--kv-memory", "2G", "--port", "9001", "--policy", "lru"])
    s = settings_from_args(args)
    assert s.kv_memory_bytes == 2 * 2**30 and s.port == 9001 and s.host == "127.0.0.1"
    assert s.api_keys == ("env-a", "env-b") and s.url == "http://127.0.0.1:9001/v1"
    s = settings_from_args(build_parser().parse_args(["--api-key", "flag"]))
    assert s.api_keys == ("flag",)


def test_every_flag_has_help():
    for action in build_parser()._actions:
        assert action.help, action.dest
