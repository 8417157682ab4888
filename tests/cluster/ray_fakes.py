"""Ray Serve's own fake replicas with kvsaga's routing stats, and a `KvsagaRequestRouter`
over them, for the router tests (tests/cluster/test_ray_router*.py, test_end_goes_home.py,
test_rejected_move.py). Import it after `pytest.importorskip("ray.serve")`: it needs Ray."""

from __future__ import annotations

from ray.serve._private.common import (
    DeploymentHandleSource,
    DeploymentID,
    RequestMetadata,
)
from ray.serve._private.test_utils import FakeRunningReplica
from ray.serve.request_router import PendingRequest

from kvsaga.integrations.ray.router import KvsagaRequestRouter


class StatsReplica(FakeRunningReplica):
    """A fake replica that also reports kvsaga routing stats (`stats`); `queue_len`, when
    given, is the queue length it answers Ray's probes with."""

    def __init__(self, name: str, queue_len: int | None = None, **stats) -> None:
        super().__init__(name)
        self.stats = stats
        if queue_len is not None:
            self.set_queue_len_response(queue_len)

    @property
    def routing_stats(self) -> dict:
        return self.stats


def make_router(replicas, **kwargs) -> KvsagaRequestRouter:
    """A `KvsagaRequestRouter` (its state initialized with `kwargs`) over `replicas`."""
    r = KvsagaRequestRouter(DeploymentID(name="KvsagaEngine"), DeploymentHandleSource.UNKNOWN)
    r.initialize_state(**kwargs)
    r.update_replicas(replicas)
    return r


def pending(call: dict, rid: str) -> PendingRequest:
    """Ray's pending request carrying the routing `call` (`gateway.routing_call`)."""
    return PendingRequest(args=[call], kwargs={}, metadata=RequestMetadata(rid, rid))
