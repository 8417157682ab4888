"""What each `WorkflowScheduler(readmit_charge=...)` value charges a demoted session admitted
again: one entry per value of `working_set_gate.READMIT_CHARGES`, with the `--fit` round
(`bench/scheduling_fit_rounds.py`) that introduced it.

The catalogue lives here, not in `WorkflowScheduler`'s docstring, because it grows by one
value per fit round and most values stay opt-in: the scheduler's docstring names the
default and points here, and tests/scheduler/test_readmit_charges.py checks that every
value the gate accepts is described and that the default named here is the scheduler's.
Each value's code is where its description says (`WorkingSetGate`, `decode_stall`,
`room_swap`, `room_forecast`, `leave_forecast`).
"""

from __future__ import annotations

DEFAULT = "room_returns_queue_demoted"

DESCRIPTIONS: dict[str, str] = {
    "uncached": "only the part of its context not cached, as for a new session (the default "
                "before round 34)",
    "context": "'uncached', and its whole context must fit beside the admitted contexts",
    "full": "its whole context (`kvsaga.scheduler.working_set_gate`)",
    "binding": "'full' while no other step waits for admission, where the pool binds, else "
               "'uncached' (`WorkingSetGate._pool_binds`; round 20 ranked it first and its "
               "non-thrash check rejected it)",
    "binding_short": "'binding''s 'full' only while the whole context also does not fit "
                     "beside the admitted contexts (`WorkingSetGate._tiers_short`; round 21 "
                     "ranked it first and its non-thrash check rejected it)",
    "cost": "'full' only while the recomputation its uncached charge is expected to cause "
            "outweighs its expected wait (`WorkingSetGate._churn_outweighs_wait`; round 22)",
    "cost_ends": "'cost' with the wait from the rate admitted contexts end at (round 22)",
    "cost_leave": "'cost' with the wait from per-session predictions of when admitted "
                  "contexts leave (`kvsaga.scheduler.leave_forecast`; round 23)",
    "cost_leave_waits": "'cost_leave' with the victims' re-admission waits too (round 23)",
    "room": "the pool's check alone (`decode_stall`)",
    "room_queue": "'room' while two demoted steps wait (`decode_stall`)",
    "room_fits": "'room' while its whole context fits beside the committed blocks "
                 "(`decode_stall`)",
    "room_contexts": "'room' while its whole context fits beside the admitted contexts "
                     "(`decode_stall`)",
    "room_ranked": "'room' only where the shrink its admission makes demotes only sessions "
                   "the admission order ranks behind it (`room_swap`; round 29)",
    "room_overdue": "'room' only where that shrink demotes only sessions past their "
                    "predicted returns (`room_swap`; round 29)",
    "room_priced": "'room' only where the mean wait to be admitted again observed so far "
                   "exceeds twice the recomputation the shrink's victims are expected to "
                   "cost (`room_swap`; round 30)",
    "room_returns": "'room_priced' with each victim predicted back before the shortage is "
                    "predicted to clear charged that wait too (`room_swap`; round 31)",
    "room_returns_fair": "'room_returns' refusing a swap with a victim of another tenant at "
                         "or below its Agent Fair Share deficit's fair share (round 32)",
    "room_returns_stay": "'room_returns' whose clearing forecast predicts a session still "
                         "admitted past its predicted leave to stay its remaining steps from "
                         "now, not to leave now (round 33)",
    "room_returns_queue": "'room' only where the step's forecast wait for its room exceeds "
                          "its victims' forecast waits on their returns, behind the steps "
                          "that sort ahead of them, plus twice their recomputation "
                          "(`room_swap`; round 34; the default of sessions 31-33)",
    "room_returns_queue_seen": "'room_returns_queue' with its gain at most the mean wait to "
                               "be admitted again seen so far (session 31)",
    "room_returns_queue_leave": "'room_returns_queue' whose victims' forecast waits let the "
                                "steps queued ahead of them leave again, each its expected "
                                "stay after its admission (session 32, round 36)",
    "room_returns_queue_corrected": "'room_returns_queue' with its gain times the scheduler's "
                                    "own observed error of it, shrunk toward 1 "
                                    "(`room_forecast`; session 32, round 37)",
    "room_returns_queue_steps": "'room_returns_queue' whose gain is the wait until the "
                                "predicted step finish that leaves the overshoot free, the "
                                "paused sessions' returns taking their growth back "
                                "(`room_forecast`; session 33, round 38)",
    "room_returns_queue_shrink": "'room_returns_queue' whose victims are those the shrink is "
                                 "forecast to demote at the next predicted step finish, not "
                                 "those it would demote now (`room_forecast`; session 33, "
                                 "round 39)",
    "room_returns_queue_cleared": "'room_returns_queue_shrink' refusing a swap whose "
                                  "overshoot the forecast shrink at the next finish cannot "
                                  "clear (`room_forecast`; session 33, round 40)",
    "room_returns_queue_demoted": "'room_returns_queue_cleared' with no predicted leave "
                                  "counted toward clearing the overshoot by the next finish: "
                                  "round 34's swap, its victims those of the next predicted "
                                  "shrink (`room_forecast`; session 33, round 41; the default)",
}


def describe(value: str) -> str:
    """One value's description; a clear error for a value the gate does not accept."""
    try:
        return DESCRIPTIONS[value]
    except KeyError:
        raise ValueError(f"readmit_charge must be one of {', '.join(DESCRIPTIONS)}, got "
                         f"{value!r}") from None
