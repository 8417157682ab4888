"""GET /v1/models/{id} by the path the model was loaded from (review s57 readme F3): the
README says "by its name or load path", but only a path given as --model was taken; the
default model's (none given, as the `server` fixture's) was a 404 model_not_found."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import quote

import httpx
import openai
import pytest

from kvsaga.serve.app import build_app

from .conftest import MODEL, LiveServer, make_engine, settings


def test_the_engine_load_path_is_the_served_model(server: LiveServer):
    assert server.app.state.server.settings.model is None  # no --model: only the engine knows
    path = str(server.call(lambda e: e.model_path))
    card = server.client().models.retrieve(path)
    assert card.id == MODEL
    # The same path with its slashes %-encoded, as a client may send it.
    r = httpx.get(f"{server.url}/v1/models/{quote(path, safe='')}", timeout=30)
    assert r.status_code == 200 and r.json()["id"] == MODEL, r.text


def test_another_path_is_still_not_found(server: LiveServer, tmp_path):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().models.retrieve(str(tmp_path))
    assert e.value.body["code"] == "model_not_found"


def test_a_request_may_name_the_model_by_its_load_path(server: LiveServer):
    """The completions routes share the rule (`ServerState.check_model`)."""
    path = str(server.call(lambda e: e.model_path))
    out = server.client().completions.create(model=path, prompt="hi", max_tokens=1)
    assert out.model == MODEL and len(out.choices) == 1
    server.wait_idle()


def test_the_load_path_while_the_model_loads_is_503_not_404(tiny_dir: Path):
    """Before the engine exists its load path is unknown: the answer is the name's, 503
    `model_loading` (was: 404 `model_not_found`, a polling client told the model does not
    exist; review s57 diffreadmefix)."""
    release = threading.Event()

    def slow_factory():
        release.wait(60)
        return make_engine(tiny_dir)

    with LiveServer(build_app(slow_factory, settings()), wait_ready=False) as s:
        try:
            for model in (MODEL, str(tiny_dir)):
                r = httpx.get(f"{s.url}/v1/models/{model}", timeout=60)
                assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        finally:
            release.set()
