"""Agent replay: a simulator workload against a live kvsaga-serve, once per eviction policy.

    python bench/agent_replay.py --json /tmp/agent_replay.json   # swe, 6 x 8 steps, 3-8 min

    python bench/agent_replay.py --sessions 2 --steps 2 --policies lru,graph   # a quick look

    python bench/agent_replay.py --engine vllm --vllm-python /path/to/vllm-env/bin/python

vLLM as the peer (`--engine vllm`). The same sessions are replayed against plain vLLM (prefix
caching on), vLLM with the kvsaga retention connector (`--vllm-policies`, enabled by
`--kv-transfer-config` only), and kvsaga-serve (`--kvsaga-policies`): the same HF model
directory (written from the GGUF when needed), fp32, the same block size (32 tokens: vLLM's
CPU attention needs a multiple of 32) and the same KV budget in bytes (vLLM's
`--kv-cache-memory-bytes`, kvsaga-serve's `--kv-memory`). vLLM runs from its own environment
(`--vllm-python`; tests/integrations/vllm/make_env.sh builds one) with `--enforce-eager`
(torch.compile's warm-up takes minutes on a small CPU). The hint goes to vLLM as
`kv_transfer_params: {"kvsaga": {"session_id", "tool", "expected_s", "last_step"}}`.
Reported besides the table: the mean-TCT ratio of plain vLLM to vLLM + connector (issue 13's
goal: >= 1.64x, with fewer prefill tokens) and of vLLM + connector to kvsaga-serve.

What it does. `kvsaga.sim.generate` samples agent sessions (step counts, tools, token counts,
tool latencies); they are scaled (`--token-scale` for tokens; `--time-scale`, capped by
`--max-tool-s`, for tool pauses) and replayed with real text against a real server: for each
policy a fresh `kvsaga-serve` subprocess on a free 127.0.0.1 port, all with the same KV
budget, each stopped through its process handle before the next starts. Each session is one
thread with the official `openai` client: a system message shared by its workflow group (real
text of about the group's prefix length), then per step a user (first step) or tool message
of about `input_tokens` tokens of synthetic text, `max_tokens=output_tokens`,
`temperature=0`, the `kvsaga` hint (`tool`, `expected_s`, `workflow`; `last_step` on the
last step), and then a sleep for the tool's scaled latency.

Pauses. On a CPU every forward pass of SmolLM2-135M takes ~0.3-1 s, so a scaled step takes
seconds whatever its token count. Tool latencies shortened like the tokens (e.g. x0.05:
a file read becomes 2 ms) would leave every session queued in the server nearly all the
time: a compute-bound replay where the cache competition is between queued requests, not
paused sessions. The default x20 (capped at 10 s: a file read ~1 s, `run_tests` 10 s) makes
sessions spend a good part of their time paused on tools, as they do on a GPU, so that
paused sessions' caches compete for the budget. `--time-scale 1` keeps the sampled latencies.

The KV budget is a fraction (`--kv-fraction`) of the workload's working set: the peak of the
sessions' concurrent context tokens (every session live at once at its final length, the
shared system prompt once; arrivals are packed into the first seconds), times the model's KV
bytes per token (SmolLM2-135M in fp32 on CPU: 30 layers x 3 KV heads x 64 x 2 (K and V) x
4 bytes = 46,080 bytes).

Reported per policy: prefill tokens computed (prompt tokens minus cached tokens, from the
responses' `usage`), the cached share of prompt tokens, mean and p95 step latency, mean task
completion time (arrival to last response, tool pauses included), evictions and preemptions
from `/metrics`; then the ratio of lru's prefill tokens to graph's (issue 6's goal: >= 5x)
and the floor of an unbounded cache, which no policy can go below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvsaga.stats import percentile

POLICIES = ("lru", "ttl", "graph")
SERVED_NAME = "replay"

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


# -- the replayed workload ------------------------------------------------------------------


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


@dataclass
class PolicyResult:
    """One policy's run."""

    policy: str
    records: list[StepRecord] = field(default_factory=list)
    task_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def _text_of(tok: Any, words: list[str], n: int) -> str:
    """Text whose encoding is about `n` tokens: the words' ids cut to n and decoded."""
    ids = tok.encode(" ".join(words), add_special_tokens=False)
    return tok.decode(ids[: max(1, n)]).strip() or words[0]


def build_sessions(args: argparse.Namespace, tok: Any) -> list[ReplaySession]:
    """Sample the workload and give every message its text."""
    from kvsaga.sim.workloads import WORKLOADS, generate

    spec = WORKLOADS[args.workload]
    # generate() scales tokens and tool times by one factor; tokens need a far smaller one
    # than pauses (CPU prefill is slow, a pause is only a sleep), so tool times are unscaled
    # here and shortened below on their own.
    trace = generate(args.workload, args.sessions, args.seed, scale=args.token_scale)
    medians = {t.name: t.p50_s for t in spec.tools}

    def pause(raw_s: float) -> float:
        return round(min(args.max_tool_s, raw_s * args.time_scale), 3)

    tools = ", ".join(t.name for t in spec.tools)
    prefix_n = trace[0].shared_prefix.tokens
    unit = _SYSTEM.format(workflow=spec.description, tools=tools)
    system = _text_of(tok, [f"{i}. {unit}" for i in range(1, 2 + prefix_n // 40)], prefix_n)
    out = []
    for i, s in enumerate(trace):
        steps = list(s.steps[: args.steps])
        rng = random.Random(f"{args.seed}-{s.id}")
        replay_steps, inputs = [], []
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
            words = [rng.choice(_WORDS) for _ in range(st.input_tokens + 8)]
            head = "Task:" if k == 0 else f"Result of {steps[k - 1].tool or 'the tool'}:"
            inputs.append(f"{head} " + _text_of(tok, words, st.input_tokens - 3))
        # The generator's Poisson arrivals (one SWE task per ~100 s) would never overlap on a
        # shortened timeline; packing them makes the sessions compete for the KV budget.
        out.append(ReplaySession(s.id, s.workflow, i * args.arrival_gap, system, inputs,
                                 replay_steps))
    return out


def _messages(sess: ReplaySession, upto: int, outputs: Sequence[str]) -> list[dict[str, Any]]:
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
        msgs = _messages(s, len(s.steps) - 1, outs)
        msgs.append({"role": "assistant", "content": outs[-1]})
        sizes.append(len(tok.encode(tok.apply_chat_template(msgs, False),
                                    add_special_tokens=False)))
        prefix = len(tok.encode(tok.apply_chat_template(msgs[:1], False),
                                add_special_tokens=False))
    return {"peak_context_tokens": sum(sizes) - (len(sizes) - 1) * prefix,
            "shared_prefix_tokens": prefix, "longest_context_tokens": max(sizes)}


# -- the servers ----------------------------------------------------------------------------

# /metrics samples this benchmark reports, per engine (label sets summed).
KVSAGA_METRICS = {"kvsaga:evictions_total": "evictions",
                  "kvsaga:num_preemptions_total": "preemptions",
                  "kvsaga:prefix_cache_hits_total": "prefix_cache_hit_tokens",
                  "kvsaga:kv_blocks_total": "kv_blocks"}
VLLM_METRICS = {"vllm:num_preemptions_total": "preemptions",
                "vllm:prefix_cache_hits_total": "prefix_cache_hit_tokens"}


def scrape_metrics(url: str, want: dict[str, str]) -> dict[str, float]:
    """Totals of the wanted `/metrics` samples, parsed by prometheus_client's own parser."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = want.get(sample.name)
            if key is not None:
                out[key] = out.get(key, 0.0) + float(sample.value)
    return out



def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`kvsaga-serve` in a subprocess on a free loopback port; stopped through its handle."""

    def __init__(self, args: argparse.Namespace, policy: str, kv_bytes: int, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        cmd = [sys.executable, "-m", "kvsaga.serve.cli", "--host", "127.0.0.1",
               "--port", str(self.port), "--policy", policy, "--kv-memory", str(kv_bytes),
               "--block-size", str(args.block_size), "--max-num-seqs", str(args.max_num_seqs),
               "--device", "cpu", "--served-model-name", SERVED_NAME, "--log-level", "warning"]
        if args.model:
            cmd += ["--model", args.model]
        if args.host_memory:
            cmd += ["--host-memory", str(args.host_memory)]
        self.cmd = cmd
        self._log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[1])

    def wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvsaga-serve exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.25)
        raise RuntimeError(f"kvsaga-serve not ready after {timeout_s} s:\n" + self.log_tail())

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.url, KVSAGA_METRICS)

    def log_tail(self, n: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down on SIGTERM
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class VLLMArm:
    """A vLLM server (`kvsaga.integrations.vllm.launch`) behind the same interface as
    `Server`: plain prefix caching (`policy` None) or with the kvsaga connector."""

    def __init__(self, args: argparse.Namespace, policy: str | None, kv_bytes: int,
                 log: Path) -> None:
        from kvsaga.integrations.vllm.launch import VLLMServer

        self.server = VLLMServer(
            Path(args.model), kv_bytes, connector_policy=policy, python=args.vllm_python,
            served_name=SERVED_NAME, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_model_len=min(2048, (kv_bytes // args.kv_bytes_per_token // args.block_size - 1)
                              * args.block_size), log=log)  # vLLM keeps one null block
        self.url = self.server.base_url

    def wait_ready(self, timeout_s: float) -> None:
        self.server.start(timeout_s)

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.url, VLLM_METRICS)

    def stop(self) -> None:
        self.server.stop()


@dataclass(frozen=True)
class Arm:
    """One system under test: its name in the tables, how to start it, and how a request
    carries the session id and pause hint to it."""

    name: str
    engine: str  # "kvsaga" (kvsaga-serve) or "vllm"
    policy: str | None  # kvsaga policy: the server's, or the vLLM connector's (None: plain)

    def start(self, args: argparse.Namespace, kv_bytes: int, logdir: Path) -> Server | VLLMArm:
        log = logdir / f"server-{self.name.replace(':', '-').replace('+', '-')}.log"
        if self.engine == "vllm":
            return VLLMArm(args, self.policy, kv_bytes, log)
        return Server(args, self.policy, kv_bytes, log)

    def extra_body(self, session_id: str, hint: dict[str, Any]) -> dict[str, Any]:
        if self.engine == "vllm":  # the connector reads kv_transfer_params; plain vLLM ignores it
            return {"kv_transfer_params": {"kvsaga": {"session_id": session_id, **hint}}}
        return {"session_id": session_id, "kvsaga": hint}


def arms(args: argparse.Namespace) -> list[Arm]:
    """kvsaga engine: one kvsaga-serve per policy. vLLM: plain vLLM (prefix caching), vLLM
    with the kvsaga connector per connector policy, then kvsaga-serve per policy."""
    def names(csv: str) -> list[str]:
        return [p.strip() for p in csv.split(",") if p.strip()]

    if args.engine == "kvsaga":
        return [Arm(p, "kvsaga", p) for p in names(args.policies)]
    return ([Arm("vllm", "vllm", None)]
            + [Arm(f"vllm+{p}", "vllm", p) for p in names(args.vllm_policies)]
            + [Arm(f"kvsaga-serve:{p}", "kvsaga", p) for p in names(args.kvsaga_policies)])


# -- the client -----------------------------------------------------------------------------


def run_session(client: Any, arm: Arm, sess: ReplaySession, t0: float,
                result: PolicyResult, lock: threading.Lock) -> None:
    """Replay one session: its steps in order, each followed by its tool pause."""
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
            resp = client.chat.completions.create(
                model=SERVED_NAME, messages=_messages(sess, k, outputs),
                max_tokens=st.output_tokens, temperature=0,
                extra_body=arm.extra_body(sess.id, hint))
        except Exception as e:  # counted and reported; the session cannot go on
            rec.end = time.perf_counter()
            rec.error = f"{type(e).__name__}: {e}"[:300]
            with lock:
                result.records.append(rec)
            return
        rec.end = time.perf_counter()
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

    result = PolicyResult(arm.name)
    server = arm.start(args, kv_bytes, logdir)
    try:
        server.wait_ready(args.start_timeout)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                               timeout=args.request_timeout)
        # The first forward pass is slow (allocator, kernel choice): not a policy's cost. A
        # one-shot prompt shorter than a block leaves nothing in the cache.
        client.completions.create(model=SERVED_NAME, prompt="Hello", max_tokens=1,
                                  temperature=0)
        lock = threading.Lock()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=run_session,
                                    args=(client, arm, s, t0, result, lock),
                                    name=f"replay-{s.id}", daemon=True) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.wall_s = time.perf_counter() - t0
        result.metrics = server.metrics()
        client.close()
    finally:
        server.stop()
    result.records.sort(key=lambda r: (r.session, r.step))
    return result


# -- figures --------------------------------------------------------------------------------


def measured_peak(records: list[StepRecord]) -> int:
    """Peak over time of the live sessions' summed context: a running step holds its
    prompt, a finished one its prompt and output, until the session's last step ends."""
    events: list[tuple[float, str, int]] = []
    last_step: dict[str, int] = {}
    for r in records:
        last_step[r.session] = max(last_step.get(r.session, -1), r.step)
    for r in records:
        if r.error:
            continue
        events.append((r.start, r.session, r.prompt_tokens))
        done = r.step == last_step[r.session]
        events.append((r.end, r.session, 0 if done else r.prompt_tokens + r.completion_tokens))
    live: dict[str, int] = {}
    peak = 0
    for _, sid, ctx in sorted(events):
        live[sid] = ctx
        peak = max(peak, sum(live.values()))
    return peak


def floor_tokens(records: list[StepRecord], shared_prefix: int, block_size: int) -> int:
    """Prefill tokens of an unbounded cache, which no policy can beat.

    A later step computes what it appends to its session's context, plus the previous
    step's last output token (sampled, never fed back, so its KV was never computed); a
    first step computes its prompt but the shared prefix's full blocks, which only the first
    session to arrive computes.
    """
    total, prev, first = 0, {}, True
    shared = shared_prefix // block_size * block_size
    for r in sorted((r for r in records if r.error is None), key=lambda r: r.start):
        ctx = prev.get(r.session)
        if ctx is None:
            total += r.prompt_tokens - (0 if first else shared)
            first = False
        else:
            total += r.prompt_tokens - ctx + 1
        prev[r.session] = r.prompt_tokens + r.completion_tokens
    return total


def summarize(res: PolicyResult, shared_prefix: int, block_size: int) -> dict[str, Any]:
    ok = [r for r in res.records if r.error is None]
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    lat = [r.end - r.start for r in ok]
    return {
        "requests": len(ok),
        "errors": len(res.records) - len(ok),
        "error_examples": sorted({r.error for r in res.records if r.error})[:3],
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "prefill_tokens": prompt - cached,
        "cached_share": cached / prompt if prompt else 0.0,
        "completion_tokens": sum(r.completion_tokens for r in ok),
        "step_latency_mean_s": statistics.fmean(lat) if lat else math.nan,
        "step_latency_p95_s": percentile(lat, 95),
        "task_time_mean_s": statistics.fmean(res.task_s) if res.task_s else math.nan,
        "tasks_completed": len(res.task_s),
        "wall_s": res.wall_s,
        "peak_context_tokens_measured": measured_peak(res.records),
        "floor_prefill_tokens": floor_tokens(res.records, shared_prefix, block_size),
        **{k: int(v) for k, v in res.metrics.items()},
    }


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def peer_ratios(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """vLLM + connector against plain vLLM (issue 13's goal: >= 1.64x mean task completion
    time, fewer prefill tokens), and kvsaga-serve against vLLM + connector."""
    plain = summary.get("vllm")
    out: dict[str, Any] = {"lines": []}
    if plain is None:
        return {}
    for name, s in summary.items():
        if name.startswith("vllm+") and s["task_time_mean_s"] > 0:
            tct = plain["task_time_mean_s"] / s["task_time_mean_s"]
            fewer = s["prefill_tokens"] < plain["prefill_tokens"]
            out[name] = {"tct_speedup_over_vllm": tct, "fewer_prefill_tokens": fewer}
            out["lines"].append(
                f"{name} vs vllm: mean TCT speed-up {tct:.2f}x (goal >= 1.64x: "
                f"{'met' if tct >= 1.64 else 'not met'}); prefill tokens "
                f"{s['prefill_tokens']:,} vs {plain['prefill_tokens']:,} "
                f"({'fewer' if fewer else 'not fewer'})")
    for name, s in summary.items():
        for peer, p in summary.items():
            if name.startswith("kvsaga-serve:") and peer.startswith("vllm+"):
                r = p["task_time_mean_s"] / s["task_time_mean_s"]
                out[f"{name} vs {peer}"] = {"tct_speedup": r}
                out["lines"].append(f"{name} vs {peer}: mean TCT {r:.2f}x "
                                    f"({'at least as fast' if r >= 1 else 'slower'})")
    return out


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    head = ("system", "prefill tok", "cached share", "step mean s", "step p95 s", "task mean s",
            "evictions", "preempt", "errors")
    rows = [(p, f"{s['prefill_tokens']:,}", f"{s['cached_share']:.1%}",
             f"{s['step_latency_mean_s']:.2f}", f"{s['step_latency_p95_s']:.2f}",
             f"{s['task_time_mean_s']:.1f}", str(s.get("evictions", "-")),
             str(s.get("preemptions", "-")), str(s["errors"])) for p, s in summary.items()]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, *rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


# -- main -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--workload", default="swe", help="a kvsaga.sim workload (swe, web, bfcl, assistant)")
    a("--sessions", type=int, default=6, help="agent sessions replayed per policy")
    a("--steps", type=int, default=8, help="most steps replayed per session (the rest cut)")
    a("--seed", type=int, default=0, help="the generator's seed")
    a("--token-scale", type=float, default=0.02, help="multiplies every token count")
    a("--time-scale", type=float, default=20.0, help="multiplies every tool latency")
    a("--max-tool-s", type=float, default=10.0, help="cap on one (shortened) tool pause")
    a("--arrival-gap", type=float, default=1.0, help="seconds between session arrivals")
    a("--hint", choices=("median", "exact", "none"), default="median",
      help="expected_s sent: the tool's median latency, the exact pause, or none")
    a("--policies", default=",".join(POLICIES), help="comma-separated, run in this order")
    a("--kv-fraction", type=float, default=0.5,
      help="KV budget as a share of the working set")
    a("--kv-memory", type=int, default=None, help="KV budget in bytes (overrides --kv-fraction)")
    a("--host-memory", type=int, default=0,
      help="host-tier bytes for offloaded KV blocks, passed to every server (0: no host tier)")
    a("--block-size", type=int, default=16, help="tokens per KV block")
    a("--max-num-seqs", type=int, default=16, help="the server's batch limit")
    a("--model", default=None, help="model path (default: the bundled SmolLM2-135M)")
    a("--start-timeout", type=float, default=180.0, help="seconds to wait for a server")
    a("--request-timeout", type=float, default=300.0, help="seconds per request")
    a("--json", default=None, help="write the results here as JSON")
    v = p.add_argument_group("peer engine (--engine vllm)")
    v.add_argument("--engine", choices=("kvsaga", "vllm"), default="kvsaga",
                   help="kvsaga: one kvsaga-serve per --policies; vllm: plain vLLM (prefix "
                        "caching), vLLM + the kvsaga connector, and kvsaga-serve, same model, "
                        "dtype (fp32) and KV budget")
    v.add_argument("--vllm-python", default=sys.executable,
                   help="interpreter that has vLLM (tests/integrations/vllm/make_env.sh)")
    v.add_argument("--vllm-policies", default="ttl",
                   help="kvsaga policies for the vLLM connector arms")
    v.add_argument("--kvsaga-policies", default="graph",
                   help="kvsaga-serve policies run next to vLLM")
    return p


def vllm_model_dir(model: str | None) -> str:
    """An HF directory of the model for vLLM (which reads no GGUF): `model` itself when it is
    one, else written from the GGUF by kvsaga's exporter into ~/.cache/kvsaga (kept)."""
    from kvsaga.engine.export import export_hf
    from kvsaga.engine.loader import default_model_path

    if model is not None and (Path(model) / "config.json").is_file():
        return model
    gguf = Path(model) if model else default_model_path()
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvsaga"
    out = out / f"{gguf.stem}-hf"
    if not (out / "config.json").is_file():
        print(f"writing {gguf.name} as an HF directory for vLLM: {out}", file=sys.stderr)
        export_hf(gguf, out)
    return str(out)


def _load_tokenizer(model: str | None) -> tuple[Any, Any]:
    from kvsaga.engine.loader import default_model_path
    from kvsaga.engine.tokenizer import Tokenizer
    from kvsaga.engine.weights import open_checkpoint

    ckpt = open_checkpoint(default_model_path() if model is None else model)
    if ckpt.gguf is not None:
        return Tokenizer.from_gguf(ckpt.gguf), ckpt.config
    return Tokenizer.from_hf_dir(ckpt.path, ckpt.config.eos_token_ids), ckpt.config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engine == "vllm":
        # Both engines serve the same HF directory; vLLM's CPU attention takes blocks of a
        # multiple of 32 tokens, and kvsaga-serve gets the same block size and budget.
        args.model = vllm_model_dir(args.model)
        if args.block_size % 32:
            print(f"note: --block-size {args.block_size} -> 32 (vLLM's CPU attention)",
                  file=sys.stderr)
            args.block_size = 32
    systems = arms(args)
    host = machine()  # before the run: the load average says how shared the machine was
    tok, cfg = _load_tokenizer(args.model)
    sessions = build_sessions(args, tok)
    ws = working_set(sessions, tok)
    # The server computes in fp32 on CPU, and so stores KV in fp32 (4 bytes).
    kv_per_token = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * 4
    args.kv_bytes_per_token = kv_per_token
    block_bytes = kv_per_token * args.block_size
    ws_bytes = ws["peak_context_tokens"] * kv_per_token
    kv_bytes = args.kv_memory or int(args.kv_fraction * ws_bytes)
    kv_blocks = kv_bytes // block_bytes
    # The server's context limit is its whole pool: the longest session must fit alone (with
    # one block of slack for the output), or its last steps fail with a 400.
    need = -(-(ws["longest_context_tokens"] + args.block_size) // args.block_size)
    if kv_blocks < need:
        print(f"note: raising the KV budget from {kv_blocks} to {need} blocks so that the "
              f"longest session ({ws['longest_context_tokens']} tokens) fits", file=sys.stderr)
        kv_blocks = need
    kv_bytes = kv_blocks * block_bytes  # what the server will actually use
    num_steps = sum(len(s.steps) for s in sessions)
    print(f"workload {args.workload}: {len(sessions)} sessions, {num_steps} steps "
          f"(tokens x{args.token_scale}, tool pauses x{args.time_scale} capped at "
          f"{args.max_tool_s} s, hint {args.hint})")
    print(f"working set: {ws['peak_context_tokens']:,} tokens x {kv_per_token:,} B/token = "
          f"{ws_bytes / 2**20:.1f} MiB; KV budget {kv_bytes / 2**20:.1f} MiB = {kv_blocks} "
          f"blocks of {args.block_size} tokens = {kv_bytes / ws_bytes:.0%} of the working set",
          flush=True)
    summary: dict[str, dict[str, Any]] = {}
    raw: dict[str, PolicyResult] = {}
    with tempfile.TemporaryDirectory(prefix="agent-replay-") as tmp:
        for arm in systems:
            t = time.perf_counter()
            raw[arm.name] = replay(args, sessions, arm, kv_bytes, Path(tmp))
            summary[arm.name] = summarize(raw[arm.name], ws["shared_prefix_tokens"],
                                          args.block_size)
            print(f"  {arm.name}: {summary[arm.name]['prefill_tokens']:,} prefill tokens, "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
    print()
    print_table(summary)
    peer = peer_ratios(summary)
    for line in peer.get("lines", []):
        print(line)
    ratio = None
    if "lru" in summary and "graph" in summary and summary["graph"]["prefill_tokens"]:
        ratio = summary["lru"]["prefill_tokens"] / summary["graph"]["prefill_tokens"]
        floor = summary["lru"]["floor_prefill_tokens"]
        print(f"\nprefill tokens lru/graph: {ratio:.2f}x (goal >= 5x: "
              f"{'met' if ratio >= 5 else 'not met'}); floor of an unbounded cache: "
              f"{floor:,} tokens, so lru/floor = {summary['lru']['prefill_tokens'] / floor:.2f}x "
              "bounds any policy's ratio")
    if args.json:
        out = {
            "command": "python bench/agent_replay.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "machine": {**host, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "config": vars(args),
            "workload": {"sessions": len(sessions), "steps": num_steps,
                         "steps_per_session": [len(s.steps) for s in sessions],
                         "tool_pauses_s": [[st.tool_s for st in s.steps[:-1]]
                                           for s in sessions]},
            "working_set": {**ws, "kv_bytes_per_token": kv_per_token, "bytes": ws_bytes},
            "kv_budget": {"bytes": kv_bytes, "blocks": kv_blocks,
                          "tokens": kv_blocks * args.block_size,
                          "fraction_of_working_set": kv_bytes / ws_bytes},
            "policies": summary,
            "prefill_ratio_lru_over_graph": ratio,
            "goal_5x_met": None if ratio is None else ratio >= 5,
            "vllm_peer": {k: v for k, v in peer.items() if k != "lines"} or None,
            "steps": {p: [asdict(r) for r in res.records] for p, res in raw.items()},
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    failed = any(s["errors"] for s in summary.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
