"""The arms a run compares: which server each starts and how a request carries the session
id and pause hint to it (one list per mode: policies, schedulers, vLLM, routers)."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .goals import ROUTER_VS_OTHER, Goal
from .servers import Server, VLLMArm, connector_arm


@dataclass(frozen=True)
class Arm:
    """One system under test: its name in the tables, how to start it, and how a request
    carries the session id and pause hint to it."""

    name: str
    engine: str  # "kvsaga" (kvsaga-serve) or "vllm"
    policy: str | None  # kvsaga policy: the server's, or the vLLM connector's (None: plain)
    scheduler: str | None = None  # kvsaga-serve's --scheduler (None: its default)
    serve_args: tuple[str, ...] = ()  # more kvsaga-serve flags (--replicas mode)
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for kvsaga-serve

    def start(self, args: argparse.Namespace, kv_bytes: int, logdir: Path) -> Server | VLLMArm:
        log = logdir / f"server-{self.name.replace(':', '-').replace('+', '-')}.log"
        if self.engine == "vllm":
            return VLLMArm(args, self.policy, kv_bytes, log)
        return Server(args, self.policy, kv_bytes, log, self.scheduler, self.serve_args,
                      dict(self.env))

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
REPLICA_ROUTERS = ("ray-default", "round-robin", "kvsaga")  # --replica-routers' default


def replica_arms(args: argparse.Namespace) -> list[Arm]:
    """`--replicas N`: `kvsaga-serve --replicas N` (a local Ray cluster, N engine replicas,
    each with the whole KV budget) once per router of `--replica-routers`: by default Ray
    Serve's own default request router (`ray-default`: power-of-two-choices on queue
    length in ray 2.60, sessions ignored), kvsaga.routing's round-robin (every step to the
    next replica; a moved session's token context follows it), then kvsaga's (affinity +
    stealing + migration); the same policy (`--replica-policy`) on all, so only the
    routing differs.

    Raises:
        SystemExit: an unknown or repeated router, or no kvsaga arm to judge.
    """
    from kvsaga.routing import REPLICA_ROUTERS as KNOWN

    routers = _names(args.replica_routers)
    bad = [r for r in routers if r not in KNOWN]
    if bad or len(set(routers)) != len(routers) or "kvsaga" not in routers:
        raise SystemExit(f"--replica-routers: {args.replica_routers!r} must name distinct "
                         f"routers of {sorted(KNOWN)}, kvsaga among them")
    return [Arm(f"replicas:{router}", "kvsaga", args.replica_policy,
                serve_args=("--replicas", str(args.replicas), "--router", router))
            for router in routers]


def ray_default_text() -> str:
    """What `ray-default` is in the installed Ray: its default request router class."""
    import ray
    from ray.serve.config import RequestRouterConfig

    cls = RequestRouterConfig().get_request_router_class()
    return (f"ray-default: Ray Serve's default request router, {cls.__name__} in ray "
            f"{ray.__version__} (kvsaga's pinned calls aside: /metrics, session hand-over), "
            "deciding every step with sessions ignored; round-robin: kvsaga.routing's "
            "round-robin (a moved session's token context follows it, never its KV); "
            "kvsaga: affinity + stealing + KV migration.")


def replica_pairs(names: list[str]) -> list[tuple[str, str, Goal | None]]:
    """kvsaga's router against every other router (issue 12's goal, against Ray's own
    router: fewer prefill tokens and a lower mean task time, i.e. a speed-up above 1)."""
    return [(n, "replicas:kvsaga", ROUTER_VS_OTHER) for n in names if n != "replicas:kvsaga"]


def arms(args: argparse.Namespace) -> list[Arm]:
    """kvsaga engine: one kvsaga-serve per policy (or per `--kvsaga-arms` scheduler+policy).
    vLLM: plain vLLM (prefix caching), vLLM with the kvsaga connector per connector policy,
    then kvsaga-serve per policy.

    Raises:
        SystemExit: `--host-memory` with `--engine vllm` (only kvsaga-serve would get the
            host tier: the vLLM arms run without one, so the arms would differ in more than
            the system under test); an arm named twice (`distinct`).
    """
    check_host_memory(args)
    if args.replicas:
        return replica_arms(args)
    if args.engine == "kvsaga":
        if args.kvsaga_arms:
            return scheduler_arms(args.kvsaga_arms)
        return distinct([Arm(p, "kvsaga", p) for p in _names(args.policies)], "--policies")
    return distinct(_vllm_arms(args), "--vllm-policies or --kvsaga-policies")


def distinct(out: list[Arm], flags: str) -> list[Arm]:
    """`out`, refused when it names an arm twice (review s48, bench finding 8): a round
    keeps one replay per arm name, so the later would silently replace the earlier in the
    judged figures, while both were pooled and every comparison printed twice.

    Raises:
        SystemExit: naming the arm and the flags that list arms.
    """
    names = [a.name for a in out]
    if dup := next((n for n in names if names.count(n) > 1), None):
        raise SystemExit(f"{flags}: the arm {dup!r} is named twice (each arm runs once a "
                         "round; --repeat runs it again)")
    return out


def _vllm_arms(args: argparse.Namespace) -> list[Arm]:
    """`--engine vllm`'s arms: plain vLLM, vLLM with the connector per `--vllm-policies`,
    kvsaga-serve per `--kvsaga-policies`."""
    for p in _names(args.vllm_policies):
        connector_arm(p)  # a bad name fails before any server starts
    served = [kvsaga_serve_arm(p) for p in _names(args.kvsaga_policies)]
    plain = {a.name for a in served if not a.serve_args}
    lone = [a.name for a in served if a.serve_args and a.name.split(" ")[0] not in plain]
    if lone:
        raise SystemExit(f"--kvsaga-policies: {lone[0]!r} is compared with its plain policy "
                         f"arm; add {lone[0].split(' ')[0].split(':')[1]!r} to the list")
    return ([Arm("vllm", "vllm", None)]
            + [Arm(f"vllm+{p}", "vllm", p) for p in _names(args.vllm_policies)] + served)


def mode_conflict(args: argparse.Namespace) -> str | None:
    """What is wrong with a run that names two modes (None: nothing). `--replicas` runs only
    its router arms and judges them by issue 12's goal; `--engine vllm` only its vLLM and
    kvsaga-serve arms: a second mode's flag would be ignored, or its arms judged by the
    other mode's goal (before session 45 `--replicas N --kvsaga-arms ...` judged the routers
    by issue 10's scheduler goal, and `--engine vllm --replicas N` judged nothing)."""
    if args.replicas and args.kvsaga_arms:
        return ("--replicas compares routers (issue 12) and --kvsaga-arms schedulers "
                "(issue 10): run them apart")
    if args.replicas and args.engine == "vllm":
        return "--replicas runs kvsaga-serve's routers only: not with --engine vllm"
    if args.kvsaga_arms and args.engine == "vllm":
        return ("--kvsaga-arms runs kvsaga-serve arms only (--engine kvsaga); with --engine "
                "vllm name kvsaga-serve arms with --kvsaga-policies")
    return None


def check_host_memory(args: argparse.Namespace) -> None:
    """Refuse `--host-memory` with `--engine vllm`: only kvsaga-serve would get the host tier.

    Raises:
        SystemExit: naming both flags.
    """
    if args.engine == "vllm" and getattr(args, "host_memory", 0):
        raise SystemExit("--host-memory gives only kvsaga-serve a host tier (the vLLM arms "
                         "would run without one): not with --engine vllm")


def kvsaga_serve_arm(spec: str) -> Arm:
    """One `--kvsaga-policies` entry: `POLICY`, or `POLICY+--flag=value[+--flag=value...]`,
    kvsaga-serve with those flags too (e.g. `ttl+--cpu-host=shared`), named
    `kvsaga-serve:POLICY --flag=value` and compared with the plain POLICY arm.

    Raises:
        SystemExit: a part after the policy is not `--flag=value` (naming it).
    """
    policy, *flags = spec.split("+")
    serve_args: list[str] = []
    for item in flags:
        flag, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"--[a-z][a-z0-9-]*", flag):
            raise SystemExit(f"--kvsaga-policies: {item!r} in {spec!r} is not --flag=value")
        serve_args += [flag, value]
    name = f"kvsaga-serve:{policy}" + "".join(f" {f}" for f in flags)
    return Arm(name, "kvsaga", policy, serve_args=tuple(serve_args))
