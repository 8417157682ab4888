"""Agent replay: a simulator workload against a live kvsaga-serve, once per eviction policy.

    python bench/agent_replay.py --json /tmp/agent_replay.json   # swe, 6 x 8 steps, 3-8 min

    python bench/agent_replay.py --sessions 2 --steps 2 --policies lru,graph   # a quick look

    python bench/agent_replay.py --engine vllm --vllm-python /path/to/vllm-env/bin/python

    python bench/agent_replay.py --kvsaga-arms fcfs+lru,workflow+graph --repeat 3

Schedulers (`--kvsaga-arms`, issue 10): kvsaga-serve arms named `scheduler+policy`, each a
server started with `--scheduler S --policy P`, the first arm the baseline every other arm
is compared with (mean and p95 task completion time, prefill tokens).

Repeats (`--repeat N`): every arm runs N times, a fresh server each time, in alternating
order (forward in even rounds, backward in odd ones), so that the load drift of a shared
machine weighs on every arm alike. Each cell is the median over the rounds with its range;
each ratio is the median of per-round ratios (the arms of one round ran back to back).
Prefill tokens and the cached share do not depend on the CPU's speed; times do.
`--write-results` writes the run's section of bench/RESULTS.md (one heading per mode:
policies, schedulers, vLLM), leaving the rest of the file alone.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvsaga.stats import percentile

POLICIES = ("lru", "ttl", "graph")
SERVED_NAME = "replay"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"  # what --write-results rewrites
VLLM_SECTION = "## vLLM as the peer"  # where the vLLM-mode sections go in RESULTS.md

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
    round: int = 0  # which repeat of the arm (--repeat)


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

    def __init__(self, args: argparse.Namespace, policy: str, kv_bytes: int, log: Path,
                 scheduler: str | None = None, extra: Sequence[str] = ()) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        cmd = [sys.executable, "-m", "kvsaga.serve.cli", "--host", "127.0.0.1",
               "--port", str(self.port), "--policy", policy, "--kv-memory", str(kv_bytes),
               "--block-size", str(args.block_size), "--max-num-seqs", str(args.max_num_seqs),
               "--device", "cpu", "--served-model-name", SERVED_NAME, "--log-level", "warning"]
        if args.model:
            cmd += ["--model", args.model]
        if scheduler is not None:
            cmd += ["--scheduler", scheduler]
        if args.host_memory:
            cmd += ["--host-memory", str(args.host_memory)]
        cmd += list(extra)
        self.replicas = args.replicas if "--replicas" in extra else 0
        self.stop_s = 120 if self.replicas else 20  # Ray's local cluster shuts down too
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
                    if self.replicas:
                        warm_replicas(self.url, self.replicas, deadline - time.monotonic())
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
                self.proc.wait(self.stop_s)
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

        # "POLICY+gate": the connector with its session admission gate on
        policy, _, gate = (policy or "").partition("+")
        self.server = VLLMServer(
            Path(args.model), kv_bytes, connector_policy=policy or None,
            connector_extra={"admission": True} if gate else {}, python=args.vllm_python,
            served_name=SERVED_NAME, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_model_len=min(2048, (kv_bytes // args.kv_bytes_per_token // args.block_size - 1)
                              * args.block_size), log=log)  # vLLM keeps one null block
        self.url = self.server.base_url
        self.log = log
        self.connector_stats: dict[str, float] = {}

    def wait_ready(self, timeout_s: float) -> None:
        self.server.start(timeout_s)

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.url, VLLM_METRICS)

    def stop(self) -> None:
        self.server.stop()
        self.connector_stats = connector_stats(self.log)


def connector_stats(log: Path) -> dict[str, float]:
    """The kvsaga connector's last counters in a vLLM server log (empty for plain vLLM),
    flattened: `connector_retained_steps`, `connector_released_blocks`, ... and
    `connector_released_<reason>` (admit, preempt, headroom)."""
    from kvsaga.integrations.vllm.hints import STATS_PREFIX

    last = None
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if STATS_PREFIX in line:
            last = line.split(STATS_PREFIX, 1)[1]
    if last is None:
        return {}
    raw = json.loads(last)
    out = {f"connector_{k}": float(v) for k, v in raw.items() if k != "by_reason"}
    out.update({f"connector_released_{k}": float(v) for k, v in raw["by_reason"].items()})
    return out


@dataclass(frozen=True)
class Arm:
    """One system under test: its name in the tables, how to start it, and how a request
    carries the session id and pause hint to it."""

    name: str
    engine: str  # "kvsaga" (kvsaga-serve) or "vllm"
    policy: str | None  # kvsaga policy: the server's, or the vLLM connector's (None: plain)
    scheduler: str | None = None  # kvsaga-serve's --scheduler (None: its default)
    serve_args: tuple[str, ...] = ()  # more kvsaga-serve flags (--replicas mode)

    def start(self, args: argparse.Namespace, kv_bytes: int, logdir: Path) -> Server | VLLMArm:
        log = logdir / f"server-{self.name.replace(':', '-').replace('+', '-')}.log"
        if self.engine == "vllm":
            return VLLMArm(args, self.policy, kv_bytes, log)
        return Server(args, self.policy, kv_bytes, log, self.scheduler, self.serve_args)

    def extra_body(self, session_id: str, hint: dict[str, Any]) -> dict[str, Any]:
        if self.engine == "vllm":  # the connector reads kv_transfer_params; plain vLLM ignores it
            return {"kv_transfer_params": {"kvsaga": {"session_id": session_id, **hint}}}
        return {"session_id": session_id, "kvsaga": hint}


def _names(csv: str) -> list[str]:
    return [p.strip() for p in csv.split(",") if p.strip()]


def scheduler_arms(csv: str) -> list[Arm]:
    """`--kvsaga-arms`: kvsaga-serve arms named `scheduler+policy` (e.g. `fcfs+lru`).

    Raises:
        SystemExit: an arm is not `scheduler+policy` or names an unknown scheduler or policy
            (argparse-style message naming the arm).
    """
    from kvsaga.policy import POLICIES as KNOWN_POLICIES
    from kvsaga.scheduler import SCHEDULERS

    out = []
    for name in _names(csv):
        sched, plus, policy = name.partition("+")
        if not plus or sched not in SCHEDULERS or policy not in KNOWN_POLICIES:
            raise SystemExit(f"--kvsaga-arms: {name!r} is not scheduler+policy with a "
                             f"scheduler in {sorted(SCHEDULERS)} and a policy in "
                             f"{sorted(KNOWN_POLICIES)}")
        out.append(Arm(name, "kvsaga", policy, sched))
    if len({a.name for a in out}) != len(out):
        raise SystemExit(f"--kvsaga-arms: an arm is named twice in {csv!r}")
    return out


# -- --replicas: routers in front of several kvsaga-serve replicas ---------------------------

REPLICAS_TITLE = ("## Agent replay: routers on kvsaga-serve --replicas (written by "
                  "bench/agent_replay.py)")
REPLICA_ROUTERS = ("round-robin", "kvsaga")  # the baseline first


def warm_replicas(url: str, n: int, timeout_s: float) -> None:
    """Load every replica's model (`/metrics` reaches each one) and run one forward pass on
    each (n one-shot prompts at once: the router spreads what is in flight), so that no
    arm's first steps pay a replica's start-up; `replay`'s own warm-up reaches one."""
    import httpx

    httpx.get(f"{url}/metrics", timeout=max(timeout_s, 1.0)).raise_for_status()
    body = {"model": SERVED_NAME, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    with ThreadPoolExecutor(n) as pool:
        for r in pool.map(lambda _: httpx.post(f"{url}/v1/completions", json=body,
                                               timeout=max(timeout_s, 1.0)), range(n)):
            r.raise_for_status()


def replica_arms(args: argparse.Namespace) -> list[Arm]:
    """`--replicas N`: `kvsaga-serve --replicas N` (a local Ray cluster, N engine replicas,
    each with the whole KV budget) once per router: round-robin (every step to the next
    replica, sessions ignored) first, then kvsaga's (affinity + stealing + migration); the
    same policy (`--replica-policy`) on both, so only the routing differs."""
    return [Arm(f"replicas:{router}", "kvsaga", args.replica_policy,
                serve_args=("--replicas", str(args.replicas), "--router", router))
            for router in REPLICA_ROUTERS]


def replica_pairs(names: list[str]) -> list[tuple[str, str, float, str]]:
    """kvsaga's router against round-robin (issue 12's goal: fewer prefill tokens and a
    lower mean task time, i.e. a speed-up above 1)."""
    base = f"replicas:{REPLICA_ROUTERS[0]}"
    return [(base, n, 1.0, "issue 12") for n in names if n != base]


def arms(args: argparse.Namespace) -> list[Arm]:
    """kvsaga engine: one kvsaga-serve per policy (or per `--kvsaga-arms` scheduler+policy).
    vLLM: plain vLLM (prefix caching), vLLM with the kvsaga connector per connector policy,
    then kvsaga-serve per policy."""
    names = _names
    if args.replicas:
        return replica_arms(args)
    if args.engine == "kvsaga":
        if args.kvsaga_arms:
            return scheduler_arms(args.kvsaga_arms)
        return [Arm(p, "kvsaga", p) for p in names(args.policies)]
    from kvsaga.policy import POLICIES as KNOWN_POLICIES

    for p in names(args.vllm_policies):
        policy, plus, gate = p.partition("+")
        if policy not in KNOWN_POLICIES or (plus and gate != "gate"):
            raise SystemExit(f"--vllm-policies: {p!r} is not POLICY or POLICY+gate with a "
                             f"policy in {sorted(KNOWN_POLICIES)}")
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
    result.metrics.update(getattr(server, "connector_stats", {}))
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
        "task_time_p95_s": percentile(res.task_s, 95) if res.task_s else math.nan,
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


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm's figures over its repeats: the median of every number (errors summed), and
    each number's [min, max] under "range"."""
    out: dict[str, Any] = dict(runs[0])
    ranges: dict[str, list[float]] = {}
    for key, value in runs[0].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values = [r[key] for r in runs if not math.isnan(r[key])]
        if key == "errors":
            out[key] = sum(values)
        elif values:
            out[key] = statistics.median(values)
            ranges[key] = [min(values), max(values)]
    out["error_examples"] = sorted({e for r in runs for e in r["error_examples"]})[:3]
    out["runs"] = len(runs)
    out["range"] = ranges
    return out


def paired(rounds: list[dict[str, dict[str, Any]]], base: str, arm: str, key: str
           ) -> list[float]:
    """`base`'s figure over `arm`'s, per round (both ran in it, back to back)."""
    return [r[base][key] / r[arm][key] for r in rounds
            if base in r and arm in r and r[arm][key] > 0]


def _ratio_text(values: list[float]) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}x"
    return f"{med:.2f}x (per round {', '.join(f'{v:.2f}' for v in values)})"


def comparisons(args: argparse.Namespace, systems: list[Arm],
                rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ratios each mode is judged by, as medians of per-round (paired) ratios:

    - `--engine vllm`: every vLLM + connector arm against plain vLLM (issue 13's goal: mean
      TCT >= 1.64x faster, fewer prefill tokens), and kvsaga-serve against vLLM + connector
      (goal: at least as fast);
    - `--kvsaga-arms`: every arm against the first (issue 10's goal for the workflow
      scheduler against fcfs+lru: mean TCT >= 2x faster, p95 TCT no worse).
    """
    names = [a.name for a in systems]
    pairs: list[tuple[str, str, float | None, str]] = []
    if args.engine == "vllm":
        pairs += [("vllm", n, 1.64, "issue 13") for n in names if n.startswith("vllm+")]
        pairs += [(c, n, 1.0, "issue 13") for n in names if n.startswith("kvsaga-serve:")
                  for c in names if c.startswith("vllm+")]
    elif args.kvsaga_arms and len(names) > 1:
        pairs += [(names[0], n, 2.0, "issue 10") for n in names[1:]]
    elif args.replicas:
        pairs += replica_pairs(names)
    out: dict[str, Any] = {"lines": []}
    for base, arm, goal, issue in pairs:
        tct = paired(rounds, base, arm, "task_time_mean_s")
        p95 = paired(rounds, base, arm, "task_time_p95_s")
        fewer = paired(rounds, base, arm, "prefill_tokens")
        med = statistics.median(tct) if tct else math.nan
        out[f"{arm} vs {base}"] = {
            "tct_speedup": tct, "tct_speedup_median": med, "tct_p95_speedup": p95,
            "prefill_ratio": fewer, "goal": goal, "goal_met": bool(goal and med >= goal)}
        out["lines"].append(
            f"{arm} vs {base}: mean TCT speed-up {_ratio_text(tct)} ({issue} goal >= "
            f"{goal:g}x: {'met' if med >= goal else 'not met'}); p95 TCT {_ratio_text(p95)}; "
            f"prefill tokens {base}/{arm} {_ratio_text(fewer)}")
    return out


def _cell(s: dict[str, Any], key: str, fmt: str) -> str:
    """A median with its range over the repeats, when there was more than one."""
    text = format(s[key], fmt)
    lo_hi = s.get("range", {}).get(key)
    if s.get("runs", 1) > 1 and lo_hi and lo_hi[0] != lo_hi[1]:
        text += f" ({format(lo_hi[0], fmt)}-{format(lo_hi[1], fmt)})"
    return text


TABLE_HEAD = ("system", "prefill tok", "cached share", "step mean s", "step p95 s",
              "task mean s", "task p95 s", "evictions", "preempt", "errors")


def table_rows(summary: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for name, s in summary.items():
        rows.append((name, _cell(s, "prefill_tokens", ",.0f"), _cell(s, "cached_share", ".1%"),
                     _cell(s, "step_latency_mean_s", ".2f"), _cell(s, "step_latency_p95_s", ".2f"),
                     _cell(s, "task_time_mean_s", ".1f"), _cell(s, "task_time_p95_s", ".1f"),
                     _cell(s, "evictions", ".0f") if "evictions" in s else "-",
                     _cell(s, "preemptions", ".0f") if "preemptions" in s else "-",
                     str(s["errors"])))
    return rows


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    rows = table_rows(summary)
    widths = [max(len(r[i]) for r in (TABLE_HEAD, *rows)) for i in range(len(TABLE_HEAD))]
    for r in (TABLE_HEAD, *rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def markdown_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    aligns = ["---"] + ["---:"] * (len(TABLE_HEAD) - 1)
    return ["| " + " | ".join(r) + " |"
            for r in (TABLE_HEAD, tuple(aligns), *table_rows(summary))]


def results_title(args: argparse.Namespace) -> str:
    """The RESULTS.md heading `--write-results` replaces (one per mode)."""
    if args.replicas:
        return REPLICAS_TITLE
    if args.engine == "vllm":
        return "### Agent replay, interleaved repeats (written by bench/agent_replay.py)"
    if args.kvsaga_arms:
        return "## Agent replay: schedulers on live kvsaga-serve (written by bench/agent_replay.py)"
    return "## Agent replay: policies on live kvsaga-serve (written by bench/agent_replay.py)"


def _section_end(lines: list[str], i: int) -> int:
    """Index of the first line after the section headed at `lines[i]`: the next heading of
    its level or above, or the end."""
    level = len(lines[i]) - len(lines[i].lstrip("#"))
    j = i + 1
    while j < len(lines) and not (lines[j].startswith("#")
                                  and len(lines[j]) - len(lines[j].lstrip("#")) <= level):
        j += 1
    return j


def write_section(path: Path, title: str, body: str, parent: str | None = None) -> None:
    """Replace the section headed `title` (up to the next heading of its level or above) in
    the Markdown file at `path`; a new one goes at the end of the section whose heading
    starts with `parent` (when there is one), else at the end of the file. The rest of the
    file is left alone."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    new = [title, "", *body.rstrip("\n").splitlines(), ""]
    if title in lines:
        i = lines.index(title)
        lines[i:_section_end(lines, i)] = new
    else:
        at = len(lines)
        for i, line in enumerate(lines):
            if parent is not None and line.startswith(parent):
                at = _section_end(lines, i)
                break
        if at and lines[at - 1]:
            new = ["", *new]
        lines[at:at] = new
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def results_body(command: str, host: dict[str, Any], load_end: list[float], info: list[str],
                 summary: dict[str, dict[str, Any]], lines: list[str], repeat: int) -> str:
    """The section `--write-results` writes: the command, the machine and its load, the
    workload, the per-arm medians (ranges over the repeats), and the judged ratios."""
    order = ("forward in even rounds, backward in odd ones" if repeat > 1 else "one round")
    return "\n".join([
        f"`{command}` on {host['cpu']} ({host['cores']} cores, shared; Python "
        f"{host['python']}, torch {host['torch']}); load average "
        f"{host['loadavg_at_start'][0]:.1f} at the start, {load_end[0]:.1f} at the end. "
        f"{repeat} round(s) of every arm, arm order {order}, each arm a fresh server. "
        "Cells: the median over the rounds (min-max); ratios: the median of per-round "
        "ratios (each round runs the arms back to back). Prefill tokens and the cached "
        "share do not depend on the CPU's speed; times do (shared machine).",
        "", *info, "", *markdown_table(summary), "", *[f"- {ln}" for ln in lines]])


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
    a("--replicas", type=int, default=None,
      help="compare routers on kvsaga-serve --replicas N (a local Ray cluster; needs "
           "kvsaga[cluster]): round-robin, then kvsaga; replaces --policies")
    a("--replica-policy", default="graph", help="the eviction policy of --replicas' arms")
    a("--kvsaga-arms", default=None,
      help="kvsaga-serve arms as scheduler+policy pairs, the first the baseline (e.g. "
           "fcfs+lru,workflow+graph); replaces --policies")
    a("--repeat", type=int, default=1,
      help="rounds of every arm; the order alternates (forward, backward, ...) so that load "
           "drift weighs on every arm alike; figures are per-arm medians")
    a("--write-results", action="store_true",
      help="write this run's section of bench/RESULTS.md (one heading per mode)")
    v = p.add_argument_group("peer engine (--engine vllm)")
    v.add_argument("--engine", choices=("kvsaga", "vllm"), default="kvsaga",
                   help="kvsaga: one kvsaga-serve per --policies; vllm: plain vLLM (prefix "
                        "caching), vLLM + the kvsaga connector, and kvsaga-serve, same model, "
                        "dtype (fp32) and KV budget")
    v.add_argument("--vllm-python", default=sys.executable,
                   help="interpreter that has vLLM (tests/integrations/vllm/make_env.sh)")
    v.add_argument("--vllm-policies", default="ttl,ttl+gate",
                   help="kvsaga policies for the vLLM connector arms; POLICY+gate also turns "
                        "on the connector's session admission gate")
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


def run_order(systems: list[Arm], repeat: int) -> list[tuple[int, Arm]]:
    """(round, arm) in the order they run: every arm once per round, forward in even rounds
    and backward in odd ones (A B, B A, A B, ...), so that a drift in the machine's load over
    the run weighs on every arm alike and no arm always runs first after a server start."""
    out = []
    for rnd in range(repeat):
        out += [(rnd, a) for a in (systems if rnd % 2 == 0 else systems[::-1])]
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be >= 1, got {args.repeat}")
    if args.replicas is not None and args.replicas < 1:
        raise SystemExit(f"--replicas must be >= 1, got {args.replicas}")
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
    info = [
        f"Workload {args.workload} (seed {args.seed}): {len(sessions)} sessions, {num_steps} "
        f"steps, tokens x{args.token_scale}, tool pauses x{args.time_scale} capped at "
        f"{args.max_tool_s} s, sessions {args.arrival_gap} s apart, hint {args.hint}.",
        f"KV budget {kv_bytes:,} B = {kv_blocks} blocks of {args.block_size} tokens = "
        f"{kv_bytes / ws_bytes:.0%} of the {ws['peak_context_tokens']:,}-token working set; "
        f"--max-num-seqs {args.max_num_seqs}."]
    if args.replicas:
        info.append(f"Each of the {args.replicas} replicas has this KV budget.")
    rounds: list[dict[str, dict[str, Any]]] = []
    records: dict[str, list[StepRecord]] = {a.name: [] for a in systems}
    with tempfile.TemporaryDirectory(prefix="agent-replay-") as tmp:
        for rnd, arm in run_order(systems, args.repeat):
            if rnd == len(rounds):
                rounds.append({})
            t = time.perf_counter()
            res = replay(args, sessions, arm, kv_bytes, Path(tmp))
            for r in res.records:
                r.round = rnd
            records[arm.name] += res.records
            rounds[rnd][arm.name] = summarize(res, ws["shared_prefix_tokens"], args.block_size)
            print(f"  round {rnd} {arm.name}: {rounds[rnd][arm.name]['prefill_tokens']:,} "
                  f"prefill tokens, task mean {rounds[rnd][arm.name]['task_time_mean_s']:.1f} "
                  f"s, {time.perf_counter() - t:.0f} s (load {os.getloadavg()[0]:.1f})",
                  flush=True)
    summary = {a.name: median_summary([r[a.name] for r in rounds]) for a in systems}
    load_end = [round(x, 2) for x in os.getloadavg()]
    print()
    print_table(summary)
    judged = comparisons(args, systems, rounds)
    lines = list(judged.pop("lines"))
    ratio = None
    if "lru" in summary and "graph" in summary and summary["graph"]["prefill_tokens"]:
        ratio = summary["lru"]["prefill_tokens"] / summary["graph"]["prefill_tokens"]
        floor = summary["lru"]["floor_prefill_tokens"]
        lines.append(
            f"prefill tokens lru/graph: {ratio:.2f}x (goal >= 5x: "
            f"{'met' if ratio >= 5 else 'not met'}); floor of an unbounded cache: "
            f"{floor:,.0f} tokens, so lru/floor = "
            f"{summary['lru']['prefill_tokens'] / floor:.2f}x bounds any policy's ratio")
    for line in lines:
        print(line)
    command = "python bench/agent_replay.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    if args.write_results:
        body = results_body(command.strip(), host, load_end, info, summary, lines, args.repeat)
        write_section(RESULTS, results_title(args), body,
                      parent=VLLM_SECTION if args.engine == "vllm" else None)
        print("wrote bench/RESULTS.md")
    if args.json:
        out = {
            "command": command.strip(),
            "machine": {**host, "loadavg_at_end": load_end},
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
            "rounds": rounds,
            "prefill_ratio_lru_over_graph": ratio,
            "goal_5x_met": None if ratio is None else ratio >= 5,
            "comparisons": judged or None,
            "steps": {p: [asdict(r) for r in recs] for p, recs in records.items()},
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    failed = any(s["errors"] for s in summary.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
