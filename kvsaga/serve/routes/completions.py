"""POST /v1/chat/completions and POST /v1/completions: turn the request into a prompt and
hand it to `Serving`."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kvsaga.engine.chat_template import ChatTemplateError
from kvsaga.serve.errors import APIError, refuse_lone_surrogate
from kvsaga.serve.protocol import ChatCompletionRequest, CompletionRequest
from kvsaga.serve.serving import Prompt
from kvsaga.serve.state import server_state

router = APIRouter()
log = logging.getLogger("kvsaga.serve")
_WARNED_FIELDS: set[str] = set()


@router.post("/v1/chat/completions")
async def chat(request: Request, body: ChatCompletionRequest) -> Response:
    state = server_state(request)
    srv = state.serving()
    state.check_model(body.model)
    _warn_unknown_fields(body)
    text = render_chat(srv.sessions.tokenizer, body)
    prompt = Prompt(text, add_special_tokens=False, param="messages")
    return await srv.complete(request, body, prompt, True,
                              body.max_completion_tokens or body.max_tokens)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest) -> Response:
    state = server_state(request)
    srv = state.serving()
    state.check_model(body.model)
    _warn_unknown_fields(body)
    p = body.prompt
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        refuse_lone_surrogate(p, "prompt")
        prompt = Prompt(p)
    elif isinstance(p, list) and all(isinstance(t, int) for t in p):
        prompt = Prompt(None, ids=list(p))
    else:
        raise APIError(400, "only one prompt per request is supported", param="prompt")
    return await srv.complete(request, body, prompt, False, body.max_tokens)


def render_chat(tokenizer: Any, body: ChatCompletionRequest) -> str:
    """The prompt text of a chat request, rendered by the model's chat template.

    Raises:
        APIError: 400 for tools or tool calls the template would drop (it never reads
            them) and for content or tool-call arguments it cannot take; 422 when the
            template rejects the conversation.
    """
    template = tokenizer.chat_template_for(body.tools or None)  # (the one that renders)
    if template is not None:
        _refuse_what_the_template_drops(template, body)
    messages = [_message_dict(m, i) for i, m in enumerate(body.messages)]
    kwargs = {"tools": body.tools} if body.tools else {}
    try:
        text = tokenizer.apply_chat_template(messages, True, **kwargs)
    except ChatTemplateError as e:
        raise APIError(422, f"the chat template rejected the messages: {e}",
                       param="messages") from None
    refuse_lone_surrogate(text, "messages")
    return text


def _refuse_what_the_template_drops(template: Any, body: ChatCompletionRequest) -> None:
    """400 for `tools`, or an assistant turn's `tool_calls`, when the template never reads
    them: the model would answer without seeing them (SmolLM2's template reads neither)."""
    if body.tools and not template.reads_variable("tools"):
        raise APIError(400, "this model's chat template cannot render tools (it never reads "
                       "`tools`); describe them in a message instead", param="tools")
    for i, message in enumerate(body.messages):
        if (message.model_extra or {}).get("tool_calls") and not template.reads_key("tool_calls"):
            raise APIError(400, f"messages[{i}]: this model's chat template cannot render "
                           "tool_calls (it never reads them); send the calls as content "
                           "instead", param=f"messages.{i}.tool_calls")


def _warn_unknown_fields(body: Any) -> None:
    """Log once per field name that a request carried a field kvsaga knows nothing about:
    it is accepted (clients add optional fields over time, as vLLM accepts them) and has
    no effect."""
    for name in body.unknown_fields():
        if name not in _WARNED_FIELDS and len(_WARNED_FIELDS) < 64:  # clients pick the names
            _WARNED_FIELDS.add(name)
            log.warning("request field %.64r is unknown to kvsaga-serve: accepted and ignored",
                        name)


def _message_dict(message: Any, index: int) -> dict:
    """A message as the chat template expects: text parts of a content list joined by
    newlines.

    An assistant message may carry no content (OpenAI's reply that only calls tools, which
    clients send back as is): it reaches the template as "", since templates read the
    `content` of every message. Any other role needs its content.
    """
    d = message.model_dump(exclude_none=True)
    content = d.get("content")
    if isinstance(content, list):
        texts = [part.get("text") or "" for part in content if part.get("type") == "text"]
        if len(texts) != len(content):
            kinds = sorted({str(part.get("type")) for part in content} - {"text"})
            raise APIError(400, f"messages[{index}]: only text content parts are supported, "
                           f"got {', '.join(kinds)}", param=f"messages.{index}.content")
        d["content"] = "\n".join(texts)  # as vLLM joins them: words at a seam kept apart
    elif content is None:
        if d.get("role") != "assistant":
            raise APIError(400, f"messages[{index}] (role {d.get('role')!r}) has no content",
                           param=f"messages.{index}.content")
        d["content"] = ""
    if d.get("tool_calls") == []:
        # An empty list means no calls; templates that test `'tool_calls' in message`
        # (Llama 3.1's, Mistral v0.3's) would take it for a call and reject the turn.
        del d["tool_calls"]
    elif isinstance(d.get("tool_calls"), list):
        d["tool_calls"] = [_call_with_parsed_arguments(call, index, j)
                           for j, call in enumerate(d["tool_calls"])]
    return d


def _call_with_parsed_arguments(call: Any, index: int, j: int) -> Any:
    """A tool call whose `function.arguments` JSON string (OpenAI's wire form) is parsed,
    as vLLM does: tool-aware templates write `arguments | tojson`, which double-encoded
    the string (the model saw escaped quotes it never saw in training).

    Empty or missing arguments (a call without parameters) become {}. So do arguments that are not a
    JSON object, with a warning: the model wrote them, they stay in the conversation's
    history, and refusing them would fail every later turn of the session.
    """
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or isinstance(function.get("arguments"), dict):
        return call
    arguments = function.get("arguments")
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        parsed: dict = {}
    else:
        parsed = _json_object_or_empty(arguments, index, j)
    return {**call, "function": {**function, "arguments": parsed}}


def _json_object_or_empty(arguments: Any, index: int, j: int) -> dict:
    """`arguments` parsed when it is a JSON object, else {} and a warning naming the call."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError as e:
        problem = f"is not valid JSON ({e})"
    else:
        if isinstance(parsed, dict):
            return parsed
        problem = "is not a JSON object"
    log.warning("messages[%d].tool_calls[%d].function.arguments %s: rendered as {}",
                index, j, problem)
    return {}
