"""The keys a router reads from a request body (split from kvsaga/routing_base.py): the
session a request continues (`session_key`), what it is routed by to stay where its cache is
(`affinity_key`) and its shared prefix (`prefix_key`). Re-exported by kvsaga.routing."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def session_key(body: Mapping, headers: Mapping[str, str] | None = None) -> str | None:
    """The session a request continues: `session_id`, else the `X-Session-ID` header (the
    server's precedence, `resolve_session_id`: an empty one is skipped). None for a
    one-shot request (or a non-str id, which the server refuses)."""
    header = None
    if headers is not None:
        header = next((v for k, v in headers.items() if k.lower() == "x-session-id"), None)
    return _first_id((body.get("session_id"), header))


def affinity_key(body: Mapping, headers: Mapping[str, str] | None = None) -> str | None:
    """What a request is routed by to stay where its cache is: its session
    (`session_key`), else its `prompt_cache_key`, OpenAI's caching hint, which unrelated
    requests share: they go to one replica, but the server does not make it a session."""
    sid = session_key(body, headers)
    return sid if sid is not None else _first_id((body.get("prompt_cache_key"),))


def _first_id(ids) -> str | None:
    """The first non-empty id; None if there is none or it is not a str."""
    for sid in ids:
        if sid:
            return sid if isinstance(sid, str) else None
    return None


def prefix_key(body: Mapping) -> str | None:
    """A key of a request's shared prefix: its system message (chat) or its first 256
    characters (completions); None when there is nothing to share."""
    msgs = body.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[0], Mapping):
        first = msgs[0]
        if first.get("role") == "system" and isinstance(first.get("content"), str):
            return hashlib.sha256(first["content"].encode()).hexdigest()[:16]
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        return hashlib.sha256(prompt[:256].encode()).hexdigest()[:16]
    return None
