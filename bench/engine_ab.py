"""kvsaga's engine before and after a change, side by side in one run, on the agent-replay
step shape of bench/extend_step.py.

    python bench/engine_ab.py --before TREE [--cases P:N:S:D,...] [--repeat R] [--threads T]

Two kvsaga workers of bench/extend_step.py (its scripted extend and decode windows, the
same token ids for both), one importing kvsaga from TREE (`PYTHONPATH=TREE`: a checkout of
the commit before, whose `kvsaga/kernels/` is importable as `kvsaga.kernels`, e.g. linked in as
`kvsaga/kernels`; C++ extensions it lacks come from this install), one from this
checkout, both with `OMP_WAIT_POLICY=PASSIVE` as kvsaga-serve runs. Both stay up; every
repeat runs each case on both, alternating which goes first, so load from other jobs falls
on both. Reported per case and window: the median over repeats of wall and CPU seconds
(the worker's process), and after / before (< 1: the change is faster); and whether both
generated the same greedy tokens. Why: against vLLM (bench/extend_step.py) this host's
spread between runs is as large as an engine change; two kvsaga trees in one run cancel it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from ascii_args import int_arg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from extend_step import Worker, build_parser, parse_cases, worker_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="tree of the engine before the change")
    ap.add_argument("--cases", default="1024:128:1:2,1024:384:2:2,1536:256:1:0",
                    help="P:N:S:D,...: prefix tokens, new tokens, extending sessions, "
                    "decoding sessions (as bench/extend_step.py)")
    ap.add_argument("--repeat", type=int_arg, default=4,
                    help="timed repeats of every case on each tree")
    ap.add_argument("--threads", type=int_arg, default=2, help="threads of each engine")
    a = ap.parse_args()
    if not (Path(a.before) / "kvsaga" / "__init__.py").is_file():
        raise SystemExit(f"--before {a.before}: no kvsaga package there")
    cases = parse_cases(a.cases)
    cfg = worker_config(build_parser().parse_args(
        ["--cases", a.cases, "--repeat", str(a.repeat), "--threads", str(a.threads)]),
        cases, a.repeat)
    load0 = os.getloadavg()[0]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("PYTHONPATH", None)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    workers = {"before": Worker("kvsaga", sys.executable, dict(env, PYTHONPATH=a.before), cfg,
                                logs / "engine_ab_before.log"),
               "after": Worker("kvsaga", sys.executable, env, cfg, logs / "engine_ab_after.log")}
    res: dict[str, list[list[dict]]] = {k: [[] for _ in cases] for k in workers}
    try:
        for w in workers.values():
            w.recv()  # ready
        for rnd in range(a.repeat):
            for i in range(len(cases)):
                arms = list(workers) if (rnd + i) % 2 == 0 else list(workers)[::-1]
                for k in arms:
                    workers[k].send({"case": i, "round": rnd, "profile": 0})
                    r = workers[k].recv()
                    res[k][i].append(r)
                    print(f"round {rnd} case {i} {k}: extend {r['extend_s']:.3f} s / "
                          f"{r['extend_cpu_s']:.2f} CPU-s, decode {r['decode_s']:.3f} s / "
                          f"{r['decode_cpu_s']:.2f} CPU-s", flush=True)
    finally:
        for w in workers.values():
            w.stop()
    print(f"\n`python bench/engine_ab.py {' '.join(sys.argv[1:])}`: load average {load0:.1f} "
          f"at the start, {os.getloadavg()[0]:.1f} at the end; {a.threads} threads; cells: "
          f"the median of {a.repeat} repeats (wall s / CPU s of the worker).\n")
    print("| case | window | before | after | after / before wall | after / before CPU |")
    print("|---|---|---:|---:|---:|---:|")
    for i, c in enumerate(cases):
        for win in ("extend", "decode"):
            m = {k: [statistics.median(r[win + key] for r in res[k][i])
                     for key in ("_s", "_cpu_s")] for k in workers}
            print(f"| P={c['P']} N={c['N']} S={c['S']} D={c['D']} | {win} | "
                  f"{m['before'][0]:.3f} / {m['before'][1]:.2f} | {m['after'][0]:.3f} / "
                  f"{m['after'][1]:.2f} | {m['after'][0] / m['before'][0]:.2f}x | "
                  f"{m['after'][1] / m['before'][1]:.2f}x |")
    pairs = [(x, y) for i in range(len(cases))
             for rb, ra in zip(res["before"][i], res["after"][i], strict=True)
             for x, y in zip(rb["tokens"], ra["tokens"], strict=True)]
    print(f"\nGreedy tokens identical before and after in {sum(x == y for x, y in pairs)} of "
          f"{len(pairs)} extending requests.")


if __name__ == "__main__":
    main()
