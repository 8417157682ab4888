"""Capacity errors name what to fix: --kv-memory 0 names the flag (it named the SimConfig
field), and a session too long for the capacity is named with its trace line and its
largest count (the error named the session only)."""

from __future__ import annotations

import json

from kvsaga.cli import main

BASE = ["sim", "--policy", "lru", "--quiet", "--jobs", "1"]


def _trace(tmp_path, big: int):
    path = tmp_path / "t.jsonl"
    rows = [{"id": sid, "workflow": "w", "arrival_s": 0,
             "shared_prefix": {"group": "g", "tokens": 16},
             "steps": [{"input_tokens": n, "output_tokens": 2}]}
            for sid, n in (("a", 10), ("b", big))]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    return path


def test_kv_memory_zero_names_the_flag(capsys):
    assert main(BASE + ["--sessions", "2", "--kv-memory", "0"]) == 2
    err = capsys.readouterr().err
    assert "--kv-memory must be > 0, got 0 B" in err and "SimConfig" not in err


def test_too_long_session_names_its_line_and_field(tmp_path, capsys):
    trace = _trace(tmp_path, 10_000_000)
    for extra in ([], ["--gpus", "2"]):
        assert main(BASE + ["--trace", str(trace), "--kv-memory", "1G", *extra]) == 2
        err = capsys.readouterr().err
        assert f"{trace}:line 3: session 'b' reaches 10000018 tokens" in err
        assert "largest count: steps[0].input_tokens = 10,000,000" in err
