"""Fixtures for the server tests: live kvsaga-serve instances on free loopback ports, each
running a tiny random model, and the official openai client pointed at them."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn

from kvsaga.engine.engine import LLMEngine
from kvsaga.serve.app import build_app
from kvsaga.serve.settings import ServerSettings

TINY = "llama_gqa4_untied"  # max_position_embeddings 256
MODEL = "tiny"


class LiveServer:
    """A uvicorn server running `app` in a thread, on a port the OS picked on 127.0.0.1.

    `wait_ready=False` returns once uvicorn serves, for a test of the loading state."""

    def __init__(self, app: Any, wait_ready: bool = True) -> None:
        self.app = app
        self.wait_ready = wait_ready
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        if not self.wait_ready:
            return self
        # uvicorn starts serving before the engine thread has loaded; a request sent in
        # between is a 503 "the model is still loading".
        engine = self.app.state.engine
        ready = engine.wait_ready(30)
        why = engine.stop_reason if engine.stopped else "still loading after 30 s"
        assert ready, f"the engine did not become ready: {why}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def client(self, api_key: str = "none", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs
        )

    def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run fn(engine) on the engine thread (the only thread that may touch it)."""
        return self.app.state.engine.call_sync(fn)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until nothing runs or waits and no block is referenced; then check integrity."""
        deadline = time.monotonic() + timeout
        while True:
            busy, used = self.call(
                lambda e: (e.has_unfinished(), e.manager.stats().num_used_blocks)
            )
            if not busy and used == 0:
                break
            assert time.monotonic() < deadline, f"still busy={busy}, {used} blocks referenced"
            time.sleep(0.05)
        self.call(lambda e: e.manager.check_integrity())


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.helpers_models import build_tiny_model

    return build_tiny_model(TINY, tmp_path_factory.mktemp("serve-tiny"))


def make_engine(path: Path, **kwargs: Any) -> LLMEngine:
    kwargs.setdefault("kv_memory_bytes", 4 * 2**20)
    return LLMEngine(path, device="cpu", progress=False, **kwargs)


def settings(**kwargs: Any) -> ServerSettings:
    kwargs.setdefault("served_model_name", MODEL)
    return ServerSettings(**kwargs)


@pytest.fixture(scope="session")
def server(tiny_dir: Path) -> Iterator[LiveServer]:
    """No auth; vLLM metric names on."""
    app = build_app(make_engine(tiny_dir, max_num_seqs=8), settings(metrics_compat="vllm"))
    with LiveServer(app) as s:
        yield s


# A tool-aware chat template in the style of Qwen2.5's and Llama 3.1's: it renders `tools`
# and each tool call's arguments with `tojson`.
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }} "
    "{{ c.function.arguments | tojson }}</call>{% endfor %}</s>{% endfor %}"
)


def tiny_copy(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A copy of the tiny model's files in a new temporary folder named after `name`, for a
    fixture to edit one of its files."""
    out = tmp_path_factory.mktemp(name)
    for f in tiny_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tool_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with `TOOL_TEMPLATE` as its chat template."""
    out = tiny_copy(tiny_dir, tmp_path_factory, "serve-tiny-tools")
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TOOL_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="session")
def tool_server(tool_dir: Path) -> Iterator[LiveServer]:
    """The tiny model behind a chat template that renders tools and tool calls."""
    app = build_app(make_engine(tool_dir), settings())
    with LiveServer(app) as s:
        yield s


@pytest.fixture(scope="session")
def auth_server(tiny_dir: Path) -> Iterator[LiveServer]:
    """Two API keys: two tenants."""
    app = build_app(make_engine(tiny_dir), settings(api_keys=("key-a", "key-b")))
    with LiveServer(app) as s:
        yield s


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return server.client()


@pytest.fixture
def warn_once_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's logged-once sets (tool_choice values, unknown field names: module
    globals, shared by every app in the process) empty for this test, and restored after:
    a test that counts those warnings otherwise passed only where no earlier test in the
    process had sent the same values (or filled a set to its bound)."""
    from kvsaga.serve import serving
    from kvsaga.serve.routes import completions

    monkeypatch.setattr(serving, "_WARNED_TOOL_CHOICES", set())
    monkeypatch.setattr(completions, "_WARNED_FIELDS", set())


def asgi_post_scope(path: str, data: bytes) -> dict:
    """The ASGI scope of a JSON POST of `data` to `path`, for driving the app directly."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"kvsaga"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode())],
        "client": ("127.0.0.1", 1), "server": ("kvsaga", 80),
    }
