"""vLLM's CPU offload tier (`OffloadingConnector`) through vLLM's real scheduler: alone with
kvsaga's cache policy, and behind kvsaga's retention connector in vLLM's `MultiConnector`,
both built from the JSON `offload_transfer_config` writes; the worker is
bench/vllm_offload_sim.py's (vLLM's own copies do not run on the CPU platform)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402

from kvsaga.integrations.vllm import offload_transfer_config  # noqa: E402
from tests.bench_scripts import load_bench  # noqa: E402

from .harness import BLOCK_SIZE, TOKEN, make_request, make_scheduler  # noqa: E402

BYTES_PER_TOKEN = 1 * 8 * 4 * 2  # the harness's KV spec: one layer, one head of 8, fp32, K+V


@pytest.fixture(scope="module")
def sim():
    return load_bench("vllm_offload_sim")


def test_offload_config_json():
    alone = json.loads(offload_transfer_config(1 << 20, "lru"))
    assert alone["kv_connector"] == "OffloadingConnector"
    assert alone["kv_connector_extra_config"] == {"cpu_bytes_to_use": 1 << 20,
                                                  "eviction_policy": "lru"}
    both = json.loads(offload_transfer_config(1 << 20, "graph", {"policy": "ttl"}))
    assert both["kv_connector"] == "MultiConnector"
    kvsaga, tier = both["kv_connector_extra_config"]["connectors"]
    assert kvsaga["kv_connector"] == "KVSagaConnector"
    assert kvsaga["kv_connector_extra_config"] == {"policy": "ttl"}
    assert tier["kv_connector_extra_config"]["eviction_policy"] == "KVSagaGraphCachePolicy"
    assert tier["kv_connector_extra_config"]["cache_policy_module_path"] == (
        "kvsaga.integrations.vllm.cache_policy")
    for bad in ({"eviction": "mru"}, {"cpu_bytes": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            offload_transfer_config(**{"cpu_bytes": 1 << 20, **bad})


def _scheduler(sim, model_dir, usable: int, chunks: int, retention: dict | None):
    config = offload_transfer_config(sim.host_bytes(chunks, BLOCK_SIZE, BYTES_PER_TOKEN),
                                     "ttl", retention)
    s = make_scheduler(model_dir, usable + 1, False, kv_transfer=config)
    kvsaga, offload = sim.parts(s.connector)
    assert offload.connector_scheduler.manager._num_chunks == chunks
    worker = sim.OffloadWorker(BLOCK_SIZE, multi=kvsaga is not None)
    return s, kvsaga, worker


def _run(s, worker, requests) -> dict[str, int]:
    """Step until all finish, the emulated worker completing each step's transfers; per
    request its prompt tokens hit (on the GPU or loaded) at its first scheduling."""
    for r in requests:
        s.add_request(r)
    hits: dict[str, int] = {}
    for _ in range(1000):
        if not s.has_unfinished_requests():
            return {r.request_id: hits[r.request_id] for r in requests}
        out = s.schedule()
        kv_out, _ = worker.complete(out.kv_connector_metadata)
        ids = list(out.num_scheduled_tokens)
        s.update_from_output(out, ModelRunnerOutput(
            req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
            sampled_token_ids=[[TOKEN] for _ in ids], kv_connector_output=kv_out))
        hits.update((n.req_id, n.num_computed_tokens) for n in out.scheduled_new_reqs
                    if n.req_id not in hits)
    raise AssertionError("requests did not finish: the scheduler is stuck")


def _prompt(tag: int, blocks: int) -> list[int]:
    return [20_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


@pytest.mark.parametrize("retention", [None, {"policy": "ttl"}])
def test_paused_context_comes_back_from_the_host_tier(hf_model_dir, sim, retention):
    """A session's 4-block context, then others that need every one of the 10 GPU blocks
    (the retention connector must release it; vLLM's LRU reuses it): its next step loads
    the context from the host tier instead of computing it, and once every session ended
    no GPU block is left referenced."""
    s, kvsaga, worker = _scheduler(sim, hf_model_dir, 10, 40, retention)
    first = _prompt(1, 4)
    hint = {"session_id": "S", "tool": "run_tests", "expected_s": 30}
    _run(s, worker, [make_request(first, 2, hint, BLOCK_SIZE)])
    for i in range(3):
        _run(s, worker, [make_request(_prompt(10 + i, 9), 2, None, BLOCK_SIZE)])
    assert s.kv_cache_manager.block_pool.get_num_free_blocks() == 10  # nothing retained now
    loaded = worker.loaded_blocks
    again = make_request(first + [TOKEN] * 2 + _prompt(2, 1), 2,
                         {"session_id": "S", "last_step": True}, BLOCK_SIZE)
    assert _run(s, worker, [again])[again.request_id] >= 4 * BLOCK_SIZE
    assert worker.loaded_blocks - loaded >= 4
    assert s.kv_cache_manager.block_pool.get_num_free_blocks() == 10
    if kvsaga is not None:
        assert not kvsaga.holds


def test_replay_offload_arm_computes_less_and_pays_its_copies(hf_model_dir):
    """bench/vllm_scheduler_replay.py's offload arm on a small pressured workload: it loads
    what plain vLLM computes again, and its steps carry the stated copy cost."""
    mod = load_bench("vllm_scheduler_replay")
    args = mod.build_parser().parse_args(
        ["--sessions", "4", "--token-scale", "0.05", "--time-scale", "0.25",
         "--kv-fraction", "0.25", "--host-factor", "2", "--offload-token-s", "0.001"])
    plain = mod.replay(args, str(hf_model_dir), 0, None)
    tier = mod.replay(args, str(hf_model_dir), 0, "offload-kvsaga")
    moved = tier.connector["offload_loaded_blocks"] + tier.connector["offload_stored_blocks"]
    assert tier.connector["offload_loaded_blocks"] > 0
    assert tier.connector["offload_s"] == pytest.approx(moved * args.block_size * 0.001,
                                                        abs=0.01)
    assert (tier.scheduled_tokens - tier.decode_tokens
            < plain.scheduled_tokens - plain.decode_tokens)
