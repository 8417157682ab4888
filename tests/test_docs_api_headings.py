"""docs/api.md's method headings are the code's signatures (session 54, docs lane): every
"### `name(params) -> ...`" heading of a `KVSpec`, `PoolConfig` or `KVCacheManager` method
names the parameters, their order, the keyword-only marker and the defaults that the code
has, so a renamed argument or a changed default cannot leave the reference behind
(tests/test_user_docs_cli.py checks the two constructors' own signatures)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from kvsaga import KVCacheManager, KVSpec, PoolConfig

API = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
# `name(params)` inside a "### " heading; a heading may hold two, split by " / ".
HEADING_CALL = re.compile(r"`(\w+)\(([^)]*)\)")


def _heading_calls() -> list[tuple[str, str]]:
    calls = []
    for line in API.splitlines():
        if line.startswith("### `"):
            calls += HEADING_CALL.findall(line)
    return calls


def _code_params(func) -> str:
    """The signature's parameters as the docs write them: `*` before the keyword-only ones,
    defaults by repr with double quotes, no `self`."""
    out: list[str] = []
    for p in inspect.signature(func).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and "*" not in out:
            out.append("*")
        if p.default is inspect.Parameter.empty:
            out.append(p.name)
        else:
            out.append(f"{p.name}={p.default!r}".replace("'", '"'))
    return ", ".join(out)


def _target(name: str):
    return {"KVSpec": KVSpec, "PoolConfig": PoolConfig}.get(name) or getattr(KVCacheManager, name)


def test_the_headings_are_found():
    names = [name for name, _ in _heading_calls()]
    assert {"KVSpec", "PoolConfig", "begin_step", "lookup", "allocate_slots", "finish_step",
            "can_allocate", "num_blocks_needed", "tick"} <= set(names)
    assert len(names) == len(set(names)) >= 20


@pytest.mark.parametrize("name, params", _heading_calls(), ids=lambda v: str(v)[:24])
def test_a_heading_is_the_code_signature(name, params):
    assert re.sub(r"\s+", " ", params).strip() == _code_params(_target(name))


def test_the_comparison_sees_a_changed_default():
    def begin_step(self, session_id, token_ids, *, now=None, salt=None, workflow="other"):
        """A stand-in whose default differs from the heading's."""

    (params,) = [p for n, p in _heading_calls() if n == "begin_step"]
    assert params != _code_params(begin_step)
