"""Print the eviction cost model the engine builds for a model on a device.

    python bench/engine_cost.py [--model PATH] [--device cpu|cuda]

One line: the device profile (from kvsaga.engine.cost's table or measured) and what it
prices: recomputing one block at context 0 against reloading it from the host tier.
"""

from __future__ import annotations

import argparse

from kvsaga.engine.engine import LLMEngine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="HF directory or .gguf (default: SmolLM2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args()
    e = LLMEngine(args.model, device=args.device, progress=False, kv_memory_bytes=64 * 2**20)
    prof, cost, bs = e.device_profile, e.cost, e.spec.block_size
    print(f"{prof.name} ({prof.source}), {e.dtype}: {prof.prefill_flops / 1e9:.1f} GFLOP/s "
          f"prefill, {prof.host_bandwidth / 1e9:.2f} GB/s block copies; block "
          f"{cost.block_bytes} B; recompute one block at context 0: "
          f"{cost.recompute_s(bs, 0) * 1e3:.2f} ms, reload it: {cost.reload_s(1) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
