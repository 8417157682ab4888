"""The trace loader `kvsaga sim --trace` reads, on malformed files (fuzz2 lane): every bad
line is a `TraceError` naming the line (and the field where one is at fault), never another
exception, and a good file loads whatever its encoding quirks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga.sim.trace import (
    MAX_TRACE_SECONDS,
    Session,
    SharedPrefix,
    Step,
    TraceError,
    load_trace,
)


def _good() -> dict:
    steps = (Step(10, 5, "bash", 1.5), Step(7, 3))
    return Session("s0", "swe", 1.25, SharedPrefix("g", 16), steps).to_dict()


def _other() -> str:
    d = _good()
    d["id"] = "other"
    return json.dumps(d)


def _write(tmp_path, data: bytes):
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    return path


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    # A strict decode failed inside the read buffer: UnicodeDecodeError, no line named.
    bad = json.dumps(_good()).replace('"swe"', '"sw\\u00e9"').encode()
    bad = bad.replace(b"\\u00e9", b"\xe9")  # latin-1, not UTF-8
    path = _write(tmp_path, _other().encode() + b"\n" + bad + b"\n")
    with pytest.raises(TraceError, match=r"t\.jsonl:line 2: not UTF-8 text \(byte 0xe9 at "
                                         r"character \d+\)") as info:
        load_trace(path)
    assert info.value.line == 2


def test_utf8_text_and_a_byte_order_mark_load(tmp_path):
    d = _good()
    d["workflow"] = "répare"  # real UTF-8 is fine
    path = _write(tmp_path, b"\xef\xbb\xbf" + json.dumps(d, ensure_ascii=False).encode()
                  + b"\n")
    assert load_trace(path)[0].workflow == "répare"


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(arrival_s=10 ** 400), "arrival_s"),  # float() raised OverflowError
    (lambda d: d["steps"][0].update(tool_s=10 ** 400), "steps[0].tool_s"),
])
def test_an_integer_too_large_for_a_float_names_its_field(tmp_path, mutate, field):
    d = _good()
    mutate(d)
    path = _write(tmp_path, (_other() + "\n" + json.dumps(d) + "\n").encode())
    with pytest.raises(TraceError, match="must be a finite number >= 0") as info:
        load_trace(path)
    assert (info.value.line, info.value.field) == (2, field)


def test_too_many_digits_and_too_deep_name_their_line(tmp_path):
    # Python refuses to parse an int of over 4300 digits (ValueError, not JSONDecodeError),
    # and json's parser recurses per level (RecursionError).
    d = json.dumps(_good()).replace('"arrival_s": 1.25', '"arrival_s": ' + "9" * 5000)
    path = _write(tmp_path, (_other() + "\n" + d + "\n").encode())
    with pytest.raises(TraceError, match="line 2: not a trace entry") as info:
        load_trace(path)
    assert info.value.line == 2
    path = _write(tmp_path, (_other() + "\n" + "[" * 100_000 + "]" * 100_000 + "\n").encode())
    with pytest.raises(TraceError, match="line 2: not a trace entry: JSON nested too deeply"):
        load_trace(path)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(arrival_s=1e15), "arrival_s"),
    (lambda d: d["steps"][0].update(tool_s=1e15), "steps[0].tool_s"),
])
def test_times_past_the_bound_are_refused_by_line_and_field(tmp_path, mutate, field):
    # At 1e15 s the simulator's float clock has a 0.125 s resolution: a decode run raised
    # IndexError on such a trace instead of an error naming it.
    d = _good()
    mutate(d)
    path = _write(tmp_path, (_other() + "\n" + json.dumps(d) + "\n").encode())
    with pytest.raises(TraceError, match=r"line 2: field .*: must be at most 1e\+09 seconds"
                       ) as info:
        load_trace(path)
    assert info.value.field == field
    d = _good()
    d["arrival_s"] = MAX_TRACE_SECONDS  # the bound itself is a time
    path = _write(tmp_path, (json.dumps(d) + "\n").encode())
    assert load_trace(path)[0].arrival_s == MAX_TRACE_SECONDS


# Text with lone surrogates too (JSON's "\ud800" escape decodes to one; st.text leaves them
# out): such a string used to load, then fail when hashed, naming no line.
_TEXT = st.text(max_size=6) | st.text(st.characters(codec=None, categories=["Cs", "Ll"]),
                                      min_size=1, max_size=3)
_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)


def _mutations():
    """A good line with one field replaced by an arbitrary JSON value, or removed."""
    paths = [("id",), ("workflow",), ("arrival_s",), ("tenant",), ("shared_prefix",),
             ("shared_prefix", "group"), ("shared_prefix", "tokens"), ("steps",),
             ("steps", 0), ("steps", 0, "input_tokens"), ("steps", 0, "output_tokens"),
             ("steps", 0, "tool"), ("steps", 0, "tool_s"), ("steps", 1, "tool"),
             ("steps", 1, "tool_s")]
    return st.tuples(st.sampled_from(paths), st.one_of(st.just(KeyError), _VALUE))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(mutation=_mutations())
def test_any_mutated_line_loads_or_names_line_2(tmp_path_factory, mutation):
    where, value = mutation
    d = _good()
    node = d
    for key in where[:-1]:
        node = node[key]
    if value is KeyError and isinstance(node, dict):
        node.pop(where[-1], None)
    elif value is KeyError:
        del node[where[-1]]
    else:
        node[where[-1]] = value
    path = tmp_path_factory.mktemp("t") / "t.jsonl"
    path.write_text(_other() + "\n" + json.dumps(d) + "\n", encoding="utf-8")
    try:
        sessions = load_trace(path)
    except TraceError as e:
        assert e.line == 2 and "line 2" in str(e)
        return
    assert len(sessions) == 2 and all(isinstance(s, Session) for s in sessions)
    for s in sessions:  # every string loaded is Unicode text, which hashing can encode
        json.dumps(s.to_dict(), ensure_ascii=False).encode("utf-8")
