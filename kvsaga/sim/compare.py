"""Policies side by side on one trace: the rows that `kvsaga sim` and bench/policies.py print.

A policy spec is a `kvsaga.policy.POLICIES` name, optionally suffixed `+host` to give that
run the host tier (`host_memory_bytes`) and `-host` to deny it one, whatever the base config says.
Each row is `SimResult.to_dict()` plus `belady_ratio`: recomputed tokens over those of
`belady` with the same host tier (Belady with a host tier for `+host` rows), NaN when that
reference recomputed nothing but the row did, 1.0 when both recomputed nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed

from tqdm.auto import tqdm

from kvsaga.policy import POLICIES
from kvsaga.sim.metrics import SimResult, tenant_key
from kvsaga.sim.simulator import SimConfig, blocks_needed, simulate
from kvsaga.sim.trace import Session
from kvsaga.workers import worker_pool

# One line per finished simulation (the CLI shows them when stderr is not a terminal,
# where progress bars would flood a log).
log = logging.getLogger("kvsaga.sim")


def parse_policy(spec: str) -> tuple[str, bool | None]:
    """Split a spec into (policy name, host tier: True for `+host`, False for `-host`, None
    for the base config's).

    Raises:
        ValueError: an unknown policy name, listing the known ones.
    """
    host: bool | None = None
    name = spec.strip()
    if name.endswith("+host"):
        name, host = name[:-5], True
    elif name.endswith("-host"):
        name, host = name[:-5], False
    if name not in POLICIES:
        raise ValueError(f"unknown policy {spec!r}; choose from {', '.join(sorted(POLICIES))} "
                         f"(optionally suffixed +host)")
    return name, host


def config_for(spec: str, base: SimConfig, host_memory_bytes: float | None) -> SimConfig:
    """The config of one policy spec.

    Args:
        spec: e.g. "graph" or "graph+host".
        base: capacity, preset and scheduler; its host tier applies unless the spec says.
        host_memory_bytes: the host tier a `+host` spec gets (required for `+host`).
    """
    name, host = parse_policy(spec)
    if host is True:
        if not host_memory_bytes:
            raise ValueError(f"policy {spec!r} needs a host tier size (--host-memory)")
        try:  # SimConfig refuses a size that holds no block: the row would have no tier
            return dataclasses.replace(base, policy=name, num_host_blocks=None,
                                       host_memory_bytes=host_memory_bytes)
        except ValueError as e:
            raise ValueError(f"policy {spec!r}: {e}") from None
    if host is False:
        return dataclasses.replace(base, policy=name, num_host_blocks=None, host_memory_bytes=None)
    return dataclasses.replace(base, policy=name)


def with_belady_references(policies: Sequence[str], base: SimConfig,
                           host_memory_bytes: float | None = None) -> list[str]:
    """`policies` and, after them, each Belady spec that a row's `belady_ratio` is to and that
    `policies` lacks: `belady` for a row with the base config's host tier, `belady-host` for
    a row denied one, `belady+host` for a row given one the base lacks. `kvsaga sim` prints
    them as rows, so that every ratio's reference is in the table (a `-host` row's was run,
    but shown nowhere, before session 47).

    Raises:
        ValueError: as `config_for` does.
    """
    def host(spec: str) -> int:
        return config_for(spec, base, host_memory_bytes).host_blocks()

    out = list(policies)
    shown = {host(spec) for spec in policies if parse_policy(spec)[0] == "belady"}
    for blocks in [host(spec) for spec in policies]:
        if blocks not in shown:
            out.append("belady" if blocks == base.host_blocks()
                       else "belady-host" if blocks == 0 else "belady+host")
            shown.add(blocks)
    return out


def compare(sessions: Sequence[Session], base: SimConfig, policies: Sequence[str],
            host_memory_bytes: float | None = None, progress: bool = False,
            schedulers: Sequence[str] | None = None, jobs: int = 1) -> list[dict]:
    """Run each policy under each scheduler on the trace; one row per pair, in order
    (schedulers outer, policies inner).

    The Belady reference for each scheduler and host setting is run once, added if not
    requested. With several tenants in the trace each row also gets `tenants` (per tenant:
    tasks, mean TCT and `slowdown`, its TCT over the same tenant's trace alone on 1/k of
    the GPU under the same scheduler and policy; `add_tenant_slowdowns`) and
    `afs_max_slowdown_ratio` (largest tenant slowdown over the smallest).

    Args:
        sessions: the trace.
        base: capacity, preset, scheduler and default host tier.
        policies: policy specs (see the module docstring).
        host_memory_bytes: host tier size for `+host` specs.
        progress: progress bars (one per simulation; one over the simulations with jobs).
        schedulers: scheduler names (default: `base.scheduler` alone).
        jobs: simulations run at once, in worker processes (1: one after another here),
            the tenants' alone runs among them (`run_tasks`: a log line each; before
            session 50 those ran here, one after another, unlogged). Each simulation is
            deterministic, so the rows do not depend on it.

    Returns:
        Dicts of `SimResult.to_dict()` + `policy` (the spec) + `belady_ratio`.

    Raises:
        ValueError: with several tenants, one whose longest session does not fit 1/k of the
            KV blocks (`tenant_share_misfit`), before any simulation runs.
    """
    todo: list[tuple[str, SimConfig]] = []  # (a label for the log, config), each once

    def index(label: str, cfg: SimConfig) -> int:
        for i, (_, c) in enumerate(todo):
            if c == cfg:
                return i
        todo.append((label, cfg))
        return len(todo) - 1

    plan = []  # (spec, config, simulation of it, simulation of its Belady reference)
    for name in schedulers or [base.scheduler]:
        sched = dataclasses.replace(base, scheduler=name)
        configs = {spec: config_for(spec, sched, host_memory_bytes) for spec in policies}
        sims = {spec: index(spec, cfg) for spec, cfg in configs.items()}
        refs: dict[int, int] = {}  # host blocks -> Belady's simulation (a requested one)
        for spec, cfg in configs.items():
            if cfg.policy == "belady":
                refs.setdefault(cfg.host_blocks(), sims[spec])
        for spec, cfg in configs.items():
            host = cfg.host_blocks()
            if host not in refs:
                refs[host] = index("belady", dataclasses.replace(cfg, policy="belady"))
            plan.append((spec, cfg, sims[spec], refs[host]))
    by_tenant = sessions_by_tenant(sessions)
    tasks = [(sessions, cfg, label) for label, cfg in todo]
    alone: list[dict[str, int]] = []  # per row: tenant -> the task of its alone run
    if len(by_tenant) > 1:  # as SimResult counts them
        for _, cfg in todo:  # before any simulation
            problem = tenant_share_misfit(sessions, cfg)
            if problem is not None:
                raise ValueError(problem)
        # Each row's tenants alone on 1/k of the GPU (`add_tenant_slowdowns`' runs), in the
        # same pool, bar and log as the rest; a row whose config another's repeats shares them.
        k = len(by_tenant)
        of_sim: dict[int, dict[str, int]] = {}
        for spec, cfg, sim, _ in plan:
            if sim not in of_sim:
                share = tenant_share(cfg, k)
                of_sim[sim] = {t: len(tasks) + i for i, t in enumerate(by_tenant)}
                tasks += [(own, share, f"{spec} alone, tenant {t!r} on 1/{k} of the GPU")
                          for t, own in by_tenant.items()]
            alone.append(of_sim[sim])
    done = run_tasks(tasks, jobs=jobs, progress=progress)
    rows = []
    for spec, _, sim, ref in plan:
        row = dict(done[sim], policy=spec)
        ref_tokens = done[ref]["recomputed_tokens"]
        mine = row["recomputed_tokens"]
        row["belady_ratio"] = (mine / ref_tokens if ref_tokens
                               else (1.0 if mine == 0 else math.nan))
        if alone:  # (rows of one simulation share its dicts: each gets its own)
            row["tenants"] = {t: dict(e) for t, e in row["tenants"].items()}
            set_tenant_slowdowns(row, {t: done[i]["tct_mean_s"]
                                       for t, i in alone[len(rows)].items()})
        rows.append(row)
    return rows


def _simulate(sessions: Sequence[Session], config: SimConfig,
              progress: bool = False) -> tuple[dict, float]:
    """One simulation's row and its wall time (a worker process's task)."""
    t0 = time.perf_counter()
    row = simulate(sessions, config, progress=progress).to_dict()
    return row, time.perf_counter() - t0


def run_many(sessions: Sequence[Session], configs: Sequence[SimConfig], jobs: int = 1,
             progress: bool = False, labels: Sequence[str] | None = None) -> list[dict]:
    """`simulate(sessions, c).to_dict()` for each config, in order, `jobs` at a time.

    Args:
        sessions: the trace.
        configs: one simulation each.
        jobs: worker processes (1: run here, one after another, with a bar per simulation).
            Ctrl-C stops them all at once (`kvsaga.workers.worker_pool`).
        progress: progress bars.
        labels: each simulation's name in the log line it gets when done (default: the
            config's policy).

    Raises:
        ValueError: `jobs` is not an integer >= 1.
    """
    names = list(labels) if labels is not None else [c.policy for c in configs]
    return run_tasks([(sessions, cfg, name) for cfg, name in zip(configs, names, strict=True)],
                     jobs=jobs, progress=progress)


def run_tasks(tasks: Sequence[tuple[Sequence[Session], SimConfig, str]], jobs: int = 1,
              progress: bool = False) -> list[dict]:
    """`run_many` over simulations of their own sessions: `simulate(sessions,
    config).to_dict()` for each (sessions, config, log label) task, in order, `jobs` at a
    time, with one bar over them (jobs > 1) and a log line for each as it ends.

    Raises:
        ValueError: `jobs` is not an integer >= 1.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    out: list[dict | None] = [None] * len(tasks)
    if jobs == 1 or len(tasks) < 2:
        for i, (sessions, cfg, name) in enumerate(tasks):
            out[i], dt = _simulate(sessions, cfg, progress)
            _log_done(name, cfg, len(sessions), dt)
        return out
    with worker_pool(min(jobs, len(tasks))) as pool, tqdm(
            total=len(tasks), disable=not progress, unit="sim",
            desc=f"{len(tasks)} simulations, {jobs} jobs") as bar:
        futures = {pool.submit(_simulate, sessions, cfg): i
                   for i, (sessions, cfg, _) in enumerate(tasks)}
        for fut in as_completed(futures):
            i = futures[fut]
            out[i], dt = fut.result()
            sessions, cfg, name = tasks[i]
            _log_done(name, cfg, len(sessions), dt)
            bar.update(1)
    return out


def _log_done(name: str, config: SimConfig, num_sessions: int, seconds: float) -> None:
    log.info("simulated %s (scheduler %s): %d sessions in %.1f s", name, config.scheduler,
             num_sessions, seconds)


def tenant_share(config: SimConfig, k: int) -> SimConfig:
    """The config of 1/k of the GPU: 1/k of the KV blocks (GPU and host) on a GPU whose
    FLOP/s and bandwidths are divided by k and whose per-step overhead and all-reduce
    latency (tp > 1) are multiplied by k (time-sliced k ways: every step takes k times as
    long)."""
    cost = config.cost
    gpu = dataclasses.replace(cost.gpu, name=f"{cost.gpu.name}/{k}",
                              hbm_bw=cost.gpu.hbm_bw / k, peak_flops=cost.gpu.peak_flops / k,
                              pcie_bw=cost.gpu.pcie_bw / k, nvlink_bw=cost.gpu.nvlink_bw / k)
    slow = dataclasses.replace(cost, name=f"{cost.name}/{k}", gpu=gpu,
                               step_overhead_s=cost.step_overhead_s * k,
                               allreduce_latency_s=cost.allreduce_latency_s * k)
    return dataclasses.replace(config, preset=slow, num_gpu_blocks=config.blocks() // k,
                               kv_memory_bytes=None, num_host_blocks=config.host_blocks() // k,
                               host_memory_bytes=None)


def sessions_by_tenant(sessions: Sequence[Session]) -> dict[str, list[Session]]:
    """The trace's sessions per tenant (`tenant_key`), tenants in order of first session."""
    by_tenant: dict[str, list[Session]] = {}
    for s in sessions:
        by_tenant.setdefault(tenant_key(s.tenant), []).append(s)
    return by_tenant


def tenant_share_misfit(sessions: Sequence[Session], config: SimConfig) -> str | None:
    """Why the trace's tenants cannot each run alone on 1/k of the GPU (`tenant_share`, the
    denominators of `add_tenant_slowdowns`): the first tenant, in name order, whose longest
    session needs more KV blocks than `config.blocks() // k`; None when every one fits (or
    the trace has one tenant)."""
    by_tenant = sessions_by_tenant(sessions)
    k = len(by_tenant)
    if k < 2:
        return None
    spec = config.cost.kv_spec
    blocks = config.blocks()
    share = blocks // k
    for t, own in sorted(by_tenant.items()):
        longest = max(own, key=lambda s: s.total_tokens)
        need = blocks_needed(longest, spec)
        if need > share:
            return (f"tenant {t!r}: its share of the GPU (1/{k}: {share:,} of its {blocks:,} KV "
                    f"blocks, the capacity each tenant's slowdown is measured alone on) cannot "
                    f"hold its longest session {longest.id!r} ({need:,} blocks); give at "
                    f"least {need * k:,} blocks ({need * k * config.cost.block_bytes:,} B) of "
                    f"KV capacity (kvsaga sim --kv-memory; SimConfig.kv_memory_bytes or "
                    f"num_gpu_blocks)")
    return None


def add_tenant_slowdowns(row: dict, sessions: Sequence[Session], config: SimConfig,
                         progress: bool = False,
                         alone: Callable[[list[Session], SimConfig], float] | None = None
                         ) -> None:
    """Add each tenant's `slowdown` (its mean TCT in `row` over its mean TCT alone on 1/k of
    the GPU, `tenant_share`) to `row["tenants"]`, and `afs_max_slowdown_ratio`. `alone`:
    the mean TCT of a tenant's sessions served on a config (default: `simulate`'s, one GPU;
    a cluster's is `add_cluster_tenant_slowdowns`').

    Raises:
        ValueError: a tenant's longest session does not fit 1/k of the KV blocks
            (`tenant_share_misfit`), before any simulation.
    """
    problem = tenant_share_misfit(sessions, config)
    if problem is not None:
        raise ValueError(problem)
    by_tenant = sessions_by_tenant(sessions)
    share = tenant_share(config, len(by_tenant))
    set_tenant_slowdowns(row, {
        t: (simulate(own, share, progress=progress).tct_mean_s if alone is None
            else alone(own, share))
        for t, own in by_tenant.items()})


def set_tenant_slowdowns(row: dict, tct_alone: dict[str, float]) -> None:
    """`add_tenant_slowdowns`' end: each tenant's `tct_alone_s` (its mean TCT alone on 1/k
    of the GPU, from `tct_alone`) and `slowdown` in `row["tenants"]`, and
    `afs_max_slowdown_ratio`."""
    tenants = row["tenants"]
    for t, tct in tct_alone.items():
        entry = tenants[t]
        entry["tct_alone_s"] = tct
        entry["slowdown"] = entry["tct_mean_s"] / tct
    slow = [e["slowdown"] for e in tenants.values()]
    row["afs_max_slowdown_ratio"] = max(slow) / min(slow)


def peak_working_set(sessions: Sequence[Session], base: SimConfig) -> int:
    """Blocks that the live sessions' contexts hold at most, serving without eviction: the
    working set a pool must hold to recompute nothing (`SimResult.peak_live_blocks`, running
    steps' decoded tokens included).

    Measured on a run with room for every session's context at once (the sum of their
    final sizes), so nothing is ever evicted or preempted, under the `fcfs` baseline
    scheduler whatever `base` names: the peak is a property of the trace, so it must not
    move when the scheduler under test or its defaults change. Under the workflow scheduler
    it did: with several tenants the compute share reorders whose steps run first and moved
    the two-tenant mixes' peaks by up to 7% (fcfs and the workflow scheduler without the
    share agree on every trace checked).
    """
    return _no_eviction_run(sessions, base).peak_live_blocks


def peak_prompt_working_set(sessions: Sequence[Session], base: SimConfig) -> int:
    """`peak_working_set` with each live context counted only as of its last release (the
    prompt) or finish (`SimResult.peak_prompt_live_blocks`): the running steps' decode
    growth left out, so it can fall short of what a pool must hold to recompute nothing.
    Kept because the benchmarks size their capacity grids as shares of it (their past
    tables stay reproducible; docs/simulator.md)."""
    return _no_eviction_run(sessions, base).peak_prompt_live_blocks


def _no_eviction_run(sessions: Sequence[Session], base: SimConfig) -> SimResult:
    """The fcfs + lru run with room for every session's final context at once (the
    peaks' measurement, `peak_working_set`)."""
    spec = base.cost.kv_spec
    room = sum(blocks_needed(s, spec) for s in sessions) + 1
    cfg = dataclasses.replace(base, policy="lru", num_gpu_blocks=room, kv_memory_bytes=None,
                              num_host_blocks=None, host_memory_bytes=None,
                              scheduler="fcfs", scheduler_params=None)
    return simulate(sessions, cfg)
