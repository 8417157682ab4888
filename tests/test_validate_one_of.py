"""`kvsaga._validate.check_one_of`: the one "must be one of" check the integrations share."""

from __future__ import annotations

import pytest

from kvsaga._validate import check_one_of
from kvsaga.errors import InvalidRequest


def test_an_allowed_value_is_returned():
    assert check_one_of("mode", "b", ("a", "b")) == "b"
    assert check_one_of("mode", "y", {"x": 1, "y": 2}) == "y"


@pytest.mark.parametrize("bad", ["c", "A", "", None, 1, ["a"], {"a"}])
@pytest.mark.parametrize("choices", [("a", "b"), {"a": 0, "b": 1}, frozenset({"a"})])
def test_anything_else_is_refused_with_the_given_error(bad, choices):
    with pytest.raises(InvalidRequest) as e:
        check_one_of("mode", bad, choices, InvalidRequest)
    assert str(e.value) == f"mode must be one of {', '.join(choices)}, got {bad!r}"
