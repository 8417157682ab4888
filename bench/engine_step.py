"""Where one CPU decode step's process CPU time goes, by part, in kvsaga's engine.

    python bench/engine_step.py [--seqs 3] [--context 1040] [--steps 40] [--threads 1]
        [--rounds 3] [--kv-mib 256] [--model PATH]

`--seqs` requests of `--context` random prompt tokens each decode greedily in one
`LLMEngine` (fp32, blocks of 32); after their prefill and a few warm-up steps, `--steps`
decode steps are timed `--rounds` times. Each part is timed by wrapping its function with
process CPU time (`time.process_time`, all threads), so a part's figure includes its calls'
Python and dispatch: the linears (`cpu_linear.linear`, the LM head apart), the norms
(`RMSNorm.forward` and, where the tree has it, `RMSNorm.add`), the sampler; the attention
kernel, cache write and RoPE are their C++ calls alone (`kvsaga._paged_attn`'s functions,
however the tree reaches them); "rest of the layers" is the decoder's time less those
(the Python around the kernels, splits and views, SiLU x up, the modules' Python);
"engine and runner" is the step less the model and sampler. Reported: the median round's
milliseconds per step. Why: on a machine shared with other jobs wall time measures
waiting for a core; a part's CPU time is steadier, and the parts say where serial time
between the matmuls goes. Run it with `PYTHONPATH=TREE` to read another tree's engine the
same way (a tree whose `kvsaga/kernels/` is importable as `kvsaga.kernels`).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from ascii_args import int_arg

# bench/kernels.py would shadow the `kernels` package that transformers probes for
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import torch  # noqa: E402

from kvsaga.engine import cpu_linear, model  # noqa: E402
from kvsaga.engine.engine import LLMEngine  # noqa: E402
from kvsaga.engine.sampling import SamplingParams  # noqa: E402
from kvsaga.kernels import inplace  # noqa: E402

PARTS = ("step", "model.hidden_states", "layers' linears", "LM head", "attention kernel",
         "cache_write", "rope kernel", "norms", "rest of the layers", "sampler",
         "engine and runner")


def timed(acc: dict[str, float], owner: object, name: str, key: str) -> None:
    """Wrap owner.name so that its process CPU time adds to acc[key]."""
    fn = getattr(owner, name)

    def wrapper(*a, **k):
        t = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            acc[key] += time.process_time() - t

    setattr(owner, name, wrapper)


def decoder_method(model) -> str:
    """The model's method that runs the decoder on every step: `_hidden`, which `forward`
    (the runner's call) and `hidden_states` both run, where the tree has it; an older tree's
    `forward` calls `hidden_states` itself. (Timing `hidden_states` on a tree with `_hidden`
    timed nothing: "model.hidden_states" read 0, "rest of the layers" went negative and
    "engine and runner" took the whole decoder.)"""
    return "_hidden" if hasattr(model, "_hidden") else "hidden_states"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int_arg, default=3, help="requests decoding together")
    ap.add_argument("--context", type=int_arg, default=1040,
                    help="random prompt tokens of each request")
    ap.add_argument("--steps", type=int_arg, default=40, help="decode steps timed a round")
    ap.add_argument("--rounds", type=int_arg, default=3,
                    help="timed rounds; the median round is reported")
    ap.add_argument("--threads", type=int_arg, default=1, help="torch intra-op threads")
    ap.add_argument("--kv-mib", type=int_arg, default=256, help="KV cache budget (MiB)")
    ap.add_argument("--model", help="HF directory or .gguf (default: SmolLM2-135M-Instruct)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    max_len = args.context + 64 + args.steps * (args.rounds + 1)
    eng = LLMEngine(args.model, device="cpu", dtype=torch.float32,
                    kv_memory_bytes=args.kv_mib * 2**20, block_size=32,
                    max_num_seqs=max(16, args.seqs), max_num_batched_tokens=2048,
                    max_model_len=max_len, progress=False)
    rng = random.Random(0)
    for i in range(args.seqs):
        eng.add_request([rng.randrange(100, 49_000) for _ in range(args.context)],
                        SamplingParams(max_tokens=max_len - args.context, temperature=0.0,
                                       ignore_eos=True), request_id=f"r{i}")
    started: set[str] = set()
    while len(started) < args.seqs:  # the prefill chunks
        started.update(o.request_id for o in eng.step() if o.token_ids)
    for _ in range(4):
        eng.step()
    acc: dict[str, float] = defaultdict(float)
    m = eng.runner.model
    lm_head = m.lm_head
    real_linear = cpu_linear.linear

    def linear(x, weight, bias, packed):
        t = time.process_time()
        try:
            return real_linear(x, weight, bias, packed)
        finally:
            key = "LM head" if weight is lm_head else "layers' linears"
            acc[key] += time.process_time() - t

    cpu_linear.linear = linear
    timed(acc, m, decoder_method(m), "model.hidden_states")
    timed(acc, inplace._paged_attn, "paged_attention", "attention kernel")
    timed(acc, inplace._paged_attn, "cache_write", "cache_write")
    timed(acc, inplace._paged_attn, "rope", "rope kernel")
    timed(acc, model.RMSNorm, "forward", "norms")
    if hasattr(model.RMSNorm, "add"):
        timed(acc, model.RMSNorm, "add", "norms")
    timed(acc, eng.runner, "sampler", "sampler")
    rounds = []
    for _ in range(args.rounds):
        acc.clear()
        t = time.process_time()
        for _ in range(args.steps):
            eng.step()
        acc["step"] = time.process_time() - t
        # The model's final norm counts in "norms" (it runs inside hidden_states too).
        acc["rest of the layers"] = (acc["model.hidden_states"] - acc["layers' linears"]
                                     - acc["attention kernel"] - acc["cache_write"]
                                     - acc["rope kernel"] - acc["norms"])
        acc["engine and runner"] = (acc["step"] - acc["model.hidden_states"] - acc["LM head"]
                                    - acc["sampler"])
        rounds.append({k: acc[k] * 1e3 / args.steps for k in PARTS})
    print(f"kvsaga {Path(model.__file__).parents[2]}: {args.seqs} sequences at context "
          f"~{args.context}, {args.threads} thread(s), {args.steps} decode steps x "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f}; process CPU ms per "
          "step, the median round (every round):")
    for k in PARTS:
        vals = [r[k] for r in rounds]
        print(f"  {k:22s} {statistics.median(vals):8.2f}  ({', '.join(f'{v:.2f}' for v in vals)})")


if __name__ == "__main__":
    main()
