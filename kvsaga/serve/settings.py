"""ServerSettings: every knob of kvsaga-serve, in one frozen dataclass.

The CLI builds it from flags (their help text, in kvsaga/serve/cli.py, says what the
attribute docstrings below say); tests build it directly. The engine's own knobs are
passed through to `LLMEngine`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kvsaga._validate import is_int, is_number
from kvsaga.policy import DEFAULT_POLICY
from kvsaga.routing_config import RoutingConfig
from kvsaga.scheduler import DEFAULT_SCHEDULER, SCHEDULERS


@dataclass(frozen=True)
class ServerSettings:
    """Configuration of one kvsaga-serve instance."""

    model: str | None = None
    """HF directory or .gguf file (default: the bundled SmolLM2-135M-Instruct)."""
    served_model_name: str | None = None
    """Model name that clients send and /v1/models lists (default: the model's folder or
    file name)."""
    host: str = "127.0.0.1"
    """Address to bind; loopback by default so that nothing is exposed by accident."""
    port: int = 8000
    """TCP port."""
    policy: str = DEFAULT_POLICY
    """Eviction policy of the KV cache (one of kvsaga.policy.online_policies(); default: the tune's
    pick on the fit seeds, docs/policies.md "How the default policy is chosen"; on held-out
    seeds it does not always lead, docs/policies.md "What bounds the open goals")."""
    scheduler: str = DEFAULT_SCHEDULER
    """Which requests run when (one of kvsaga.scheduler.SCHEDULERS): "workflow" admits whole
    agent sessions while their working sets fit, "fcfs" is vLLM's request-level rule."""
    scheduler_params: Mapping[str, Any] | None = field(default=None, hash=False)
    """The scheduler's own parameters (`kvsaga.scheduler.scheduler_params(scheduler)`), e.g.
    {"undo_demotion": true}; None: its defaults."""
    kv_memory_bytes: int | None = None
    """KV cache budget on the device (default: 512M on CPU, 90% of free memory on CUDA)."""
    host_memory_bytes: int | None = None
    """Host memory for KV blocks offloaded from the device (pinned on CUDA); None: no offload."""
    block_size: int = 16
    """Tokens per KV block."""
    device: str | None = None
    """cpu or cuda (default: cuda if available)."""
    max_num_seqs: int = 64
    """Most requests decoded together in one step."""
    max_num_batched_tokens: int = 1024
    """Token budget of one forward pass (longer prompts are prefilled in chunks)."""
    max_model_len: int | None = None
    """Longest context in tokens (default: the model's, bounded by the KV budget)."""
    enforce_eager: bool = False
    """On CUDA, run every step eagerly instead of replaying CUDA graphs."""
    max_graph_tokens: int = 512
    """On CUDA, the most tokens a step with prefill tokens may hold to replay a CUDA graph
    (0: decode steps only; at most 2048). `LLMEngine`'s `max_graph_tokens`."""
    graph_capture: str = "startup"
    """On CUDA, when graphs are recorded: "startup" (every shape before the server takes
    requests, so no request waits on a capture) or "lazy" (at the first step of each
    shape). `LLMEngine`'s `graph_capture`."""
    api_keys: tuple[str, ...] = ()
    """Keys accepted as `Authorization: Bearer KEY`; empty: no authentication. Each key is
    its own tenant: its prefix cache and sessions are invisible to the others."""
    max_queue: int = 256
    """Requests that may wait beyond the running batch; past it the server answers 429."""
    max_body_bytes: int = 8 * 2**20
    """Largest request body accepted (413 beyond)."""
    max_tokens_limit: int | None = None
    """Largest `max_tokens` a request may ask for (default: the context limit)."""
    default_max_tokens: int | None = None
    """`max_tokens` of a request that sets none, on both endpoints (bounded by the room left in
    the context and `max_tokens_limit`). None: vLLM's defaults, 16 for /v1/completions and,
    for chat, the model's generation_config `max_new_tokens`, else the room left."""
    session_idle_s: float = 1800.0
    """A session that sends nothing for this long is ended (its blocks become plain cache);
    inf: never."""
    metrics_compat: str | None = None
    """Also export the metric names that existing routers read: "vllm"."""
    metrics_auth: bool = False
    """Require the API key on /metrics too (by default it is open, as Prometheus scrapers
    and vLLM expect; /health is always open)."""
    log_stats_interval_s: float = 10.0
    """Seconds between status lines in the log (throughput, queue, KV usage, hit rate);
    0 turns them off. An idle server logs nothing."""
    graceful_shutdown_s: float = 5.0
    """On SIGTERM or Ctrl-C, seconds the requests in flight get to finish; then the engine
    stops and each stream still open ends with a final error event (`server_shutting_down`)
    and `data: [DONE]` (a non-streamed request gets a 503), and the process exits
    (`kvsaga.serve.shutdown`). 0: end them at once."""
    retry_after_s: int = 1
    """Retry-After sent with 429 responses, in seconds."""
    routing_config: Mapping[str, Any] | None = field(default=None, hash=False)
    """With `--replicas` and the `kvsaga` router: `kvsaga.routing.RoutingConfig` fields to
    route with instead of their defaults, e.g. {"busy_balance_quiet": 0}; None: the
    defaults. Checked here as RoutingConfig checks them; the CLI refuses it for another
    router or without replicas."""

    def __post_init__(self) -> None:
        """Raises ValueError naming the first setting out of range (the CLI prints it and
        exits 2 before the model loads)."""
        from kvsaga.policy import online_policies

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        def count(name: str, low: int, optional: bool = False) -> None:
            value = getattr(self, name)
            need((optional and value is None) or (is_int(value) and value >= low),
                 f"{name} must be an int >= {low}{' or None' if optional else ''}, got "
                 f"{value!r}")

        need(is_int(self.port) and 0 <= self.port < 65536, f"port {self.port} out of range")
        online = online_policies()
        need(self.policy in online,
             f"policy {self.policy!r} is not an online policy; choose one of {online}")
        for name, low in (("block_size", 1), ("max_num_seqs", 1), ("max_num_batched_tokens", 1),
                          ("max_queue", 0), ("max_body_bytes", 1024)):
            count(name, low)
        count("max_graph_tokens", 0)
        need(self.graph_capture in ("lazy", "startup"),
             f"graph_capture must be 'lazy' or 'startup', got {self.graph_capture!r}")
        need(self.max_graph_tokens <= 2048,
             f"max_graph_tokens must be at most 2048, got {self.max_graph_tokens}")
        for name, low in (("kv_memory_bytes", 1), ("host_memory_bytes", 0),
                          ("max_model_len", 1), ("max_tokens_limit", 1),
                          ("default_max_tokens", 1)):
            count(name, low, optional=True)
        need(is_number(self.session_idle_s) and self.session_idle_s > 0,  # nan fails too
             f"session_idle_s must be a number > 0 (inf: never), got {self.session_idle_s!r}")
        need(is_number(self.log_stats_interval_s) and 0 <= self.log_stats_interval_s < math.inf,
             f"log_stats_interval_s must be a number >= 0 (0: off), got "
             f"{self.log_stats_interval_s!r}")
        need(is_number(self.graceful_shutdown_s)
             and 0 <= self.graceful_shutdown_s < math.inf,  # nan fails too
             f"graceful_shutdown_s must be a number >= 0 (0: end requests at once), got "
             f"{self.graceful_shutdown_s!r}")
        need(self.metrics_compat in (None, "vllm"),
             f"metrics_compat {self.metrics_compat!r}: only 'vllm' is known")
        need(all(isinstance(k, str) and k for k in self.api_keys), "api keys must be non-empty")
        need(not self.metrics_auth or bool(self.api_keys),
             "metrics_auth: needs an API key (--api-key or KVSAGA_API_KEY); without one "
             "/metrics would stay open")
        need(all(k.isascii() and k.isprintable() and " " not in k and "," not in k
                 for k in self.api_keys),
             "api keys must be printable ASCII without spaces or commas (clients send them "
             "in the Authorization header)")
        need(self.served_model_name is None
             or (isinstance(self.served_model_name, str) and self.served_model_name.strip()),
             f"served_model_name must be a non-empty name (clients send it as `model`), got "
             f"{self.served_model_name!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of "
                             f"{sorted(SCHEDULERS)}")
        if self.scheduler_params is not None:
            check_scheduler_params(self.scheduler, self.scheduler_params)
        if self.routing_config is not None:
            try:
                routing_config_of(self.routing_config)
            except ValueError as e:
                raise ValueError(f"routing_config: {e}") from None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


# The scheduler's limits that have their own flags, not `--scheduler-params` entries.
LIMITS = ("max_num_seqs", "max_num_batched_tokens")


def non_default_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of `params` that differ from the scheduler `name`'s defaults."""
    import inspect

    cls = SCHEDULERS[name]
    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()}
    return {k: v for k, v in (params or {}).items()
            if k not in defaults or defaults[k] != v or type(defaults[k]) is not type(v)}


def check_scheduler_params(name: str, params: object) -> None:
    """Raise ValueError naming what is wrong with `params` for the scheduler `name`: not a
    mapping, a parameter it does not have (listing its own), or a bad value (the scheduler
    built on a two-block manager checks each, as `LLMEngine` would after the model loaded).
    `max_num_seqs` / `max_num_batched_tokens` have their own flags."""
    from kvsaga import KVCacheManager, KVSpec
    from kvsaga.scheduler import check_param_names, make_scheduler

    if not isinstance(params, Mapping):
        raise ValueError(f"scheduler parameters must be a JSON object, got {params!r}")
    limits = sorted(set(LIMITS) & set(params))
    if limits:
        raise ValueError(f"scheduler parameter {limits[0]!r} has its own flag "
                         f"(--{limits[0].replace('_', '-')})")
    check_param_names(name, params, exclude=LIMITS)  # listing the scheduler's own
    make_scheduler(name, KVCacheManager(KVSpec(1, 1, 4, block_size=1), 2), **params)


def routing_config_of(values: object) -> RoutingConfig:
    """The `kvsaga` router's RoutingConfig with `values` (a mapping of its field names to
    values) in place of the defaults.

    Raises:
        ValueError: `values` is not a mapping, names a field RoutingConfig does not have
            (listing those it has), or a value RoutingConfig refuses (its own message,
            naming the field).
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"RoutingConfig fields must be a JSON object, got {values!r}")
    known = {f.name for f in fields(RoutingConfig)}
    unknown = sorted((k for k in values if k not in known), key=str)
    if unknown:
        raise ValueError(f"unknown RoutingConfig field(s) {unknown}; known: "
                         f"{', '.join(sorted(known))}")
    return RoutingConfig(**values)
