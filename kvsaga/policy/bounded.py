"""Per-name statistics that stay bounded in a process that runs for weeks. Pure Python.

Policies learn per workflow name and per tool name (the pause kind a session waits on).
Agent clients make up new names forever: a tool name may carry a call id, a workflow name a
ticket number. Each such table keeps only its most recently updated names, by update order
(a dict's insertion order, each update moving its key to the end), and forgets the stalest
past its cap; a forgotten name is predicted from the fallbacks every table already has for a
name never seen (the kind across workflows, the workflow, everything, the prior).

The caps are far above what the shipped workloads name (a few tools per workflow, four
workflow families), so no benchmark reaches them (docs/architecture.md, "Bounded state in a
long-running process").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from kvsaga.policy.returns import TRACKED_WORKFLOWS

__all__ = ["TRACKED_KINDS", "TRACKED_KINDS_PER_WORKFLOW", "TRACKED_TENANTS", "TRACKED_WORKFLOWS",
           "touch"]

# Pause kinds (tool names) with statistics of their own across workflows (the execution
# graph's per-kind fits, saga's per-tool latencies, graph's per-(workflow, tool) corrections
# count against TRACKED_WORKFLOWS + TRACKED_KINDS together).
TRACKED_KINDS = 1024
# Pause kinds with a node of their own in one workflow's graph.
TRACKED_KINDS_PER_WORKFLOW = 256
# Tenants (salts) with a record of their own in a scheduler: their summed admission waits
# and, for the compute share, their service (a tenant not competing now is the one dropped).
TRACKED_TENANTS = 1024

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def touch(table: dict[K, V], key: K, make: Callable[[], V], cap: int,
          dropped: Callable[[K, V], None] | None = None) -> V:
    """`table[key]` (made by `make()` when absent), moved to the end of `table`'s order, the
    stalest entries dropped first so that at most `cap` remain; `dropped(key, value)` is
    called for each one dropped."""
    v = table.pop(key, None)
    if v is None:
        v = make()
        while len(table) >= cap:
            old = next(iter(table))
            gone = table.pop(old)
            if dropped is not None:
                dropped(old, gone)
    table[key] = v
    return v
