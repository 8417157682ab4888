"""Session 51 mutation testing of kvsaga-serve (findings/s51/mutserve.md): how the app words
a request that failed validation (`kvsaga.serve.app._validation_message`), driven with the
errors pydantic gives for real bodies, each test killing a mutant that the suite let live."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from kvsaga.serve.app import _validation_message
from kvsaga.serve.protocol import ChatCompletionRequest, CompletionRequest


def _message(model: type, body: dict) -> tuple[str, str | None]:
    """(message, param) the app answers for `body`, as FastAPI hands the errors over."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    errors = [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()]
    return _validation_message(RequestValidationError(errors))


def test_a_content_part_that_fails_is_named_by_its_field_not_its_class():
    """Killed mutant: a capitalised union branch tag ("list[ContentPart]" holds one, and a
    model name alone is one) not read as a branch: the param named the class's path."""
    body = {"model": "m", "messages": [{"role": "user", "content": 5}]}
    message, param = _message(ChatCompletionRequest, body)
    assert param == "messages.0.content"
    assert message == "messages.0.content: expected str or list[ContentPart] (got 5)"


def test_the_message_quotes_what_was_sent():
    """Killed mutant: the `(got ...)` part dropped."""
    message, param = _message(CompletionRequest, {"model": "m", "prompt": "x",
                                                  "temperature": 7})
    assert param == "temperature"
    assert message.endswith("(got 7)"), message


def test_two_fields_failing_each_get_their_own_branches():
    """Killed mutant: branches gathered from every error, not the first field's only (a body
    with a bad `stop` and a bad `prompt` listed the branches of both as the stop's)."""
    body = {"model": "m", "prompt": 5, "stop": 5}
    assert _message(CompletionRequest, body) == ("stop: expected str or list[str] (got 5)",
                                                 "stop")


def test_branch_tags_are_told_from_fields():
    """Killed mutant: a model's name (a union of models tags its branch so, capitalised,
    without brackets) not read as a branch tag. No request field is such a union today,
    so the helper is checked directly."""
    from kvsaga.serve.app import _branch_name, _is_branch_tag

    for tag in ("str", "int", "none", "list[str]", "ContentPart", "KVSagaHint"):
        assert _is_branch_tag(tag), tag
    for item in ("messages", "content", "stop_token_ids", 0, 3):
        assert not _is_branch_tag(item), item
    assert _branch_name("list[function-before[check(), int]]") == "list[int]"
    assert _branch_name("list[list[function-after[f(), str]]]") == "list[list[str]]"
