"""vLLM's n > 1 (parallel sampling) through the CPU offload tier with kvsaga's cache policy
(`KVSagaCachePolicy`), driven by vLLM's real scheduler and `OffloadingConnector`: a
session's requests in flight together are one step to the tier's kvsaga policy, as to the
retention connector and the gate (review s51/s52 vleft item 4: the policy keyed its step
state by session, so the first child to finish paused the session while the others ran,
and each later one was a step of its own).

The children are built as vLLM's `ParentRequest` makes them (ids `i_parent`, sampling
params shallow copies of the parent's, so one shared `kv_transfer_params`); the emulated
model samples a different token for each child, as sampling does, so each stores chunks
of its own output where the tier offloads more than prompts."""

from __future__ import annotations

import json
from copy import copy

import pytest

pytest.importorskip("vllm")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402

from kvsaga.integrations.vllm import offload_transfer_config  # noqa: E402

from .harness import BLOCK_SIZE, TOKEN, _hasher, make_request, make_scheduler  # noqa: E402

USABLE, CHUNKS = 10, 40


def _prompt(tag: int, blocks: int) -> list[int]:
    return [30_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _children(parent: str, prompt: list[int], max_tokens: list[int], hint: dict) -> list:
    """vLLM's n = len(max_tokens) children of request `parent` (its `ParentRequest`: ids
    `i_parent`, sampling params copied from the parent's; each child's own max_tokens here
    makes them finish at different steps, as their EOS would)."""
    params = SamplingParams(max_tokens=max(max_tokens), ignore_eos=True,
                            extra_args={"kv_transfer_params": {"kvsaga": hint}})
    kids = []
    for i, n in enumerate(max_tokens):
        child = copy(params)
        child.max_tokens = n
        kids.append(Request(request_id=f"{i}_{parent}", prompt_token_ids=list(prompt),
                            sampling_params=child, pooling_params=None,
                            block_hasher=_hasher(BLOCK_SIZE)))
    assert kids[0].kv_transfer_params is kids[-1].kv_transfer_params  # one shared hint
    return kids


class _Run:
    """vLLM's scheduler with the offload tier alone (`eviction`: its policy), stepped with the
    emulated worker; each request's sampled token depends on its id (its child index)."""

    def __init__(self, sim, replay_mod, model_dir, eviction: str, prompt_only: bool) -> None:
        config = json.loads(offload_transfer_config(
            sim.host_bytes(CHUNKS, BLOCK_SIZE, replay_mod.HARNESS_BYTES_PER_TOKEN), eviction))
        config["kv_connector_extra_config"]["offload_prompt_only"] = prompt_only
        self.s = make_scheduler(model_dir, USABLE + 1, False, kv_transfer=json.dumps(config))
        _, offload = sim.parts(self.s.connector)
        self.manager = offload.connector_scheduler.manager
        self.worker = sim.OffloadWorker(BLOCK_SIZE)
        self.hits: dict[str, int] = {}

    def _token(self, rid: str) -> int:
        head = rid.split("_", 1)[0]
        return TOKEN + int(head) if "_" in rid and head.isdigit() else TOKEN

    def step(self) -> None:
        s = self.s
        out = s.schedule()
        kv_out, _ = self.worker.complete(out.kv_connector_metadata)
        ids = list(out.num_scheduled_tokens)
        reqs = s.requests
        tokens = [[] if reqs[r].num_computed_tokens < reqs[r].num_prompt_tokens
                  else [self._token(r)] for r in ids]
        s.update_from_output(out, ModelRunnerOutput(
            req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
            sampled_token_ids=tokens, kv_connector_output=kv_out))
        for n in out.scheduled_new_reqs:
            self.hits.setdefault(n.req_id, n.num_computed_tokens)

    def run(self, requests, each=None) -> None:
        for r in requests:
            self.s.add_request(r)
        for _ in range(1000):
            if not self.s.has_unfinished_requests():
                break
            self.step()
            if each is not None:
                each()
        else:
            raise AssertionError("requests did not finish: the scheduler is stuck")
        for _ in range(2):  # the last stores complete, and their requests finish to the tier
            self.step()


def _record(policy, calls: list) -> None:
    """Record the tier's kvsaga policy's lifecycle calls: (name, session id)."""
    for name in ("step_started", "step_finished", "session_ended"):
        told = getattr(policy, name)

        def record(session, *a, _told=told, _name=name, **k):
            calls.append((_name, session.session_id))
            return _told(session, *a, **k)

        setattr(policy, name, record)



def _clocked(sim, replay_mod, model_dir, eviction: str, prompt_only: bool):
    """A run whose tier policy's clock reads `t[0]` (100.0 to start) and whose kvsaga policy's
    lifecycle calls land in `calls`. Returns (run, tier policy, t, calls)."""
    r = _Run(sim, replay_mod, model_dir, eviction, prompt_only)
    pol = r.manager._policy
    t = [100.0]
    pol.clock = lambda: t[0]
    calls: list = []
    _record(pol.policy, calls)
    return r, pol, t, calls

def _scenario(sim, replay_mod, model_dir, eviction: str, last_step: bool,
              prompt_only: bool = False):
    """Session S's first step (a 4-block context) is pushed out of the 10 GPU blocks by
    three other requests, then its next step comes as an n = 2 request: both children load
    S's context from the host tier; the first finishes after 20 tokens, the second after
    60. `prompt_only`: the tier's `offload_prompt_only` (vLLM's default; the children then
    store nothing of their own). Returns the run, the children and the policy calls of the
    n = 2 step."""
    r = _Run(sim, replay_mod, model_dir, eviction, prompt_only)
    calls: list = []
    pol = r.manager._policy
    if eviction != "lru":
        _record(pol.policy, calls)
    first = _prompt(1, 4)
    r.run([make_request(first, 2, {"session_id": "S", "tool": "t", "expected_s": 30})])
    for i in range(3):
        r.run([make_request(_prompt(10 + i, 9), 2)])
    del calls[:]
    hint = {"session_id": "S", "tool": "t", "expected_s": 30, "last_step": last_step}
    kids = _children("p", first + [TOKEN] * 2 + _prompt(2, 1), [20, 60], hint)
    loaded = r.worker.loaded_blocks

    def each():  # while the second child runs, S's step is under way to the policy
        if (eviction != "lru" and not prompt_only and not last_step and kids[0].is_finished()
                and not kids[1].is_finished()):
            assert calls == [("step_started", "S")]
            assert pol.policy.views["S"].running

    r.run(kids, each)
    for k in kids:
        assert r.hits[k.request_id] >= 4 * BLOCK_SIZE  # S's context came back for each
    return r, kids, calls, r.worker.loaded_blocks - loaded


def _sound(r) -> None:
    """No GPU block left referenced or freed twice; the tier's chunk count and the policy's
    agree; no request is left in flight to the policy."""
    pool = r.s.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == USABLE
    free = pool.free_block_queue.get_all_free_blocks()
    assert len({b.block_id for b in free}) == len(free) == USABLE
    m, pol = r.manager, r.manager._policy
    assert m._num_evictable_cache_chunks == len(pol.chunks)  # all stored chunks idle now
    if hasattr(pol, "ledger"):
        assert pol.ledger.num_cached == len(pol.chunks)
        assert not pol._running and not pol._orphans


@pytest.mark.parametrize(("eviction", "prompt_only"),
                         [("ttl", False), ("graph", False), ("ttl", True)])
def test_an_n2_step_is_one_step_to_the_tier_policy(hf_model_dir, sim, replay_mod, eviction,
                                                   prompt_only):
    """The first child's finish paused S while the second still ran (`step_finished`), and
    the second's was a second step (`step_started`, `step_finished`): the policy counted two
    steps and learned a pause as short as the gap between the children's finishes. One step
    now: it finishes with the last child where each child stored chunks of its own (so
    the policy saw it start); with prompts only offloaded (vLLM's default) the second child
    stores nothing and is seen only at its finish, so the step ends with the first and the
    second, a late child, adds none. Every chunk is S's or the other requests' (shared
    cache); stores and loads as vLLM's LRU tier makes for the same two requests."""
    r, kids, calls, loaded = _scenario(sim, replay_mod, hf_model_dir, eviction, False,
                                       prompt_only)
    assert calls == [("step_started", "S"), ("step_finished", "S")]
    pol = r.manager._policy
    view = pol.policy.views["S"]
    assert not view.running and view.paused_at is not None
    owners = [sid for sid, _ in pol._owner.values()]
    assert set(owners) == {"S", None} and len(owners) == len(pol.chunks)
    assert owners.count(None) == 3 * 9  # the other requests' prompts: shared cache
    assert pol._owned["S"] == owners.count("S") > 4  # S's context and its step's chunks
    _sound(r)
    lru, _, _, lru_loaded = _scenario(sim, replay_mod, hf_model_dir, "lru", False, prompt_only)
    _sound(lru)
    assert (loaded, r.worker.stored_blocks) == (lru_loaded, lru.worker.stored_blocks)
    assert loaded >= 4


def test_an_n2_last_step_ends_the_session_once(hf_model_dir, sim, replay_mod):
    """Both children hinted `last_step`: the first's finish ends S; the second, still running,
    stored another chunk after that, and that store started S again as a new session (a
    `step_started` nothing would ever finish but its own `session_ended`). It is of no
    session from the end on."""
    r, kids, calls, _ = _scenario(sim, replay_mod, hf_model_dir, "ttl", True, False)
    assert calls == [("step_started", "S"), ("session_ended", "S")]
    pol = r.manager._policy
    assert "S" in pol._ended and "S" not in pol._sessions and "S" not in pol._owned
    assert all(sid is None for sid, _ in pol._owner.values())
    _sound(r)


def _late_touch(sim, replay_mod, model_dir, last_step: bool):
    """S's first step (a 4-block context), then its next step as an n = 2 request with
    `offload_prompt_only` false: child 0 stores the step's new prompt chunk (its `touch`)
    and finishes after 3 tokens, before child 1 (60 tokens) fills a chunk of its own
    output, so child 1 reaches the policy first with a store after its sibling ended the
    step (or the session). Returns the run and the calls: the kvsaga policy's lifecycle
    calls, and the tier policy's `touch` and finish of each child, in order."""
    r = _Run(sim, replay_mod, model_dir, "ttl", False)
    calls: list = []
    pol = r.manager._policy
    _record(pol.policy, calls)
    first = _prompt(1, 4)
    r.run([make_request(first, 2, {"session_id": "S", "tool": "t", "expected_s": 30})])
    del calls[:]
    touch, finished = pol.touch, pol.on_request_finished

    def seen_touch(keys, ctx):
        calls.append(("touch", ctx.req_id))
        return touch(keys, ctx)

    def seen_finished(*a):
        calls.append(("finished", a[-1].req_id))
        return finished(*a)

    pol.touch, pol.on_request_finished = seen_touch, seen_finished
    hint = {"session_id": "S", "tool": "t", "expected_s": 30, "last_step": last_step}
    r.run(_children("p", first + [TOKEN] * 2 + _prompt(2, 1), [3, 60], hint))
    # the case itself: child 1's first touch comes after child 0's finish
    assert calls.index(("finished", "0_p")) < calls.index(("touch", "1_p"))
    assert calls.index(("touch", "0_p")) < calls.index(("finished", "0_p"))
    return r, calls


def _lifecycle(calls: list) -> list:
    return [c for c in calls if c[0] not in ("touch", "finished")]


def test_a_late_child_storing_after_its_sibling_ended_the_step_adds_no_step(
        hf_model_dir, sim, replay_mod):
    """Child 1's first store came after child 0 ended S's step: that `touch` started a
    second step (and its finish finished it), as if child 1 were a step of its own. It is
    a late child now: one step, and its chunks are S's, as its sibling's."""
    r, calls = _late_touch(sim, replay_mod, hf_model_dir, False)
    assert _lifecycle(calls) == [("step_started", "S"), ("step_finished", "S")]
    pol = r.manager._policy
    view = pol.policy.views["S"]
    assert not view.running and view.paused_at is not None
    owners = [sid for sid, _ in pol._owner.values()]
    assert len(owners) == len(pol.chunks) and set(owners) == {"S"}
    assert pol._owned["S"] == len(owners) > 5  # its context, the new chunk, child 1's output
    _sound(r)


def test_a_late_child_storing_after_its_sibling_ended_the_session_is_orphaned(
        hf_model_dir, sim, replay_mod):
    """With `last_step`, child 0's finish ended S; child 1's later store started S again as
    a new session, and its finish ended it a second time, with child 1's chunks filed
    under that new S. It is of no session now: S ends once, its chunks are shared cache."""
    r, calls = _late_touch(sim, replay_mod, hf_model_dir, True)
    assert _lifecycle(calls) == [("step_started", "S"), ("session_ended", "S")]
    pol = r.manager._policy
    assert "S" in pol._ended and "S" not in pol._sessions and "S" not in pol._owned
    assert all(sid is None for sid, _ in pol._owner.values())
    assert len(pol._owner) == len(pol.chunks) > 5
    _sound(r)
