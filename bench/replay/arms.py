"""The arms a run compares: which server each starts and how a request carries the session
id and pause hint to it (one list per mode: policies, schedulers, vLLM, routers)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .servers import Server, VLLMArm


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
