"""Sessions of one tenant's prefix group must declare the same `shared_prefix.tokens`:
the simulator counts the group's prefix as computed up to the longest declared, so a
shorter one's own tokens read as "recomputed" (review repro pfx.py: 784 phantom recomputed
tokens). load_trace refuses such a trace, naming the line, the field and the group's first
line; different tenants may declare different lengths for one group name."""

from __future__ import annotations

import json

import pytest

from kvsaga.sim.trace import TraceError, load_trace
from kvsaga.sim.workloads import generate


def _line(sid: str, tokens: int, tenant: str | None = None) -> str:
    obj = {"id": sid, "workflow": "w", "arrival_s": 0.0,
           "shared_prefix": {"group": "g", "tokens": tokens},
           "steps": [{"input_tokens": 8, "output_tokens": 2, "tool": None, "tool_s": 0}]}
    if tenant is not None:
        obj["tenant"] = tenant
    return json.dumps(obj)


def test_one_group_two_lengths_is_refused(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join([_line("a", 1000), _line("b", 1000), "", _line("c", 16)]) + "\n")
    with pytest.raises(TraceError) as e:
        load_trace(trace)
    assert (e.value.line, e.value.field, e.value.value) == (4, "shared_prefix.tokens", 16)
    assert "'g' (no tenant) has 1000 tokens on line 1, here 16" in str(e.value)


def test_per_tenant(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join([_line("a", 1000, "x"), _line("b", 16, "y"),
                                _line("c", 16)]) + "\n")
    assert [s.id for s in load_trace(trace)] == ["a", "b", "c"]
    trace.write_text("\n".join([_line("a", 1000, "x"), _line("b", 16, "y"),
                                _line("c", 15, "y")]) + "\n")
    with pytest.raises(TraceError, match="'g' \\(tenant 'y'\\) has 16 tokens on line 2"):
        load_trace(trace)


def test_generated_traces_load(tmp_path):
    from kvsaga.sim.trace import write_trace

    trace = tmp_path / "t.jsonl"
    sessions = generate("swe", 3, seed=1, scale=0.05) + generate("web", 3, seed=1, scale=0.05)
    write_trace(sessions, trace)
    assert load_trace(trace) == sessions
