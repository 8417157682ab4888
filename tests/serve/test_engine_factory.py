"""What `kvsaga-serve`'s settings build: the engine behind the server."""

from __future__ import annotations

from pathlib import Path

from kvsaga.serve.cli import engine_factory
from kvsaga.serve.settings import ServerSettings


def test_policies_price_evictions_for_the_served_model(tiny_dir: Path):
    settings = ServerSettings(model=str(tiny_dir), device="cpu", policy="graph",
                              kv_memory_bytes=2**20)
    engine = engine_factory(settings)()
    assert engine.manager.policy.cost is engine.cost
    assert engine.cost.block_bytes == engine.spec.bytes_per_block
