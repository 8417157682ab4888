"""The BFCL v4 trace conversion, on an entry written here in BFCL's format (no package)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from kvsaga.sim import bfcl
from kvsaga.sim.bfcl import (
    ANSWER_TOKENS,
    RESULT_TOKENS,
    bfcl_trace,
    entry_half,
    entry_steps,
    parse_call,
    shared_prefix,
)

ENTRY = {
    "id": "multi_turn_base_x",
    "question": [[{"role": "user", "content": "x" * 40}], [{"role": "user", "content": "y" * 8}]],
    "initial_config": {"GorillaFileSystem": {"root": {"a": "z" * 400}}},
    "involved_classes": ["GorillaFileSystem"],
}
CALLS = [["cd(folder='document')", "mkdir(dir_name='temp')"], []]


def test_each_call_is_a_step_and_each_turn_ends_with_an_answer():
    steps = entry_steps(ENTRY, CALLS, np.random.default_rng(0))
    assert [s[2] for s in steps] == ["cd", "mkdir", "user", None]
    assert steps[0][0] == 10  # the first user message: 40 characters / 4
    assert steps[1][0] == RESULT_TOKENS  # the cd's result
    assert steps[2][1] == ANSWER_TOKENS and steps[2][3] > 0  # the user thinks
    assert steps[3][0] == 2 and steps[3][3] == 0.0  # the second turn answers at once
    assert all(s[3] > 0 for s in steps[:2])


def test_long_context_results_carry_what_the_padding_adds():
    """A call's result grows by what BFCL's long-context padding adds to it (it used to
    grow by a tenth of `initial_config`, which BFCL does not pad: 20 tokens on average)."""
    long = entry_steps(ENTRY, CALLS, np.random.default_rng(0), extra=[[700, 5], []])
    assert long[1][0] == RESULT_TOKENS + 700  # the cd's result, read by the mkdir step
    assert long[2][0] == RESULT_TOKENS + 5  # the mkdir's, read by the answer


def test_halves_split_tasks_not_entries():
    """base_N and long_context_N are one task: both land in the same half; the split is a
    fixed hash (these values must not change, or fit and evaluation traces mix)."""
    halves = [entry_half(f"multi_turn_base_{i}") for i in range(200)]
    assert halves == [entry_half(f"multi_turn_long_context_{i}") for i in range(200)]
    assert collections.Counter(halves) == {"fit": 90, "eval": 110}
    assert halves[:3] == ["eval", "fit", "eval"]


def test_calls_are_parsed_as_literals_never_evaluated():
    assert parse_call("mv(source='a', destination=\"b\")") == (
        "mv", (), {"source": "a", "destination": "b"})
    assert parse_call(" add(1, b=[2.5, -3]) ") == ("add", (1,), {"b": [2.5, -3]})
    for bad in ("x", "os.remove('a')", "f(open('a'))", "f(a=b)"):
        with pytest.raises(ValueError):
            parse_call(bad)


def test_excluded_functions_keep_every_document_as_bfcl_eval_does():
    """bfcl-eval prompts every document of `involved_classes` and never reads
    `excluded_function` (review repro bfcl_excluded.py): the converter used to drop those
    documents and put the entry in a prefix group of its own."""
    docs = {"gorilla_file_system": 1000, "posting_api": 500}
    entry = {"involved_classes": ["TwitterAPI", "GorillaFileSystem"]}
    full = shared_prefix(entry, docs, 1.0)
    assert full == bfcl.SharedPrefix("bfcl:GorillaFileSystem+TwitterAPI", 1500)
    assert shared_prefix({**entry, "excluded_function": ["post", "cp"]}, docs, 0.5) == (
        bfcl.SharedPrefix("bfcl:GorillaFileSystem+TwitterAPI", 750))


@pytest.mark.parametrize("kwargs, what", [
    ({"arrival_rate": 0}, "arrival_rate"), ({"arrival_rate": float("nan")}, "arrival_rate"),
    ({"scale": 0}, "scale"), ({"scale": -1.0}, "scale"), ({"num_sessions": -1}, "num_sessions"),
    ({"seed": -1}, "seed"), ({"datasets": "multi_turn_base"}, "datasets"),
    ({"datasets": ["multi_turn_base"] * 2}, "datasets"), ({"half": "test"}, "half"),
])
def test_bad_arguments_are_refused_before_any_data_is_read(kwargs, what):
    """arrival_rate=0 raised ZeroDivisionError, scale=0 was taken and a bare string was
    read as a list of one-letter data sets (review repro bfcl_args.py)."""
    args = {"num_sessions": 3, "seed": 1, "arrival_rate": 1.0, **kwargs}
    with pytest.raises(ValueError, match=what):
        bfcl_trace(**args)


def _fake_bfcl(monkeypatch):
    """bfcl_trace on entries written here (no package): tasks 0-19 of both sets."""
    def load(ds):
        entries = [{"id": f"{ds}_{i}", "question": [[{"role": "user", "content": "hi"}]],
                    "involved_classes": ["MathAPI"],
                    **({"excluded_function": ["add"]} if i == 0 else {})} for i in range(20)]
        return entries, {e["id"]: [["add(a=1, b=2)"]] for e in entries}, {"math_api": 400}
    monkeypatch.setattr(bfcl, "load_bfcl", load)
    monkeypatch.setattr(bfcl, "long_context_extra", lambda e, c: ((300,),))


def test_trace_ids_halves_and_groups(monkeypatch):
    """Ids were `bfcl-s<seed>-<i>`, the built-in bfcl family's (review repro ids_keys.py:
    `mixed` refused the two together)."""
    _fake_bfcl(monkeypatch)
    tr = bfcl_trace(40, seed=5, arrival_rate=1.0)
    assert [s.id for s in tr[:2]] == ["bfclv4-s5-00000", "bfclv4-s5-00001"]
    assert {s.shared_prefix for s in tr} == {bfcl.SharedPrefix("bfcl:MathAPI", 400)}
    long = [s for s in tr if s.workflow == "bfcl-long_context"]
    assert long and all(s.steps[1].input_tokens == RESULT_TOKENS + 300 for s in long)
    for half in ("fit", "eval"):
        want = sum(entry_half(f"multi_turn_base_{i}") == half for i in range(20)) * 2
        tr = bfcl_trace(want, seed=5, arrival_rate=1.0, half=half)
        assert len(tr) == want  # all of that half; one more is refused
        with pytest.raises(ValueError, match=f"{half} half"):
            bfcl_trace(want + 1, seed=5, arrival_rate=1.0, half=half)


def test_trace_from_the_installed_package():
    pytest.importorskip("bfcl_eval")
    tr = bfcl_trace(20, seed=3, arrival_rate=0.5, scale=0.5)
    assert len(tr) == 20 and len({s.id for s in tr}) == 20
    assert all(s.steps[-1].tool is None and s.shared_prefix.tokens > 0 for s in tr)
    assert tr == bfcl_trace(20, seed=3, arrival_rate=0.5, scale=0.5)


def _results(sessions):
    return [st.input_tokens for s in sessions for k, st in enumerate(s.steps)
            if k > 0 and s.steps[k - 1].tool not in (None, "user")]


def test_long_context_sessions_are_long_with_the_package():
    """Review repro bfcl_long.py: the long-context set's results averaged 59.7 tokens to
    base's 40 (BFCL pads at run time, not in `initial_config`)."""
    pytest.importorskip("bfcl_eval")
    tr = bfcl_trace(400, seed=1, arrival_rate=1.0)
    base = _results([s for s in tr if s.workflow == "bfcl-base"])
    long = _results([s for s in tr if s.workflow == "bfcl-long_context"])
    assert sum(base) / len(base) == RESULT_TOKENS
    assert sum(long) / len(long) > 10 * RESULT_TOKENS


def test_package_halves_and_prefix_groups():
    pytest.importorskip("bfcl_eval")
    fit = bfcl_trace(180, seed=1, arrival_rate=1.0, half="fit")
    with pytest.raises(ValueError, match="fit half"):
        bfcl_trace(181, seed=1, arrival_rate=1.0, half="fit")
    groups = collections.defaultdict(set)
    for s in bfcl_trace(400, seed=1, arrival_rate=1.0):
        groups[s.shared_prefix.group].add(s.shared_prefix.tokens)
    assert all(len(v) == 1 for v in groups.values())
    # What the package prompts: every function of the classes, the "excluded" ones too.
    from bfcl_eval.utils import load_dataset_entry
    prompted = [e for ds in bfcl.DATASETS for e in load_dataset_entry(ds)]
    excluded = [(e, name) for e in prompted for name in e.get("excluded_function") or ()]
    assert excluded and all(name in {f["name"] for f in e["function"]} for e, name in excluded)
    assert set(groups) == {"bfcl:" + "+".join(sorted(e["involved_classes"])) for e in prompted}
    assert len(fit) == 180


def test_summary_prints_each_sets_mean_result_input(monkeypatch, capsys):
    """`python -m kvsaga.sim.bfcl --summary`: docs/workloads.md's mean function-result input
    had no command; on the fake entries base reads the 40-token envelope, long context 340."""
    _fake_bfcl(monkeypatch)
    assert bfcl.main(["--summary"]) == 0
    assert capsys.readouterr().out == ("mean function-result input at seed 1, all 40 entries: "
                                       "bfcl-base 40.0 tokens, bfcl-long_context 340.0 tokens\n")


def test_summary_without_the_package_says_how_to_install(monkeypatch, capsys):
    def missing(ds):
        raise ModuleNotFoundError("the BFCL trace needs the bfcl-eval package's data: pip "
                                  "install --no-deps bfcl-eval")
    monkeypatch.setattr(bfcl, "load_bfcl", missing)
    with pytest.raises(SystemExit) as e:
        bfcl.main(["--summary"])
    assert e.value.code == 1 and "pip install --no-deps bfcl-eval" in capsys.readouterr().err
