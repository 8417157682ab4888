"""A real-world-shaped agent trace from the Berkeley Function Calling Leaderboard (BFCL v4).

The `bfcl-eval` package on PyPI (Apache 2.0) ships BFCL v4's multi-turn data sets: per entry,
the user's turns, the API classes the agent may call (their function documents), and the
ground-truth function calls of every turn. That gives the *shape* of real multi-turn
function-calling sessions: how many turns, how many calls per turn, which functions, how long
the user messages and the function documents are. Install it where you run this
(`pip install --no-deps bfcl-eval`: only its data is read); it is not a kvsaga dependency.

Conversion (what BFCL does not record is marked assumed):
- one session per entry; workflow `bfcl-<data set>` (base, long_context);
- shared prefix: the function documents of the entry's classes (one prefix group per set of
  classes), tokens = characters / 4 (assumed tokenizer ratio);
- each ground-truth call is one LLM step whose output is the call's text and whose tool is
  the function's name; the next step's input is its result: 40 tokens (assumed envelope), plus
  a tenth of the environment state's tokens in the long-context set (assumed: its files and
  listings are what makes the context long);
- each turn ends with an answer step (60 tokens, assumed) that pauses on the tool `user`
  until the next turn; the first step of a turn reads the user's message;
- latencies: tool calls from the BFCL tool-call latency that Continuum measured (1.9 +- 2.1 s:
  log-normal p50 1.3 s, p95 5 s, as `kvsaga.sim.workloads.BFCL`), the user's think time from
  the human pause of `assistant` (p50 30 s, p95 600 s); arrivals Poisson.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

from kvsaga.sim.family import ToolSpec
from kvsaga.sim.trace import Session, SharedPrefix, Step

DATASETS = ("multi_turn_base", "multi_turn_long_context")
CHARS_PER_TOKEN = 4.0  # assumed
RESULT_TOKENS = 40  # assumed: a function result's envelope
ANSWER_TOKENS = 60  # assumed: the answer that closes a turn
CALL_LATENCY = ToolSpec("call", 1.300, 5.000, 1, 1)  # [Continuum] BFCL tool calls
USER_LATENCY = ToolSpec("user", 30.0, 600.0, 1, 1)  # as workloads.ASSISTANT's human


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
                rng: np.random.Generator, long_context: bool
                ) -> list[tuple[int, int, str | None, float]]:
    """One BFCL entry as (input, output, tool, tool_s) per LLM step (module docstring)."""
    env = _tokens(json.dumps(entry.get("initial_config", {}))) if long_context else 0
    result = RESULT_TOKENS + env // 10
    steps: list[tuple[int, int, str | None, float]] = []
    turns = entry["question"]
    for t, turn in enumerate(turns):
        message = sum(_tokens(m.get("content", "")) for m in turn) if turn else 1
        pending = message
        for call in (calls[t] if t < len(calls) else ()):
            tool = call.split("(", 1)[0].strip() or "call"
            lat = min(CALL_LATENCY.max_s,
                      math.exp(CALL_LATENCY.mu + CALL_LATENCY.sigma * rng.standard_normal()))
            steps.append((pending, _tokens(call), tool, lat))
            pending = result
        last = t == len(turns) - 1
        think = 0.0 if last else min(
            USER_LATENCY.max_s,
            math.exp(USER_LATENCY.mu + USER_LATENCY.sigma * rng.standard_normal()))
        steps.append((pending, ANSWER_TOKENS, None if last else "user", think))
    return steps


def bfcl_trace(num_sessions: int, seed: int, arrival_rate: float, scale: float = 1.0,
               datasets: Sequence[str] = DATASETS) -> list[Session]:
    """Sessions shaped by BFCL v4 multi-turn entries (module docstring).

    Args:
        num_sessions: how many sessions (entries drawn without replacement, in a seeded
            order, from the chosen data sets).
        seed: seeds the draw of entries, latencies and arrivals.
        arrival_rate: Poisson arrivals per second.
        scale: multiplies token counts and times, as `generate` does.
        datasets: which of `DATASETS` to draw from.
    """
    rng = np.random.default_rng([seed, 0xBFC1])
    pool: list[tuple[str, dict, list, dict[str, int]]] = []
    for ds in datasets:
        entries, answers, docs = load_bfcl(ds)
        pool += [(ds, e, answers.get(e["id"], []), docs) for e in entries]
    if num_sessions > len(pool):
        raise ValueError(f"only {len(pool)} BFCL entries in {list(datasets)}, asked for "
                         f"{num_sessions}")
    order = rng.permutation(len(pool))[:num_sessions]
    arrivals = np.cumsum(rng.exponential(1.0 / arrival_rate, size=num_sessions))
    sessions = []
    for i, j in enumerate(order):
        ds, entry, calls, docs = pool[j]
        classes = sorted(entry.get("involved_classes", []))
        prefix = sum(docs.get(CLASS_DOCS.get(c, ""), 0) for c in classes)
        steps = tuple(
            Step(input_tokens=max(1, round(inp * scale)), output_tokens=max(1, round(out * scale)),
                 tool=tool, tool_s=tool_s * scale)
            for inp, out, tool, tool_s in entry_steps(entry, calls, rng, "long" in ds))
        sessions.append(Session(
            id=f"bfcl-s{seed}-{i:05d}", workflow=f"bfcl-{ds.removeprefix('multi_turn_')}",
            arrival_s=float(arrivals[i]),
            shared_prefix=SharedPrefix(group="bfcl:" + "+".join(classes),
                                       tokens=max(0, round(prefix * scale))),
            steps=steps))
    return sessions
