"""bench/vllm_scheduler_replay.py's "every hit kept" arm (`keep_every_hit`) on vLLM's real
scheduler: at most the budget's blocks are ever referenced, and nothing freed is lost."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tests.bench_scripts import load_bench  # noqa: E402

from .harness import BLOCK_SIZE, TOKEN, make_request, make_scheduler, run, step  # noqa: E402


@pytest.fixture(scope="module")
def replay_module():
    return load_bench("vllm_scheduler_replay")


def _prompt(tag: int, blocks: int) -> list[int]:
    return [20_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _referenced(s) -> int:
    return sum(1 for b in s.kv_cache_manager.block_pool.blocks if b.ref_cnt > 0 and not b.is_null)


def _second_step_hits(s) -> int:
    """A request, then others that need most of 10 usable blocks, then the first one's
    prompt extended: its prompt tokens hit."""
    first = _prompt(1, 4)
    run(s, [make_request(first, 2)])
    for i in range(3):
        run(s, [make_request(_prompt(10 + i, 8), 2)])
    again = make_request(first + [TOKEN] * 2 + _prompt(2, 1), 2)
    return run(s, [again])[again.request_id]


def test_every_hit_kept_within_the_budget(hf_model_dir, replay_module):
    usable = 10
    plain = make_scheduler(hf_model_dir, usable + 1, connector=False)
    assert _second_step_hits(plain) == 0  # vLLM's LRU reused the first request's blocks
    kept = make_scheduler(hf_model_dir, 200, connector=False)
    replay_module.keep_every_hit(kept, usable)
    assert _second_step_hits(kept) == 4 * BLOCK_SIZE


def test_every_hit_kept_references_at_most_the_budget(hf_model_dir, replay_module):
    """Four requests that grow to 4 blocks each over 10 usable blocks: they cannot all run
    at once, whatever the pool behind holds; vLLM queues (or preempts) them, they run
    together as far as the budget allows, and every one finishes."""
    usable = 10
    s = make_scheduler(hf_model_dir, 200, connector=False)
    replay_module.keep_every_hit(s, usable)
    for i in range(4):
        s.add_request(make_request(_prompt(30 + i, 3), 8))
    peak = 0
    for _ in range(200):
        if not s.has_unfinished_requests():
            break
        step(s)
        peak = max(peak, _referenced(s))
    assert not s.has_unfinished_requests()
    assert 4 < peak <= usable  # more than one request ran, never past the budget


def test_rebuilt_tokens_are_what_an_unbounded_cache_does_not_compute(hf_model_dir, replay_module):
    """The rebuild count (the tokens behind the rebuild share): plain vLLM under pressure
    computes again KV it had computed before, at most the prefill an unbounded cache saves
    (what it computes beyond that are partial blocks, never cached by vLLM); an unbounded
    cache rebuilds nothing."""
    import argparse

    args = replay_module.build_parser().parse_args(
        ["--sessions", "3", "--steps", "4", "--token-scale", "0.05", "--time-scale", "0.25",
         "--kv-fraction", "0.25"])
    pressed = replay_module.replay(args, str(hf_model_dir), 0, None)
    wide = replay_module.replay(argparse.Namespace(**{**vars(args), "kv_blocks": 2000}),
                                str(hf_model_dir), 0, None)
    saved = pressed.figures()["prefill_tokens"] - wide.figures()["prefill_tokens"]
    assert wide.rebuilt_tokens == 0 and wide.rebuild_s == 0.0
    assert 0 < pressed.rebuilt_tokens <= saved
    assert pressed.rebuild_s == pytest.approx(args.token_s * pressed.rebuilt_tokens)
    assert 0 < pressed.figures()["rebuild_share"] < 1


def test_close_requests_cost_a_token_each_and_end_every_session(hf_model_dir, replay_module):
    """`--hint close`: a client that cannot say "last step" in advance ends each session with a
    one-token request once its last reply is in. It costs a prefill token per session, is no
    task's step (every task still ends once), and ends the connector's sessions: nothing
    stays retained."""
    base = ["--sessions", "3", "--steps", "4", "--token-scale", "0.05", "--time-scale", "0.25",
            "--kv-fraction", "0.25"]
    parse = replay_module.build_parser().parse_args
    told = replay_module.replay(parse(base), str(hf_model_dir), 0, None)
    closed = replay_module.replay(parse([*base, "--hint", "close"]), str(hf_model_dir), 0, None)
    assert len(closed.task_s) == len(told.task_s) == 3
    assert closed.prompt_tokens == told.prompt_tokens  # the closes are no step's prompt
    # at least their own token each (a close's block may also push a cached one out)
    assert closed.figures()["prefill_tokens"] >= told.figures()["prefill_tokens"] + 3
    conn = replay_module.replay(parse([*base, "--hint", "close"]), str(hf_model_dir), 0, "ttl")
    assert len(conn.task_s) == 3 and conn.held_at_end == 0
    # Without the close (and without last_step) the finished sessions' blocks stay retained.
    left = replay_module.replay(parse([*base, "--hint", "session"]), str(hf_model_dir), 0, "ttl")
    assert len(left.task_s) == 3 and left.held_at_end > 0


def test_session_only_hints_never_make_vllm_wait_for_finished_sessions(hf_model_dir,
                                                                       replay_module):
    """A client that sends only its session id (no tool, no `last_step`: what it knows before
    the model replies) never says that a session has ended. Its finished sessions must not
    keep the others waiting for the memory they hold: through vLLM's real scheduler, on the
    calibrated workload cut to 6 sessions x 5 steps, the connector's mean task time stays
    within 10% of plain vLLM's and no waiting session gets in only because the batch idled.
    Before the gate's expiry of unhinted pauses (`SessionGate.expire`; the same run with
    `pause_min_observed` past any count) the finished sessions stayed admitted: 2.2x plain
    vLLM's task time on seed 0, 7 sessions let in by idleness."""
    parse = replay_module.build_parser().parse_args
    args = parse(["--sessions", "6", "--steps", "5", "--token-scale", "0.1", "--time-scale",
                  "2", "--max-tool-s", "7200", "--kv-fraction", "0.15", "--step-s", "0.025",
                  "--token-s", "0.00065", "--hint", "session"])
    plain = replay_module.replay(args, str(hf_model_dir), 0, None)
    conn = replay_module.replay(args, str(hf_model_dir), 0, "ttl")
    assert len(conn.task_s) == len(plain.task_s) == 6
    assert (conn.figures()["task_time_mean_s"]
            <= 1.1 * plain.figures()["task_time_mean_s"])
    assert "admitted_idle" not in conn.connector
    assert conn.connector.get("expired", 0) > 0  # finished sessions were let go


def test_no_arm_beats_the_mean_tct_lower_bound(hf_model_dir, replay_module):
    """The bound printed beside the measured gains (bench/vllm_replay_bound.py) is a lower
    bound on the mean task time of any schedule at the budget: through vLLM's real
    scheduler, plain vLLM, the connector, and every hit kept in vLLM's order and in the
    clairvoyant one all stay at or above it, on a workload where the budget binds. Plain
    vLLM and the connector, whose cached blocks count against the budget, stay at or above
    the bound with memory too (`memory_bound`: each paused context kept or computed again);
    the every-hit-kept arms keep freed blocks outside the budget, so it does not hold them."""
    parse = replay_module.build_parser().parse_args
    args = parse(["--sessions", "4", "--steps", "4", "--token-scale", "0.1", "--time-scale",
                  "2", "--max-tool-s", "7200", "--kv-fraction", "0.15", "--step-s", "0.025",
                  "--token-s", "0.00065"])
    bound = replay_module.tct_bound(args, 0)
    assert 0 < bound["solo_s"] <= bound["bound_s"] <= bound["memory_s"] + 1e-9
    arms = [replay_module.replay(args, str(hf_model_dir), 0, None),
            replay_module.replay(args, str(hf_model_dir), 0, "ttl"),
            *(replay_module.replay(args, str(hf_model_dir), 0, None, all_hits=order)
              for order in replay_module.ALL_HITS_ORDERS)]
    for k, res in enumerate(arms):
        assert len(res.task_s) == 4
        low = bound["memory_s"] if k < 2 else bound["bound_s"]
        assert res.figures()["task_time_mean_s"] >= low - 1e-9
