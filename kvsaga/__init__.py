"""kvsaga: a KV-cache manager that keeps agent sessions' caches alive across tool calls.

`import kvsaga` needs neither torch nor Triton: the bookkeeping core is compiled C++ where
built, else an identical pure-Python one (`KVSAGA_CORE`).
The inference loop (`LLM`, `SamplingParams`) imports torch lazily on first use.
"""

from __future__ import annotations

from kvsaga.config import KVSpec, PoolConfig
from kvsaga.errors import InvalidRequest, KVSagaError, OutOfBlocks, UnknownSession
from kvsaga.manager import CacheStats, KVCacheManager, StepLookup, StepStart
from kvsaga.policy import Action, EvictionPolicy, make_policy
from kvsaga.scheduler import SCHEDULERS, Scheduler, SchedulerOutput, make_scheduler
from kvsaga.session import PauseHint

__version__ = "0.1.0"

__all__ = [
    "Action",
    "CacheStats",
    "EvictionPolicy",
    "InvalidRequest",
    "KVCacheManager",
    "KVSagaError",
    "KVSpec",
    "OutOfBlocks",
    "PauseHint",
    "PoolConfig",
    "SCHEDULERS",
    "Scheduler",
    "SchedulerOutput",
    "StepLookup",
    "StepStart",
    "UnknownSession",
    "make_policy",
    "make_scheduler",
]


def __getattr__(name: str):
    # The engine pulls in torch; load it only when asked for.
    if name in ("LLM", "SamplingParams"):
        from kvsaga.engine import llm, sampling

        return {"LLM": llm.LLM, "SamplingParams": sampling.SamplingParams}[name]
    raise AttributeError(f"module 'kvsaga' has no attribute {name!r}")
