"""The plain-Python parts of kvsaga.integrations.vllm (no vLLM needed): hint parsing, the
enabling JSON, and the BlockLedger a kvsaga policy reads as its BlockView."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvsaga.errors import InvalidRequest
from kvsaga.integrations.vllm import CONNECTOR_CLASS, CONNECTOR_MODULE, kv_transfer_config
from kvsaga.integrations.vllm.hints import new_session, step_info
from kvsaga.integrations.vllm.ledger import BlockLedger
from kvsaga.policy import BlockView, make_policy
from kvsaga.session import PauseHint


def test_importing_the_package_does_not_import_vllm():
    code = (
        "import sys, kvsaga.integrations.vllm, kvsaga.integrations.vllm.ledger; "
        "assert 'vllm' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_step_info_reads_the_hint_and_falls_back_to_the_request_session():
    info = step_info({"kvsaga": {"session_id": "s", "tool": "t", "expected_s": 2}})
    assert (info.session_id, info.workflow, info.hint) == ("s", "default", PauseHint("t", 2))
    assert step_info({"kvsaga": {"last_step": True}}, session_id="r").hint.last_step
    assert step_info({"kvsaga": {"tool": "t"}}) is None  # no session anywhere
    assert step_info(None) is None and step_info({"other": 1}) is None


@pytest.mark.parametrize(
    "raw, match",
    [
        ([1], "must be an object"),
        ({"session_id": ""}, "non-empty string"),
        ({"session_id": "s", "expected_s": -1}, "expected_s"),
        ({"session_id": "s", "last_step": "yes"}, "last_step"),
        ({"session_id": "s", "workflow": 3}, "workflow"),
        ({"session_id": "s", "tol": "x"}, "unknown fields"),
    ],
)
def test_step_info_rejects_malformed_hints(raw, match):
    with pytest.raises(InvalidRequest, match=match):
        step_info({"kvsaga": raw})


def test_kv_transfer_config_is_the_json_vllm_reads():
    cfg = json.loads(kv_transfer_config("graph", reserve_blocks=2))
    assert cfg["kv_connector"] == CONNECTOR_CLASS
    assert cfg["kv_connector_module_path"] == CONNECTOR_MODULE
    assert cfg["kv_connector_extra_config"] == {"policy": "graph", "reserve_blocks": 2}


def test_ledger_is_a_block_view_and_drives_the_policy():
    policy = make_policy("ttl")
    ledger = BlockLedger(policy, 8, 16)
    assert isinstance(ledger, BlockView)
    s_soon, s_late = new_session("soon", "w"), new_session("late", "w")
    for s in (s_soon, s_late):
        policy.step_started(s, 0.0)
    for pos, b in enumerate((0, 1, 2)):
        ledger.cache(b, "soon", pos)
    for pos, b in enumerate((3, 4, 5)):
        ledger.cache(b, "late", pos)
    policy.step_finished(s_soon, 0.0, PauseHint("t", 1.0))
    policy.step_finished(s_late, 0.0, PauseHint("t", 3600.0))
    assert policy.choose_victims(3, 0.5) == [5, 4, 3]  # the long pause, tail first
    ledger.refile(4, None, 1)  # shared now: plain cache
    assert ledger.block_owner[4] is None and ledger.num_cached == 6
    ledger.uncache(5)
    assert not ledger.is_cached(5) and 5 not in policy.choose_victims(6, 0.5)
    with pytest.raises(ValueError, match="already tracked"):
        ledger.cache(0, "soon", 0)
    with pytest.raises(ValueError, match="not tracked"):
        ledger.uncache(5)


def test_readme_enables_the_connector_with_the_json_kvsaga_builds():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## In vLLM\n", 1)[1]
    shown = section.split("--kv-transfer-config '", 1)[1].split("'", 1)[0]
    assert json.loads(shown) == json.loads(kv_transfer_config("ttl"))
