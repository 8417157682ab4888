"""The scheduler registry: names, parameters and their errors, and what every scheduler
refuses (forgetting a session with a step still queued)."""

from __future__ import annotations

import pytest

from kvsaga.scheduler import (
    SCHEDULERS,
    FCFSScheduler,
    StepRequest,
    WorkflowScheduler,
    make_scheduler,
    scheduler_params,
)
from tests.sched_helpers import ToyRequest
from tests.scheduler.helpers import manager, toks


def test_registry_names_and_defaults():
    assert set(SCHEDULERS) == {"fcfs", "workflow"}
    m = manager()
    assert isinstance(make_scheduler("fcfs", m), FCFSScheduler)
    s = make_scheduler("workflow", m, max_num_seqs=3, overcommit=1.5)
    assert isinstance(s, WorkflowScheduler) and s.max_num_seqs == 3 and s.overcommit == 1.5
    assert "overcommit" in scheduler_params("workflow")
    assert "overcommit" not in scheduler_params("fcfs")
    assert isinstance(ToyRequest("a", [1]), StepRequest)


@pytest.mark.parametrize("name,params,match", [
    ("lifo", {}, "unknown scheduler 'lifo'; choose one of \\['fcfs', 'workflow'\\]"),
    (None, {}, "unknown scheduler None"),
    ("fcfs", {"overcommit": 2.0}, "scheduler 'fcfs' has no parameter 'overcommit'"),
    ("workflow", {"horizon": 2}, "no parameter 'horizon'; its parameters: max_num_seqs"),
    ("workflow", {"overcommit": 0}, "overcommit must be a number > 0, got 0"),
    ("workflow", {"overcommit": float("nan")}, "overcommit"),
    ("workflow", {"max_bypass": -1}, "max_bypass must be an integer >= 0"),
    ("workflow", {"backfill_window": -1}, "backfill_window must be an integer >= 0"),
    ("workflow", {"shrink_aging": -1}, "shrink_aging must be an integer >= 0"),
    ("workflow", {"growth_alpha": 1.5}, "growth_alpha must be in \\(0, 1\\]"),
    ("workflow", {"paused_growth": 1}, "paused_growth must be True or False, got 1"),
    ("workflow", {"tool_growth": "yes"}, "tool_growth must be True or False"),
    ("workflow", {"queue_shrink": 0}, "queue_shrink must be True or False, got 0"),
    ("workflow", {"tenant_weights": {"a": 0}}, "tenant_weights\\['a'\\]"),
    ("fcfs", {"max_num_seqs": 0}, "max_num_seqs must be an integer >= 1, got 0"),
    ("fcfs", {"max_num_batched_tokens": True}, "max_num_batched_tokens"),
])
def test_bad_names_and_params_are_clear_errors(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_scheduler(name, manager(), **params)


def test_manager_must_be_a_manager():
    with pytest.raises(ValueError, match="manager must be a KVCacheManager"):
        make_scheduler("fcfs", object())


@pytest.mark.parametrize("name", ["fcfs", "workflow"])
def test_forget_session_refuses_a_session_with_a_waiting_step(name):
    s = make_scheduler(name, manager(16))
    r = ToyRequest("a", toks(0, 8))
    s.add(r, 0.0)
    with pytest.raises(ValueError, match="'a' still has a step waiting or running"):
        s.forget_session("a", 0.0)
    assert s.waiting == [r]
