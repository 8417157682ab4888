"""`kvsaga-serve --replicas N`: N engine replicas behind one OpenAI-compatible endpoint, on
Ray Serve (the `kvsaga[cluster]` extra).

Starts a local Ray cluster, or joins the one `RAY_ADDRESS` names (`ray.init` reads it), and
runs `kvsaga.integrations.ray.deployment.build_application` on it: the gateway on
`--host:--port`, routing by `kvsaga.routing` (`--router`). With CUDA each replica takes one
GPU; on CPU the machine's cores are divided among the replicas' torch threads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading

from kvsaga._validate import is_int
from kvsaga.errors import KVSagaError
from kvsaga.serve.settings import ServerSettings

log = logging.getLogger("kvsaga.serve")
APP_NAME = "kvsaga"


class RayMissing(RuntimeError):
    """`--replicas` without Ray installed."""


class PortUnusable(KVSagaError):
    """`--port` cannot be Ray Serve's: in use here, or 0 on a joined cluster (the CLI's
    one-line error, exit 2)."""


def _import_ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise RayMissing(
            "--replicas needs Ray Serve: pip install 'kvsaga[cluster]' (or 'ray[serve]>=2.60')"
        ) from None
    return ray, serve


# The thread settings kvsaga-serve's `--cpu-host` put in this process's environment, which a
# replica's worker needs when it starts (before torch loads there): a worker of a cluster
# joined through RAY_ADDRESS does not inherit this process's environment.
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KVSAGA_CPU_SERIAL_BELOW",
                    "KVSAGA_CPU_THREADS")


def replica_resources(settings: ServerSettings, num_replicas: int) -> tuple[dict, int | None]:
    """(Ray actor options, torch threads) of one replica: a GPU each on CUDA, else a share
    of the cores; either way the THREAD_VARIABLES set here, in its runtime environment."""
    from kvsaga.engine.cpu_threads import usable_cores
    from kvsaga.engine.llm import resolve_device

    env = {k: os.environ[k] for k in THREAD_VARIABLES if os.environ.get(k, "").strip()}
    options: dict = {"runtime_env": {"env_vars": env}} if env else {}
    if resolve_device(settings.device).type == "cuda":
        return {**options, "num_gpus": 1}, None
    cores = usable_cores()  # the affinity within a container's CPU quota
    return ({**options, "num_cpus": min(1.0, cores / (num_replicas + 1))},
            max(1, cores // num_replicas))


def local_port(settings: ServerSettings) -> ServerSettings:
    """The settings with a port the local cluster's proxy can bind, checked here before
    Ray starts: a busy one fails at once in one line (Ray's own failure came 16 s later,
    a 14-line remote traceback), and port 0 becomes a free port picked here (Ray Serve's
    proxy bound some port but reported 0, so the logged URL was unusable). The port can
    still be taken before the proxy binds it: `start_proxy` retries a picked one.

    Raises:
        PortUnusable: the port is in use, or the host is not local.
    """
    from kvsaga.serve.cli import listen_sockets

    try:
        socks = listen_sockets(settings.host, settings.port)
    except OSError as e:
        raise PortUnusable(f"cannot listen on {settings.host}:{settings.port}: "
                           f"{e.strerror or e}") from None
    port = socks[0].getsockname()[1]
    for sock in socks:
        sock.close()
    return dataclasses.replace(settings, port=port)


def start_proxy(serve, settings: ServerSettings, picked: bool) -> ServerSettings:
    """Start Ray Serve with its proxy on the settings' port; the settings it listens on.
    A port picked here (`picked`: the user gave 0) and taken before the proxy bound it is
    replaced by another, up to 3 tries; a bind failure is reported by its cause, one line.

    Raises:
        PortUnusable: the proxy could not bind the port.
    """
    for attempt in range(3 if picked else 1):
        try:
            serve.start(http_options={"host": settings.host, "port": settings.port})
            return settings
        except Exception as e:  # the proxy's failure arrives as a RayTaskError
            cause = getattr(e, "cause", None) or e
            if "Failed to bind" not in str(cause):
                raise
            serve.shutdown()
            if attempt == (2 if picked else 0):
                raise PortUnusable(f"{cause} (Ray Serve's proxy)") from None
            settings = local_port(dataclasses.replace(settings, port=0))
    raise AssertionError("unreachable")


def run_replicas(settings: ServerSettings, num_replicas: int, router: str = "kvsaga",
                 log_level: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then remove the application, which drains it (Ray Serve
    lets each replica's requests finish, up to its deployments'
    graceful_shutdown_timeout_s, while the proxy still relays them), then stop a local
    cluster. Each replica logs `kvsaga` records at `log_level` (default: the level this
    process logs them at, which `kvsaga-serve --log-level` set), so its status line
    (`--log-stats-interval`) reaches the log.

    Raises:
        RayMissing: Ray is not installed.
        ValueError: num_replicas < 1 or an unknown router.
        PortUnusable: the port is in use here, or 0 with `RAY_ADDRESS` (every node of a
            joined cluster runs a proxy on the one port, so none can be picked here).
    """
    from kvsaga.routing import REPLICA_ROUTERS

    if not is_int(num_replicas) or num_replicas < 1:
        raise ValueError(f"--replicas must be an int >= 1, got {num_replicas!r}")
    if router not in REPLICA_ROUTERS:
        raise ValueError(f"unknown router {router!r}; choose one of {sorted(REPLICA_ROUTERS)}")
    local = not os.environ.get("RAY_ADDRESS")  # else ray.init joins that cluster
    picked = settings.port == 0
    if local:
        settings = local_port(settings)
    elif picked:
        raise PortUnusable("--port 0 with RAY_ADDRESS: Ray Serve runs a proxy on every node "
                           "of the cluster, all on one port; give that port")
    ray, serve = _import_ray()
    from kvsaga.integrations.ray.deployment import build_application

    options, threads = replica_resources(settings, num_replicas)
    if log_level is None:
        log_level = logging.getLevelName(logging.getLogger("kvsaga").getEffectiveLevel())
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    started = False
    try:
        settings = start_proxy(serve, settings, picked)
        started = True
        app = build_application(settings, num_replicas, router=router,
                                ray_actor_options=options, torch_threads=threads,
                                log_level=log_level)
        serve.run(app, name=APP_NAME, route_prefix="/")
        log.info("%d replicas (router %s) at %s", num_replicas, router, settings.url)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        log.info("stopping: the replicas finish the requests in flight")
    finally:
        try:
            if started:
                # Drains: the proxy stays up while each replica finishes its requests (a
                # local cluster had serve.shutdown() alone, which stopped the proxy first
                # and cut every request in flight).
                serve.delete(APP_NAME)
        finally:
            if local:
                serve.shutdown()  # the controller and proxy go with the local cluster
            ray.shutdown()
