"""The client: every session a thread with the official `openai` client, its steps in order,
each followed by its tool pause."""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arms import Arm
from .conditions import (
    delta,
    machine_times,
    round_conditions,
    spinners_cpu_s,
    tree_delta,
    tree_times,
)
from .servers import SERVED_NAME
from .workload import ReplaySession, conversation


@dataclass
class StepRecord:
    """What one request did."""

    session: str
    step: int
    start: float
    end: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    round: int = 0  # which repeat of the arm (--repeat)
    # kvsaga-serve --replicas: the replica that served the step and why the router sent it
    # there (the x-kvsaga-replica and x-kvsaga-route headers); None elsewhere.
    replica: str | None = None
    route: str | None = None


@dataclass
class PolicyResult:
    """One policy's run."""

    policy: str
    records: list[StepRecord] = field(default_factory=list)
    task_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    # the same /metrics samples scraped after the warm-up request, before the sessions:
    # a counter's replay figure is metrics - metrics_start
    metrics_start: dict[str, float] = field(default_factory=dict)
    engine: str | None = None  # the arm's engine: "kvsaga" or "vllm"
    # what the machine and the server's process tree did over the replay (conditions.py)
    conditions: dict[str, float] = field(default_factory=dict)



def run_session(client: Any, arm: Arm, sess: ReplaySession, t0: float,
                result: PolicyResult, lock: threading.Lock, ignore_eos: bool = False) -> None:
    """Replay one session: its steps in order, each followed by its tool pause
    (`ignore_eos`: every reply is exactly its step's output tokens)."""
    time.sleep(max(0.0, t0 + sess.arrival_s - time.perf_counter()))
    arrived = time.perf_counter()
    outputs: list[str] = []
    for k, st in enumerate(sess.steps):
        last = k == len(sess.steps) - 1
        hint: dict[str, Any] = {"workflow": sess.workflow}
        if st.tool is not None:
            hint["tool"] = st.tool
        if st.expected_s is not None:
            hint["expected_s"] = st.expected_s
        if last:
            hint["last_step"] = True
        rec = StepRecord(sess.id, k, time.perf_counter(), 0.0)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=SERVED_NAME, messages=conversation(sess, k, outputs),
                max_tokens=st.output_tokens, temperature=0,
                extra_body={**arm.extra_body(sess.id, hint),
                            **({"ignore_eos": True} if ignore_eos else {})})
            resp = raw.parse()
        except Exception as e:  # counted and reported; the session cannot go on
            rec.end = time.perf_counter()
            rec.error = f"{type(e).__name__}: {e}"[:300]
            with lock:
                result.records.append(rec)
            return
        rec.end = time.perf_counter()
        rec.replica = raw.headers.get("x-kvsaga-replica")
        rec.route = raw.headers.get("x-kvsaga-route")
        u = resp.usage
        rec.prompt_tokens = u.prompt_tokens
        rec.completion_tokens = u.completion_tokens
        details = u.prompt_tokens_details
        rec.cached_tokens = (details.cached_tokens or 0) if details else 0
        with lock:
            result.records.append(rec)
        # The reply goes back verbatim: the server then reuses the session's exact ids.
        outputs.append(resp.choices[0].message.content or "")
        if not last:
            time.sleep(st.tool_s)
    with lock:
        result.task_s.append(time.perf_counter() - arrived)


def replay(args: argparse.Namespace, sessions: list[ReplaySession], arm: Arm,
           kv_bytes: int, logdir: Path) -> PolicyResult:
    """Start the arm's server, replay every session against it, stop it."""
    import openai

    result = PolicyResult(arm.name, engine=arm.engine)
    server = arm.start(args, kv_bytes, logdir)
    try:
        server.wait_ready(args.start_timeout)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                               timeout=args.request_timeout)
        # The first forward pass is slow (allocator, kernel choice): not a policy's cost. A
        # one-shot prompt shorter than a block leaves nothing in the cache.
        client.completions.create(model=SERVED_NAME, prompt="Hello", max_tokens=1,
                                  temperature=0)
        result.metrics_start = server.metrics()  # after the warm-up: its tokens left out
        lock = threading.Lock()
        pid = server.pid
        host0, tree0 = machine_times(), ({} if pid is None else tree_times(pid))
        spin0 = spinners_cpu_s()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=run_session,
                                    args=(client, arm, s, t0, result, lock,
                                          getattr(args, "ignore_eos", False)),
                                    name=f"replay-{s.id}", daemon=True) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.wall_s = time.perf_counter() - t0
        host1, tree1 = machine_times(), ({} if pid is None else tree_times(pid))
        result.conditions = round_conditions(delta(host0, host1), tree_delta(tree0, tree1),
                                             result.wall_s, spinners_cpu_s() - spin0)
        result.metrics = server.metrics()
        client.close()
    finally:
        server.stop()
    result.metrics.update(getattr(server, "connector_stats", {}))
    result.records.sort(key=lambda r: (r.session, r.step))
    return result
