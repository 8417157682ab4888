"""KVSagaConnector inside vLLM's real scheduler with vLLM's prefix caching off
(`--no-enable-prefix-caching`, or a model vLLM turns it off for): no block is hashed, so no
paused context can be hit again. Review s51 (vconn HIGH-1): the session gate still counted
the paused sessions' contexts as admitted working sets and held a new session back from
memory that was all free, until its idle wait (5 s) or max wait (120 s) let it in."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from .harness import (  # noqa: E402
    BLOCK_SIZE,
    make_request,
    make_scheduler,
    reset_request_ids,
    run,
    step,
)

MAX_STEPS = 500  # the plain run takes 24 steps


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _sessions(s) -> list[dict[str, int]]:
    """4 sessions of 10-block contexts over 39 usable blocks, 3 steps each, a round's 4
    requests sent together. Returns each engine step's scheduled tokens per request."""
    reset_request_ids()
    ctx = {k: _prompt(k, 10) for k in range(4)}
    schedule = []
    for round_ in range(3):
        for k in range(4):
            s.add_request(make_request(ctx[k], 4, {"session_id": f"S{k}", "tool": "t",
                                                   "last_step": round_ == 2}))
        while s.has_unfinished_requests():
            assert len(schedule) < MAX_STEPS, "the requests did not finish: held back"
            schedule.append(dict(step(s).num_scheduled_tokens))
        for k in range(4):
            ctx[k] = ctx[k] + [7] * 4 + _prompt(20 + k, 1)
    return schedule


@pytest.mark.parametrize("admission", [True, False])
def test_the_connector_leaves_vllm_schedule_as_it_is(hf_model_dir, admission):
    plain = make_scheduler(hf_model_dir, 40, connector=False, prefix_caching=False)
    kept = make_scheduler(hf_model_dir, 40, connector=True, prefix_caching=False,
                          admission=admission)
    assert _sessions(kept) == _sessions(plain)
    c = kept.connector
    assert c.gate is None and not c.holds and c.stats.retained_steps == 0
    pool = kept.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1


def test_with_kvsaga_scheduler_no_session_record_stays(hf_model_dir):
    """KVSagaScheduler reports each step's arrival to the connector (`session_active`): an
    unbound connector, which never sweeps, must not file them."""
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    s = make_scheduler(hf_model_dir, 40, connector=True, prefix_caching=False,
                       scheduling_policy="priority", scheduler_cls=KVSagaScheduler)
    _sessions(s)
    c = s.connector
    assert c.pool is None and not c._paused and not c._sessions and not c._steps


def test_an_unbound_connector_reads_no_hint(hf_model_dir, monkeypatch):
    """Review s51 (diffvconn's nit): unbound, the connector still parsed each request's hint
    (for nothing) and logged a malformed one, once per request. It reads none now."""
    import logging

    import kvsaga.integrations.vllm.connector as connector

    parsed, warned = [], []
    real = connector.request_step_info

    def counted(request):
        parsed.append(request.request_id)
        return real(request)

    class Warned(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warned.append(record.getMessage())

    monkeypatch.setattr(connector, "request_step_info", counted)
    handler = Warned(logging.WARNING)
    connector.logger.addHandler(handler)
    try:
        s = make_scheduler(hf_model_dir, 40, connector=True, prefix_caching=False)
        run(s, [make_request(_prompt(0, 2), 2, {"session_id": "x" * 300}),
                make_request(_prompt(1, 2), 2, {"session_id": "s", "expected_s": "soon"}),
                make_request(_prompt(2, 2), 2, {"session_id": "s", "tool": "t"})])
    finally:
        connector.logger.removeHandler(handler)
    assert s.connector.pool is None
    assert parsed == [] and not [w for w in warned if "hint" in w], (parsed, warned)
