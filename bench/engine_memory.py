"""Resident memory of a loaded CPU engine model: how many bytes its linear weights take.

    python bench/engine_memory.py [--model PATH]
    PYTHONPATH=TREE python bench/engine_memory.py   # another tree's engine, the same way

Loads the model (default SmolLM2-135M-Instruct, fp32, CPU) with `load_model` and prints the
process's resident set (VmRSS from /proc/self/status) before and after, the bytes of the
model's parameters, and the bytes held by `cpu_linear.pack`'s results (tensors reachable
from them: oneDNN's reordered copies and the small GEMM's column-group copies in trees that
made them: the "packed" mode, `KVSAGA_CPU_WEIGHTS`). Why: each copy of the linear weights
costs their size again; RSS says what the process really holds.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package that transformers probes for
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import torch  # noqa: E402

from kvsaga.engine.loader import load_model  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def tensors_in(obj, seen: set[int]) -> int:
    """Bytes of distinct tensor storages reachable from obj (tuples, named tuples)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_mkldnn:  # opaque: no storage to ask; its size from its shape
            return obj.numel() * obj.element_size()
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, tuple):
        return sum(tensors_in(o, seen) for o in obj)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="HF directory or .gguf (default: SmolLM2-135M-Instruct)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    before = rss_mib()
    kwargs = {"dtype": torch.float32, "device": "cpu", "progress": False}
    loaded = load_model(args.model, **kwargs)
    model = loaded.model
    gc.collect()
    after = rss_mib()
    unique = {id(p): p for p in model.parameters()}.values()
    params = sum(p.untyped_storage().nbytes() for p in unique)
    seen: set[int] = set()
    packed = 0
    for module in model.modules():
        for name, value in vars(module).items():
            if name.endswith("_packed"):
                packed += tensors_in(value, seen)
    mib = 2**20
    mode = getattr(model, "weights_mode", "packed (before the modes)")
    print(f"weights mode {mode}: VmRSS before load {before:.0f} MiB, after {after:.0f} MiB "
          f"(+{after - before:.0f} MiB); parameters {params / mib:.0f} MiB; "
          f"held by the linears' packed copies {packed / mib:.0f} MiB")


if __name__ == "__main__":
    main()
