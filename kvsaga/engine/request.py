"""Request: one LLM call as the engine tracks it, and what it reports back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kvsaga.engine.detokenizer import IncrementalDetokenizer
from kvsaga.engine.sampling import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and requeued; holds no block references
    RUNNING = "running"  # its session step is open in the manager
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """A request's state. The KV context lives in the manager under `session_id`.

    It is the `kvsaga.scheduler.StepRequest` the core scheduler sees.

    Attributes:
        prompt_ids: the prompt as submitted.
        output_ids: tokens generated so far; the last one has no K/V yet.
        num_cached_tokens: prompt tokens that were prefix-cache hits when it was first
            scheduled (reported to users as cached tokens).
        owns_session: the engine made the session for this request alone, and ends it when
            the request finishes; otherwise the step is finished with `pause_*` as a hint.
    """

    request_id: str
    session_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    owns_session: bool = True
    salt: str | None = None
    workflow: str = "default"
    pause_tool: str | None = None
    pause_expected_s: float | None = None
    last_step: bool = False
    tenant: str | None = None  # for Agent Fair Share (the server's API key / cache salt)
    resumed: bool = False  # a later step of a session the engine already served
    status: RequestStatus = RequestStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    num_cached_tokens: int | None = None
    num_preemptions: int = 0
    finish_reason: str | None = None
    first_token_time: float | None = None
    detokenizer: IncrementalDetokenizer | None = None
    generator: object | None = None
    text: str = ""
    num_emitted_chars: int = 0  # of `text`, already sent as deltas
    # The last sampled token, not yet appended to the session in the manager: the next
    # decode step appends it and allocates its slot in one batched `decode_step`.
    pending_token: int | None = None

    @property
    def all_token_ids(self) -> list[int]:
        """The context the next scheduling of this request starts from."""
        return self.prompt_ids + self.output_ids

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    # -- `kvsaga.scheduler.StepRequest` ------------------------------------------------------
    @property
    def token_ids(self) -> list[int]:
        return self.all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_num_tokens(self) -> int:
        return len(self.prompt_ids) + self.params.max_tokens


@dataclass
class RequestOutput:
    """What a request has produced, after a step or at the end.

    Attributes:
        text: the whole text so far (stop strings removed); `delta` is this step's part.
        token_ids: generated token ids so far.
        finish_reason: None while running; "stop" (EOS, stop token or string), "length"
            (max_tokens or the context limit) or "abort".
        num_prompt_tokens / num_cached_tokens: prompt size and its prefix-cache hits.
        logprobs: logprob of each generated token, when asked for.
    """

    request_id: str
    session_id: str
    text: str
    delta: str
    token_ids: list[int]
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    new_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
