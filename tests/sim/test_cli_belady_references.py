"""Every `x belady` ratio's reference is a row: a row denied the host tier (`-host`) or given
one (`+host`) that the others lack is divided by a Belady run with its own host setting, which
`kvsaga sim` ran but showed nowhere before session 47 (review s47 docswalk 4)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kvsaga.cli import main
from kvsaga.sim.compare import with_belady_references
from kvsaga.sim.simulator import SimConfig

GIB = 2**30


@pytest.mark.parametrize(("policies", "base_host", "added"), [
    (["lru", "graph"], None, ["belady"]),
    (["lru", "belady"], None, []),
    (["lru", "lru-host"], GIB, ["belady", "belady-host"]),
    (["lru-host", "lru"], GIB, ["belady-host", "belady"]),
    (["lru", "graph+host"], None, ["belady", "belady+host"]),
    (["lru+host", "graph"], GIB, ["belady"]),  # +host is the base's tier here
    (["belady-host", "lru-host"], GIB, []),
    (["lru-host"], None, ["belady"]),  # -host is the base's (no) tier here
])
def test_each_host_setting_gets_its_belady_spec(policies, base_host, added):
    base = SimConfig(preset="a100-llama3-8b", kv_memory_bytes=20 * GIB)
    if base_host:
        base = dataclasses.replace(base, host_memory_bytes=base_host)
    assert with_belady_references(policies, base, GIB) == policies + added


def test_a_row_without_the_host_tier_shows_the_belady_row_its_ratio_is_to(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["sim", "--workload", "swe", "--sessions", "8", "--scale", "0.1",
                 "--arrival-rate", "1", "--kv-memory", "1500M", "--host-memory", "1G",
                 "--policy", "lru,lru-host", "--quiet", "--json", str(out)]) == 0
    assert "belady-host" in capsys.readouterr().out
    rows = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    assert list(rows) == ["lru", "lru-host", "belady", "belady-host"]
    assert rows["belady-host"]["num_host_blocks"] == 0 < rows["belady"]["num_host_blocks"]
    # the two references differ, so each ratio below names which one it is to
    assert rows["belady"]["recomputed_tokens"] != rows["belady-host"]["recomputed_tokens"]
    for mine, ref in (("lru", "belady"), ("lru-host", "belady-host")):
        assert rows[mine]["num_host_blocks"] == rows[ref]["num_host_blocks"]
        assert rows[mine]["belady_ratio"] == pytest.approx(
            rows[mine]["recomputed_tokens"] / rows[ref]["recomputed_tokens"])
