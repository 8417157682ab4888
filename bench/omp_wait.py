"""What OpenMP's wait policy costs the CPU engine's small ops on a shared machine.

    python bench/omp_wait.py [--threads 2] [--repeat 50]

Times one decoder-sized RMSNorm (`[1350, 576]` fp32, the op count of a prefill chunk of the
16-request chat batch) and one decode-sized matmul (`[16, 576] x [576, 3072]`) in a fresh
process per `OMP_WAIT_POLICY` (torch reads it once, at load): libgomp's default lets idle
threads spin, PASSIVE lets them sleep. On a machine whose cores are shared with other jobs
a spinning thread waits for a descheduled sibling at every parallel region, so each small
op costs a scheduler time slice. kvsaga-serve sets PASSIVE unless the user set a policy
(kvsaga/serve/cli.py); bench/engine_threads.py measures PASSIVE against a bounded libgomp
spin on a whole step, quiet and loaded. Prints wall and CPU milliseconds per op, and the
machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from ascii_args import int_arg

CHILD = r"""
import json, sys, time
import torch
import torch.nn.functional as F
threads, repeat = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
x, w = torch.randn(1350, 576), torch.randn(576)
xd, wd = torch.randn(16, 576), torch.randn(3072, 576)
ops = {
    "rmsnorm [1350, 576]": lambda: w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)),
    "linear [16, 576] x [576, 3072]": lambda: F.linear(xd, wd),
}
out = {}
for name, f in ops.items():
    f()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        f()
    out[name] = ((time.perf_counter() - t) / repeat * 1e3, (time.process_time() - c) / repeat * 1e3)
print(json.dumps(out))
"""


def run(policy: str | None, threads: int, repeat: int) -> dict[str, list[float]]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    res = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(repeat)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int_arg, default=2, help="torch intra-op threads")
    ap.add_argument("--repeat", type=int_arg, default=50, help="calls per op")
    ap.add_argument("--rounds", type=int_arg, default=2, help="alternations of the two policies")
    args = ap.parse_args()
    print(f"{args.threads} threads, {args.repeat} calls per op, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    print(f"{'OMP_WAIT_POLICY':>16}  {'op':<32} {'wall ms':>8} {'CPU ms':>8}")
    for _ in range(args.rounds):
        for policy in (None, "PASSIVE"):
            for op, (wall, cpu) in run(policy, args.threads, args.repeat).items():
                print(f"{policy or '(default)':>16}  {op:<32} {wall:8.2f} {cpu:8.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
