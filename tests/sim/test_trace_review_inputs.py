"""How user workloads are read (review of trace inputs, session 45): lone surrogates, a tool
without its wait, the router's prefix key, writing through a symlink, the too-long-session
message, arrivals past the format's clock, and the length of error messages."""

from __future__ import annotations

import json
import os
import stat

import pytest

from kvsaga.sim import generate, load_trace, write_trace
from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.config import SimConfig
from kvsaga.sim.simulator import Simulator
from kvsaga.sim.trace import Session, SharedPrefix, Step, TraceError


def _line(**over) -> dict:
    d = {"id": "a", "workflow": "swe", "arrival_s": 1.0,
         "shared_prefix": {"group": "g", "tokens": 16},
         "steps": [{"input_tokens": 10, "output_tokens": 5, "tool": "t", "tool_s": 1.0},
                   {"input_tokens": 10, "output_tokens": 5, "tool": None, "tool_s": 0.0}]}
    d.update(over)
    return d


def _write(tmp_path, *rows: dict):
    path = tmp_path / "t.jsonl"
    # json.dumps escapes a lone surrogate as "\ud800": the file itself is ASCII.
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _set(d: dict, where: str, value) -> dict:
    node = d
    keys = [int(k) if k.isdigit() else k for k in where.replace("[", ".").replace("]", "")
            .split(".")]
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return d


@pytest.mark.parametrize("field", ["id", "workflow", "tenant", "shared_prefix.group",
                                   "steps[0].tool"])
def test_a_lone_surrogate_is_refused_on_its_line_and_field(tmp_path, field):
    """Review repro mk_surrogate.py: "\\ud800" loaded, then the id, tenant or group failed
    in hashing with a UnicodeEncodeError naming no file, line or field."""
    path = _write(tmp_path, _line(id="ok"), _set(_line(), field, "x\ud800"))
    with pytest.raises(TraceError, match="lone surrogate") as info:
        load_trace(path)
    assert info.value.line == 2 and info.value.field == field
    assert f"line 2: field {field!r}" in str(info.value)
    str(info.value).encode()  # the message itself is text a terminal can print


def test_a_tool_without_its_wait_is_refused(tmp_path):
    """Review repro missing_tool_s.py: a step naming a tool but no tool_s loaded as a 0 s
    wait; a step without a tool may still leave out both."""
    row = _line()
    del row["steps"][0]["tool_s"]
    with pytest.raises(TraceError, match="is missing") as info:
        load_trace(_write(tmp_path, row))
    assert info.value.line == 1 and info.value.field == "steps[0].tool_s"
    row = _line()
    row["steps"][0] = {"input_tokens": 10, "output_tokens": 5}
    row["steps"][1] = {"input_tokens": 10, "output_tokens": 5}
    steps = load_trace(_write(tmp_path, row))[0].steps
    assert [(s.tool, s.tool_s) for s in steps] == [(None, 0.0), (None, 0.0)]


def _second_route(first: tuple, second: tuple) -> str:
    """Why the kvsaga router placed session b (tenant, group `second`), which arrives after
    session a (`first`) has cached its prefix on one of two GPUs."""
    def sess(sid, tenant, group, arrival):
        return Session(sid, "w", arrival, SharedPrefix(group, 4000),
                       (Step(200, 50, "t", 5.0), Step(200, 50)), tenant=tenant)
    sim = ClusterSimulator([sess("a", *first, 0.0), sess("b", *second, 30.0)], SimConfig(),
                           2, "kvsaga")
    reasons = {}
    route = sim.router.route

    def spy(req, stats):
        r = route(req, stats)
        reasons.setdefault(req.session, r.reason)
        return r
    sim.router.route = spy
    sim.run()
    return reasons["b"]


@pytest.mark.parametrize("first, second", [((None, "g"), ("None", "g")),
                                           (("x", "y/z"), ("x/y", "z"))])
def test_the_router_keeps_other_tenants_prefixes_apart(first, second):
    """Review repro prefix_key.py: the key f"{tenant}/{group}" gave tenant None and tenant
    "None" one key, and tenant "x" group "y/z" the key of tenant "x/y" group "z": b was sent
    to a's GPU for a prefix its tenant salt keeps it from sharing."""
    assert _second_route(first, second) == "new"
    assert _second_route(first, first) == "prefix"  # the same pair still meets its prefix


def test_write_trace_writes_through_a_symlink_and_keeps_the_mode(tmp_path):
    """Review repro symlink.py: os.replace replaced the link itself (the target kept the
    old trace), and a rewritten 0600 file became the umask's 0644."""
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("")
    os.chmod(real, 0o600)
    link.symlink_to("real.jsonl")
    trace = generate("swe", 2, seed=1, scale=0.01)
    write_trace(trace, link)
    assert link.is_symlink() and load_trace(real) == trace
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]


def test_too_long_session_names_its_many_steps():
    """Review repro largest.py: 1,000 steps of 80 tokens under a 2,000-token prefix were
    reported as "largest count: shared_prefix.tokens = 2,000"."""
    steps = tuple(Step(40, 40, "t", 1.0) for _ in range(999)) + (Step(40, 40),)
    long = Session("long", "w", 0.0, SharedPrefix("g", 2000), steps)
    config = SimConfig(kv_memory_bytes=64 * 2**20)
    with pytest.raises(ValueError, match="1,000 steps of 80,000 tokens") as info:
        Simulator([long], config)
    assert "most of it: its 1,000 steps together" in str(info.value)
    big = Session("big", "w", 0.0, SharedPrefix("g", 100_000), (Step(40, 40),))
    with pytest.raises(ValueError, match="most of it: shared_prefix.tokens"):
        Simulator([big], config)


def test_arrivals_past_the_clock_name_the_rate_not_a_trace_field():
    """A low --arrival-rate pushed arrivals past 1e9 s, and the error named the trace field
    'arrival_s', which the user never wrote."""
    with pytest.raises(ValueError, match="arrival_rate 1e-08 with num_sessions 20") as info:
        generate("swe", 20, seed=1, arrival_rate=1e-8)
    assert not isinstance(info.value, TraceError)
    assert len(generate("swe", 3, seed=1, arrival_rate=1e-8)) == 3  # within the clock


def test_error_messages_show_a_bounded_part_of_the_value(tmp_path):
    """Review repro bigmsg.py: a 1,000,000-character tool name, or steps given as an
    object of 150 steps, was printed whole in the message."""
    row = _line()
    row["steps"][0]["tool_s"] = "x" * 1_000_000
    with pytest.raises(TraceError) as info:
        load_trace(_write(tmp_path, row))
    assert info.value.field == "steps[0].tool_s" and len(str(info.value)) < 500
    row = _line(steps={str(k): {"input_tokens": 1} for k in range(150)})
    with pytest.raises(TraceError) as info:
        load_trace(_write(tmp_path, row))
    assert info.value.field == "steps" and len(str(info.value)) < 500
