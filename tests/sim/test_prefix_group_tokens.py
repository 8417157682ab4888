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


def _two_scales():
    """One family at two scales: one group name ("swe-system"), two prefix lengths."""
    a = generate("swe", 2, seed=1, scale=0.05)
    b = generate("swe", 2, seed=2, scale=0.01)
    assert a[0].shared_prefix.group == b[0].shared_prefix.group
    assert a[0].shared_prefix.tokens != b[0].shared_prefix.tokens
    return a, b


def test_sessions_built_in_memory_are_checked_too(tmp_path):
    """The simulator, `mixed` and `write_trace` used to take such sessions (review repro
    prefix_group.py: 154 recomputed tokens with nothing evicted; a file load_trace
    refused)."""
    from kvsaga.sim.simulator import SimConfig, Simulator
    from kvsaga.sim.trace import check_prefix_groups, write_trace
    from kvsaga.sim.workloads import mixed

    a, b = _two_scales()
    both = a + b
    msg = "'swe-system' \\(no tenant\\) has 105 tokens in session 'swe-s1-00000', here 21"
    with pytest.raises(TraceError, match=msg):
        check_prefix_groups(both)
    with pytest.raises(TraceError, match=msg):
        mixed(a, b)
    with pytest.raises(TraceError, match="'swe-system'"):
        Simulator(both, SimConfig(preset="a100-llama3-8b"))
    trace = tmp_path / "t.jsonl"
    with pytest.raises(TraceError, match=msg):
        write_trace(both, trace)
    assert not trace.exists() and list(tmp_path.iterdir()) == []


def test_tenants_and_distinct_groups_pass():
    import dataclasses

    from kvsaga.sim.trace import check_prefix_groups
    from kvsaga.sim.workloads import mixed

    a, b = _two_scales()
    check_prefix_groups([dataclasses.replace(s, tenant="x") for s in a] + b)
    renamed = [dataclasses.replace(s, shared_prefix=dataclasses.replace(
        s.shared_prefix, group="swe-small")) for s in b]
    assert len(mixed(a, renamed)) == 4
