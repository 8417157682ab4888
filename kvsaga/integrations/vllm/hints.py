"""What a vLLM request says about its agent session, read from `kv_transfer_params`.

Plain Python (no vLLM import), shared by the connector and the offload cache policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvsaga.errors import InvalidRequest
from kvsaga.session import MAX_NAME_CHARS, PauseHint, Session

HINT_KEY = "kvsaga"
STATS_PREFIX = "kvsaga retention stats: "  # the connector's counters log line (then JSON)
DEFAULT_WORKFLOW = "default"
_FIELDS = ("session_id", "tool", "expected_s", "last_step", "workflow")  # the hint's keys


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One request's place in an agent session.

    Attributes:
        session_id: the session the request is a step of.
        workflow: the session's workflow type (policies learn pause times per workflow).
        hint: the pause that follows this step (tool, expected seconds, last step).
    """

    session_id: str
    workflow: str
    hint: PauseHint


def request_step_info(request: Any) -> StepInfo | None:
    """`step_info` of a vLLM `Request`: its `kv_transfer_params`, its own `session_id` field
    and its `cache_salt` (the tenant: see `step_info`)."""
    return step_info(request.kv_transfer_params, getattr(request, "session_id", None),
                     getattr(request, "cache_salt", None))


def step_info(
    kv_transfer_params: Mapping[str, Any] | None, session_id: Any = None,
    cache_salt: Any = None,
) -> StepInfo | None:
    """Read `kv_transfer_params["kvsaga"]`; None for a request outside any session.

    Args:
        kv_transfer_params: the request's `kv_transfer_params` (None or a dict).
        session_id: the request's own session field (vLLM's `Request.session_id`), used when
            the hint names none.
        cache_salt: the request's `cache_salt` (vLLM's tenant separator: it salts the prefix
            hashes, so two salts never share a block). A non-empty one namespaces the session
            id (`tenant_session_id`), as kvsaga's own server does by tenant: two tenants'
            session "1" were one session, and one's step released the other's retained
            context, or its last step ended it (review s51, vconn MED-6).

    Raises:
        InvalidRequest: `kv_transfer_params` or the hint is not an object, or a field has the
            wrong type, or a session id, tool or workflow is longer than `MAX_NAME_CHARS`
            (the message names the field). Nothing else: the callers catch it to
            ignore a malformed hint, and any other error would fail vLLM's request.
    """
    if kv_transfer_params is not None and not isinstance(kv_transfer_params, Mapping):
        raise InvalidRequest(f"kv_transfer_params must be an object, got "
                             f"{type(kv_transfer_params).__name__} {kv_transfer_params!r:.200}")
    raw = (kv_transfer_params or {}).get(HINT_KEY)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"kv_transfer_params[{HINT_KEY!r}] must be an object, got "
                             f"{raw!r:.200}")
    unknown = [k for k in raw if k not in _FIELDS]
    if unknown:
        named = sorted(f"{k!r:.50}" for k in unknown)  # (a Python caller's keys: any type)
        more = f" and {len(named) - 10} more" if len(named) > 10 else ""
        raise InvalidRequest(
            f"kv_transfer_params[{HINT_KEY!r}] has unknown fields "
            f"{', '.join(named[:10])}{more} (known: {', '.join(_FIELDS)})"
        )
    sid = raw.get("session_id", session_id)
    if sid is None:
        return None
    if not isinstance(sid, str) or not sid:
        raise InvalidRequest(f"session_id must be a non-empty string, got {sid!r:.200}")
    _check_length("session_id", sid)
    workflow = raw.get("workflow", DEFAULT_WORKFLOW)
    if not isinstance(workflow, str):
        raise InvalidRequest(f"workflow must be a string, got {workflow!r:.200}")
    _check_length("workflow", workflow)
    last = raw.get("last_step", False)
    if not isinstance(last, bool):
        raise InvalidRequest(f"last_step must be true or false, got {last!r:.200}")
    tool = raw.get("tool")
    if tool is not None:
        if not isinstance(tool, str):
            raise InvalidRequest(f"tool must be a string or null, got {tool!r:.200}")
        _check_length("tool", tool)
    hint = PauseHint(tool=tool, expected_s=raw.get("expected_s"), last_step=last)
    if isinstance(cache_salt, str) and cache_salt:
        sid = tenant_session_id(sid, cache_salt)
    return StepInfo(sid, workflow, hint)


def tenant_session_id(session_id: str, cache_salt: str) -> str:
    """Session `session_id` of the tenant `cache_salt` names: the id, then a digest of the
    salt (the salt itself is a secret of sorts: it is never logged whole)."""
    digest = hashlib.sha256(cache_salt.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{session_id}@{digest}"


def _check_length(field: str, value: str) -> None:
    """InvalidRequest naming `field` when `value` is longer than `MAX_NAME_CHARS`."""
    if len(value) > MAX_NAME_CHARS:
        raise InvalidRequest(f"{field} must be at most {MAX_NAME_CHARS} characters, got "
                             f"{len(value)}: {value[:50]!r}...")


def new_session(session_id: str, workflow: str) -> Session:
    """A `Session` record for the policy hooks (the engine's blocks are not tracked in it)."""
    return Session(session_id=session_id, workflow=workflow, root=b"")


def session_for(sessions: dict[str, Session], info: StepInfo) -> Session:
    """The policy's record of `info`'s session in `sessions`, added on its first step."""
    s = sessions.get(info.session_id)
    if s is None:
        s = sessions[info.session_id] = new_session(info.session_id, info.workflow)
    return s
