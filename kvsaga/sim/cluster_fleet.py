"""The cluster simulator's GPUs (`Fleet`: each built when a step first reaches it), the
router's view of their reports (`LiveStats`) and the GPUs by name (`ByName`).

Split from kvsaga/sim/cluster.py in session 49, unchanged but for the lagging reports a
GPU gets when built (`kvsaga.sim.cluster_reports`), so that both modules stay under 600
lines: cluster.py runs the GPUs behind the router; this module holds and names them.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from kvsaga.routing import ReplicaStats
from kvsaga.sim.cluster_reports import LaggingReports, report_phase

if TYPE_CHECKING:
    from kvsaga.sim.cluster import _GPU, ClusterSimulator


class LiveStats(Mapping):
    """GPU name -> its routing stats (`_GPU.routing_stats`: live, or its lagging report),
    built when the router first reads them (round-robin and affinity read none). A GPU not
    built yet reports a fresh GPU's stats, without being built."""

    __slots__ = ("_fleet",)

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def __getitem__(self, name: str) -> ReplicaStats:
        gpu = self._fleet.built(name)
        return self._fleet.fresh_stats() if gpu is None else gpu.routing_stats()

    def __iter__(self):
        return iter(self._fleet.names)

    def __len__(self) -> int:
        return len(self._fleet)


class Fleet(Sequence):
    """The cluster's GPUs, each built when first used: routed a step, or indexed. A GPU no
    step has reached holds nothing (its manager, policy and scheduler as built, its clock
    at 0), so it is not built: the router reads a fresh GPU's stats for it, the loop's next
    time for it is never (inf), and the result counts its busy time, clock and tokens as 0
    -- what the GPU would report. Memory then grows with the GPUs the trace's steps reach,
    not with `gpus` (each built GPU holds a manager with per-block lists: ~1.7 MB at the
    default preset's 25,650 blocks). Indexing or iterating builds the GPUs it reaches.

    `active`: the built GPUs in index order (the loop's times follow it, so ties go to the
    lowest index, as when every GPU was built up front)."""

    def __init__(self, cluster: ClusterSimulator, count: int) -> None:
        self._cluster = cluster
        self.names = [f"gpu{i}" for i in range(count)]
        self._position = {name: i for i, name in enumerate(self.names)}
        self._built: dict[int, _GPU] = {}
        self.active: list[_GPU] = []
        self._fresh: ReplicaStats | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"GPU index {i} out of range for {n} GPUs")
        i %= n
        gpu = self._built.get(i)
        return gpu if gpu is not None else self._build(i)

    def built(self, name: str) -> _GPU | None:
        """The GPU named `name` if it was built, else None (KeyError: no such GPU)."""
        return self._built.get(self._position[name])

    def by_name(self, name: str) -> _GPU:
        """The GPU named `name`, built if it was not."""
        return self[self._position[name]]

    def fresh_stats(self) -> ReplicaStats:
        """What a GPU no step has reached reports (from one such GPU, built once and never
        run: each unbuilt GPU would report exactly this). Unstamped, lagging reports or
        not: its state is the same at every tick, and the router has sent it nothing that
        a stamp would tell apart."""
        if self._fresh is None:
            c = self._cluster
            self._fresh = c.gpu_class(c, "fresh", c.config).live_stats()
        return self._fresh

    def _build(self, i: int) -> _GPU:
        c = self._cluster
        gpu = c.gpu_class(c, self.names[i], c.config)
        if c.report_period_s is not None:
            gpu.reports = LaggingReports(c.report_period_s,
                                         report_phase(i, c.report_period_s))
        self._built[i] = gpu
        pos = bisect.bisect(self.active, i, key=lambda g: self._position[g.name])
        self.active.insert(pos, gpu)
        c._built(gpu, pos)
        return gpu


class ByName(Mapping):
    """GPU name -> GPU (`ClusterSimulator.by_name`), building a GPU when it is read."""

    __slots__ = ("_fleet",)

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def __getitem__(self, name: str) -> _GPU:
        return self._fleet.by_name(name)

    def __iter__(self):
        return iter(self._fleet.names)

    def __len__(self) -> int:
        return len(self._fleet)
