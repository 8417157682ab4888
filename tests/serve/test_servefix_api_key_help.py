"""`kvsaga-serve --help` says which endpoints `--api-key` leaves open: those the Guard
answers without a key. It said "every endpoint but /health", while /metrics stays open
unless `--metrics-auth`."""

from __future__ import annotations

import asyncio
from typing import Any

from kvsaga.serve.cli import build_parser
from kvsaga.serve.guard import Guard
from kvsaga.serve.settings import ServerSettings

PATHS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions")


def _help(flag: str) -> str:
    (action,) = [a for a in build_parser()._actions if flag in a.option_strings]
    return " ".join(action.help.split())


def _open_paths(**settings: Any) -> list[str]:
    """The paths the Guard passes on to the app without an Authorization header."""
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def status(guard: Guard, path: str) -> int:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        await guard({"type": "http", "path": path, "method": "GET", "headers": []},
                    receive, send)
        return sent[0]["status"]

    guard = Guard(app, ServerSettings(api_keys=("k",), **settings))
    return [p for p in PATHS if asyncio.run(status(guard, p)) == 200]


def test_api_key_help_names_the_endpoints_left_open():
    text = _help("--api-key")
    open_default = _open_paths()
    assert open_default == ["/health", "/metrics"]  # what the help below must say
    for path in open_default:
        assert path in text, (path, text)
    # ... and that --metrics-auth closes /metrics, as it does.
    assert "--metrics-auth" in text, text
    assert _open_paths(metrics_auth=True) == ["/health"]
    assert "every endpoint but /health;" not in text


def test_metrics_auth_without_a_key_is_refused():
    """--metrics-auth with no key would leave /metrics open while saying it is closed."""
    import pytest

    with pytest.raises(ValueError, match="metrics_auth: needs an API key"):
        ServerSettings(metrics_auth=True)
    assert ServerSettings(api_keys=("k",), metrics_auth=True).metrics_auth
