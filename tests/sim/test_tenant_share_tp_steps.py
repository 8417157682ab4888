"""`tenant_share(config, k)` is 1/k of the GPU time-sliced k ways: every step takes k times as
long, tensor-parallel presets included (their all-reduce latency was left unscaled, so a
70b step on half the GPU took 1.95x, not 2x)."""

from __future__ import annotations

import numpy as np
import pytest

from kvsaga.sim.compare import tenant_share
from kvsaga.sim.config import SimConfig
from kvsaga.sim.cost import PRESETS

STEPS = [(0, 0, 0, 1, 2000, 0), (512, 512 * 513 // 2, 0, 0, 0, 0),
         (64, 64 * 65 // 2, 4096, 8, 30000, 0), (0, 0, 0, 0, 0, 1 << 20),
         (128, 0, 0, 32, 1000, 1 << 24)]


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("k", [2, 3])
def test_every_step_takes_k_times_as_long(preset: str, k: int) -> None:
    cfg = SimConfig(preset=preset, num_gpu_blocks=4000)
    share = tenant_share(cfg, k)
    for args in STEPS:
        assert share.cost.step_time(*args) == pytest.approx(k * cfg.cost.step_time(*args),
                                                           rel=1e-12)
    contexts = np.array([1, 500, 4000])
    assert share.cost.decode_step_times(4, contexts) == pytest.approx(
        k * cfg.cost.decode_step_times(4, contexts), rel=1e-12)


def test_tensor_parallel_presets_are_covered() -> None:
    assert any(p.tp > 1 for p in PRESETS.values())
