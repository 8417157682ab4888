"""Tenant "default" is the results' key of the sessions without a tenant
(`tenant_key`), so no session may name it (review repro t_default.jsonl: a trace mixing
tenant "default" with tenant-less sessions ran every simulation, then crashed subscripting
None: compare counted None and "default" as two tenants, SimResult as one). And compare
counts tenants by that key, as SimResult does."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kvsaga.cli import main
from kvsaga.sim.compare import compare
from kvsaga.sim.config import SimConfig
from kvsaga.sim.trace import Session, TraceError, load_trace, write_trace
from kvsaga.sim.workloads import generate


def _mixed(tenant: str) -> list[Session]:
    out = []
    for i, s in enumerate(generate("swe", 4, seed=3, scale=0.05)):
        out.append(dataclasses.replace(s, tenant=tenant) if i % 2 else s)
    return out


def test_a_session_may_not_name_the_default_tenant():
    s = generate("swe", 1, seed=3, scale=0.05)[0]
    with pytest.raises(TraceError, match="'default' is reserved") as e:
        dataclasses.replace(s, tenant="default")
    assert e.value.field == "tenant"


def test_the_loader_names_the_line_and_field(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(_mixed("other"), trace)
    lines = trace.read_text().splitlines()
    obj = json.loads(lines[1])
    obj["tenant"] = "default"
    lines[1] = json.dumps(obj)
    trace.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError) as e:
        load_trace(trace)
    assert (e.value.line, e.value.field, e.value.value) == (2, "tenant", "default")
    assert main(["sim", "--trace", str(trace), "--policy", "lru", "--kv-memory", "1G",
                 "--quiet"]) == 2


def test_compare_counts_tenants_as_the_results_do():
    """Built in memory past the check (object.__setattr__), the two spellings are one
    tenant to compare, as to SimResult: no per-tenant rows, no crash."""
    sessions = _mixed("other")
    for s in sessions:
        if s.tenant == "other":
            object.__setattr__(s, "tenant", "default")
    rows = compare(sessions, SimConfig(kv_memory_bytes=2**30), ["lru"])
    assert all(r["tenants"] is None for r in rows)
    assert "afs_max_slowdown_ratio" not in rows[0]


def test_two_named_tenants_still_get_slowdowns():
    rows = compare(_mixed("other"), SimConfig(kv_memory_bytes=8 * 2**30), ["lru"])
    assert set(rows[0]["tenants"]) == {"default", "other"}
    assert rows[0]["afs_max_slowdown_ratio"] >= 1.0
