"""How long a driver of `LLMEngine` waits after a step that scheduled nothing.

Such a step means every unfinished request waits for admission and none runs: the next step
decides the same until a request arrives or ends, or the clock reaches the scheduler's
`wake_time`. Stepping again at once spins a core on empty steps (the server's engine thread
did, ~25,000 of them in 4 s). Both drivers, the server's engine thread
(`kvsaga.serve.async_engine.AsyncEngine`) and the offline `LLM`, wait instead: until the
wake time, and at most a backoff that starts at `FIRST_WAIT_S` and doubles at each idle step
up to a cap, so that what the scheduler cannot see (a policy's TTL running out) is still
looked at that often.
"""

from __future__ import annotations

from typing import Protocol


class _Stepped(Protocol):
    """What the backoff reads of an engine (an `LLMEngine`, or a test's stand-in)."""

    wake_time: float
    last_step_time: float

    def clock(self) -> float: ...


class AdmissionBackoff:
    """The wait after each idle step; `reset()` after a step that did work.

    Args:
        max_wait_s: the longest wait between two idle steps (> 0).
    """

    # The first wait after a step that scheduled nothing.
    FIRST_WAIT_S = 0.001

    def __init__(self, max_wait_s: float) -> None:
        if not max_wait_s > 0:
            raise ValueError(f"max_wait_s must be > 0, got {max_wait_s!r}")
        self.max_wait_s = float(max_wait_s)
        self.current_s = 0.0  # the last backoff handed out; 0 after a step that did work
        self.num_waits = 0  # idle steps that were followed by a wait

    def reset(self) -> None:
        self.current_s = 0.0

    def next_wait(self, engine: _Stepped) -> float:
        """Seconds to wait after an idle step of `engine` (0: step again now).

        A wake time not after that step's (`last_step_time`) was acted on by it, so the
        backoff alone holds then."""
        self.current_s = min(self.max_wait_s, max(self.FIRST_WAIT_S, 2 * self.current_s))
        timeout = self.current_s
        wake = engine.wake_time
        if wake > engine.last_step_time:
            timeout = min(timeout, max(0.0, wake - engine.clock()))
        if timeout > 0:
            self.num_waits += 1
        return timeout
