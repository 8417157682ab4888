"""docs/integrations.md's configuration is what kvsaga writes and accepts (session 54, docs
lane; plain Python, no vLLM): every `--kv-transfer-config` JSON it shows, the CPU-offload
arms' table and the gate_args example are the JSON that `kv_transfer_config` and
`offload_transfer_config` write, and the connector policies it lists are the ones the
connector accepts (it left out `adaptive`, which the connector runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kvsaga.integrations.vllm import kv_transfer_config, offload_transfer_config
from kvsaga.integrations.vllm.connector_config import check_connector_extra
from kvsaga.policy import POLICIES

DOC = (Path(__file__).resolve().parents[2] / "docs" / "integrations.md").read_text()
CPU_BYTES = 16_000_000_000  # the table's cpu_bytes_to_use


def _section(heading: str) -> str:
    return DOC.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_every_connector_command_passes_the_json_kvsaga_writes():
    shown = re.findall(r"--kv-transfer-config '(\{.*?\})'", DOC)
    assert len(shown) >= 2  # "Enabling the connector" and the scheduler plug-in's command
    for text in shown:
        assert json.loads(text) == json.loads(kv_transfer_config("ttl"))


def test_the_offload_arms_table_is_what_offload_transfer_config_writes():
    rows = dict(re.findall(r"^\| ([^|]+?) \| `(\{.*\})` \|$",
                           _section("The CPU-offload cache policy, and the offload tier "
                                    "behind the connector"), flags=re.M))
    want = {
        "vLLM + offload (LRU, vLLM's default)": offload_transfer_config(CPU_BYTES, "lru"),
        "vLLM + offload (kvsaga `graph`, the recommended tier policy)":
            offload_transfer_config(CPU_BYTES, "graph"),
        "vLLM + kvsaga connector + offload (kvsaga `graph`)":
            offload_transfer_config(CPU_BYTES, "graph", {"policy": "ttl"}),
    }
    assert set(rows) == set(want)
    for arm, text in rows.items():
        assert json.loads(text) == json.loads(want[arm]), arm
    # The `ttl` row: "as above with" the class that offload_transfer_config names for it.
    ttl = json.loads(offload_transfer_config(CPU_BYTES, "ttl"))
    assert f'"eviction_policy": "{ttl["kv_connector_extra_config"]["eviction_policy"]}"' in DOC


def test_the_gate_args_example_runs_and_its_comment_is_its_result():
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
               if "kv_transfer_config(" in c]
    ns: dict = {}
    exec(compile(code, "docs/integrations.md", "exec"), ns)
    call = code.strip().splitlines()[1]
    written = json.loads(eval(call, ns))
    comment = code.split("# i.e. ", 1)[1].strip()
    assert json.loads("{" + comment + "}")["kv_connector_extra_config"] == \
        written["kv_connector_extra_config"]


def test_the_policies_listed_for_the_connector_are_the_ones_it_runs():
    listed = DOC.split("`kv_connector_extra_config` keys: `policy` (", 1)[1].split(
        "the offline references", 1)[0]
    named = set(re.findall(r"`([a-z-]+)`", listed)) & set(POLICIES)
    accepted = set()
    for name in POLICIES:
        try:
            check_connector_extra({"policy": name})
        except ValueError:
            continue
        accepted.add(name)
    assert named == accepted


@pytest.mark.parametrize("name", ["belady", "oracle-ttl"])
def test_the_offline_references_are_refused_by_name(name):
    assert f"`{name}`" in DOC
    with pytest.raises(ValueError, match=f"policy '{name}' is an offline reference"):
        check_connector_extra({"policy": name})
