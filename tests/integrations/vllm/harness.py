"""A real vLLM scheduler, driven step by step without a model: what vLLM's own scheduler tests
do. Each step's "model" emits one fixed token per scheduled request, so requests run their
prompt, then decode `max_tokens` tokens and finish, exactly as the engine core would drive it.
"""

from __future__ import annotations

import functools
import itertools
import json

import torch
from vllm import SamplingParams
from vllm.config import (
    CacheConfig,
    DeviceConfig,
    KVTransferConfig,
    ModelConfig,
    SchedulerConfig,
    VllmConfig,
)
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from kvsaga.integrations.vllm import kv_transfer_config

BLOCK_SIZE = 16
TOKEN = 7  # what the fake model emits: never the EOS id


def make_scheduler(
    model_dir,
    num_blocks: int,
    connector: bool,
    policy: str | None = "ttl",
    max_num_seqs: int = 8,
    block_size: int = BLOCK_SIZE,
    max_num_batched_tokens: int = 4096,
    scheduling_policy: str = "fcfs",
    scheduler_cls: type[Scheduler] = Scheduler,
    kv_transfer: str | None = None,
    prefix_caching: bool = True,
    **extra,
) -> Scheduler:
    """A vLLM scheduler over `num_blocks` KV blocks (one of them vLLM's null block), prefix
    caching on (unless `prefix_caching` is False), with or without the kvsaga connector
    (`extra`: more connector settings;
    `policy` None: `kv_transfer_config`'s default, `kvsaga.policy.DEFAULT_POLICY`);
    `scheduling_policy` is vLLM's ("fcfs", or "priority": requests' `priority` first);
    `scheduler_cls` what vLLM's `--scheduler-cls` names (a Scheduler subclass);
    `kv_transfer`: a whole `--kv-transfer-config` JSON instead (e.g. the offload tier's,
    `offload_transfer_config`), taking the place of `connector`, `policy` and `extra`;
    `prefix_caching` False: vLLM's `--no-enable-prefix-caching`."""
    model_config = ModelConfig(model=str(model_dir), skip_tokenizer_init=True, dtype="float32")
    transfer = None
    if kv_transfer is not None:
        transfer = KVTransferConfig(**json.loads(kv_transfer))
    elif connector:
        transfer = KVTransferConfig(**json.loads(kv_transfer_config(**extra) if policy is None
                                                 else kv_transfer_config(policy, **extra)))
    vllm_config = VllmConfig(
        model_config=model_config,
        scheduler_config=SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=2048,
            enable_chunked_prefill=True,
            is_encoder_decoder=False,
            policy=scheduling_policy,
        ),
        cache_config=CacheConfig(block_size=block_size, enable_prefix_caching=prefix_caching),
        device_config=DeviceConfig("cpu"),
        kv_transfer_config=transfer,
    )
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[
            KVCacheGroupSpec(
                ["layer"],
                FullAttentionSpec(
                    block_size=block_size, num_kv_heads=1, head_size=8, dtype=torch.float32
                ),
            )
        ],
    )
    vllm_config.cache_config.num_gpu_blocks = num_blocks
    return scheduler_cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=block_size,
        log_stats=True,
    )


_ids = itertools.count()
init_none_hash(sha256)


def reset_request_ids() -> None:
    """Number the next requests from r0 again. A replay calls it first: vLLM's offload tier
    reads finished requests in the order of a set of their ids (string hashes), so a run's
    figures must not depend on how many requests earlier runs in the process made."""
    global _ids
    _ids = itertools.count()


@functools.cache
def _hasher(block_size: int):
    return get_request_block_hasher(block_size, sha256)


def make_request(
    prompt: list[int], max_tokens: int, hint: dict | None = None, block_size: int = BLOCK_SIZE,
    cache_salt: str | None = None,
) -> Request:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    if hint is not None:
        params.extra_args = {"kv_transfer_params": {"kvsaga": hint}}
    return Request(
        request_id=f"r{next(_ids)}",
        prompt_token_ids=list(prompt),
        sampling_params=params,
        pooling_params=None,
        block_hasher=_hasher(block_size),
        cache_salt=cache_salt,
    )


def sampled(scheduler: Scheduler, ids: list[str]) -> list[list[int]]:
    """What the model runner samples for the scheduled requests `ids`, after `schedule()`
    has counted this step's tokens as computed: a token for each, but none for a request
    still inside its prompt (a partial prefill's chunk), as vLLM's runner does."""
    reqs = scheduler.requests
    return [[] if reqs[r].num_computed_tokens < reqs[r].num_prompt_tokens else [TOKEN]
            for r in ids]


def step(scheduler: Scheduler):
    """One engine step: schedule, "run" the batch, feed the outputs back. Returns the
    scheduler output (for its num_scheduled_tokens and preemptions)."""
    out = scheduler.schedule()
    ids = list(out.num_scheduled_tokens)
    runner = ModelRunnerOutput(
        req_ids=ids,
        req_id_to_index={r: i for i, r in enumerate(ids)},
        sampled_token_ids=sampled(scheduler, ids),
    )
    scheduler.update_from_output(out, runner)
    return out


def run(scheduler: Scheduler, requests: list[Request], max_steps: int = 10_000) -> dict[str, int]:
    """Add the requests and step until all finish. Returns per request the prompt tokens that
    were prefix-cache hits when it was first scheduled."""
    for r in requests:
        scheduler.add_request(r)
    hits: dict[str, int] = {}
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            break
        out = step(scheduler)
        for new in out.scheduled_new_reqs:
            hits.setdefault(new.req_id, new.num_computed_tokens)
    else:
        raise AssertionError("requests did not finish: the scheduler is stuck")
    return {r.request_id: hits[r.request_id] for r in requests}
