"""Session 51 mutation testing of kvsaga-serve (findings/s51/mutserve.md): the error JSON of
`kvsaga.serve.errors`, checked directly for every status the server sends (the live tests
reach some statuses only in tests that the quick runs leave out, or not at all)."""

from __future__ import annotations

import pytest

from kvsaga.serve.async_engine import EngineStopped
from kvsaga.serve.errors import APIError, refuse_lone_surrogate, stopped_error

# OpenAI's `type` for each HTTP status kvsaga-serve answers with.
OPENAI_TYPES = [
    (400, "invalid_request_error"), (401, "authentication_error"),
    (404, "not_found_error"), (409, "conflict_error"), (413, "invalid_request_error"),
    (422, "invalid_request_error"), (429, "rate_limit_error"), (500, "server_error"),
    (503, "service_unavailable_error"),
]


@pytest.mark.parametrize(("status", "kind"), OPENAI_TYPES)
def test_each_status_has_openais_error_type(status: int, kind: str):
    """Killed mutants: any one status's type changed (409, 429, 503, 404 ... were each
    checked by one live test at most, some by none in the quick runs)."""
    body = APIError(status, "what went wrong", param="p", code="c").body()
    assert body == {"error": {"message": "what went wrong", "type": kind, "param": "p",
                              "code": "c"}}


def test_a_status_without_a_type_of_its_own_is_an_invalid_request():
    """Killed mutant: the fallback type changed (a 405 or 415 from the router)."""
    assert APIError(405, "no").body()["error"]["type"] == "invalid_request_error"


def test_the_shutdown_error_is_503_server_shutting_down():
    """Killed mutant: its code dropped (clients retry on it against another replica)."""
    err = stopped_error(EngineStopped("the engine stopped"))
    assert (err.status, err.code, err.message) == (503, "server_shutting_down",
                                                   "the engine stopped")
    assert err.body()["error"]["type"] == "service_unavailable_error"


def test_a_lone_surrogate_is_refused_naming_the_field():
    """Killed mutant: the 400 without its param."""
    refuse_lone_surrogate("fine text", "messages.0.content")
    with pytest.raises(APIError) as info:
        refuse_lone_surrogate("bad \ud800 text", "messages.0.content")
    assert (info.value.status, info.value.param) == (400, "messages.0.content")
    assert "lone surrogate" in info.value.message
