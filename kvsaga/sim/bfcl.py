"""A real-world-shaped agent trace from the Berkeley Function Calling Leaderboard (BFCL v4).

The `bfcl-eval` package on PyPI (Apache 2.0) ships BFCL v4's multi-turn data sets: per entry,
the user's turns, the API classes the agent may call (their function documents), and the
ground-truth function calls of every turn. That gives the *shape* of real multi-turn
function-calling sessions: how many turns, how many calls per turn, which functions, how long
the user messages and the function documents are. Install it where you run this
(`pip install --no-deps bfcl-eval`: its data and its API classes are read); it is not a
kvsaga dependency.

Conversion (what BFCL does not record is marked assumed):
- one session per entry; workflow `bfcl-<data set>` (base, long_context); ids
  `bfclv4-s<seed>-<i>` (apart from the built-in `bfcl` family's `bfcl-s<seed>-<i>`);
- shared prefix: the function documents of all the entry's classes, tokens = characters / 4
  (assumed tokenizer ratio); one prefix group per set of classes. This is what bfcl-eval
  puts in the prompt (`bfcl_eval.utils.populate_test_cases_with_predefined_functions`:
  every document of `involved_classes`, less only the `missed_function`s of the miss-func
  set, which these two sets do not have). Their `excluded_function` field is read by no code
  of the package (2026.3.23), so it hides nothing here either;
- each ground-truth call is one LLM step whose output is the call's text and whose tool is
  the function's name; the next step's input is its result: 40 tokens (assumed envelope).
  In the long-context set, BFCL loads its API classes with `long_context=True` at run time
  (its `initial_config`s are mostly the base set's): they pad files, listings, histories
  and records with the package's long-context text. Each call there adds what that padding
  adds to its result: the call is run on the package's API classes loaded both ways (the
  entry's `initial_config`, the calls parsed as literals, never evaluated), and the result
  text's tokens with the padding less those without it are added;
- each turn ends with an answer step (60 tokens, assumed) that pauses on the tool `user`
  until the next turn; the first step of a turn reads the user's message;
- latencies: tool calls from the BFCL tool-call latency that Continuum measured (1.9 +- 2.1 s:
  log-normal p50 1.3 s, p95 5 s, as `kvsaga.sim.workloads.BFCL`), the user's think time from
  the human pause of `assistant` (p50 30 s, p95 600 s); arrivals Poisson.

Fit and evaluation halves: `entry_half` splits BFCL's tasks once, by a stable hash of the
task number (`multi_turn_base_N` and `multi_turn_long_context_N` are one task), so that a
trace drawn for evaluation (`half="eval"`) never replays a task a fit trace
(`half="fit"`) served; bench/policies.py draws its fit seeds from one and its evaluation
seeds from the other.

`python -m kvsaga.sim.bfcl --summary [--seed N]` prints the mean function-result input per
data set over all entries (`result_input_means`): what the long-context padding adds.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import importlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

from kvsaga.ascii_numbers import int_arg
from kvsaga.sim.family import ToolSpec, _check_args, _check_arrivals
from kvsaga.sim.trace import Session, SharedPrefix, Step

DATASETS = ("multi_turn_base", "multi_turn_long_context")
CHARS_PER_TOKEN = 4.0  # assumed
RESULT_TOKENS = 40  # assumed: a function result's envelope
ANSWER_TOKENS = 60  # assumed: the answer that closes a turn
CALL_LATENCY = ToolSpec("call", 1.300, 5.000, 1, 1)  # [Continuum] BFCL tool calls
USER_LATENCY = ToolSpec("user", 30.0, 600.0, 1, 1)  # as workloads.ASSISTANT's human
HALVES = ("fit", "eval")


def _tokens(text: str) -> int:
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def load_bfcl(dataset: str) -> tuple[list[dict], dict[str, list], dict[str, int]]:
    """(entries, ground truth by id, function-document tokens by class) of one data set.

    Raises:
        ModuleNotFoundError: `bfcl-eval` is not installed (the message says how to install).
        ValueError: an unknown data set.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown BFCL data set {dataset!r}; choose one of {DATASETS}")
    try:
        root = resources.files("bfcl_eval") / "data"
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the BFCL trace needs the bfcl-eval package's data: pip install --no-deps "
            "bfcl-eval") from None

    def lines(path) -> list[dict]:
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]

    entries = lines(root / f"BFCL_v4_{dataset}.json")
    answers = {a["id"]: a["ground_truth"]
               for a in lines(root / "possible_answer" / f"BFCL_v4_{dataset}.json")}
    docs = {}
    for f in (root / "multi_turn_func_doc").iterdir():
        if f.name.endswith(".json"):
            docs[f.name[:-5]] = _tokens(f.read_text(encoding="utf-8"))
    return entries, answers, docs


def shared_prefix(entry: Mapping[str, Any], docs: Mapping[str, int],
                  scale: float) -> SharedPrefix:
    """The entry's function documents as a prefix (module docstring): every document of its
    classes, as bfcl-eval prompts them, whatever `excluded_function` says (the package
    never reads it); one group per set of classes."""
    classes = sorted(entry.get("involved_classes", []))
    tokens = sum(docs.get(CLASS_DOCS.get(c, ""), 0) for c in classes)
    return SharedPrefix(group="bfcl:" + "+".join(classes), tokens=max(0, round(tokens * scale)))


def entry_half(entry_id: str) -> str:
    """"fit" or "eval": the half of BFCL's tasks the entry belongs to (module docstring),
    by a hash of its task number, so the same on every machine and in every version."""
    task = re.sub(r"^multi_turn_(base|long_context)_", "", entry_id)
    return HALVES[hashlib.sha256(f"bfcl-task:{task}".encode()).digest()[0] & 1]


def parse_call(call: str) -> tuple[str, tuple, dict[str, Any]]:
    """A ground-truth call `name(a=1, b='x')` as (name, args, kwargs): its arguments are
    read as Python literals, never evaluated."""
    node = ast.parse(call.strip(), mode="eval").body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"not a function call: {call!r}")
    return (node.func.id, tuple(ast.literal_eval(a) for a in node.args),
            {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None})


def _result_text(value: Any) -> str:
    """A call's return value as the text the model reads (as BFCL renders it)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def result_texts(entry: Mapping[str, Any], calls: Sequence[Sequence[str]],
                 long_context: bool) -> list[list[str]]:
    """The text of each ground-truth call's result, per turn: the calls run in order on the
    package's API classes loaded with the entry's `initial_config` (and BFCL's long-context
    padding when `long_context`), their state carried from turn to turn."""
    from bfcl_eval.constants.executable_backend_config import (
        CLASS_FILE_PATH_MAPPING,
        STATELESS_CLASSES,
    )
    config = entry.get("initial_config", {})
    methods: dict[str, Any] = {}
    for name in entry.get("involved_classes", []):
        api = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[name]), name)()
        if name not in STATELESS_CLASSES:
            api._load_scenario(copy.deepcopy(config.get(name, {})), long_context=long_context)
        methods.update({m: getattr(api, m) for m in dir(api)
                        if not m.startswith("_") and callable(getattr(api, m))})
    out = []
    for turn in calls:
        texts = []
        for call in turn:
            try:
                fn, args, kwargs = parse_call(call)
                texts.append(_result_text(methods[fn](*args, **kwargs)))
            except Exception as e:  # noqa: BLE001 - the model reads the error as the result
                texts.append(f"Error during execution: {e}")
        out.append(texts)
    return out


@functools.cache
def long_context_extra(entry_json: str, calls_json: str) -> tuple[tuple[int, ...], ...]:
    """Per turn, per call: the tokens BFCL's long-context padding adds to the call's result
    (`result_texts` with and without it; never below 0). Cached: the same entry gives the
    same numbers (arguments are JSON so that they hash)."""
    entry, calls = json.loads(entry_json), json.loads(calls_json)
    plain = result_texts(entry, calls, long_context=False)
    padded = result_texts(entry, calls, long_context=True)
    return tuple(tuple(max(0, _tokens(b) - _tokens(a)) for a, b in zip(ta, tb, strict=True))
                 for ta, tb in zip(plain, padded, strict=True))


# The API class names of BFCL's entries -> their function-document files.
CLASS_DOCS = {
    "GorillaFileSystem": "gorilla_file_system", "MathAPI": "math_api",
    "MessageAPI": "message_api", "TwitterAPI": "posting_api", "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot", "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control", "WebSearchAPI": "web_search",
    "MemoryAPI_kv": "memory_kv", "MemoryAPI_rec_sum": "memory_rec_sum",
    "MemoryAPI_vector": "memory_vector",
}


def entry_steps(entry: Mapping[str, Any], calls: Sequence[Sequence[str]],
                rng: np.random.Generator,
                extra: Sequence[Sequence[int]] = ()) -> list[tuple[int, int, str | None, float]]:
    """One BFCL entry as (input, output, tool, tool_s) per LLM step (module docstring).

    `extra[t][k]`: tokens added to the result of turn t's call k (`long_context_extra`)."""
    steps: list[tuple[int, int, str | None, float]] = []
    turns = entry["question"]
    for t, turn in enumerate(turns):
        message = sum(_tokens(m.get("content", "")) for m in turn) if turn else 1
        pending = message
        added = extra[t] if t < len(extra) else ()
        for k, call in enumerate(calls[t] if t < len(calls) else ()):
            tool = call.split("(", 1)[0].strip() or "call"
            lat = min(CALL_LATENCY.max_s,
                      math.exp(CALL_LATENCY.mu + CALL_LATENCY.sigma * rng.standard_normal()))
            steps.append((pending, _tokens(call), tool, lat))
            pending = RESULT_TOKENS + (added[k] if k < len(added) else 0)
        last = t == len(turns) - 1
        think = 0.0 if last else min(
            USER_LATENCY.max_s,
            math.exp(USER_LATENCY.mu + USER_LATENCY.sigma * rng.standard_normal()))
        steps.append((pending, ANSWER_TOKENS, None if last else "user", think))
    return steps


def bfcl_trace(num_sessions: int, seed: int, arrival_rate: float, scale: float = 1.0,
               datasets: Sequence[str] = DATASETS, half: str | None = None) -> list[Session]:
    """Sessions shaped by BFCL v4 multi-turn entries (module docstring).

    Args:
        num_sessions: how many sessions (entries drawn without replacement, in a seeded
            order, from the chosen data sets).
        seed: seeds the draw of entries, latencies and arrivals.
        arrival_rate: Poisson arrivals per second.
        scale: multiplies token counts and times, as `generate` does.
        datasets: which of `DATASETS` to draw from (a list or tuple of names).
        half: draw only from this half of BFCL's tasks (`entry_half`: "fit" or "eval");
            None draws from all.

    Raises:
        ValueError: a bad argument (as `generate`'s), a string or a repeated name for
            `datasets`, an unknown half, or more sessions than entries.
        ModuleNotFoundError: `bfcl-eval` is not installed.
    """
    _check_args(num_sessions, seed, arrival_rate, scale)
    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence):
        raise ValueError(f"datasets must be a list or tuple of names from {DATASETS}, got "
                         f"{datasets!r}")
    if len(set(datasets)) != len(datasets):
        raise ValueError(f"datasets names a data set twice: {list(datasets)}")
    if half is not None and half not in HALVES:
        raise ValueError(f"half must be one of {HALVES} or None, got {half!r}")
    rng = np.random.default_rng([seed, 0xBFC1])
    pool: list[tuple[str, dict, list, dict[str, int]]] = []
    for ds in datasets:
        entries, answers, docs = load_bfcl(ds)
        pool += [(ds, e, answers.get(e["id"], []), docs) for e in entries
                 if half is None or entry_half(e["id"]) == half]
    if num_sessions > len(pool):
        raise ValueError(f"only {len(pool)} BFCL entries in {list(datasets)}"
                         f"{'' if half is None else f' ({half} half)'}, asked for "
                         f"{num_sessions}")
    order = rng.permutation(len(pool))[:num_sessions]
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate, size=num_sessions))
    _check_arrivals(arrivals, num_sessions, arrival_rate)
    sessions = []
    for i, j in enumerate(order):
        ds, entry, calls, docs = pool[j]
        extra = (long_context_extra(json.dumps(entry, sort_keys=True), json.dumps(calls))
                 if "long" in ds else ())
        steps = tuple(
            Step(input_tokens=max(1, round(inp * scale)), output_tokens=max(1, round(out * scale)),
                 tool=tool, tool_s=tool_s * scale)
            for inp, out, tool, tool_s in entry_steps(entry, calls, rng, extra))
        sessions.append(Session(
            id=f"bfclv4-s{seed}-{i:05d}", workflow=f"bfcl-{ds.removeprefix('multi_turn_')}",
            arrival_s=float(arrivals[i]),
            shared_prefix=shared_prefix(entry, docs, scale), steps=steps))
    return sessions


def result_input_means(seed: int = 1) -> tuple[int, dict[str, float]]:
    """Per workflow, the mean input tokens of the steps that read a function's result (a step
    after one whose tool is a function, not the user's turn) over every entry of both data
    sets drawn at `seed`: what the long-context padding adds, in one number a data set
    (docs/workloads.md cites it). Returns (the entries drawn, the means by workflow).

    Raises:
        ModuleNotFoundError: `bfcl-eval` is not installed.
    """
    total = sum(len(load_bfcl(ds)[0]) for ds in DATASETS)
    sums: dict[str, list[int]] = {}
    for session in bfcl_trace(total, seed, 1.0):
        for prev, step in itertools.pairwise(session.steps):
            if prev.tool not in (None, USER_LATENCY.name):
                sums.setdefault(session.workflow, []).append(step.input_tokens)
    return total, {wf: sum(xs) / len(xs) for wf, xs in sorted(sums.items())}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvsaga.sim.bfcl --summary [--seed N]`: print `result_input_means`."""
    import argparse
    ap = argparse.ArgumentParser(
        prog="python -m kvsaga.sim.bfcl",
        description="Summaries of the BFCL v4 trace (needs `pip install --no-deps bfcl-eval`).")
    ap.add_argument("--summary", action="store_true", required=True,
                    help="mean function-result input tokens per data set, all entries")
    ap.add_argument("--seed", type=int_arg, default=1, help="the trace's seed (default 1)")
    a = ap.parse_args(argv)
    try:
        total, means = result_input_means(a.seed)
    except ModuleNotFoundError as e:
        ap.exit(1, f"python -m kvsaga.sim.bfcl: {e}\n")
    print(f"mean function-result input at seed {a.seed}, all {total} entries: "
          + ", ".join(f"{wf} {m:.1f} tokens" for wf, m in means.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
