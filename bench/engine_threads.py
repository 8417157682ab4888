"""How kvsaga's engine threads wait between ops, on the agent-replay step shape, quiet and loaded.

    python bench/engine_threads.py [--cases P:N:S:D,...] [--repeat R] [--threads T]
        [--spins 3000,10000,30000] [--libgomp-default] [--load N] [--json PATH]
    python bench/engine_threads.py --serial-below 0,4194304 [--cases ...] [--repeat R]

One worker process per arm, each kvsaga's `LLMEngine` driven through bench/extend_step.py's
scripted step shape (an extending request over a cached prefix, decoding requests beside
it), all started before the first timed repeat and kept up, every repeat running each
case on every arm in a rotating order, so load from other jobs falls on all arms. Arms:
  - `pool, PASSIVE`: kvsaga-serve before the shared team: `OMP_WAIT_POLICY=PASSIVE`, the
    attention kernel on threads of its own (csrc/worker_pool.h);
  - `team, PASSIVE`: kvsaga-serve now, the kernel in torch's OpenMP team
    (kvsaga/kernels/inplace.py), threads that sleep as soon as they wait;
  - `team, GOMP_SPINCOUNT=K` for each K of `--spins` (with `OMP_WAIT_POLICY=PASSIVE`, as
    kvsaga-serve sets it; libgomp takes the spin count over the policy): threads spin K
    pauses, then sleep;
  - with `--libgomp-default`, `team, libgomp default`: neither set (libgomp spins 300,000
    pauses, as vLLM's CPU workers run); slow to finish on a loaded machine.
With `--serial-below B1,B2,...` the arms are instead `team, PASSIVE, serial<B` for each B:
kvsaga-serve's setting with KVSAGA_CPU_SERIAL_BELOW=B (0: every op of a decode step in the
team, as before that setting; docs/engine_profiles_history_2.md, "Fewer wake-ups a decode step").
`--load N` keeps N busy processes (`yes > /dev/null`) running through the timed repeats,
the shared machine's case (bench/omp_wait.py). Reported per case and window: the median over
repeats of wall and CPU seconds (the worker's process), and each arm's wall over the first
arm's (< 1: faster than kvsaga-serve before the team).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from ascii_args import ascii_int, int_arg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from extend_step import Worker, parse_cases, worker_config  # noqa: E402

# The settings that say how OpenMP threads wait (libgomp's spin count wins over the policy).
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def arms(spins: list[int], libgomp_default: bool,
         serial: list[int] | None = None) -> dict[str, tuple[dict[str, str], bool]]:
    """Arm name -> (environment settings, whether the kernel runs in torch's team). A team
    arm's worker refuses to start where there is no team (`inplace.use_team` raises), so
    no arm named "team" ever runs the pool."""
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    if serial:
        return {f"team, PASSIVE, serial<{b}": ({**passive, "KVSAGA_CPU_SERIAL_BELOW": str(b)},
                                               True) for b in serial}
    out = {"pool, PASSIVE": (passive, False), "team, PASSIVE": (passive, True)}
    for k in spins:
        out[f"team, GOMP_SPINCOUNT={k}"] = ({**passive, "GOMP_SPINCOUNT": str(k)}, True)
    if libgomp_default:
        out["team, libgomp default"] = ({}, True)
    return out


def arm_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment with every wait setting replaced by `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS}
    return {**env, **settings}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--cases", default="1024:128:1:2", help="P:N:S:D,... as bench/extend_step.py")
    a("--repeat", type=int_arg, default=3, help="timed repeats of every case on each arm")
    a("--threads", type=int_arg, default=2, help="torch threads of each worker")
    a("--spins", default="10000",
      help="GOMP_SPINCOUNT values, one arm each (comma-separated)")
    a("--libgomp-default", action="store_true", help="add the arm with neither setting")
    a("--serial-below", help="KVSAGA_CPU_SERIAL_BELOW values, one team arm each, instead "
      "of the wait-policy arms (comma-separated bytes)")
    a("--load", type=int_arg, default=0, help="busy background processes during the repeats")
    a("--max-tokens", type=int_arg, default=16, help="greedy tokens per extending request")
    a("--max-num-batched-tokens", type=int_arg, default=2048, help="token budget per step")
    a("--model", help="HF directory (default: SmolLM2-135M-Instruct from the GGUF)")
    a("--seed", type=int_arg, default=0, help="seed of the random prompt tokens of every case")
    a("--json", metavar="PATH", help="also write the cases and results to this JSON file")
    args = ap.parse_args(argv)
    cases = parse_cases(args.cases)
    spins = [ascii_int(k) for k in args.spins.split(",") if k.strip()]
    serial = ([ascii_int(b) for b in args.serial_below.split(",") if b.strip()]
              if args.serial_below else None)
    cfg = worker_config(args, cases, args.repeat)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    workers: dict[str, Worker] = {}
    busy: list[subprocess.Popen] = []
    results: dict[str, list[list[dict[str, Any]]]] = {}
    try:
        for i, (name, (settings, team)) in enumerate(arms(spins, args.libgomp_default,
                                                                serial).items()):
            workers[name] = Worker("kvsaga", sys.executable, arm_env(settings),
                                   {**cfg, "kernel_team": team},
                                   logs / f"engine_threads_{i}.log")
        for w in workers.values():
            w.recv()  # ready
        results = {name: [[] for _ in cases] for name in workers}
        busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
                for _ in range(args.load)]
        load0 = os.getloadavg()[0]
        order = list(workers)
        for rnd in range(args.repeat):
            for i in range(len(cases)):
                k = (rnd + i) % len(order)
                for name in order[k:] + order[:k]:
                    workers[name].send({"case": i, "round": rnd})
                    res = workers[name].recv()
                    results[name][i].append(res)
                    print(f"round {rnd} case {i} {name}: extend {res['extend_s']:.3f} s, "
                          f"decode {res['decode_s']:.3f} s", flush=True)
        load1 = os.getloadavg()[0]
    finally:
        for p in busy:
            p.kill()
            p.wait()
        for w in workers.values():
            w.stop()
    print(report(args, cases, results, (load0, load1)))
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": cases, "results": results}, indent=1))
    return 0


def report(args: argparse.Namespace, cases: list[dict[str, int]],
           results: dict[str, list[list[dict[str, Any]]]], load: tuple[float, float]) -> str:
    """The table, as printed (and pasted into bench/RESULTS.md by hand)."""
    names = list(results)
    cmd = "python bench/engine_threads.py " + " ".join(sys.argv[1:])
    lines = [f"`{cmd}` on {platform.processor() or platform.machine()} ({os.cpu_count()} "
             f"cores); {args.load} busy background process(es); load average {load[0]:.1f} "
             f"at the first repeat, {load[1]:.1f} at the end. {args.threads} threads, "
             f"{args.repeat} repeat(s); cells: the median (wall s / CPU s of the worker).", "",
             "| case | window | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]

    def med(name: str, i: int, key: str) -> float:
        return statistics.median(r[key] for r in results[name][i])

    for i, c in enumerate(cases):
        for w in ("extend", "decode"):
            base = med(names[0], i, w + "_s")
            cells = [f"{med(n, i, w + '_s'):.3f} / {med(n, i, w + '_cpu_s'):.2f} "
                     f"({med(n, i, w + '_s') / base:.2f}x)" for n in names]
            lines.append(f"| P={c['P']} N={c['N']} S={c['S']} D={c['D']} | {w} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
