"""GET /health, GET /v1/models, GET /v1/models/{id}, GET /metrics."""

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


def _card(request: Request) -> ModelCard:
    state = server_state(request)
    return ModelCard(id=state.model_name, created=now_s(),
                     max_model_len=state.serving().max_model_len)


@router.get("/v1/models")
async def models(request: Request) -> dict:
    return ModelList(data=[_card(request)]).model_dump()


@router.get("/v1/models/{model_id:path}")
async def model(request: Request, model_id: str) -> dict:
    """OpenAI's retrieve (`client.models.retrieve`): the served model's card, by its name
    or the path it was loaded from (a path may hold slashes); else 404 `model_not_found`.
    While the model loads (or after its load failed) 503 first, as the completions routes
    answer: its load path is unknown until then (review s57 diffreadmefix)."""
    state = server_state(request)
    state.serving()
    state.check_model(model_id)
    return _card(request).model_dump()


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    return Response(await server_state(request).metrics.scrape(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
