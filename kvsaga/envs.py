"""Environment variables read by kvsaga; every name starts with `KVSAGA_`.

Read through this module (`from kvsaga import envs; envs.KVSAGA_KERNELS`) and nowhere else.
Values are read on each access, so a test may set them with `monkeypatch.setenv`.
To add one: an entry in `_VARIABLES` with its parser and a line in its comment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from kvsaga.ascii_numbers import hint, parse_int


def _choice(name: str, default: str, choices: tuple[str, ...]) -> Callable[[], str]:
    def read() -> str:
        value = os.environ.get(name, "").strip().lower() or default
        if value not in choices:
            raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
        return value

    return read


def _bytes(name: str, default: int) -> Callable[[], int]:
    def read() -> int:
        text = os.environ.get(name, "").strip()
        if not text:
            return default
        try:
            value = parse_int(text)  # ASCII digits: int() took "٨" as 8
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{name}={text!r}: expected a whole number of bytes >= 0"
                             f"{hint(text)}")
        return value

    return read


def _flag(name: str) -> Callable[[], bool]:
    def read() -> bool:
        value = os.environ.get(name, "").strip().lower()
        if value in ("", "0", "false"):
            return False
        if value in ("1", "true"):
            return True
        raise ValueError(f"{name}={value!r}: expected 1 or true (0, false or unset: off)")

    return read


def _string(name: str) -> Callable[[], str | None]:
    def read() -> str | None:
        return os.environ.get(name) or None

    return read


_VARIABLES: dict[str, Callable[[], Any]] = {
    # Which implementation of the KV kernels runs: "auto" (Triton on CUDA; on CPU the torch
    # references, with paged attention in kernels/sdpa.py: the C++ in-place kernel where it
    # was built, SDPA a sequence at a time for the rest), "triton" (Triton everywhere;
    # on CPU under Triton's interpreter) or "torch" (the plain torch references everywhere).
    "KVSAGA_KERNELS": _choice("KVSAGA_KERNELS", "auto", ("auto", "triton", "torch")),
    # kvsaga-serve: API key(s) that clients must send as `Authorization: Bearer KEY`
    # (comma-separated for several tenants); unset means no authentication. `--api-key` wins.
    "KVSAGA_API_KEY": _string("KVSAGA_API_KEY"),
    # Which bookkeeping core a KVCacheManager uses (kvsaga/_core.py): "cpp" (kvsaga._kvcore,
    # built from csrc/ by `pip install`), "python" (the reference), or unset/"auto": cpp when
    # it was built, else python.
    "KVSAGA_CORE": _choice("KVSAGA_CORE", "auto", ("auto", "cpp", "python")),
    # How an fp32 CPU model holds its linear weights (kvsaga/engine/cpu_linear.py
    # `weights_mode`): "once" (the parameters alone), "packed" (plus two reordered copies,
    # faster decode, 3x the memory) or unset/"auto": packed up to 1 GiB of linear weights.
    "KVSAGA_CPU_WEIGHTS": _choice("KVSAGA_CPU_WEIGHTS", "auto", ("auto", "once", "packed")),
    # fp32 CPU model: a linear of up to 16 rows whose weight takes fewer bytes than this,
    # and a decode-sized pass's attention reading fewer K/V bytes a layer, run on the engine
    # thread alone instead of waking torch's OpenMP workers (kvsaga/engine/model.py,
    # `pack_weights`' `serial_below`). Read at model load. Unset/empty: 0, every op in
    # torch's team; `kvsaga-serve --cpu-host shared` sets CPU_SERIAL_BELOW_SHARED
    # (docs/engine_profiles.md, "Threads").
    "KVSAGA_CPU_SERIAL_BELOW": _bytes("KVSAGA_CPU_SERIAL_BELOW", 0),
    # A CPU engine's thread count: "fixed" (unset: torch's count stays what it started
    # with, lowered at the start to a cgroup CPU quota's cores rounded up unless
    # OMP_NUM_THREADS is set) or "adaptive" (the thread that runs the model sizes torch's
    # team to the cores other processes leave and to the quota, re-read every second:
    # kvsaga/engine/cpu_threads.py). Read when the engine loads; `kvsaga-serve --cpu-host
    # auto` sets "adaptive".
    "KVSAGA_CPU_THREADS": _choice("KVSAGA_CPU_THREADS", "fixed", ("fixed", "adaptive")),
    # "1": an engine may take a max_model_len above the model's context
    # (ModelConfig.max_context_len), with a warning (vLLM's VLLM_ALLOW_LONG_MAX_MODEL_LEN);
    # unset: refused. Never past a sliding window (ModelConfig.check_max_model_len). Read
    # past the model's context; kvsaga-serve reads it at start, to refuse a bad value
    # whatever --max-model-len is.
    "KVSAGA_ALLOW_LONG_MAX_MODEL_LEN": _flag("KVSAGA_ALLOW_LONG_MAX_MODEL_LEN"),
}

# The threshold for a host whose cores other jobs share, with OpenMP workers that sleep at
# once: 8 MiB, the smallest power of two above every SmolLM2-135M layer weight, where each
# such op took less time on the engine thread alone than in a team it had to wake
# (docs/engine_profiles_history_2.md, "Fewer wake-ups a decode step").
CPU_SERIAL_BELOW_SHARED = 8 << 20


def check() -> None:
    """Read every variable now. Raises ValueError naming each one whose value is bad (one
    line, "; " between them). A command calls this before it loads or serves anything: most
    are read only when a model loads or a kernel first runs, where a typo would surface
    late (after a long load, or as an error on every request of a server that looks up)."""
    bad = []
    for read in _VARIABLES.values():
        try:
            read()
        except ValueError as e:
            bad.append(str(e))
    if bad:
        raise ValueError("; ".join(bad))


def __getattr__(name: str) -> Any:
    if name in _VARIABLES:
        return _VARIABLES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(_VARIABLES)
