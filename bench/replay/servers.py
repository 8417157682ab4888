"""The servers under test: kvsaga-serve (one engine, or --replicas N behind Ray Serve) and
vLLM, each in a subprocess on a loopback port and stopped through its handle. kvsaga-serve
picks its own port (`--port 0`), so no other process can take it first; a server given a
probed port (vLLM, Ray Serve's proxy) is started once more if that port was taken."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SERVED_NAME = "replay"  # the model name every server is started with
LOOPBACK = "127.0.0.1"  # the address kvsaga-serve is started on

# /metrics samples this benchmark reports, per engine (label sets summed).
KVSAGA_METRICS = {"kvsaga:evictions_total": "evictions",
                  "kvsaga:num_preemptions_total": "preemptions",
                  "kvsaga:prefix_cache_queries_total": "prefix_cache_query_tokens",
                  "kvsaga:prefix_cache_hits_total": "prefix_cache_hit_tokens",
                  "kvsaga:kv_blocks_total": "kv_blocks",
                  # where the engine thread's time went (kvsaga.engine.step_times): in steps
                  # (all kinds and phases), idle, how many steps and sequences (their ratio
                  # is the mean batch)
                  "kvsaga:engine_step_seconds_total": "engine_step_s",
                  "kvsaga:engine_idle_seconds_total": "engine_idle_s",
                  "kvsaga:engine_steps_total": "engine_steps",
                  "kvsaga:engine_step_seqs_total": "engine_step_seqs"}
VLLM_METRICS = {"vllm:num_preemptions_total": "preemptions",
                "vllm:prefix_cache_queries_total": "prefix_cache_query_tokens",
                "vllm:prefix_cache_hits_total": "prefix_cache_hit_tokens",
                # where a request's time went: waiting to be scheduled (the connector's gate
                # defers there), prefill, decode (summed over requests), and engine steps
                "vllm:request_queue_time_seconds_sum": "queue_s",
                "vllm:request_prefill_time_seconds_sum": "prefill_s",
                "vllm:request_decode_time_seconds_sum": "decode_s",
                "vllm:iteration_tokens_total_count": "engine_steps"}

# What `prefix_cache_query_tokens - prefix_cache_hit_tokens` (the prompt tokens the server
# computed, differenced over the replay) counts, per engine. They are NOT the same thing:
# - kvsaga-serve (kvsaga/manager.py begin_step) counts every attempt: a step re-admitted after
#   a preemption is looked up again, so its recomputation is in;
# - vLLM (0.32, vllm/v1/core/kv_cache_manager.py record_prefix_cache_stats) counts a
#   request's first admission only: a re-admission after preemption goes to
#   PrefixCacheStats.preempted_queries/preempted_hits, which no /metrics counter exports, so
#   recomputation after preemption is left out, as in the responses' usage.
# A vLLM figure therefore does not compare with a kvsaga-serve one; the table header says so.
COMPUTED_PROMPT_COUNTS = {"kvsaga": "all attempts", "vllm": "first admissions"}


def scrape_metrics(url: str, want: dict[str, str]) -> dict[str, float]:
    """Totals of the wanted `/metrics` samples of the server at `url` (`parse_metrics`)."""
    import httpx

    return parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text, want)


def parse_metrics(text: str, want: dict[str, str]) -> dict[str, float]:
    """Totals of the wanted samples of a `/metrics` text (label sets summed), under the names
    `want` maps them to, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = want.get(sample.name)
            if key is not None:
                out[key] = out.get(key, 0.0) + float(sample.value)
    return out



def _free_port() -> int:
    """A port free now: another process can take it before a server binds it; only for
    servers that cannot pick their own (Ray Serve's proxy; vLLM), which retry on that."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _address_in_use(text: str) -> bool:
    """Whether a server's log says it could not bind its port (kvsaga-serve: "cannot listen
    on ...: Address already in use"; uvicorn under vLLM: "[Errno 98] ... address already in
    use")."""
    return "address already in use" in text.lower()


def _proc_net_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: the bytes of each 32-bit word in host
    order (little-endian here), in hex."""
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def listening_port(pid: int, host: str = LOOPBACK) -> int | None:
    """The TCP port process `pid` listens on at `host` (an address, or the wildcard address
    of its family), read from /proc; None while it listens on none there. A server started
    with `--port 0` binds a port no other process can take between a probe and the bind,
    and this reads which it got without the info-level log line (the bench runs the servers
    at warning: no per-request log). Sockets on other addresses are not its server's
    (until session 53 the lowest listener of any address won, so another socket of the
    process, e.g. one a test left in its own process, could be taken for it); listeners
    at `host` on two ports raise, naming both, rather than guess."""
    want = ipaddress.ip_address(host)
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    try:
        fds = list(fd_dir.iterdir())
    except OSError:  # it has exited (the caller sees that next)
        return None
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # st 0A: LISTEN
                continue
            address, port = f[1].rsplit(":", 1)
            local = _proc_net_address(address)
            if local == want or (local.is_unspecified and local.version == want.version):
                ports.add(int(port, 16))
    if len(ports) > 1:
        raise RuntimeError(f"process {pid} listens on {host} at several ports "
                           f"({', '.join(map(str, sorted(ports)))}): which is its server's "
                           "is not known")
    return ports.pop() if ports else None


CONNECTOR_SUFFIXES = {  # a connector arm's suffix -> the kv_connector_extra_config it sets
    "gate": {"admission": True},
    "nogate": {"admission": False},  # retention alone
    # the gate on predicted working sets alone, as before room admission (A/B of 2026-11-30)
    "noroom": {"admission": True, "gate_args": {"room_admit": False}},
    # the gate letting waiting sessions in in vLLM's queue order, as before admission_order
    "fifo": {"admission": True, "gate_args": {"admission_order": "fifo"}},
    # deferred steps riding along unretained, as before best_effort_steps' default became 0
    "ride": {"best_effort_steps": 10},
}


def connector_arm(name: str) -> tuple[str, dict[str, Any]]:
    """A vLLM connector arm's name as the policy and the `kv_connector_extra_config` entries
    it sets: `POLICY` (the connector's defaults), `POLICY+gate` (the session admission gate
    on), `POLICY+nogate` (off: retention alone), `POLICY+noroom` (the gate without room
    admission: it defers on the predicted working sets even where vLLM has room),
    `POLICY+fifo` (the gate in vLLM's queue order: `gate_args` `admission_order` "fifo"),
    `POLICY+ride` (deferred steps ride along: `best_effort_steps` 10, the default before).
    POLICY is an online policy: the connector refuses an offline one (`belady`,
    `oracle-ttl`: it needs the future), and did so only when that arm's vLLM started, after
    the arms before it had run."""
    from kvsaga.policy import POLICIES

    online = sorted(n for n, c in POLICIES.items() if not getattr(c, "needs_oracle", False))
    policy, plus, suffix = name.partition("+")
    if policy not in online or (plus and suffix not in CONNECTOR_SUFFIXES):
        raise SystemExit(f"connector arm {name!r} is not POLICY or POLICY+SUFFIX with a "
                         f"suffix in {sorted(CONNECTOR_SUFFIXES)} and an online policy in "
                         f"{online}")
    return policy, (dict(CONNECTOR_SUFFIXES[suffix]) if plus else {})

class Server:
    """`kvsaga-serve` in a subprocess on a loopback port (`--port 0`, read back by
    `wait_ready`; behind Ray Serve a probed one), stopped through its handle; `url` is known
    once `wait_ready` returns."""

    def __init__(self, args: argparse.Namespace, policy: str, kv_bytes: int, log: Path,
                 scheduler: str | None = None, extra: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.log_path = log
        cmd = [sys.executable, "-m", "kvsaga.serve.cli", "--host", LOOPBACK,
               "--policy", policy, "--kv-memory", str(kv_bytes),
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
        self._base_cmd = cmd
        self._env = {**os.environ, **env} if env else None
        self._retried = False
        self._log = log.open("w")
        self._start()

    def _start(self) -> None:
        """Start the server: with `--port 0` (it binds a port of its own choosing, which
        `wait_ready` reads back: nothing can take it between), or, behind Ray Serve (whose
        proxy is given a port), on a probed free port, retried once if it was taken."""
        self.port = _free_port() if self.replicas else None
        self.cmd = self._base_cmd + ["--port", str(self.port or 0)]
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[2], env=self._env)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("kvsaga-serve's port is not known before wait_ready")
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if self.replicas and not self._retried and _address_in_use(tail):
                    self._retried = True  # the probed port was taken first: once more
                    self._start()
                    continue
                raise RuntimeError(f"kvsaga-serve exited with {self.proc.returncode}:\n"
                                   + tail)
            if self.port is None:
                self.port = listening_port(self.proc.pid, LOOPBACK)
                if self.port is None:  # not bound yet
                    time.sleep(0.1)
                    continue
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

    @property
    def pid(self) -> int:
        """The server process (the root of the tree whose CPU time a round reports)."""
        return self.proc.pid

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

        policy, extra = connector_arm(policy) if policy else (None, {})
        self.server = VLLMServer(
            Path(args.model), kv_bytes, connector_policy=policy,
            connector_extra=extra, python=args.vllm_python,
            served_name=SERVED_NAME, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_model_len=min(2048, (kv_bytes // args.kv_bytes_per_token // args.block_size - 1)
                              * args.block_size), log=log)  # vLLM keeps one null block
        self.url = self.server.base_url
        self.log = log
        self.connector_stats: dict[str, float] = {}

    def wait_ready(self, timeout_s: float) -> None:
        """Start vLLM; once more on a fresh port if the probed one was taken before vLLM
        bound it (its server cannot bind port 0 and say which port it got)."""
        from kvsaga.integrations.vllm.launch import free_port

        try:
            self.server.start(timeout_s)
        except RuntimeError as e:
            if not _address_in_use(str(e)):
                raise
            self.server.port = free_port()
            self.url = self.server.base_url
            self.server.start(timeout_s)

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.url, VLLM_METRICS)

    @property
    def pid(self) -> int | None:
        """vLLM's API server (its engine core is a child); None when not started."""
        return None if self.server.proc is None else self.server.proc.pid

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
