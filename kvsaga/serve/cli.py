"""`kvsaga-serve`: run the OpenAI-compatible server.

kvsaga-serve                                  # the default model on CPU, 127.0.0.1:8000
kvsaga-serve --model ./my-llama --port 9000 --policy lru --kv-memory 2G --api-key sk-...
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import re
import socket
import sys
import threading
import time

from kvsaga import envs
from kvsaga.ascii_numbers import float_arg, int_arg
from kvsaga.cli import (
    HelpFormatter,
    accept_negative_values,
    add_version,
    command_logging,
    report_failure,
)
from kvsaga.config import PoolConfig, parse_bytes
from kvsaga.errors import InvalidRequest
from kvsaga.serve.settings import ServerSettings, non_default_params

log = logging.getLogger("kvsaga.serve")

# OpenMP threads that wait for work sleep instead of spinning for ever (libgomp's ACTIVE):
# on a CPU shared with other processes, threads that spin on turn each of a step's many small
# parallel ops into a wait for a descheduled thread. `--cpu-host` (CPU_HOST_ENV) decides how
# long they spin first. Set before torch loads (libgomp reads these once; nothing imported
# above loads torch, which tests/serve/test_cli.py checks); measured in
# docs/engine_profiles.md, "Threads". A value the user set wins.
_USER_WAIT_POLICY = bool(os.environ.get("OMP_WAIT_POLICY", "").strip())
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# What `--cpu-host` sets (where the user has not) before torch loads. dedicated: workers spin
# a bounded while before they sleep, and every op runs in torch's thread team
# (KVSAGA_CPU_SERIAL_BELOW's default, 0); shared: workers sleep at once, and decode-sized ops
# run on the engine thread alone so that no sleeping worker is woken.
# auto: dedicated's settings, and the engine thread sizes torch's team to the cores other
# processes leave (KVSAGA_CPU_THREADS=adaptive, kvsaga/engine/cpu_threads.py).
CPU_HOST_ENV: dict[str, dict[str, str]] = {
    "auto": {"GOMP_SPINCOUNT": "10000", "KVSAGA_CPU_THREADS": "adaptive"},
    "dedicated": {"GOMP_SPINCOUNT": "10000"},
    "shared": {"KVSAGA_CPU_SERIAL_BELOW": str(envs.CPU_SERIAL_BELOW_SHARED)},
}
DEFAULT_CPU_HOST = "auto"


def apply_cpu_host(host: str) -> dict[str, str]:
    """Set `--cpu-host`'s environment variables that the user has not set (an empty value
    counts as unset, as kvsaga.envs reads it); returns those it set. A wait policy the user
    chose (`OMP_WAIT_POLICY`, set before this process started) keeps its meaning: no spin
    count is added, since libgomp takes GOMP_SPINCOUNT over the policy. Takes effect only
    before torch loads (libgomp reads its variables when torch loads it;
    KVSAGA_CPU_SERIAL_BELOW is read at model load).

    Raises:
        ValueError: `host` is not one of CPU_HOST_ENV's keys.
    """
    if host not in CPU_HOST_ENV:
        raise ValueError(f"--cpu-host must be one of {sorted(CPU_HOST_ENV)}, got {host!r}")
    chosen = {k: v for k, v in CPU_HOST_ENV[host].items()
              if not os.environ.get(k, "").strip()
              and not (k == "GOMP_SPINCOUNT" and _USER_WAIT_POLICY)}
    os.environ.update(chosen)
    return chosen


def _bytes(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from kvsaga.policy import online_policies
    from kvsaga.routing import REPLICA_ROUTERS
    from kvsaga.scheduler import SCHEDULERS

    d = ServerSettings()
    p = argparse.ArgumentParser(
        prog="kvsaga-serve",
        description="OpenAI-compatible server whose agent sessions keep their KV cache "
        "across tool calls.",
        formatter_class=HelpFormatter,
    )
    add_version(p)
    a = p.add_argument
    a("--model", default=None,
      help="HF directory or .gguf file (default: the bundled SmolLM2-135M-Instruct)")
    a("--served-model-name", default=None,
      help="model name clients send and /v1/models lists (default: the model's name)")
    a("--host", default=d.host, help="address to bind (loopback unless you mean to expose it)")
    a("--port", type=int_arg, default=d.port, help="TCP port")
    # Offline policies (Belady, oracles) read the future from a trace: not servable.
    a("--policy", default=d.policy, choices=online_policies(), help="KV eviction policy")
    a("--scheduler", default=d.scheduler, choices=sorted(SCHEDULERS),
      help="which requests run when: workflow (whole agent sessions admitted while their "
      "working sets fit) or fcfs (vLLM's request-level rule)")
    a("--scheduler-params", type=_json_object, default=None, metavar="JSON",
      help="the scheduler's own parameters as a JSON object, e.g. "
      "'{\"undo_demotion\": true}' (default: its defaults)")
    a("--kv-memory", type=_bytes, default=None,
      help="KV cache budget, e.g. 2G or 512M (default: 512M on CPU, 90%% of free GPU memory)")
    a("--host-memory", type=_bytes, default=None,
      help="host memory for KV blocks offloaded from the device, e.g. 8G (default: none, "
      "no offload)")
    a("--block-size", type=int_arg, default=d.block_size, help="tokens per KV block")
    a("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    a("--max-num-seqs", type=int_arg, default=d.max_num_seqs, help="most requests per batch")
    a("--max-num-batched-tokens", type=int_arg, default=d.max_num_batched_tokens,
      help="token budget of one forward pass (chunked prefill)")
    a("--max-model-len", type=int_arg, default=None,
      help="longest context in tokens (default: the model's; at most its context length, "
      "or mistral's sliding window)")
    a("--enforce-eager", action="store_true",
      help="on CUDA, run every step eagerly instead of replaying CUDA graphs")
    a("--max-graph-tokens", type=int_arg, default=d.max_graph_tokens,
      help="on CUDA, the most tokens a step with prefill tokens may hold to replay a CUDA "
      "graph (0: decode steps only; at most 2048)")
    a("--graph-capture", choices=("startup", "lazy"), default=d.graph_capture,
      help="on CUDA, record every CUDA graph before serving (startup) or each at the first "
      "step of its shape (lazy, which that step waits for)")
    a("--cpu-host", choices=sorted(CPU_HOST_ENV), default=DEFAULT_CPU_HOST,
      help="what the CPU engine may assume of its cores: dedicated (a machine of its own: "
      "OpenMP workers spin up to GOMP_SPINCOUNT=10000 before they sleep, every op runs in "
      "torch's thread team), shared (other busy processes beside it: workers sleep at "
      "once, decode-sized ops run on the engine thread alone: KVSAGA_CPU_SERIAL_BELOW="
      "8388608) or auto (dedicated's settings, and every second a thread comes off the "
      "team for each core other processes hold, three quarters of one or more, or goes "
      "back, within the count torch started with, e.g. OMP_NUM_THREADS: "
      "KVSAGA_CPU_THREADS=adaptive; to pin the count, use "
      "dedicated or KVSAGA_CPU_THREADS=fixed); in every mode the team starts within the "
      "cores (rounded up) of a container's CPU quota (cgroup cpu.max / cfs_quota_us) unless "
      "OMP_NUM_THREADS is set, and auto follows a quota changed while it runs; environment "
      "variables you set win, and an "
      "OMP_WAIT_POLICY you set gets no spin count (docs/engine_profiles.md, \"Threads\")")
    a("--api-key", default=None,
      help="require 'Authorization: Bearer KEY' on every endpoint but /health and /metrics "
      "(/metrics too with --metrics-auth); comma-separated for several tenants "
      "(default: $KVSAGA_API_KEY; unset: no auth)")
    a("--max-queue", type=int_arg, default=d.max_queue,
      help="requests that may wait beyond the running batch; more get 429 + Retry-After")
    a("--max-body", type=_bytes, default=d.max_body_bytes, help="largest request body (413)")
    a("--max-tokens-limit", type=int_arg, default=None,
      help="largest max_tokens a request may ask for (default: the context)")
    a("--default-max-tokens", type=int_arg, default=d.default_max_tokens,
      help="max_tokens of requests that set none, on both endpoints (default: vLLM's: 16 "
      "for /v1/completions; for chat the model's max_new_tokens, else the room left in the "
      "context)")
    a("--session-idle", type=float_arg, default=d.session_idle_s,
      help="seconds after which a silent session is ended (inf: never)")
    a("--graceful-shutdown-s", type=float_arg, default=None,
      help="on SIGTERM or Ctrl-C, seconds the requests in flight get to finish; then each "
      "stream still open ends with a final error event (code server_shutting_down) and "
      "data: [DONE], a request not streamed gets a 503, and the server exits (0: at once; "
      "a second Ctrl-C ends the wait at once) "
      f"(default: {d.graceful_shutdown_s:g}; one process only, not with --replicas)")
    a("--metrics-compat", default=None, choices=["vllm"],
      help="also export vLLM's metric names (vllm:num_requests_waiting, ...) (default: "
      "kvsaga's names only)")
    a("--metrics-auth", action="store_true",
      help="require the API key on /metrics too (needs --api-key or $KVSAGA_API_KEY; "
      "default: /metrics is open)")
    a("--log-stats-interval", type=float_arg, default=d.log_stats_interval_s,
      help="seconds between status lines (throughput, queue, KV usage, hit rate); 0: none")
    a("--replicas", type=int_arg, default=None,
      help="run N engine replicas behind this endpoint on Ray Serve (needs kvsaga[cluster]; "
      "a GPU each, or a share of the CPU cores; RAY_ADDRESS joins an existing cluster) "
      "(default: one engine in this process, no Ray)")
    a("--router", default=None, choices=sorted(REPLICA_ROUTERS),
      help="how --replicas routes steps: session affinity + work stealing + KV migration "
      "(kvsaga), sticky consistent hash (affinity), round-robin, or Ray Serve's own default "
      f"request router (ray-default) (default: {DEFAULT_REPLICA_ROUTER}; needs --replicas)")
    a("--routing-config", type=_json_object, default=None, metavar="JSON",
      help="the kvsaga router's RoutingConfig fields as a JSON object, e.g. "
      "'{\"busy_balance\": 0}' (no balance steal; docs/cluster.md lists the fields) "
      "(default: the defaults fitted on 8- and 64-GPU fleets; needs --replicas and "
      "--router kvsaga)")
    a("--log-level", default="info", choices=["debug", "info", "warning", "error"],
      help="log level; debug also prints the traceback of a failure")
    return accept_negative_values(p)


# `--replicas`' router when `--router` is not given.
DEFAULT_REPLICA_ROUTER = "kvsaga"
# ServerSettings fields whose flag is not the field's name with dashes.
_FLAGS = {"max_body_bytes": "--max-body", "session_idle_s": "--session-idle",
          "log_stats_interval_s": "--log-stats-interval", "kv_memory_bytes": "--kv-memory",
          "host_memory_bytes": "--host-memory", "api_keys": "--api-key",
          "routing_config": "--routing-config"}


def as_flag_message(message: str) -> str:
    """A ServerSettings range error names the field first ("max_body_bytes must be ...",
    "port 70000 out of range", "routing_config: ..."); on the command line, name the flag
    the user typed instead ("--max-body must be ..."). Other messages are returned as they
    are."""
    m = re.match(r"(\w+)(=|(?= must |: | \S+ out of range$))", message)
    if m is None or m.group(1) not in {f.name for f in dataclasses.fields(ServerSettings)}:
        return message
    name = m.group(1)
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    return flag + (" " if m.group(2) else "") + message[m.end():]  # "x=1 ..." -> "--x 1 ..."


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The ServerSettings that parsed flags (and $KVSAGA_API_KEY) describe."""
    keys = args.api_key if args.api_key is not None else envs.KVSAGA_API_KEY
    if args.api_key is not None and not args.api_key.replace(",", "").strip():
        # e.g. --api-key "$KEY" with KEY unset: serving without auth would be a surprise
        raise ValueError(f"--api-key {args.api_key!r} names no key; leave the flag out to "
                         "serve without authentication")
    if args.api_key is None and keys is not None and not keys.replace(",", "").strip():
        raise ValueError(f"KVSAGA_API_KEY={keys!r} names no key; unset it to serve without "
                         "authentication")
    return ServerSettings(
        model=args.model,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        policy=args.policy,
        scheduler=args.scheduler,
        scheduler_params=args.scheduler_params,
        kv_memory_bytes=args.kv_memory,
        host_memory_bytes=args.host_memory,
        block_size=args.block_size,
        device=args.device,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        enforce_eager=args.enforce_eager,
        max_graph_tokens=args.max_graph_tokens,
        graph_capture=args.graph_capture,
        api_keys=tuple(k.strip() for k in (keys or "").split(",") if k.strip()),
        max_queue=args.max_queue,
        max_body_bytes=args.max_body,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        session_idle_s=args.session_idle,
        graceful_shutdown_s=(ServerSettings.graceful_shutdown_s
                             if args.graceful_shutdown_s is None else args.graceful_shutdown_s),
        metrics_compat=args.metrics_compat,
        metrics_auth=args.metrics_auth,
        log_stats_interval_s=args.log_stats_interval,
        routing_config=args.routing_config,
    )


def engine_factory(s: ServerSettings):
    """A function that loads the engine the settings describe (with a progress bar on a
    terminal; in a log it would print one line per update)."""

    def load():
        from kvsaga.engine.engine import LLMEngine

        return LLMEngine(
            s.model,
            device=s.device,
            kv_memory_bytes=s.kv_memory_bytes,
            block_size=s.block_size,
            policy=s.policy,
            scheduler=s.scheduler,
            scheduler_params=dict(s.scheduler_params or {}),
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=s.max_num_batched_tokens,
            max_model_len=s.max_model_len,
            progress=sys.stderr.isatty(),
            host_memory_bytes=s.host_memory_bytes or 0,
            enforce_eager=s.enforce_eager,
            max_graph_tokens=s.max_graph_tokens,
            graph_capture=s.graph_capture,
            session_idle_s=s.session_idle_s,  # the engine's own sweep, the same limit
        )

    return load


def preflight(s: ServerSettings) -> None:
    """Check, before binding the port, what can be checked without loading the weights: the
    device, that the model path (or the default model's package) is there and readable as a
    checkpoint, that --max-model-len fits the model (`ModelConfig.check_max_model_len`), and
    that --kv-memory and --host-memory each hold one of its KV blocks (sized from its config,
    in the dtype the engine will compute in).

    Raises:
        KVSagaError: naming the problem (the flag, for a budget or a context length).
    """
    from kvsaga.engine.engine import DEFAULT_CPU_KV_MEMORY_BYTES
    from kvsaga.engine.llm import resolve_device
    from kvsaga.engine.loader import COMPUTE_DTYPES, default_model_path, resolve_device_dtype
    from kvsaga.engine.weights import open_checkpoint

    dev, dtype = resolve_device_dtype(resolve_device(s.device), None)
    ckpt = open_checkpoint(s.model if s.model is not None else default_model_path())
    try:  # (the engine warns of an allowed long context as it loads)
        ckpt.config.check_max_model_len(s.max_model_len, warn=False)
    except InvalidRequest as e:
        raise InvalidRequest(as_flag_message(str(e))) from None
    spec = ckpt.config.kv_spec(COMPUTE_DTYPES[dtype], s.block_size)
    # Off CUDA the engine takes a fixed budget where --kv-memory is not given (on CUDA a
    # share of the memory the weights leave, known only once they are in).
    default_kv = s.kv_memory_bytes is None and dev.type != "cuda"
    pool = PoolConfig(
        kv_memory_bytes=DEFAULT_CPU_KV_MEMORY_BYTES if default_kv else s.kv_memory_bytes,
        host_memory_bytes=s.host_memory_bytes or 0)
    if default_kv and spec.bytes_per_block > DEFAULT_CPU_KV_MEMORY_BYTES:
        raise InvalidRequest(
            f"--block-size {s.block_size}: a KV block of {spec.bytes_per_block} bytes for this "
            f"model exceeds the default --kv-memory on {dev.type} "
            f"({DEFAULT_CPU_KV_MEMORY_BYTES} bytes); give a smaller --block-size or a larger "
            "--kv-memory")
    try:
        pool.check_budgets(spec)
    except ValueError as e:
        raise InvalidRequest(f"{as_flag_message(str(e))} for this model") from None


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """TCP sockets bound to every address `host` names, for uvicorn to listen on.

    The addresses are those uvicorn's single-process server binds (asyncio's
    `create_server(host=...)`): each `getaddrinfo` result, so "" is 0.0.0.0 and ::,
    "localhost" each address the resolver lists for it, "::" IPv6 only (IPV6_V6ONLY, as
    asyncio sets it). A family the host does not enable (EADDRNOTAVAIL, or no such socket)
    is skipped, as asyncio skips it. With port 0 every socket takes the port the first one
    got (one URL for all); if another family holds that port, the bind is retried.

    Raises:
        OSError: the address is in use, not local, or not permitted.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    addrs = list(dict.fromkeys((fam, proto, sa) for fam, _, proto, _, sa in infos))
    for attempt in range(8 if port == 0 else 1):
        try:
            return _bind_all(addrs, port)
        except OSError as e:
            if port != 0 or e.errno != errno.EADDRINUSE or attempt == 7:
                raise
    raise AssertionError("unreachable")


def _bind_all(addrs: list[tuple], port: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    skipped: OSError | None = None
    try:
        for family, proto, sa in addrs:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
            except OSError as e:  # a family this host lacks
                skipped = e
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((sa[0], port, *sa[2:]))
            except OSError as e:
                sock.close()
                if e.errno == errno.EADDRNOTAVAIL:  # the family is not enabled
                    skipped = e
                    continue
                raise
            socks.append(sock)
            port = port or sock.getsockname()[1]  # port 0: the rest share the first's
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise skipped or OSError(errno.EADDRNOTAVAIL, "no address to bind")
    return socks


def bound_urls(socks: list[socket.socket]) -> list[str]:
    """http://address:port of each bound socket (uvicorn logs none when given sockets)."""
    urls = []
    for sock in socks:
        address, port = sock.getsockname()[:2]
        urls.append(f"http://[{address}]:{port}" if sock.family == socket.AF_INET6
                    else f"http://{address}:{port}")
    return urls


def _exit_on_load_failure(app, server, failed: list[BaseException]) -> None:
    """Watch the engine thread's load: on failure, stop the server so the process exits
    non-zero (supervisors restart or alert on that) instead of answering 503 forever."""
    engine = app.state.engine
    while not engine.ready and not server.should_exit:
        if engine.load_error is not None:
            failed.append(engine.load_error)
            server.should_exit = True
            return
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with command_logging(args.log_level):  # the caller's logging back once it returns
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    debug = args.log_level == "debug"
    try:
        settings = settings_from_args(args)
        if args.replicas is not None and args.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
        if args.graceful_shutdown_s is not None and args.replicas is not None:
            raise ValueError("--graceful-shutdown-s bounds the shutdown of one kvsaga-serve "
                             "process; --replicas' shutdown is Ray Serve's (its deployments' "
                             "graceful_shutdown_timeout_s): leave --graceful-shutdown-s out")
        if args.router is not None and args.replicas is None:
            raise ValueError(f"--router {args.router} routes between replicas; give "
                             "--replicas N too, or leave --router out")
        if args.routing_config is not None:
            router = args.router or DEFAULT_REPLICA_ROUTER
            if args.replicas is None:
                raise ValueError("--routing-config configures the kvsaga router between "
                                 "replicas; give --replicas N too, or leave it out")
            if router != "kvsaga":
                raise ValueError(f"--routing-config sets the kvsaga router's RoutingConfig; "
                                 f"--router {router} takes none (use --router kvsaga, or "
                                 "leave --routing-config out)")
    except ValueError as e:
        print(f"kvsaga-serve: error: {as_flag_message(str(e))}", file=sys.stderr)
        return 2
    chosen = apply_cpu_host(args.cpu_host)  # checked flags only; before torch loads
    if chosen:
        log.debug("--cpu-host %s set %s", args.cpu_host,
                  " ".join(f"{k}={v}" for k, v in chosen.items()))
    try:  # most are read only as the model loads, KVSAGA_KERNELS at the first request's
        # attention (until session 52 a bad one gave a server whose /health said ok and
        # every request failed): refuse a bad one now, whatever the other flags are
        envs.check()
    except ValueError as e:
        print(f"kvsaga-serve: error: {e}", file=sys.stderr)
        return 2
    try:
        preflight(settings)
    except ImportError as e:  # installed without the extra (torch, the loaders)
        print(f"kvsaga-serve: error: {e}; install the server's dependencies: "
              "pip install 'kvsaga[serve]'", file=sys.stderr)
        return 2
    except Exception as e:
        return report_failure("kvsaga-serve", e, debug)
    if args.replicas is not None:
        from kvsaga.serve.replicas import run_replicas

        try:
            run_replicas(settings, args.replicas, args.router or DEFAULT_REPLICA_ROUTER)
        except Exception as e:
            return report_failure("kvsaga-serve", e, debug)
        return 0
    try:
        from kvsaga.serve.app import build_app, model_name_for
        from kvsaga.serve.shutdown import DrainingServer, uvicorn_config
    except ImportError as e:  # installed without the extra
        print(f"kvsaga-serve: error: {e}; install the server's dependencies: "
              "pip install 'kvsaga[serve]'", file=sys.stderr)
        return 2
    try:  # before the model loads: a busy port fails at once, in one line
        socks = listen_sockets(settings.host, settings.port)
    except OSError as e:
        print(f"kvsaga-serve: error: cannot listen on {settings.host}:{settings.port}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    app = build_app(engine_factory(settings), settings)
    auth = "API key required" if settings.api_keys else "no auth"
    changed = non_default_params(settings.scheduler, settings.scheduler_params)
    log.info("%s at %s (policy %s, scheduler %s%s, %s; /health says ok once loaded)",
             model_name_for(settings), ", ".join(u + "/v1" for u in bound_urls(socks)),
             settings.policy, settings.scheduler,
             f" {json.dumps(changed, sort_keys=True)}" if changed else "", auth)
    config = uvicorn_config(app, settings.graceful_shutdown_s, host=settings.host,
                            port=settings.port, log_level=args.log_level)
    server = DrainingServer(config, app.state.engine, settings.graceful_shutdown_s)
    failed: list[BaseException] = []
    watcher = threading.Thread(target=_exit_on_load_failure, args=(app, server, failed),
                               daemon=True)
    watcher.start()
    try:
        server.run(sockets=socks)
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the Ctrl-C
        return 130  # the shell's status for SIGINT, without a traceback
    if failed:
        return report_failure("kvsaga-serve", failed[0], debug, "the model failed to load: ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
