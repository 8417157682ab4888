"""POST /v1/chat/completions and POST /v1/completions: turn the request into a prompt and
hand it to `Serving`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kvsaga.engine.chat_template import ChatTemplateError
from kvsaga.serve.errors import APIError, refuse_lone_surrogate
from kvsaga.serve.protocol import ChatCompletionRequest, CompletionRequest
from kvsaga.serve.serving import Prompt
from kvsaga.serve.state import server_state

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat(request: Request, body: ChatCompletionRequest) -> Response:
    state = server_state(request)
    srv = state.serving()
    state.check_model(body.model)
    messages = [_message_dict(m, i) for i, m in enumerate(body.messages)]
    kwargs = {"tools": body.tools} if body.tools else {}
    try:
        text = srv.sessions.tokenizer.apply_chat_template(messages, True, **kwargs)
    except ChatTemplateError as e:
        raise APIError(422, f"the chat template rejected the messages: {e}",
                       param="messages") from None
    refuse_lone_surrogate(text, "messages")
    prompt = Prompt(text, add_special_tokens=False, param="messages")
    return await srv.complete(request, body, prompt, True,
                              body.max_completion_tokens or body.max_tokens)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest) -> Response:
    state = server_state(request)
    srv = state.serving()
    state.check_model(body.model)
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


def _message_dict(message: Any, index: int) -> dict:
    """A message as the chat template expects: text parts of a content list joined.

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
        d["content"] = "".join(texts)
    elif content is None:
        if d.get("role") != "assistant":
            raise APIError(400, f"messages[{index}] (role {d.get('role')!r}) has no content",
                           param=f"messages.{index}.content")
        d["content"] = ""
    return d
