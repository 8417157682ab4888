"""OpenMP worker wake-ups per engine step on the agent-replay step shape, and which calls make them.

    python bench/step_wakeups.py [--cases P:N:S:D,...] [--rounds R] [--threads T] [--by-op]
        [--json PATH]
    python bench/step_wakeups.py --compare BEFORE.json AFTER.json

kvsaga-serve runs torch with `OMP_WAIT_POLICY=PASSIVE`: torch's OpenMP workers sleep as
soon as a parallel region ends, so every region wakes them again, and a wake-up's latency
depends on what the machine is doing (bench/wake_latency.py; docs/engine_profiles.md, "Why
the same replay ran faster under load"). This script counts, in one process with that
setting (it sets it before torch loads), the voluntary context switches of every thread
of the process but the engine thread (torch's OpenMP workers; no other thread runs in a
step) over bench/extend_step.py's scripted step shape: per case, one untimed round, then
`--rounds` rounds, each split into the extend window (the new tokens' prefill beside the
decodes) and the decode window. A PASSIVE worker sleeps once per region it runs (twice
when it also waits at the region's end), so its switches are the wake-ups a step pays;
the engine thread's own voluntary switches (waiting for a worker at a region's end) are
printed beside them. The counts follow the work more than the machine's state: on a loaded
host two rounds agreed within 5 a decode step (the one extend step, within 50).

`--by-op` adds a pass that wraps the forward pass's calls (each linear by its weight, the
attention, the fused elementwise ops, the sampler, ...) and charges each call the workers'
switches that happened inside it and its wall time (a call inside another is charged to
the inner one); what no wrapped call took is "other". The wrapper reads /proc for every
call, so this pass is slow and its times are of calls with that reading between them.

`--compare` prints, from two runs' `--json` files, each case and window's median wake-ups a
step before and after, and the decode windows' per-call tables of either's `--by-op` pass.

KVSAGA_CPU_SERIAL_BELOW (kvsaga/envs.py) is read by the engine as it is set here, so the
same script measures each setting: `KVSAGA_CPU_SERIAL_BELOW=0 python bench/step_wakeups.py`
is the engine before the serial small steps, the default after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ascii_args import int_arg

if __name__ == "__main__":  # kvsaga-serve's setting, before torch loads (not on import)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.pop("GOMP_SPINCOUNT", None)

here = Path(__file__).resolve().parent
if str(here) not in sys.path:
    sys.path.insert(0, str(here))

from extend_step import KvsagaEngine, Scenario, parse_cases, worker_config  # noqa: E402


def thread_switches() -> dict[int, tuple[int, int]]:
    """tid -> (voluntary, involuntary) context switches of every thread of this process."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # exited meanwhile
            continue
        vol = inv = 0
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                inv = int(line.split()[1])
        out[int(task.name)] = (vol, inv)
    return out


MAIN = threading.get_native_id()


def worker_switches() -> int:
    """Voluntary switches of every thread but the engine (main) thread, summed."""
    return sum(v for tid, (v, _) in thread_switches().items() if tid != MAIN)


class Counting(Scenario):
    """bench/extend_step.py's scenario, its windows also counting switches per thread."""

    counter: OpCounter | None = None
    windows: list[dict[str, Any]]

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.windows = []

    def _until(self, pred) -> tuple[int, float, float]:
        if self.counter is not None:
            self.counter.calls.clear()
            self.counter.wakes.clear()
            self.counter.wall.clear()
        s0 = thread_switches()
        steps, wall, cpu = super()._until(pred)
        s1 = thread_switches()
        self.last = {"steps": steps, "wall_s": wall, "cpu_s": cpu,
                     "workers": sum(v - s0.get(t, (0, 0))[0] for t, (v, _) in s1.items()
                                    if t != MAIN),
                     "main": s1[MAIN][0] - s0[MAIN][0]}
        if self.counter is not None:
            self.last["calls"] = dict(self.counter.calls)
            self.last["wakes"] = dict(self.counter.wakes)
            self.last["op_s"] = dict(self.counter.wall)
        self.windows.append(self.last)
        return steps, wall, cpu

    def counted(self, rnd: int) -> dict[str, dict[str, Any]]:
        self.windows: list[dict[str, Any]] = []
        self.run(rnd)
        # run() has three windows: the decoders' first tokens, then extend, then decode.
        return {"extend": self.windows[1], "decode": self.windows[2]}


class OpCounter:
    """Wraps callables; charges each call the workers' voluntary switches inside it, less
    those of wrapped calls inside it."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.wakes: dict[str, int] = {}
        self.wall: dict[str, float] = {}  # seconds inside the call, less wrapped calls'
        self._stack: list[list] = []

    def wrap(self, fn, name_of):
        def wrapped(*a, **k):
            name = name_of(*a, **k)
            self._stack.append([worker_switches(), 0, 0.0, time.perf_counter()])
            try:
                return fn(*a, **k)
            finally:
                t1 = time.perf_counter()
                start, inner, inner_s, t0 = self._stack.pop()
                total = worker_switches() - start
                self.calls[name] = self.calls.get(name, 0) + 1
                self.wakes[name] = self.wakes.get(name, 0) + total - inner
                self.wall[name] = self.wall.get(name, 0.0) + (t1 - t0) - inner_s
                if self._stack:
                    self._stack[-1][1] += total
                    self._stack[-1][2] += t1 - t0
        return wrapped

    def install(self, model) -> None:
        """Wrap the calls of a decoder step (module attributes the model looks up per call)."""
        from kvsaga.engine import cpu_linear, fused_ops
        from kvsaga.engine import runner as runner_mod
        from kvsaga.kernels import inplace

        names = {}
        for layer in model.layers:
            for attr, w in (("qkv", layer.attn.qkv_proj), ("o", layer.attn.o_proj),
                            ("gate_up", layer.mlp.gate_up_proj), ("down", layer.mlp.down_proj)):
                names[w.data_ptr()] = attr
        names[model.lm_head.data_ptr()] = "lm_head"

        def rows(x) -> str:
            return "1-16 rows" if x.shape[0] <= cpu_linear.SMALL_ROWS else "17+ rows"

        cpu_linear.linear = self.wrap(
            cpu_linear.linear,
            lambda x, w, *_: f"linear {names.get(w.data_ptr(), '?')} ({rows(x)})")
        for op in ("_rms_norm", "_add_rms_norm", "_silu_mul"):
            setattr(fused_ops, op, self.wrap(getattr(fused_ops, op),
                                             lambda x, *_, op=op: f"fused {op[1:]} ({rows(x)})"))
        inplace.LayerAttention.attend = self.wrap(
            inplace.LayerAttention.attend,
            lambda s, qkv, i: f"attention: rope+write+attend ({rows(qkv)})")
        import kvsaga.kernels as kernels
        from kvsaga.engine import model as model_mod

        model_mod.kernels = _Proxy(kernels, {
            "paged_attention": self.wrap(kernels.paged_attention,
                                         lambda q, *a, **k: f"attention, checked ({rows(q)})"),
            "cache_write": self.wrap(kernels.cache_write, lambda k, *a, **kw: "cache_write"),
        })
        model_mod.rotate = self.wrap(model_mod.rotate, lambda x, *_: f"rope, torch ({rows(x)})")
        model_mod.rope_cos_sin = self.wrap(model_mod.rope_cos_sin, lambda *_: "rope cos/sin")
        model_mod.F = _Proxy(model_mod.F, {
            "embedding": self.wrap(model_mod.F.embedding, lambda *_: "embedding")})
        model_mod.KeptRows.build = self.wrap(model_mod.KeptRows.build,
                                             lambda *_: "kept rows (last layer's index)")
        runner_mod.Sampler.__call__ = self.wrap(runner_mod.Sampler.__call__,
                                                lambda *_: "sampler")
        runner_mod.AttentionMetadata.build = self.wrap(runner_mod.AttentionMetadata.build,
                                                       lambda *a, **k: "metadata build")
        model.__class__._step_plan = self.wrap(model.__class__._step_plan,
                                               lambda *_: "step plan")


class _Proxy:
    """A module seen through, with some attributes replaced."""

    def __init__(self, inner, over: dict[str, Any]) -> None:
        self._inner, self._over = inner, over

    def __getattr__(self, name: str) -> Any:
        return self._over[name] if name in self._over else getattr(self._inner, name)


def by_op_table(name: str, window: str, r: dict[str, Any]) -> str:
    """One window's per-call table of a `--by-op` pass, as printed."""
    steps = r["steps"]
    lines = [f"\nBy call, case {name}, {window} window: {steps} steps, {r['workers']} worker "
             "wake-ups", "| call | calls / step | worker wake-ups / step | us / call |",
             "|---|---:|---:|---:|"]
    for op in sorted(r["wakes"], key=lambda o: (-r["wakes"][o], o)):
        lines.append(f"| {op} | {r['calls'][op] / steps:.1f} | {r['wakes'][op] / steps:.1f} | "
                     f"{1e6 * r['op_s'][op] / r['calls'][op]:.0f} |")
    lines.append(f"| other (no wrapped call) | | "
                 f"{(r['workers'] - sum(r['wakes'].values())) / steps:.1f} | |")
    return "\n".join(lines)


def compare(before_path: str, after_path: str) -> str:
    """The before/after table of two `--json` files (same cases), as printed."""
    runs = [json.loads(Path(p).read_text()) for p in (before_path, after_path)]
    cases = runs[0]["cases"]
    if runs[1]["cases"] != cases:
        raise SystemExit("--compare: the two files ran different cases")

    def med(run: dict[str, Any], i: int, w: str, key: str) -> float:
        return statistics.median(r[w][key] / r[w]["steps"] for r in run["rounds"]
                                 if r["case"] == i)

    b, a = (r["serial_below"] for r in runs)
    lines = [f"Medians over rounds, per step: before = KVSAGA_CPU_SERIAL_BELOW {b}, after = "
             f"{a} ({before_path}, {after_path}).", "",
             "| case | window | steps | worker wake-ups before | after | engine-thread "
             "switches before | after |", "|---|---|---:|---:|---:|---:|---:|"]
    for i, c in enumerate(cases):
        for w in ("extend", "decode"):
            steps = [r[w]["steps"] for r in runs[0]["rounds"] if r["case"] == i][0]
            lines.append(f"| P={c['P']} N={c['N']} S={c['S']} D={c['D']} | {w} | {steps} | "
                         f"{med(runs[0], i, w, 'workers'):.1f} | "
                         f"{med(runs[1], i, w, 'workers'):.1f} | "
                         f"{med(runs[0], i, w, 'main'):.1f} | {med(runs[1], i, w, 'main'):.1f} |")
    for label, run in zip(("before", "after"), runs, strict=True):
        for name, got in run.get("by_op", {}).items():
            lines.append(f"\n{label}, `--by-op`:" + by_op_table(name, "decode", got["decode"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="two --json files: the table")
    a("--cases", default="1024:128:1:2,1024:384:2:2,1536:256:1:0",
      help="P:N:S:D,... as bench/extend_step.py")
    a("--rounds", type=int_arg, default=2, help="counted rounds of every case")
    a("--threads", type=int_arg, default=2, help="torch threads")
    a("--max-tokens", type=int_arg, default=16, help="greedy tokens per extending request")
    a("--max-num-batched-tokens", type=int_arg, default=2048, help="token budget per step")
    a("--model", help="HF directory (default: SmolLM2-135M-Instruct from the GGUF)")
    a("--seed", type=int_arg, default=0, help="seed of the random prompt tokens of every case")
    a("--by-op", action="store_true", help="add the per-call pass")
    a("--json", metavar="PATH", help="also write the results to this JSON file (the input of "
      "--compare)")
    args = ap.parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    cases = parse_cases(args.cases)
    cfg = worker_config(args, cases, args.rounds + 2)
    # bench/kernels.py would shadow the `kernels` package transformers probes for
    sys.path[:] = [p for p in sys.path if p not in (str(here), "")]
    engine = KvsagaEngine(cfg)
    from kvsaga import envs

    serial = envs.KVSAGA_CPU_SERIAL_BELOW if "KVSAGA_CPU_SERIAL_BELOW" in dir(envs) else None
    print(f"threads {args.threads}, OMP_WAIT_POLICY=PASSIVE, KVSAGA_CPU_SERIAL_BELOW "
          f"{serial}; switches of the OpenMP workers (wake-ups) and the engine thread, "
          "per step", flush=True)
    out: dict[str, Any] = {"serial_below": serial, "cases": cases, "rounds": []}
    rows = []
    for i, case in enumerate(cases):
        sc = Counting(engine, case, args.seed, args.max_tokens)
        sc.warm()
        sc.counted(0)  # untimed: first touches, lazy setup
        for rnd in range(1, args.rounds + 1):
            got = sc.counted(rnd)
            out["rounds"].append({"case": i, "round": rnd, **got})
            for w, r in got.items():
                rows.append((case, w, r))
                print(f"case P={case['P']} N={case['N']} S={case['S']} D={case['D']} "
                      f"round {rnd} {w}: {r['steps']} steps, worker wake-ups "
                      f"{r['workers'] / r['steps']:.1f}/step, engine thread "
                      f"{r['main'] / r['steps']:.1f}/step ({r['wall_s']:.3f} s)", flush=True)
    print("\n| case | window | steps | worker wake-ups / step | engine-thread switches / step |")
    print("|---|---|---:|---:|---:|")
    for case, w, r in rows:
        print(f"| P={case['P']} N={case['N']} S={case['S']} D={case['D']} | {w} | "
              f"{r['steps']} | {r['workers'] / r['steps']:.1f} | {r['main'] / r['steps']:.1f} |")
    if args.by_op:
        counter = OpCounter()
        counter.install(_model(engine))
        for case in cases:
            sc = Counting(engine, case, args.seed, args.max_tokens)
            sc.warm()
            sc.counter = counter
            got = sc.counted(args.rounds + 1)
            sc.counter = None
            name = f"P={case['P']} N={case['N']} S={case['S']} D={case['D']}"
            out.setdefault("by_op", {})[name] = got
            for w, r in got.items():
                print(by_op_table(name, w, r))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _model(engine: KvsagaEngine):
    """The engine's model, wherever LLMEngine keeps it."""
    eng = engine.eng
    for path in ("runner.model", "model_runner.model", "executor.model"):
        obj = eng
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise SystemExit("could not find the engine's model to wrap")


if __name__ == "__main__":
    sys.exit(main())
