"""Traces written by hand from docs/workloads.md, as a user converting their own agent logs
would (session 55, lane workloads): the doc's example as printed, pretty-printed JSON and
JSON arrays, lines of non-JSON whitespace, UTF-16 files, the field table, a compacted log,
and record order."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from kvsaga.sim import generate, load_trace
from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.config import SimConfig
from kvsaga.sim.simulator import simulate
from kvsaga.sim.trace import Session, SharedPrefix, Step, TraceError

DOC = (Path(__file__).resolve().parents[2] / "docs" / "workloads.md").read_text(encoding="utf-8")
EXAMPLE = re.search(r"## Trace format\n.*?```json\n(.*?)```", DOC, re.S).group(1)
ONE_LINE = "each session one whole JSON object on one line"


def _session(sid: str = "a") -> dict:
    return {"id": sid, "workflow": "w", "arrival_s": 0.5,
            "shared_prefix": {"group": "g", "tokens": 16},
            "steps": [{"input_tokens": 10, "output_tokens": 5, "tool": "t", "tool_s": 1.0},
                      {"input_tokens": 7, "output_tokens": 3, "tool": None, "tool_s": 0.0}]}


def _file(tmp_path, text: str | bytes) -> Path:
    path = tmp_path / "t.jsonl"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def test_the_docs_example_loads_as_one_line_and_says_why_when_wrapped(tmp_path):
    assert EXAMPLE.count("\n") > 1  # the doc wraps it
    one = _file(tmp_path, " ".join(EXAMPLE.split("\n")).strip() + "\n")
    assert load_trace(one) == [Session(
        "swe-s1-00000", "swe", 3.2, SharedPrefix("swe-system", 2100),
        (Step(812, 95, "search", 0.071), Step(1330, 402, None, 0.0)))]
    with pytest.raises(TraceError) as e:
        load_trace(_file(tmp_path, EXAMPLE))
    assert e.value.line == 1 and e.value.field is None
    # Before: "not valid JSON (Expecting property name ... at column 1)", a column past the
    # line's end, and nothing about the format.
    assert ONE_LINE in str(e.value) and "column" not in str(e.value), str(e.value)


@pytest.mark.parametrize("text", [
    json.dumps(_session(), indent=2) + "\n",
    json.dumps([_session("a"), _session("b")], indent=2) + "\n",
    json.dumps(_session("a")) + "\n" + json.dumps(_session("b"))[:40],
    json.dumps(_session("a")).replace('"steps":', '\r\n"steps":'),
], ids=["pretty-session", "pretty-array", "cut-off-last-line", "split-at-crlf"])
def test_a_session_over_several_lines_is_named_as_such(tmp_path, text):
    with pytest.raises(TraceError, match=ONE_LINE):
        load_trace(_file(tmp_path, text))


@pytest.mark.parametrize(("text", "column"), [
    (json.dumps(_session()) + ",\n", "Extra data at column"),
    (json.dumps(_session())[:-1] + ",}\n", "Expecting property name enclosed in double "
     "quotes at column"),
], ids=["trailing-comma", "comma-before-brace"])
def test_an_error_inside_the_line_keeps_its_column(tmp_path, text, column):
    with pytest.raises(TraceError, match="not valid JSON") as e:
        load_trace(_file(tmp_path, text))
    assert column in str(e.value) and ONE_LINE not in str(e.value)


def test_a_json_array_on_one_line_is_told_the_format(tmp_path):
    text = json.dumps([_session("a"), _session("b")]) + "\n"
    with pytest.raises(TraceError, match="must be a JSON object .a trace is JSON Lines: one "
                       "session object a line, not a JSON array.") as e:
        load_trace(_file(tmp_path, text))
    assert e.value.line == 1
    # A list inside a session keeps the plain message (it is no trace's whole line).
    bad = dict(_session(), shared_prefix=[1])
    with pytest.raises(TraceError, match="must be a JSON object, got") as e:
        load_trace(_file(tmp_path, json.dumps(bad) + "\n"))
    assert e.value.field == "shared_prefix"


@pytest.mark.parametrize("space", ["\u00a0", "\x1c", "\u2028", "\x85", "\u3000"],
                         ids=["nbsp", "x1c", "u2028", "nel", "ideographic"])
def test_a_line_of_non_json_whitespace_is_not_skipped(tmp_path, space):
    # str.strip() takes these; JSON does not: such a line used to vanish silently.
    text = json.dumps(_session("a")) + "\n" + space + "\n" + json.dumps(_session("b")) + "\n"
    with pytest.raises(TraceError, match="not valid JSON") as e:
        load_trace(_file(tmp_path, text))
    assert e.value.line == 2


def test_lines_of_json_whitespace_are_blank(tmp_path):
    text = " \t\r\n\n" + json.dumps(_session("a")) + "\r\n \t \n" + json.dumps(_session("b"))
    assert [s.id for s in load_trace(_file(tmp_path, text))] == ["a", "b"]


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_is_named(tmp_path, codec):
    text = json.dumps(_session()) + "\n"
    data = text.encode(codec)
    if codec != "utf-16":  # the explicit-endian codecs write no mark: add it as Windows does
        data = "\ufeff".encode(codec) + data
    with pytest.raises(TraceError, match="not UTF-8 text .* UTF-16 byte order mark: save it "
                       "as UTF-8") as e:
        load_trace(_file(tmp_path, data))
    assert e.value.line == 1


def test_other_bytes_that_are_not_utf8_get_no_utf16_hint(tmp_path):
    text = json.dumps(dict(_session(), id="\u00e9"), ensure_ascii=False) + "\n"
    with pytest.raises(TraceError, match="not UTF-8 text") as e:
        load_trace(_file(tmp_path, text.encode("latin-1")))
    assert "UTF-16" not in str(e.value)


def _field_table() -> dict[str, str]:
    """docs/workloads.md's trace field table: field -> its "required" cell."""
    start = DOC.index("| field | required | value |")
    rows = {}
    for line in DOC[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, required = (c.strip() for c in line.strip("|").split("|")[:2])
        for f in re.findall(r"`([^`]+)`", name):
            rows[f if not f.startswith(".") else "steps[k]" + f] = required
    return rows


def test_the_docs_field_table_is_what_the_loader_requires(tmp_path):
    table = _field_table()
    assert set(table) == {"id", "workflow", "arrival_s", "tenant", "shared_prefix", "steps",
                          "steps[k].input_tokens", "steps[k].output_tokens",
                          "steps[k].tool", "steps[k].tool_s"}
    for name, required in table.items():
        d = dict(_session(), tenant="t")
        where = d
        if name.startswith("steps[k]."):
            where, name = d["steps"][0], name.split(".")[1]
        del where[name]
        path = _file(tmp_path, json.dumps(d) + "\n")
        if required == "yes":
            with pytest.raises(TraceError, match="is missing"):
                load_trace(path)
        elif required == "no":
            assert len(load_trace(path)) == 1, name
        else:  # tool_s: required when the step names a tool (step 0's does)
            assert required == "when `tool` is a string", (name, required)
            with pytest.raises(TraceError, match="is missing"):
                load_trace(path)
            d["steps"][0]["tool"] = None
            assert len(load_trace(_file(tmp_path, json.dumps(d) + "\n"))) == 1


def test_a_compacted_log_is_refused_on_its_input_as_the_doc_says(tmp_path):
    # Prompts 500, 700, then 300 after a compaction: the derived input is 300 - 700 - 20.
    d = dict(_session(), shared_prefix={"group": "g", "tokens": 100})
    d["steps"] = [{"input_tokens": 400, "output_tokens": 20, "tool": "t", "tool_s": 1.0},
                  {"input_tokens": 700 - 500 - 20, "output_tokens": 20, "tool": "t",
                   "tool_s": 1.0},
                  {"input_tokens": 300 - 700 - 20, "output_tokens": 5}]
    with pytest.raises(TraceError, match="must be >= 1") as e:
        load_trace(_file(tmp_path, json.dumps(d) + "\n"))
    assert e.value.field == "steps[2].input_tokens" and e.value.line == 1
    assert '`steps[k].input_tokens` "must be >= 1"' in DOC


def _shuffled_pair(tie: bool, seed: int = 5) -> tuple[list[Session], list[Session], int]:
    """A trace (tenants on some sessions only, as real logs have) and the same shuffled,
    with a KV capacity that puts them under pressure."""
    sessions = generate("swe", 8, seed=3, scale=0.03, arrival_rate=1.0)
    sessions = [dataclasses.replace(s, arrival_s=0.0 if tie else s.arrival_s,
                                    tenant=("t2", "t1", None)[i % 3])
                for i, s in enumerate(sessions)]
    shuffled = list(sessions)
    random.Random(seed).shuffle(shuffled)
    assert [s.id for s in shuffled] != [s.id for s in sessions]
    return sessions, shuffled, max(s.total_tokens for s in sessions) // 16 + 8


@pytest.mark.parametrize("tie", [False, True])
def test_record_order_changes_no_result(tie):
    """The doc's "shuffling a trace's lines changes no result", under KV pressure (with
    `tie`, every session arrives at 0 and only the ids order them). Before, the results
    summed the sessions' TCTs in file order: `tct_mean_s` and the tenants' means moved in
    their last bits."""
    sessions, shuffled, blocks = _shuffled_pair(tie)
    for policy in ("lru", "graph", "belady"):
        config = SimConfig(num_gpu_blocks=blocks, policy=policy)
        a, b = simulate(sessions, config), simulate(shuffled, config)
        assert a.recomputed_tokens > 0  # the pressure is real
        assert a.tenants is not None and len(a.tenants) == 3
        assert dataclasses.asdict(a) == dataclasses.asdict(b), policy


@pytest.mark.parametrize("tie", [False, True])
def test_record_order_changes_no_cluster_result(tie):
    config = a = None
    for seed in range(4):  # before, shuffle 1 of the tied trace moved tct_mean_s's last bit
        sessions, shuffled, blocks = _shuffled_pair(tie, seed)
        if a is None:
            config = SimConfig(num_gpu_blocks=blocks, policy="lru")
            a = ClusterSimulator(sessions, config, 2, "kvsaga").run()
            assert a.recomputed_tokens > 0
        b = ClusterSimulator(shuffled, config, 2, "kvsaga").run()
        assert dataclasses.asdict(a) == dataclasses.asdict(b), seed
        assert list(a.tenants) == list(b.tenants)
