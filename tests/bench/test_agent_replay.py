"""Smoke test of bench/agent_replay.py: two policies, 2 sessions x 2 steps, on a tiny random
model served by real kvsaga-serve subprocesses; checks the JSON the benchmark writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "agent_replay.py"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.helpers_models import build_tiny_model

    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("replay-tiny"))


def _load_script():
    spec = importlib.util.spec_from_file_location("agent_replay", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_replay_writes_every_field(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    rc = _load_script().main([
        "--model", str(tiny_dir), "--sessions", "2", "--steps", "2", "--policies", "lru,graph",
        "--token-scale", "0.005", "--time-scale", "0.01", "--max-tool-s", "0.05",
        "--arrival-gap", "0", "--start-timeout", "60", "--json", str(out),
    ])
    assert rc == 0
    d = json.loads(out.read_text())
    assert set(d["policies"]) == {"lru", "graph"}
    for s in d["policies"].values():
        assert s["errors"] == 0 and s["requests"] == 4 and s["tasks_completed"] == 2
        assert s["prefill_tokens"] == s["prompt_tokens"] - s["cached_tokens"] > 0
        assert 0 <= s["cached_share"] <= 1
        for key in ("step_latency_mean_s", "step_latency_p95_s", "task_time_mean_s"):
            assert s[key] > 0
    ratio = d["prefill_ratio_lru_over_graph"]
    assert ratio == pytest.approx(
        d["policies"]["lru"]["prefill_tokens"] / d["policies"]["graph"]["prefill_tokens"])
    ws, kv = d["working_set"], d["kv_budget"]
    # Tiny model: 2 layers x 2 KV heads x 16 x (K, V) x 4 bytes.
    assert ws["kv_bytes_per_token"] == 2 * 2 * 16 * 2 * 4
    assert kv["bytes"] == kv["blocks"] * 16 * ws["kv_bytes_per_token"]
    assert len(d["steps"]["lru"]) == 4
