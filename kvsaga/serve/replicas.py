"""`kvsaga-serve --replicas N`: N engine replicas behind one OpenAI-compatible endpoint, on
Ray Serve (the `kvsaga[cluster]` extra).

Starts a local Ray cluster, or joins the one `RAY_ADDRESS` names (`ray.init` reads it), and
runs `kvsaga.integrations.ray.deployment.build_application` on it: the gateway on
`--host:--port`, routing by `kvsaga.routing` (`--router`). With CUDA each replica takes one
GPU; on CPU the machine's cores are divided among the replicas' torch threads.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from kvsaga._validate import is_int
from kvsaga.serve.settings import ServerSettings

log = logging.getLogger("kvsaga.serve")
APP_NAME = "kvsaga"


class RayMissing(RuntimeError):
    """`--replicas` without Ray installed."""


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


def run_replicas(settings: ServerSettings, num_replicas: int, router: str = "kvsaga") -> None:
    """Serve until SIGINT/SIGTERM, then remove the application (and stop a local cluster).

    Raises:
        RayMissing: Ray is not installed.
        ValueError: num_replicas < 1 or an unknown router.
    """
    from kvsaga.routing import REPLICA_ROUTERS

    if not is_int(num_replicas) or num_replicas < 1:
        raise ValueError(f"--replicas must be an int >= 1, got {num_replicas!r}")
    if router not in REPLICA_ROUTERS:
        raise ValueError(f"unknown router {router!r}; choose one of {sorted(REPLICA_ROUTERS)}")
    ray, serve = _import_ray()
    from kvsaga.integrations.ray.deployment import build_application

    options, threads = replica_resources(settings, num_replicas)
    local = not os.environ.get("RAY_ADDRESS")  # else ray.init joins that cluster
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        app = build_application(settings, num_replicas, router=router,
                                ray_actor_options=options, torch_threads=threads)
        serve.run(app, name=APP_NAME, route_prefix="/")
        log.info("%d replicas (router %s) at %s", num_replicas, router, settings.url)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        if local:
            serve.shutdown()  # controller, proxy and replicas go with the local cluster
        else:
            serve.delete(APP_NAME)  # leave the shared cluster's other applications alone
        ray.shutdown()
