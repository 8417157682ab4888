"""Regressions from the review of the vLLM integration (its repro scripts), each through
vLLM's real scheduler and BlockPool with the kvsaga connector, driven step by step."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from .harness import BLOCK_SIZE, make_request, make_scheduler, run  # noqa: E402


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _pool(s):
    return s.kv_cache_manager.block_pool


# -- a hint's expected_s as a huge JSON integer ----------------------------------------------

HUGE_HINT = json.loads('{"kvsaga": {"session_id": "A", "tool": "t", "expected_s": 1'
                       + "0" * 400 + "}}")


def test_a_huge_integer_expected_s_is_a_malformed_hint_not_a_crash(hf_model_dir):
    """`expected_s` 10**400 (valid JSON, a Python int) passed the hint's checks, then raised
    OverflowError inside vLLM's `schedule()` (the gate's working sets, graph's pause
    arithmetic), which kills the engine core for every client. Now the hint is refused
    (InvalidRequest naming the field): the request runs as one outside any session."""
    from kvsaga.errors import InvalidRequest
    from kvsaga.integrations.vllm.hints import step_info

    with pytest.raises(InvalidRequest, match="expected_s"):
        step_info(HUGE_HINT)
    for policy, admission in (("ttl", False), ("graph", False), ("ttl", True),
                              ("graph", True)):
        s = make_scheduler(hf_model_dir, 40, connector=True, policy=policy,
                           admission=admission)
        t = [100.0]
        s.connector.clock = lambda t=t: t[0]
        r = make_request(_prompt(1, 8), 1)
        r.kv_transfer_params = HUGE_HINT
        run(s, [r])
        t[0] += 1
        for i in range(2, 6):  # other sessions arrive and press on memory
            run(s, [make_request(_prompt(i, 12), 1, {"session_id": f"S{i}"})])
            t[0] += 50
        assert "A" not in s.connector.holds and "A" not in s.connector._sessions
        assert s.connector.gate is None or "A" not in s.connector.gate.sessions


# -- a first step admitted by the gate, aborted before vLLM allocated it ---------------------

def test_an_admitted_step_aborted_before_allocation_leaves_no_phantom_session(hf_model_dir):
    """B's first step is admitted by the gate, but vLLM has no room to allocate it (a
    request outside any session holds the memory), and the client aborts it. The gate kept
    B admitted and paused, its 20 blocks reserved though it never ran and holds nothing: a
    later session C waited for max_wait_s (120 s simulated) behind that phantom."""
    from vllm.v1.request import RequestStatus

    from .harness import step

    s = make_scheduler(hf_model_dir, 40, connector=True)
    t = [100.0]
    s.connector.clock = lambda: t[0]
    g = s.connector.gate
    hog = make_request(_prompt(1, 30), 60)  # no session: 30+ blocks while it decodes
    s.add_request(hog)
    step(s)
    t[0] += 0.1
    b = make_request(_prompt(2, 20), 2, {"session_id": "B"})
    s.add_request(b)
    for _ in range(3):
        out = step(s)
        t[0] += 0.1
    assert b.request_id not in out.num_scheduled_tokens and "B" in g.sessions  # admitted
    s.finish_requests(b.request_id, RequestStatus.FINISHED_ABORTED)
    assert "B" not in g.sessions and g.committed() == 0  # the admission is undone
    while s.has_unfinished_requests():
        step(s)
        t[0] += 0.1
    bg = make_request(_prompt(4, 1), 1500)  # a small request outside sessions keeps running
    s.add_request(bg)
    step(s)
    t[0] += 0.5
    c = make_request(_prompt(3, 20), 2, {"session_id": "C"})
    s.add_request(c)
    while c.request_id not in step(s).num_scheduled_tokens:
        t[0] += 0.5
        assert t[0] < 1000, "C never scheduled"
    assert g.num_deferrals == 0 and g.admitted_by.get("max_wait", 0) == 0
    assert set(g.sessions) == {"C"}


# -- a step that finishes after its session's last step ---------------------------------------

@pytest.mark.parametrize("admission", [False, True])
def test_a_step_finishing_after_its_sessions_last_step_does_not_bring_it_back(hf_model_dir,
                                                                               admission):
    """A's last step finishes while an earlier step of A still runs; that step's finish
    retained A's context and registered A as paused again, though A had ended: its blocks
    stayed held (until pressure) and its records for good (the review's fuzz found every
    block held by such sessions)."""
    s = make_scheduler(hf_model_dir, 40, connector=True, admission=admission)
    c = s.connector
    ctx = _prompt(1, 6)
    slow = make_request(ctx, 40, {"session_id": "A", "tool": "t", "expected_s": 5})
    close = make_request(ctx + [1, 2, 3], 1, {"session_id": "A", "last_step": True})
    run(s, [slow, close])
    pool = _pool(s)
    assert c.holds == {} and c._sessions == {} and c._paused == {}
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1
    if admission:
        g = c.gate
        assert g.sessions == {} and g.num_in_flight == 0 and not g._flights
        assert "A" not in g.order.done and "A" not in g.pauses.paused_since
    # A later step of the id starts a new session, kept as usual.
    run(s, [make_request(ctx, 2, {"session_id": "A", "tool": "t", "expected_s": 5})])
    assert list(c.holds) == ["A"] and list(c._paused) == ["A"]


# -- n > 1: one request's children, a step of the session together ---------------------------

def test_n_children_are_one_session_step_for_the_gate_and_the_ranker(hf_model_dir):
    """vLLM fans a request with n > 1 out into n child requests with the same
    kv_transfer_params. The gate counted each child's finish as a step (children after the
    first learned as steps of ~0 growth) and KVSagaScheduler's ranker each child's arrival as
    a step: learned growth a third of the true one and steps three-fold for n = 3."""
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    from .harness import TOKEN

    s = make_scheduler(hf_model_dir, 80, connector=True, scheduling_policy="priority",
                       scheduler_cls=KVSagaScheduler)
    t = [100.0]
    s.connector.clock = lambda: t[0]
    s.clock = lambda: t[0]
    g = s.connector.gate
    ctx = _prompt(1, 10)
    for k in range(4):
        hint = {"session_id": "A", "tool": "t", "expected_s": 5, "workflow": "w"}
        run(s, [make_request(ctx, 16, hint) for _ in range(3)])  # n = 3 children
        t[0] += 1
        ctx = ctx + [TOKEN] * 16 + _prompt(20 + k, 4)  # reply + observation: 80 tokens
    assert g._growth.mean("w") == 16 + 4 * BLOCK_SIZE
    assert g.order.done["A"] == ("w", 4)
    assert s.ranker.live["A"][0] == 4
    assert g.num_in_flight == 0 and not g._flights


# -- the CPU offload tier's policy forgets sessions that no longer hold a chunk --------------

@pytest.mark.parametrize("policy", ["KVSagaCachePolicy", "KVSagaGraphCachePolicy"])
def test_the_offload_policy_forgets_sessions_whose_chunks_are_all_gone(policy):
    """Behind vLLM's CPUOffloadingManager, sessions that never send `last_step` (the
    session-only client) were never forgotten: 20,000 sessions left 20,000 records in the
    policy and its inner kvsaga policy's views. Now a paused session none of whose chunks
    is left is forgotten; a later step of it starts again as a new session."""
    from vllm.v1.kv_offload.base import make_offload_key
    from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager

    from kvsaga.integrations.vllm import CACHE_POLICY_MODULE

    mgr = CPUOffloadingManager(64, cache_policy=policy,
                               cache_policy_module_path=CACHE_POLICY_MODULE)
    pol = mgr._policy

    def store(i: int, sid: str) -> list:
        keys = [make_offload_key(f"s{i}-{j}".encode().ljust(32, b"."), 0) for j in range(4)]
        _store_step(mgr, f"r{i}", sid, keys)
        return keys

    for i in range(2000):
        store(i, f"S{i}")
        assert len(pol._sessions) <= 64 and len(pol.policy.views) <= 64  # one chunk each
    owners = {o for o, _ in pol._owner.values() if o is not None}
    assert set(pol._sessions) == owners == set(pol.policy.views)
    assert len(pol.chunks) == 64
    store(5000, "S0")  # S0 (forgotten long ago) comes back: a new session, kept as any
    assert "S0" in pol._sessions and "S0" in pol.policy.views


def _store_step(mgr, rid: str, sid: str, keys: list, last_step: bool = False) -> None:
    """One request of session `sid` through vLLM's offloading manager: its chunks `keys`
    touched, stored and the request finished (`last_step`: its session's last)."""
    from vllm.v1.kv_offload.base import ReqContext

    hint = {"session_id": sid, **({"last_step": True} if last_step else {})}
    ctx = ReqContext(rid, kv_transfer_params={"kvsaga": hint})
    for pos, k in enumerate(keys):
        ctx.set_offload_key_position(k, (pos + 1) * 16)
    mgr.on_new_request(ctx)
    mgr.touch(keys, ctx)
    out = mgr.prepare_store(keys, ctx)
    mgr.complete_store(out.keys_to_store, ctx)
    mgr.on_request_finished(ctx)


def test_a_session_whose_last_chunk_became_shared_is_forgotten():
    """B reuses A's only chunk: the chunk is shared cache now, A holds none and is
    forgotten; B keeps its own."""
    from vllm.v1.kv_offload.base import make_offload_key
    from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager

    from kvsaga.integrations.vllm import CACHE_POLICY_MODULE

    mgr = CPUOffloadingManager(16, cache_policy="KVSagaCachePolicy",
                               cache_policy_module_path=CACHE_POLICY_MODULE)
    pol = mgr._policy
    shared = make_offload_key(b"shared".ljust(32, b"."), 0)
    own = make_offload_key(b"b-own".ljust(32, b"."), 0)
    for rid, sid, keys in (("a1", "A", [shared]), ("b1", "B", [shared, own])):
        _store_step(mgr, rid, sid, keys)
    assert pol._owner[shared][0] is None and pol._owner[own][0] == "B"
    assert set(pol._sessions) == {"B"} and set(pol.policy.views) == {"B"}


@pytest.mark.parametrize("policy", ["KVSagaCachePolicy", "KVSagaGraphCachePolicy"])
def test_a_session_forgotten_for_holding_no_chunk_is_not_learned_as_abandoned(policy):
    """The offload policy forgot a paused session whose chunks were all evicted by ending it
    in its kvsaga policy while paused, which the execution graph counts as an abandonment
    of the tool it waited on (lowering the resume odds every paused session of that tool
    is ranked by). Forgotten is not ended: nothing is learned. A session that does end
    (its last step) is still counted as finished."""
    from vllm.v1.kv_offload.base import make_offload_key
    from vllm.v1.kv_offload.cpu.manager import CPUOffloadingManager

    from kvsaga.integrations.vllm import CACHE_POLICY_MODULE

    mgr = CPUOffloadingManager(4, cache_policy=policy,
                               cache_policy_module_path=CACHE_POLICY_MODULE)
    pol = mgr._policy
    graph = pol.policy.graph

    def keys(tag: str) -> list:
        return [make_offload_key(f"{tag}-{j}".encode().ljust(32, b"."), 0) for j in range(4)]

    def abandoned() -> int:
        return sum(n.abandoned for g in graph.workflows.values() for n in g.nodes.values())

    _store_step(mgr, "a1", "A", keys("a1"))
    assert "A" in graph._tracks
    _store_step(mgr, "b1", "B", keys("b1"))  # evicts A's 4 chunks: A is forgotten
    assert "A" not in pol._sessions and "A" not in graph._tracks
    assert abandoned() == 0
    _store_step(mgr, "a2", "A", keys("a2"), last_step=True)  # A's id again, and its end
    assert abandoned() == 0 and sum(g.num_sessions for g in graph.workflows.values()) == 1


# -- a prefix-cache reset that cannot succeed keeps the retained blocks ------------------------

@pytest.mark.parametrize("connector_too", [False, True])
def test_a_prefix_cache_reset_refused_by_vllm_keeps_the_retained_blocks(hf_model_dir,
                                                                         connector_too):
    """vLLM refuses to reset the prefix cache while a request runs (it returns False and
    keeps every hash), but the connector had already given back every paused session's
    blocks: retention lost for nothing. Now it gives them back only when the reset can
    succeed."""
    from .harness import step

    s = make_scheduler(hf_model_dir, 40, connector=True, admission=False)
    a1 = _prompt(1, 6)
    run(s, [make_request(a1, 2, {"session_id": "A", "tool": "t", "expected_s": 30})])
    held = list(s.connector.holds["A"])
    runner = make_request(_prompt(2, 2), 50)
    s.add_request(runner)
    step(s)
    assert s.reset_prefix_cache(reset_connector=connector_too) is False
    assert s.connector.holds == {"A": held}
    assert all(_pool(s).blocks[b].block_hash is not None for b in held)
    run(s, [])  # the runner finishes: the reset can succeed now, and gives them back
    assert s.reset_prefix_cache(reset_connector=connector_too) is True
    assert s.connector.holds == {}
    assert _pool(s).get_num_free_blocks() == _pool(s).num_gpu_blocks - 1


# -- gate_args that cannot be used are refused when vLLM builds the scheduler ------------------

@pytest.mark.parametrize("name", ["horizon_steps", "prior_growth_tokens", "room_steps"])
def test_an_infinite_gate_arg_is_refused_when_vllm_builds_the_scheduler(hf_model_dir, name):
    """horizon_steps or prior_growth_tokens inf was accepted, then raised OverflowError at
    the first admission, inside vLLM's schedule()."""
    with pytest.raises(ValueError, match=f"gate parameter {name} must be a finite number"):
        make_scheduler(hf_model_dir, 40, connector=True, gate_args={name: float("inf")})
    s = make_scheduler(hf_model_dir, 40, connector=True, gate_args={name: 1e6})
    run(s, [make_request(_prompt(1, 2), 2, {"session_id": "A", "tool": "t"})])


# -- has_pending_block_frees says whether blocks were freed, not references dropped ------------

def test_pending_block_frees_is_true_only_when_blocks_were_freed(hf_model_dir):
    """vLLM asks `has_pending_block_frees` right before it preempts a running request, and
    on True skips the rest of its running requests this step instead. The connector said
    True whenever it dropped a retained reference, though a block a running request also
    holds is not freed by that: nothing was freed, and vLLM stalled its batch for a step."""
    from .harness import step

    s = make_scheduler(hf_model_dir, 16, connector=True, admission=False)
    c, pool = s.connector, _pool(s)
    ctx = _prompt(1, 4)
    run(s, [make_request(ctx, 1, {"session_id": "B", "tool": "t", "expected_s": 30})])
    assert len(c.holds["B"]) == 4
    r1 = make_request(ctx + _prompt(2, 1)[:8], 100)  # runs on B's 4 blocks (hits)
    s.add_request(r1)
    step(s)
    assert all(pool.blocks[b].ref_cnt == 2 for b in c.holds["B"])  # B's hold and r1's
    free = pool.get_num_free_blocks()
    assert c.has_pending_block_frees() is False  # nothing can be freed: vLLM may preempt
    assert pool.get_num_free_blocks() == free
    # A paused session's blocks nothing else holds: released, freed, and said so.
    run(s, [make_request(_prompt(3, 3), 1, {"session_id": "C", "tool": "t", "expected_s": 30})])
    assert len(c.holds["C"]) == 3
    free = pool.get_num_free_blocks()
    assert c.has_pending_block_frees() is True
    assert pool.get_num_free_blocks() > free


@pytest.mark.parametrize("admission", [False, True])
def test_a_step_queued_unasked_when_its_session_ended_does_not_bring_it_back(hf_model_dir,
                                                                             admission):
    """One sequence at a time: A's last step runs while an earlier-sent step of A waits in
    vLLM's queue, never asked about; it runs after A ended. Sent before the end, it is a
    step of the ended session, not a new one (the review's fuzz: such sessions held every
    block)."""
    s = make_scheduler(hf_model_dir, 40, connector=True, admission=admission, max_num_seqs=1)
    c = s.connector
    ctx = _prompt(1, 6)
    close = make_request(ctx + [1, 2, 3], 1, {"session_id": "A", "last_step": True})
    queued = make_request(ctx, 4, {"session_id": "A", "tool": "t", "expected_s": 5})
    run(s, [close, queued])
    pool = _pool(s)
    assert c.holds == {} and c._sessions == {} and c._paused == {}
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1
    assert c.gate is None or c.gate.sessions == {}
    run(s, [make_request(ctx, 2, {"session_id": "A", "tool": "t", "expected_s": 5})])
    assert list(c.holds) == ["A"]  # sent after the end: a new session of the id


# -- a retained block a running request also holds is kept when room is asked -----------------

def test_room_releases_keep_retained_blocks_a_running_request_also_holds(hf_model_dir):
    """vLLM asks for room before it preempts (`has_pending_block_frees`, its run of asks
    doubling). Releasing dropped every retained reference in the policy's order, including
    those on blocks a running request also holds: no block freed, and the paused session
    lost its retention for nothing. Now those are kept: C's blocks go, B's stay."""
    from .harness import step

    s = make_scheduler(hf_model_dir, 16, connector=True, admission=False)
    c, pool = s.connector, _pool(s)
    ctx = _prompt(1, 4)
    run(s, [make_request(ctx, 1, {"session_id": "B", "tool": "t", "expected_s": 30})])
    held = list(c.holds["B"])
    s.add_request(make_request(ctx + _prompt(2, 1)[:8], 100))  # runs on B's 4 blocks (hits)
    step(s)
    assert all(pool.blocks[b].ref_cnt == 2 for b in held)  # B's hold and the request's
    assert c.has_pending_block_frees() is False
    assert c.holds == {"B": held}  # nothing freeable: B keeps its retention
    s.add_request(make_request(_prompt(3, 3), 1, {"session_id": "C", "tool": "t",
                                                  "expected_s": 1}))
    while "C" not in c.holds:
        step(s)
    assert len(c.holds["C"]) == 3 and len(s.requests) == 1  # the one on B's blocks runs
    answers = [c.has_pending_block_frees() for _ in range(4)]  # asks for 1, 2, 4, 8 blocks
    assert answers[0] is True and answers[-1] is False
    assert c.holds == {"B": held}  # C's blocks freed, B's kept
    assert c.stats.by_reason == {"preempt": 3}


def test_room_releases_read_the_victims_not_every_retained_block(hf_model_dir):
    """Passing over retained blocks a request holds too built a set over every retained
    block on each pass of `_release_until` (O(retained) per step under pressure); now only
    the policy's victims are read (and more asked for only when some were in use)."""
    s = make_scheduler(hf_model_dir, 64, connector=True, policy="lru", admission=False)
    c, pool = s.connector, _pool(s)  # LRU: no usage read (a pass over the retained blocks)
    for k in range(8):  # 8 paused sessions retaining 4 blocks each
        run(s, [make_request(_prompt(10 + k, 4), 1, {"session_id": f"S{k}", "tool": "t",
                                                     "expected_s": 30})])
    retained = sum(len(h) for h in c.holds.values())
    assert retained >= 32

    class Counted(list):
        reads = 0

        def __getitem__(self, i):
            Counted.reads += 1
            return super().__getitem__(i)

    pool.blocks = Counted(pool.blocks)
    try:
        assert c._release_until(pool.get_num_free_blocks() + 1, 0.0, "preempt") == 1
    finally:
        pool.blocks = list(pool.blocks)
    assert Counted.reads <= 4  # the victim's check and its release, not all 32


# -- n > 1 children are one step to the connector's policy too ---------------------------------

@pytest.mark.parametrize("admission", [False, True])
def test_n_children_are_one_step_to_the_policy(hf_model_dir, admission):
    """vLLM fans a request with n > 1 out into n children with the same hint. The gate
    counts them as one step, but the connector told its policy `step_finished` at each
    child's finish (the first paused the session while its siblings still ran) and
    `step_started` at each child's allocation: n = 3 made 12 steps of 4. Now the policy
    sees one step, started with the first child and finished with the last."""
    from .harness import TOKEN

    s = make_scheduler(hf_model_dir, 80, connector=True, admission=admission)
    c = s.connector
    calls, done = [], [0]  # policy calls (with the children finished by then)
    started, finished, request_finished = (c.policy.step_started, c.policy.step_finished,
                                           c.request_finished)

    def on_request_finished(request, block_ids):
        done[0] += 1
        return request_finished(request, block_ids)

    def on_started(session, now):
        calls.append(("started", done[0]))
        started(session, now)

    def on_finished(session, now, hint):
        calls.append(("finished", done[0]))
        finished(session, now, hint)

    c.request_finished = on_request_finished
    c.policy.step_started, c.policy.step_finished = on_started, on_finished
    ctx = _prompt(1, 4)
    for k in range(4):
        hint = {"session_id": "A", "tool": "t", "expected_s": 5}
        run(s, [make_request(ctx, 16, hint) for _ in range(3)])  # n = 3 children
        ctx = ctx + [TOKEN] * 16 + _prompt(20 + k, 1)
    assert calls == [(what, 3 * k + 3 * (what == "finished"))
                     for k in range(4) for what in ("started", "finished")]
    assert c.stats.retained_steps == 4 and c._flights == {} and list(c.holds) == ["A"]
