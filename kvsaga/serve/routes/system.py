"""GET /health, GET /v1/models, GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kvsaga.serve.protocol import ModelCard, ModelList, now_s
from kvsaga.serve.state import server_state

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    """200 once the model is loaded; 503 while it loads, after it failed to, or once the
    engine thread has stopped (shutting down)."""
    engine = server_state(request).engine
    if engine.load_error is not None:
        return JSONResponse({"status": "error", "error": str(engine.load_error)}, 503)
    if engine.stopped:
        return JSONResponse({"status": "stopped", "error": str(engine.stop_reason)}, 503)
    if engine.ready:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "loading"}, 503)


@router.get("/v1/models")
async def models(request: Request) -> dict:
    state = server_state(request)
    card = ModelCard(id=state.model_name, created=now_s(),
                     max_model_len=state.serving().max_model_len)
    return ModelList(data=[card]).model_dump()


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    return Response(server_state(request).metrics.render(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
