"""ServerState: what every route of kvsaga-serve shares (`request.app.state.server`)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fastapi import Request

from kvsaga.engine.engine import LLMEngine
from kvsaga.serve.async_engine import AsyncEngine, EngineStopped
from kvsaga.serve.errors import APIError, stopped_error
from kvsaga.serve.metrics import ServerMetrics
from kvsaga.serve.serving import Serving
from kvsaga.serve.sessions import SessionRegistry
from kvsaga.serve.settings import ServerSettings


def model_name_for(settings: ServerSettings, engine: LLMEngine | None = None) -> str:
    """The name clients use: --served-model-name, else the model's folder or file stem."""
    if settings.served_model_name:
        return settings.served_model_name
    path = settings.model or (engine.model_path if engine is not None else None)
    if path is None:
        return "SmolLM2-135M-Instruct"
    p = Path(path)
    return p.stem if p.suffix == ".gguf" else p.name


class ServerState:
    """The engine thread's front, the settings, the metrics and, once the model has loaded,
    the `Serving` that runs completions.

    Args:
        engine: the AsyncEngine.
        settings: the server's settings.
        model_name: the name clients send and responses echo.
    """

    def __init__(self, engine: AsyncEngine, settings: ServerSettings, model_name: str) -> None:
        self.engine = engine
        self.settings = settings
        self.model_name = model_name
        self.metrics = ServerMetrics(engine, model_name, settings.metrics_compat)
        self._serving: Serving | None = None

    @property
    def serving_if_ready(self) -> Serving | None:
        return self._serving

    def serving(self) -> Serving:
        """The Serving once the model is loaded.

        Raises:
            APIError: 503 while loading, after a failed load, or once the engine thread has
                stopped (`stopped_error`).
        """
        eng = self.engine
        if eng.load_error is not None:
            raise APIError(503, f"the model failed to load: {eng.load_error}",
                           code="model_load_failed")
        if eng.stopped:
            raise stopped_error(EngineStopped(eng.stop_reason))
        if self._serving is not None:
            return self._serving
        if not eng.ready or eng.engine is None:
            raise APIError(503, "the model is still loading", code="model_loading",
                           headers={"Retry-After": "5"})
        loaded = eng.engine
        self._serving = Serving(eng, SessionRegistry(loaded.tokenizer), self.metrics,
                                self.settings, loaded.max_model_len, self.model_name)
        return self._serving

    def check_model(self, name: str) -> None:
        """404 unless `name` is the served model's name or the path it was loaded from: as
        --model gave it or as the engine opened it (the default model has no --model: its
        path was a 404 before session 57, though the README offers it)."""
        if name not in (self.model_name, self.settings.model, self._load_path()):
            raise APIError(404, f"model {name!r} does not exist; this server serves "
                           f"{self.model_name!r}", param="model", code="model_not_found")

    def _load_path(self) -> str | None:
        """The path the engine loaded its model from, None while it loads (or failed to)."""
        loaded = self.engine.engine
        return None if loaded is None else str(loaded.model_path)

    async def sweep_idle_sessions(self) -> None:
        """End sessions idle past `session_idle_s`: the policy ranks retained blocks, but a
        session nobody returns to must not hold its record forever."""
        idle_s = self.settings.session_idle_s
        while True:
            await asyncio.sleep(min(60.0, idle_s / 2))
            await self.end_idle_sessions(idle_s)

    async def end_idle_sessions(self, idle_s: float, now: float | None = None) -> list[str]:
        """One sweep: end the sessions with nothing in flight whose last request is older
        than `idle_s` at `now` (default: the monotonic clock); returns their engine ids.

        Each is checked again just before it is ended: a step of a listed session may have
        arrived (and reserved it) while an earlier one was being ended in the engine.
        """
        srv = self._serving
        if srv is None:
            return []
        ended = []
        for sid in srv.sessions.idle(idle_s, now):
            ctx = srv.sessions.get(sid)
            if ctx is None or not srv.sessions.is_idle(ctx, idle_s, now):
                continue
            srv.sessions.drop(sid)
            ended.append(sid)
            with contextlib.suppress(Exception):
                await self.engine.end_session(sid)
        return ended


def server_state(request: Request) -> ServerState:
    return request.app.state.server
