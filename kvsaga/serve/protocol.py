"""OpenAI wire schemas (the subset kvsaga-serve speaks) and kvsaga's extensions.

Requests accept fields kvsaga knows nothing about (clients and SDKs add optional ones over
time; the app logs each such name once). Known OpenAI and vLLM fields whose values the engine
cannot honour are refused with a 400 naming them (`UNHONOURED`); at their no-op values they
are accepted.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

from kvsaga.engine.detokenizer import IncrementalDetokenizer
from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.session import MAX_NAME_CHARS


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now_s() -> int:
    return int(time.time())


def _json_number(kind: str) -> BeforeValidator:
    """A validator that refuses a JSON boolean or string where `kind` ("an integer") is
    expected."""
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected {kind}, got a boolean")
        if isinstance(value, str):
            raise ValueError(f"expected {kind}, got a string")
        return value
    return BeforeValidator(check)


# Request fields take JSON's own types: `true` or "2" is no count, token id or number (a
# temperature), and "yes" or 1 no boolean (pydantic's lax mode would read them as 1, 2,
# 1.0 and True). OpenAI refuses them too.
Int = Annotated[int, _json_number("an integer")]
Float = Annotated[float, _json_number("a number")]
Bool = Annotated[bool, Strict()]


def _null_is(default: Any) -> BeforeValidator:
    """A validator that reads an explicit JSON null as `default`, for the fields OpenAI
    marks nullable ("integer or null") whose null means the default."""
    return BeforeValidator(lambda value: default if value is None else value)


# OpenAI documents up to 4 stop sequences; every one is checked against each new token on
# the engine's thread, which all requests share, so a long list slowed everyone.
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64


def _no_op(*values: Any) -> Any:
    """A check that a field is unset (None) or at one of its no-op `values`."""
    return lambda value: value is None or any(value == v for v in values)


# Known OpenAI and vLLM request fields the engine cannot honour: the request is refused
# (400 naming the field) unless the field is unset or at its no-op value. The value says
# which values are no-ops; `CHAT_UNHONOURED` adds the chat-only ones.
UNHONOURED: dict[str, Any] = {
    "min_p": _no_op(0.0), "repetition_penalty": _no_op(1.0), "length_penalty": _no_op(1.0),
    "use_beam_search": _no_op(False), "min_tokens": _no_op(0),
    "skip_special_tokens": _no_op(True),
    "spaces_between_special_tokens": _no_op(True), "prompt_logprobs": _no_op(),
    "truncate_prompt_tokens": _no_op(), "allowed_token_ids": _no_op(),
    "bad_words": _no_op([]), "logits_processors": _no_op([]), "guided_json": _no_op(),
    "guided_regex": _no_op(), "guided_choice": _no_op(), "guided_grammar": _no_op(),
    "structured_outputs": _no_op(),
}
CHAT_UNHONOURED: dict[str, Any] = {
    "functions": _no_op([]), "function_call": _no_op("none", "auto"),
    "modalities": _no_op(["text"]), "audio": _no_op(), "prediction": _no_op(),
    "reasoning_effort": _no_op(), "web_search_options": _no_op(),
    "add_generation_prompt": _no_op(True), "continue_final_message": _no_op(False),
    "chat_template": _no_op(), "chat_template_kwargs": _no_op({}),
}


def _tool_choice(value: Any) -> Any:
    """OpenAI's forms of tool_choice, checked (not enforced: see `ChatCompletionRequest`)."""
    if value is None or value in ("none", "auto", "required"):
        return value
    if isinstance(value, str):
        raise ValueError("expected 'none', 'auto', 'required' or an object naming a tool")
    if not isinstance(value, dict):
        raise ValueError("expected a string or an object")
    kind = value.get("type")
    named = value.get(kind) if isinstance(kind, str) else None
    if kind in ("function", "custom"):
        if not (isinstance(named, dict) and isinstance(named.get("name"), str)
                and named["name"]):
            raise ValueError(f"expected {{'type': {kind!r}, {kind!r}: {{'name': ...}}}}")
    elif kind == "allowed_tools":
        if not (isinstance(named, dict) and isinstance(named.get("tools"), list)):
            raise ValueError("expected {'type': 'allowed_tools', 'allowed_tools': "
                             "{'mode': ..., 'tools': [...]}}")
    else:
        raise ValueError("expected type 'function', 'custom' or 'allowed_tools'")
    return value


ToolChoice = Annotated[Any, BeforeValidator(_tool_choice)]


# -- kvsaga extensions -----------------------------------------------------------------------


class KVSagaHint(BaseModel):
    """What the client knows about the pause that follows this step.

    Attributes:
        tool: the tool the agent calls next (the policy learns per-tool pause times).
        expected_s: how long the tool is expected to take.
        last_step: no step follows: the session ends with this request.
        workflow: the agent's workflow type, for policies that learn per workflow.
    """

    model_config = ConfigDict(extra="forbid")

    tool: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    expected_s: Float | None = Field(default=None, ge=0, allow_inf_nan=False)
    last_step: Bool = False
    workflow: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


class StreamOptions(BaseModel):
    """`stream_options`; other keys are kept (in `model_extra`), to be refused when the
    engine cannot honour them (`STREAM_UNHONOURED`) and otherwise warned about, as
    unknown request fields are."""

    model_config = ConfigDict(extra="allow")

    include_usage: Bool = False


# vLLM's stream_options keys the server cannot honour (usage in every chunk), as `UNHONOURED`.
STREAM_UNHONOURED: dict[str, Any] = {"continuous_usage_stats": _no_op(False)}


class _Common(BaseModel):
    """Sampling and session fields shared by chat and text completions."""

    # Unknown fields are kept (in `model_extra`) to be checked against `UNHONOURED`.
    model_config = ConfigDict(extra="allow")
    _unhonoured: ClassVar[dict[str, Any]] = UNHONOURED

    model: str
    max_tokens: Int | None = Field(default=None, ge=1)
    # Unset sampling fields take the model's generation_config.json values, else OpenAI's
    # defaults (temperature 1, top_p 1, no top-k): `SamplingParams.with_defaults`.
    temperature: Float | None = Field(default=None, ge=0, le=2)
    top_p: Float | None = Field(default=None, gt=0, le=1)
    top_k: Int | None = Field(default=None, ge=-1)
    n: Annotated[Int, _null_is(1)] = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[Int] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    seed: Int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # torch takes int64
    stream: Annotated[Bool, _null_is(False)] = False
    stream_options: StreamOptions | None = None
    ignore_eos: Bool = False
    include_stop_str_in_output: Bool = False  # vLLM's (`SamplingParams`)
    user: str | None = None
    # Sessions and tenancy (see sessions.py for the order of precedence).
    session_id: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    # OpenAI's caching hint, shared by unrelated requests: never a session (the prefix
    # cache needs no hint; the cluster gateway routes by it for affinity).
    prompt_cache_key: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    cache_salt: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    kvsaga: KVSagaHint | None = None
    # OpenAI fields the engine cannot honour: accepted at their defaults (clients send
    # those), refused otherwise by `refused_field` rather than silently ignored.
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    logit_bias: dict[str, Float] | None = None

    def num_top_logprobs(self) -> int | None:
        """`SamplingParams.logprobs` the request asks for (each endpoint spells it its way)."""
        return None

    def unknown_fields(self) -> list[str]:
        """Names of the request's fields that kvsaga knows nothing about (accepted), those
        inside `stream_options` as "stream_options.NAME"."""
        names = [k for k in self.model_extra or {} if k not in self._unhonoured]
        extra = self.stream_options.model_extra if self.stream_options else None
        return names + [f"stream_options.{k}" for k in extra or {}
                        if k not in STREAM_UNHONOURED]

    def refused_field(self) -> tuple[str, str] | None:
        """(field, why) for the first field set to a value the engine cannot honour, or
        that OpenAI refuses as set (as vLLM does)."""
        for name, value in (self.model_extra or {}).items():
            no_op = self._unhonoured.get(name)
            if no_op is not None and not no_op(value):
                return name, (f"{name}={json.dumps(value)[:200]} is not supported by this "
                              "server (it would be ignored); leave it unset")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stop) > MAX_STOP:
            return "stop", f"stop has {len(stop)} sequences; at most {MAX_STOP}"
        if any(len(s) > MAX_STOP_CHARS for s in stop):
            return "stop", f"a stop sequence is longer than {MAX_STOP_CHARS} characters"
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed with stream: true"
        for name, value in (self.stream_options and self.stream_options.model_extra or {}
                            ).items():
            no_op = STREAM_UNHONOURED.get(name)
            if no_op is not None and not no_op(value):
                return (f"stream_options.{name}", f"stream_options.{name}="
                        f"{json.dumps(value)[:200]} is not supported by this server (it "
                        "would be ignored); leave it unset")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name, f"{name}={getattr(self, name)}: penalties are not supported"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        return None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message; extra keys (tool_calls, name, ...) reach the chat template as given
    (tool-call arguments parsed from their JSON string)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(default=None, ge=1)
    _unhonoured: ClassVar[dict[str, Any]] = {**UNHONOURED, **CHAT_UNHONOURED}

    tools: list[dict[str, Any]] | None = None
    logprobs: Annotated[Bool, _null_is(False)] = False
    top_logprobs: Int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    # Accepted in any OpenAI form but not enforced (tool calls are not parsed from the
    # answer; agents parse them from the text): the app logs that once per distinct value.
    # One that requires or names a tool needs `tools` (`refused_field`), as OpenAI's does.
    tool_choice: ToolChoice = None

    def num_top_logprobs(self) -> int | None:
        """`SamplingParams.logprobs`: None (none), 0 (the chosen token's) or k alternatives."""
        if not self.logprobs:
            return None
        return self.top_logprobs or 0

    def refused_field(self) -> tuple[str, str] | None:
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            return ("tool_choice", f"tool_choice={json.dumps(self.tool_choice)[:200]} needs "
                    "tools: it may only name or require a tool when tools are specified")
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            return ("response_format", f"response_format type {kind!r} is not supported (no "
                    "constrained decoding); only 'text'")
        return super().refused_field()


    def unenforced_tool_choice(self) -> str | None:
        """tool_choice as a stable string when it asks for more than auto/none, else None."""
        if self.tool_choice in (None, "auto", "none"):
            return None
        return json.dumps(self.tool_choice, sort_keys=True)


class CompletionRequest(_Common):
    prompt: str | list[Int] | list[str] | list[list[Int]]
    echo: Annotated[Bool, _null_is(False)] = False
    logprobs: Int | None = Field(default=None, ge=0, le=5)
    suffix: str | None = None
    best_of: Int | None = Field(default=None, ge=1)

    def num_top_logprobs(self) -> int | None:
        return self.logprobs

    def refused_field(self) -> tuple[str, str] | None:
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported"
        if self.best_of not in (None, 1):
            return "best_of", f"best_of={self.best_of}: only best_of=1 is supported"
        return super().refused_field()


# -- responses -------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


def make_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class CompletionLogprobs(BaseModel):
    """The legacy completions format: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    # vLLM's: the stop string that matched, or the stop token id that ended the answer;
    # null for an EOS or any other finish.
    stop_reason: int | str | None = None
    logprobs: ChatLogprobs | None = None


class _Response(BaseModel):
    """The envelope every completion response and chunk opens with; each subclass pins
    `object` (an override keeps the field's place, so the wire order stays id, object,
    created, model) and adds its choices and usage."""

    id: str
    object: str
    created: int
    model: str


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    # (`ChatChoice`'s; `Run._chunk` sends it in the finishing chunk only, as vLLM does)
    stop_reason: int | str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    stop_reason: int | str | None = None  # (`ChatChoice`'s; streamed: null until the end)
    logprobs: CompletionLogprobs | None = None


class Completion(_Response):
    """A text completion, or (object "text_completion" too) one streamed chunk of it."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


def _piece(tokenizer: Any, token_id: int) -> tuple[str, bytes]:
    """A token's text and raw bytes. A token holding only part of a UTF-8 character has no
    text of its own: it is spelled "bytes:\\xNN..." (as vLLM does), which also keeps such
    alternatives apart as keys of the legacy `top_logprobs` dicts."""
    raw = tokenizer.token_bytes(token_id)
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw


def chat_logprobs(
    tokenizer: Any,
    token_ids: list[int],
    logprobs: list[float],
    top: list[list[tuple[int, float]]] | None,
) -> ChatLogprobs:
    """OpenAI's chat `logprobs` for generated tokens (`top`: (id, logprob) per token)."""
    content = []
    for i, (tid, lp) in enumerate(zip(token_ids, logprobs, strict=True)):
        token, raw = _piece(tokenizer, tid)
        alts = [TopLogprob(token=t, logprob=v, bytes=list(b))
                for t, b, v in ((*_piece(tokenizer, a), v) for a, v in (top[i] if top else ()))]
        content.append(TokenLogprob(token=token, logprob=lp, bytes=list(raw),
                                    top_logprobs=alts))
    return ChatLogprobs(content=content)


class TextOffsets:
    """Where each generated token's text starts in a choice's text (completions'
    `text_offset`), across the chunks of a stream, read off the engine's detokenization
    replayed (the same class, tokenizer and prompt context, so the same text): a token
    whose own text ends what it emits starts there; any other token starts where the text
    it waited on does. So a token holding the middle of a UTF-8 character starts where
    that character does, and a special token, which the text leaves out, adds nothing:
    counting each token's own bytes put every offset after one past the text, and so did a
    run of bytes that form no character (the text shows fewer U+FFFD for it than the
    bytes decode to).

    Args:
        tokenizer: the model's tokenizer.
        prompt_ids: the prompt the engine generated after (its detokenizer's left context).
        start: the offset of the first token (the echoed prompt's length).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], start: int) -> None:
        self.start = start
        self._text = IncrementalDetokenizer(tokenizer, prompt_ids)

    def take(self, token_id: int, raw: bytes) -> int:
        """The offset of the token `token_id`, whose bytes are `raw`; moves past the text
        it completes."""
        at = self.start + len(self._text.text)
        emitted = self._text.add(token_id)
        try:
            own = raw.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: it starts where that one does
            return at
        return at + len(emitted) - len(own) if own and emitted.endswith(own) else at


def completion_logprobs(
    tokenizer: Any,
    token_ids: list[int],
    logprobs: list[float],
    top: list[list[tuple[int, float]]] | None,
    offsets: TextOffsets,
) -> CompletionLogprobs:
    """The legacy completions `logprobs`; `offsets` carries the text offset across calls.

    Each `top_logprobs` dict holds the sampled token too, as OpenAI's legacy API and vLLM
    do ("up to logprobs+1 elements"), so `logprobs: 0` gives a dict of the sampled token
    alone; the dicts are ordered most likely first.
    """
    tokens, text_offset, tops = [], [], []
    for i, (tid, lp) in enumerate(zip(token_ids, logprobs, strict=True)):
        token, raw = _piece(tokenizer, tid)
        tokens.append(token)
        text_offset.append(offsets.take(tid, raw))
        alts = {_piece(tokenizer, a)[0]: v for a, v in (top[i] if top else ())}
        alts.setdefault(token, lp)
        tops.append(dict(sorted(alts.items(), key=lambda kv: -kv[1])))
    return CompletionLogprobs(tokens=tokens, token_logprobs=list(logprobs), top_logprobs=tops,
                              text_offset=text_offset)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kvsaga"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
