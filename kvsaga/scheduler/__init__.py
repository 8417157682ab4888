"""The scheduler that `LLMEngine` and the simulator both drive. Pure Python, no torch.

Each batch step an executor (the engine runs the model; the simulator a cost model) calls
`schedule(now, executor)`; the scheduler decides which running steps compute how many
tokens under the token budget (chunked prefill), whom to preempt when blocks run out, and
which waiting steps to admit, and asks the executor to carry each decision out through
four calls (`Executor`). The executor runs the batch, and reports each finished step with
`finish`. The scheduler reads the cache through `KVCacheManager.lookup`, which changes
nothing, and `begin_step`s (through the executor) only the steps it admits.

Schedulers by name (`make_scheduler(name, manager, **params)`):

- `fcfs`: vLLM v1's rule. Requests are admitted in arrival order while the blocks for their
  prefix hits and first chunk are free or evictable (head-of-line blocking); when a running
  request cannot get a block, the newest running request is preempted (its full blocks stay
  cached) and requeued at the front; a step that preempted admits nobody.
- `workflow` (default): workflow-atomic admission. The unit is the agent session: a new
  session is admitted only while the predicted working sets of the admitted sessions
  (context + expected growth over their next steps) and its own fit the KV tiers; an
  admitted session keeps its place across tool calls, and its resumed steps go before any
  new session. A session paused far longer than predicted is demoted so others may enter.
  New sessions are ordered across tenants by Agent Fair Share (below); within a tenant
  (`admission_order`) the least predicted remaining work first, aged by queueing time
  ("predicted", the default: `kvsaga.scheduler.admission_order`), or in queue order
  ("fifo").

Agent Fair Share (`kvsaga.scheduler.fair_share`): each backlogged tenant has a deficit
against its weighted fair share of session admissions; the largest deficit goes first, and
each tenant's admissions stay within a stated bound of its fair share. With two or more
tenants present, each also has a weighted share of the tiers: a tenant whose session fits
within its share is not refused for other tenants' paused sessions above their shares
(they are demoted) nor held behind another tenant's session that does not fit. And
(`share_step_tokens`, default 128), while two or more tenants compete in a batch step the
tenant with the least weighted service may fill it and the others' prefill is capped
(decodes are never cut, though a decode queued behind a prefill that takes the step's
budget waits a step: `fair_share`), so one tenant's prefill does not fill every step
another tenant's requests run in. The working-set rule
(growth estimate, demotion deadline, shrink order) is `kvsaga.scheduler.working_set`, which
the vLLM session gate shares.

Modules: `base` (protocols, `Scheduler`'s mechanics), `fcfs`, `workflow` (with its mixins
`waiting_queues`, `admission_candidates`, `decode_stall`, `wait_causes`, `block_room`,
`working_set_gate`, `demotion`, `leave_forecast` and the re-admission charges: `room_swap`,
built on `swap_pricing` and `room_forecast`, every value catalogued in `readmit_charges`),
`fair_share`, `working_set`, `growth_calibration` (the gate's growth corrected by realized
growth, `growth_quantile`), `admission_order`, `session_length`, `tail_guard`; the
map with one line each is docs/architecture.md, "Scheduler". Everything public is
importable from `kvsaga.scheduler`.

Bounded waiting (`workflow`): the reserve (`max_wait_s`, `admission_order`'s docstring
states the bound). Once the session waiting longest for admission has waited `max_wait_s`,
no other session is admitted until it is (no backfill, no other tenant, no other order);
the admitted sessions only leave then, and it is admitted once its working set fits beside
them (at once with none admitted, or after `idle_admit_s` with all of them away). So it
waits at most `max_wait_s`, plus the reserves of the sessions queued before it, plus the
time the sessions admitted then take to end or be demoted. Order and shares alone do not
bound the wait: the "predicted" order ages by ln(predicted remaining work) + arrival /
`aging_s` (finite, but aging_s x ln(cost ratio) can be long), and while a tenant's head
does not fit, backfill (at most `max_backfill` ahead of one head) and other tenants'
sessions within their shares go first. Under `admission_order` "fifo" (or `readmit_order`
"first"), a demoted session's next step queues ahead of its tenant's new sessions, most
recently demoted first, but each waiting one is overtaken so at most `max_overtake` times;
under the default ("predicted", `readmit_order` "sorted") it sorts among the new sessions
by the same key, so only the reserve bounds its wait. Resumed steps of admitted sessions
go first, warm ones (context still resident) before cold ones, but the head of their queue
is bypassed at most `max_bypass` times. A demoted session's step that the working-set
gate refuses may be admitted on the pool's check alone where the demotions its admission
would cause are forecast to cost their victims (their waits on return plus their
recomputation) less than the step's own wait for the room it lacks (`readmit_charge`
"room_returns_queue", the default since `--fit` round 34: `kvsaga.scheduler.room_swap`).
"""

from __future__ import annotations

import inspect
from typing import Any

from kvsaga.manager import KVCacheManager
from kvsaga.scheduler.base import Executor, Scheduler, SchedulerOutput, StepRequest
from kvsaga.scheduler.fcfs import FCFSScheduler
from kvsaga.scheduler.workflow import WorkflowScheduler

__all__ = ["DEFAULT_SCHEDULER", "SCHEDULERS", "Executor", "FCFSScheduler", "Scheduler",
           "SchedulerOutput", "StepRequest", "WorkflowScheduler", "make_scheduler",
           "check_param_names", "scheduler_params"]

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (FCFSScheduler, WorkflowScheduler)
}
DEFAULT_SCHEDULER = "workflow"


def make_scheduler(name: str, manager: KVCacheManager, **params: Any) -> Scheduler:
    """Build a scheduler by name.

    Args:
        name: a `SCHEDULERS` name ("fcfs", "workflow").
        manager: the KV cache manager it schedules over.
        params: `max_num_seqs`, `max_num_batched_tokens`, and the scheduler's own
            parameters (see its class).
    Raises:
        ValueError: an unknown name (listing the known ones), an unknown parameter (listing
            the scheduler's), or a bad value (naming it).
    """
    check_param_names(name, params)
    return SCHEDULERS[name](manager, **params)


def check_param_names(name: str, params: Any, *, exclude: tuple[str, ...] = ()) -> None:
    """Raise ValueError for an unknown scheduler `name` (listing the known ones) or a name in
    `params` that `make_scheduler(name, ...)` does not accept, less `exclude` (listing the
    accepted ones, less `exclude`)."""
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    known = [p for p in scheduler_params(name) if p not in exclude]
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = (f"its parameters: {', '.join(known)}" if known else "it takes none"
                 + (f" besides {', '.join(exclude)}" if exclude else ""))
        raise ValueError(f"scheduler {name!r} has no parameter {unknown[0]!r}; {takes}")


def scheduler_params(name: str) -> list[str]:
    """The parameter names `make_scheduler(name, ...)` accepts."""
    cls = SCHEDULERS[name]
    names = ["max_num_seqs", "max_num_batched_tokens"]
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            names.append(p.name)
    return names
