"""Request: one LLM call as the engine tracks it, what it reports back, and the checks its
prompt passes on the way in (`prompt_token_ids`, `ContextTooLong`)."""

from __future__ import annotations

import enum
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from kvsaga.engine.detokenizer import IncrementalDetokenizer
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest


class ContextTooLong(InvalidRequest):
    """A prompt that leaves no room to generate: `prompt_tokens` >= `max_model_len`, so an
    answer needs `prompt_tokens + 1` tokens of context. Raised before anything is queued.

    Attributes:
        prompt_tokens: the prompt's length (for a session step: its whole context).
        max_model_len: the engine's context limit.
    """

    def __init__(self, prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"prompt of {prompt_tokens} tokens leaves no room to generate within the "
            f"context limit of {max_model_len} tokens"
        )
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len


def prompt_token_ids(prompt_ids: object, vocab: int) -> list[int]:
    """The prompt as a list of ints in [0, vocab), or InvalidRequest naming what is wrong.

    Integer scalars of numpy or torch (what a tokenizer's arrays hold) are taken as their
    values; a bool, a float or a str item is refused, as is a str prompt (text, not ids).
    """
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Iterable):
        raise InvalidRequest(
            f"prompt_ids must be a sequence of int token ids, got {type(prompt_ids).__name__}"
            + ("; encode text with engine.tokenizer" if isinstance(prompt_ids, str) else ""))
    prompt = list(prompt_ids)
    if not prompt:
        raise InvalidRequest("the prompt is empty")
    for i, t in enumerate(prompt):
        if type(t) is not int:
            try:
                if isinstance(t, bool) or getattr(t, "dtype", None) is torch.bool:
                    raise TypeError  # (numpy's bool has no __index__)
                prompt[i] = t = operator.index(t)
            except TypeError:
                raise InvalidRequest(f"token id {t!r} at prompt position {i} is not an int "
                                     f"({type(t).__name__})") from None
        if not 0 <= t < vocab:
            raise InvalidRequest(f"token id {t!r} is outside the vocabulary [0, {vocab})")
    return prompt


def one_shot_session_id(request_id: str, taken: Callable[[str], bool]) -> str:
    """The session id of a one-shot request: "oneshot-<request_id>", unless `taken` says a
    session of that name exists (a caller's, which the request would join, then end): then
    with the first suffix ".<k>" that is not taken."""
    sid = base = f"oneshot-{request_id}"
    k = 0
    while taken(sid):
        k += 1
        sid = f"{base}.{k}"
    return sid


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
    stop_reason: int | str | None = None  # (see `RequestOutput`)
    first_token_time: float | None = None
    detokenizer: IncrementalDetokenizer | None = None
    generator: object | None = None
    text: str = ""
    num_emitted_chars: int = 0  # of `text`, already sent as deltas
    # The last sampled token, not yet appended to the session in the manager: the next
    # decode step appends it and allocates its slot in one batched `decode_step`.
    pending_token: int | None = None
    # Its hand-back (`StepOutput._hand_back`): an abort before it ran (again) withdraws its
    # session's resume; it has left the core scheduler; retries of it that raised; when
    # it first raised (the engine's idle sweep ends a session pending that long).
    withdraws: bool = False
    left_scheduler: bool = False
    hand_back_failures: int = 0
    hand_back_failed_at: float | None = None

    @property
    def all_token_ids(self) -> list[int]:
        """The context the next scheduling of this request starts from (a new list: where
        only its length or a part is needed, `num_tokens` and `context_slice` copy less,
        which counts at every decode step of a long context)."""
        return self.prompt_ids + self.output_ids

    def context_slice(self, start: int, stop: int) -> list[int]:
        """`all_token_ids[start:stop]`, for 0 <= start <= stop, without building the
        whole context."""
        n = len(self.prompt_ids)
        if stop <= n:
            return self.prompt_ids[start:stop]
        if start >= n:
            return self.output_ids[start - n : stop - n]
        return self.prompt_ids[start:] + self.output_ids[: stop - n]

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


class ListPrefix(Sequence):
    """A read-only view of the first `len(items)` items of an append-only list, as they
    are when the view is made: what a running request's output holds of its generated
    tokens (and logprobs) without copying them at every step (a copy per step made a
    request's outputs cost quadratic time in its length). Items appended to the list later
    are not part of it. It compares equal to a list (or view) of the same items, and `+`
    and slices give lists; `list(view)` copies it. Not a `list`: `json.dumps` refuses a
    view itself (use `list(view)`, or `dataclasses.asdict(output)`, whose deep copy makes
    views lists); pickle and `copy` make it a list of its items."""

    __slots__ = ("_items", "_n")

    def __init__(self, items: list) -> None:
        self._items = items
        self._n = len(items)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        n = self._n
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step == 1:
                return self._items[start:max(start, stop)]
            return [self._items[j] for j in range(start, stop, step)]
        j = operator.index(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError("ListPrefix index out of range")
        return self._items[j]

    def __iter__(self) -> Iterator:
        return itertools.islice(self._items, self._n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, ListPrefix)):
            return len(other) == self._n and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  (a list's equality: not hashable)

    def __add__(self, other: object) -> list:
        if isinstance(other, (list, ListPrefix)):
            return list(self) + list(other)
        return NotImplemented

    def __radd__(self, other: object) -> list:
        if isinstance(other, list):
            return other + list(self)
        return NotImplemented

    def copy(self) -> list:
        return list(self)

    def __reduce__(self):
        # Pickled (and deep-copied: `dataclasses.asdict` of an output, which json then
        # takes) as a plain list of the view's items: not the whole underlying list as it
        # is at pickling time, and no reader needs this class.
        return list, (list(self),)

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass
class RequestOutput:
    """What a request has produced, after a step or at the end.

    Attributes:
        text: the whole text so far (stop strings removed); `delta` is this step's part.
        token_ids: generated token ids so far; `new_token_ids` are this step's. While the
            request runs, `token_ids`, `logprobs` and `top_logprobs` are read-only views
            (`ListPrefix`: a sequence that compares equal to the list, indexes and slices
            like it; `list(...)` copies), so that a step's output costs the same at any
            output length; a finished request's (and `LLMEngine.final_output`'s) are lists.
        finish_reason: None while running; "stop" (EOS, stop token or string), "length"
            (max_tokens or the context limit) or "abort".
        stop_reason: what ended a "stop": the stop string that matched, or the stop token
            id, as vLLM reports them; None for an EOS (one of the tokenizer's
            `eos_token_ids`, unless `ignore_eos`), any other finish, or while running.
        num_prompt_tokens / num_cached_tokens: prompt size and its prefix-cache hits.
        logprobs: logprob of each generated token, when asked for.
    """

    request_id: str
    session_id: str
    text: str
    delta: str
    token_ids: list[int] | ListPrefix
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    logprobs: list[float] | ListPrefix | None = None
    top_logprobs: list[list[tuple[int, float]]] | ListPrefix | None = None
    new_token_ids: list[int] = field(default_factory=list)
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
