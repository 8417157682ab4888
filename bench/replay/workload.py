"""The replayed workload: agent sessions sampled by kvsaga.sim's generator, their token
counts scaled and their tool pauses shortened, every message given real text."""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Words for synthetic tool observations and tasks: common English words are one token each
# for a BPE vocabulary, so the token counts land where we aim them.
_VOCAB = (
    "the file function value error test line return import class module path result check "
    "output input data list string number index call method object type name build run "
    "pass fail case assert config update change patch diff commit branch search match "
    "found read write open close load save parse format print log debug warning message "
    "status code request response server client cache block token session step tool time "
    "memory size count total first last next previous page link button form field text "
    "table row column view click scroll select submit query"
)
_WORDS = _VOCAB.split()

# The system prompt of a workflow group: real prose, repeated in numbered sections until it
# is as long as the group's shared prefix.
_SYSTEM = (
    "You are an autonomous agent working for a user on a {workflow} task. You act by calling "
    "tools and you read their results before deciding on the next action. Think about what "
    "you already know, choose the single most useful tool call, and keep your messages "
    "short. When the task is complete, reply with a brief summary of what you changed and "
    "why. Never invent tool results; if a tool fails, read the error and try another way. "
    "The tools you may call are: {tools}. "
)



@dataclass
class ReplayStep:
    """One LLM call of a replayed session."""

    input_tokens: int
    output_tokens: int
    tool: str | None
    tool_s: float  # the shortened pause that follows, in seconds
    expected_s: float | None  # the hint sent with the call (None: no hint)


@dataclass
class ReplaySession:
    """A session as replayed: its texts are fixed before the run, so every policy sees the
    same prompts."""

    id: str
    workflow: str
    arrival_s: float
    system: str
    inputs: list[str]  # step k's user/tool message
    steps: list[ReplayStep]



def _text_of(tok: Any, words: list[str], n: int) -> str:
    """Text whose encoding is about `n` tokens: the words' ids cut to n and decoded."""
    ids = tok.encode(" ".join(words), add_special_tokens=False)
    return tok.decode(ids[: max(1, n)]).strip() or words[0]


def sample_steps(args: argparse.Namespace) -> tuple[Any, list[Any], list[list[ReplayStep]]]:
    """Sample the workload: (its spec, the generator's sessions, each session's replayed
    steps with their shortened pauses and hints). No text yet: the vLLM scheduler replay
    (bench/vllm_scheduler_replay.py) uses the token counts alone."""
    from kvsaga.sim.workloads import WORKLOADS, generate

    spec = WORKLOADS[args.workload]
    # generate() scales tokens and tool times by one factor; tokens need a far smaller one
    # than pauses (CPU prefill is slow, a pause is only a sleep), so tool times are unscaled
    # here and shortened below on their own.
    trace = generate(args.workload, args.sessions, args.seed, scale=args.token_scale)
    medians = {t.name: t.p50_s for t in spec.tools}

    def pause(raw_s: float) -> float:
        return round(min(args.max_tool_s, raw_s * args.time_scale), 3)

    out = []
    for s in trace:
        steps = list(s.steps[: args.steps])
        replay_steps = []
        for k, st in enumerate(steps):
            last = k == len(steps) - 1
            raw = st.tool_s / args.token_scale
            tool = None if last else st.tool
            if last or args.hint == "none":
                expected = None
            elif args.hint == "exact":
                expected = pause(raw)
            else:  # what an agent framework knows: the tool's typical latency
                expected = pause(medians[st.tool]) if st.tool in medians else None
            replay_steps.append(ReplayStep(st.input_tokens, st.output_tokens, tool,
                                           0.0 if last else pause(raw), expected))
        out.append(replay_steps)
    return spec, trace, out


def build_sessions(args: argparse.Namespace, tok: Any) -> list[ReplaySession]:
    """Sample the workload and give every message its text."""
    spec, trace, all_steps = sample_steps(args)
    tools = ", ".join(t.name for t in spec.tools)
    prefix_n = trace[0].shared_prefix.tokens
    unit = _SYSTEM.format(workflow=spec.description, tools=tools)
    system = _text_of(tok, [f"{i}. {unit}" for i in range(1, 2 + prefix_n // 40)], prefix_n)
    out = []
    for i, (s, replay_steps) in enumerate(zip(trace, all_steps, strict=True)):
        rng = random.Random(f"{args.seed}-{s.id}")
        inputs = []
        for k, st in enumerate(replay_steps):
            words = [rng.choice(_WORDS) for _ in range(st.input_tokens + 8)]
            head = "Task:" if k == 0 else f"Result of {replay_steps[k - 1].tool or 'the tool'}:"
            inputs.append(f"{head} " + _text_of(tok, words, st.input_tokens - 3))
        # The generator's Poisson arrivals (one SWE task per ~100 s) would never overlap on a
        # shortened timeline; packing them makes the sessions compete for the KV budget.
        out.append(ReplaySession(s.id, s.workflow, i * args.arrival_gap, system, inputs,
                                 replay_steps))
    return out


def conversation(sess: ReplaySession, upto: int, outputs: Sequence[str]) -> list[dict[str, Any]]:
    """The conversation of step `upto`: system, then inputs and earlier outputs in turn."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": sess.system}]
    for k in range(upto + 1):
        if k == 0:
            msgs.append({"role": "user", "content": sess.inputs[0]})
        else:
            msgs.append({"role": "tool", "tool_call_id": f"call_{k - 1}",
                         "content": sess.inputs[k]})
        if k < upto:
            msgs.append({"role": "assistant", "content": outputs[k]})
    return msgs


def working_set(sessions: list[ReplaySession], tok: Any) -> dict[str, int]:
    """Peak concurrent context tokens, with every session live at once at its final length.

    Outputs are stood in for by placeholder text of `output_tokens` tokens; the shared
    system prompt counts once (its blocks are shared).
    """
    sizes, prefix = [], 0
    for s in sessions:
        outs = [_text_of(tok, ["ok"] * (st.output_tokens + 2), st.output_tokens)
                for st in s.steps]
        msgs = conversation(s, len(s.steps) - 1, outs)
        msgs.append({"role": "assistant", "content": outs[-1]})
        sizes.append(len(tok.encode(tok.apply_chat_template(msgs, False),
                                    add_special_tokens=False)))
        prefix = len(tok.encode(tok.apply_chat_template(msgs[:1], False),
                                add_special_tokens=False))
    return {"peak_context_tokens": sum(sizes) - (len(sizes) - 1) * prefix,
            "shared_prefix_tokens": prefix, "longest_context_tokens": max(sizes)}
