"""write_trace replaces a trace whole or not at all; load_trace refuses a key given twice."""

from __future__ import annotations

import json

import pytest

from kvsaga.sim.trace import TraceError, load_trace, write_trace
from kvsaga.sim.workloads import generate


def test_an_error_part_way_leaves_the_old_trace(tmp_path):
    """It used to truncate the file first and write line by line (review repro
    write_partial.py: a failing producer left a 2-session trace where 5 were)."""
    path = tmp_path / "t.jsonl"
    old = generate("swe", 5, seed=1, scale=0.05)
    write_trace(old, path)

    def failing():
        yield from generate("swe", 2, seed=9, scale=0.05)
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        write_trace(failing(), path)
    with pytest.raises(TypeError, match="not a Session"):
        write_trace([*generate("swe", 2, seed=9, scale=0.05), "x"], path)
    with pytest.raises(TraceError, match="duplicate session id"):
        write_trace(old + old[:1], path)
    assert load_trace(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]  # no temporary file left


def test_a_new_trace_round_trips(tmp_path):
    path = tmp_path / "new.jsonl"
    sessions = generate("web", 3, seed=2, scale=0.05)
    write_trace(sessions, path)
    assert load_trace(path) == sessions


def test_duplicate_json_key_is_refused(tmp_path):
    """json keeps the last of two equal keys silently (review repro load_fuzz.py)."""
    obj = generate("swe", 1, seed=1, scale=0.05)[0].to_dict()
    text = json.dumps(obj)
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(obj) + "\n" + '{"id": "b", ' + text[1:] + "\n")
    with pytest.raises(TraceError) as e:
        load_trace(path)
    assert (e.value.line, e.value.field) == (2, "id")
    assert "duplicate JSON key 'id'" in str(e.value)
    nested = json.dumps(obj).replace('"tool_s"', '"tool_s": 1.0, "tool_s"', 1)
    path.write_text(nested + "\n")
    with pytest.raises(TraceError, match="duplicate JSON key 'tool_s'"):
        load_trace(path)
