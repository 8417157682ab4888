"""POST /v1/sessions/{id}/end: end an agent session (its full blocks stay as prefix cache)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from kvsaga.serve.async_engine import EngineStopped
from kvsaga.serve.errors import APIError, refuse_lone_surrogate, stopped_error
from kvsaga.serve.sessions import tenant_salt
from kvsaga.serve.state import server_state

router = APIRouter()


# `:path`: a session id may hold "/" (sent %2F-escaped), as the completion routes allow.
@router.post("/v1/sessions/{session_id:path}/end")
async def end_session(request: Request, session_id: str) -> dict:
    state = server_state(request)
    srv = state.serving()
    cache_salt = None
    raw = await request.body()
    if raw.strip():
        try:
            cache_salt = json.loads(raw).get("cache_salt")
        except (ValueError, AttributeError, RecursionError):  # (RecursionError: too deep)
            raise APIError(400, "body must be a JSON object") from None
        if cache_salt is not None and not (isinstance(cache_salt, str) and cache_salt):
            raise APIError(400, f"cache_salt must be a non-empty string, got {cache_salt!r:.100}",
                           param="cache_salt")
        if cache_salt is not None:
            refuse_lone_surrogate(cache_salt, "cache_salt")
    api_key = request.scope.get("state", {}).get("api_key")
    engine_sid = srv.sessions.engine_id(tenant_salt(api_key, cache_salt), session_id)
    if srv.sessions.drop(engine_sid) is None:
        raise APIError(404, f"session {session_id!r} does not exist (or has ended)",
                       param="session_id", code="session_not_found")
    # Forgotten here first, in the same turn of the event loop as the lookup: a step of the
    # id arriving from now on opens a new session, whose add runs after this end (commands
    # run in order). The end runs even if this request is cancelled meanwhile, so the
    # engine never keeps a session (or its step) that the server has forgotten.
    try:
        await state.engine.end_session(engine_sid)
    except EngineStopped as e:
        raise stopped_error(e) from None
    return {"id": session_id, "object": "session", "ended": True}
