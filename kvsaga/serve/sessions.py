"""Agent sessions as the server sees them: who the tenant is, which session a request
continues, and the exact token context each session's cache holds.

Tenancy: the tenant is the API key the request authenticated with (hashed, never stored in
clear) plus its `cache_salt`, if any. The tenant salts the prefix hashes, so two tenants never
share a cached block, and it namespaces session ids, so one tenant cannot continue or end
another's session by guessing its id.

Context: each session remembers the prompt ids and output ids of its last step and the text
they spell. When the next step's prompt text starts with that text, the remembered ids are
reused and only the new suffix is tokenized, so the cache (which holds exactly those ids)
serves the whole old context even where re-tokenizing the text would split it differently.
Otherwise the prompt is tokenized afresh and the manager keeps the longest common prefix.

Everything here runs on the event loop thread (a long prompt's `encode` on a worker
thread, `Serving._encode`); only the engine thread touches the engine.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvsaga.engine.context import TokenContext, encode_continuing
from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.serve.errors import APIError

if TYPE_CHECKING:
    from kvsaga.engine.request import RequestOutput
    from kvsaga.engine.sampling import SamplingParams


def tenant_salt(api_key: str | None, cache_salt: str | None) -> str | None:
    """The prefix-hash salt of a tenant; None for the anonymous, unsalted tenant.

    Args:
        api_key: the key the request authenticated with (None when auth is off).
        cache_salt: the request's `cache_salt` field.
    Returns:
        A short digest: the key never reaches the cache or the logs.
    """
    if api_key is None and cache_salt is None:
        return None
    h = hashlib.sha256()
    for part in (api_key, cache_salt):
        h.update(b"\x00" if part is None else b"\x01" + part.encode() + b"\x00")
    return h.hexdigest()[:32]


# Characters an HTTP header value cannot carry (latin-1 only, no control character but tab);
# nor can it begin or end with a space or tab (h11, uvicorn's parser without httptools,
# refuses such a value when the response starts).
_NOT_HEADER_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f\u0100-\U0010ffff]|^[ \t]|[ \t]$")


def resolve_session_id(body_session_id: str | None, header_session_id: str | None) -> str | None:
    """The session a request names: body `session_id` (also what the openai client's
    `extra_body` becomes), then the `X-Session-ID` header. Not `prompt_cache_key`: in
    OpenAI's API it is a caching hint that unrelated requests share, while a session is one
    conversation, reserved by its step in flight (a second concurrent step is a 409).

    Raises:
        APIError: 400 naming the field, when the id it names holds a character that the
            `X-Session-ID` response header echoing it cannot carry (beyond U+00FF, or a
            control character, or a space or tab at either end): it failed only once the
            step had run, as a 500 (UnicodeEncodeError) or a connection closed without a
            response.
    """
    named = (("session_id", body_session_id), ("X-Session-ID", header_session_id))
    for param, sid in named:
        if sid:
            bad = _NOT_HEADER_TEXT.search(sid)
            if bad is not None:
                raise APIError(400, f"{param} {sid!r:.100} holds {bad.group()!r} at character "
                               f"{bad.start() + 1}: a session id is echoed in the X-Session-ID "
                               f"header, which carries only printable characters up to U+00FF "
                               f"and neither begins nor ends with a space or tab",
                               param=param)
            return sid
    return None


# How every engine session id begins (`SessionRegistry.engine_id`): the tenant's salt digest,
# or 'anon', then '/'.
_ENGINE_ID_PREFIX = re.compile(r"(?:anon|[0-9a-f]{32})/")


def names_engine_session(text: str) -> bool:
    """Whether `text` may name a session by its engine id, which is the server's own: it
    holds the tenant's salt digest, and an engine failure reaches every tenant's requests."""
    return _ENGINE_ID_PREFIX.search(text) is not None


@dataclass
class SessionContext:
    """What a session's cache holds after its last step.

    Attributes:
        tokens: the last step's prompt + output ids and their text (None before the first).
        in_flight: request id of the step now running, if any.
        last_used: wall-clock (monotonic) time of the last request.
        num_steps: steps served.
    """

    tokens: TokenContext | None = None
    in_flight: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    num_steps: int = 0


class SessionRegistry:
    """The server's sessions, keyed by engine session id (tenant-namespaced).

    Args:
        tokenizer: the model's tokenizer.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.sessions: dict[str, SessionContext] = {}

    @staticmethod
    def engine_id(salt: str | None, session_id: str) -> str:
        """The id the engine and manager know the session by."""
        return f"{salt or 'anon'}/{session_id}"

    def get(self, engine_id: str) -> SessionContext | None:
        return self.sessions.get(engine_id)

    def open(self, engine_id: str) -> SessionContext:
        ctx = self.sessions.get(engine_id)
        if ctx is None:
            ctx = self.sessions[engine_id] = SessionContext()
        ctx.last_used = time.monotonic()
        return ctx

    def encode(self, ctx: SessionContext | None, text: str, add_special_tokens: bool,
               release_gil: bool = False) -> list[int]:
        """Tokenize a prompt, reusing the session's exact ids for the part it already holds.

        Args:
            ctx: the session (None for a one-shot request).
            text: the whole prompt text.
            add_special_tokens: add BOS etc. (raw completions) or not (chat templates).
            release_gil: let the event loop run meanwhile (`encode_continuing`), for a call
                on a worker thread.
        Returns:
            The prompt's token ids.
        """
        known = ctx.tokens if ctx is not None else None
        return encode_continuing(self.tokenizer, [known], text, add_special_tokens, release_gil)

    def record(
        self,
        ctx: SessionContext,
        prompt_ids: list[int],
        prompt_text: str | None,
        params: SamplingParams,
        out: RequestOutput,
        chat: bool,
    ) -> None:
        """Remember a finished step's context (`TokenContext.after`): up to what its
        returned text holds, so a next prompt built from that text reuses the exact ids.

        Args:
            ctx: the session.
            prompt_ids: the step's prompt.
            prompt_text: the text it was encoded from (None for a token-id prompt).
            params: the step's sampling parameters.
            out: the finished output (its ids: EOS included, the cache holds it too).
            chat: a chat step: an EOS that ended it stays in the context (the chat
                template closes the assistant's turn with it).
        """
        ctx.tokens = TokenContext.after(self.tokenizer, prompt_ids, prompt_text, params, out,
                                        keep_eos=chat)
        ctx.last_used = time.monotonic()
        ctx.num_steps += 1

    def drop(self, engine_id: str) -> SessionContext | None:
        return self.sessions.pop(engine_id, None)

    def idle(self, idle_s: float, now: float | None = None) -> list[str]:
        """Sessions with nothing in flight whose last request is older than `idle_s`."""
        now = time.monotonic() if now is None else now
        return [sid for sid, ctx in self.sessions.items() if self.is_idle(ctx, idle_s, now)]

    @staticmethod
    def is_idle(ctx: SessionContext, idle_s: float, now: float | None = None) -> bool:
        """Nothing in flight (no step reserved it) and the last request older than `idle_s`."""
        now = time.monotonic() if now is None else now
        return ctx.in_flight is None and now - ctx.last_used > idle_s
