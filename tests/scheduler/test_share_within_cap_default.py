"""`ComputeShares._init_compute_share` without `within_cap` sets the documented default,
SHARE_WITHIN_CAP (0.5), the class attribute's value (it defaulted to 1.0, the whole cap)."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.fair_share import SHARE_WITHIN_CAP, ComputeShares


def test_init_compute_share_defaults_within_cap_to_share_within_cap():
    c = ComputeShares()
    c._init_compute_share(64, 256.0)
    assert c.share_within_cap == SHARE_WITHIN_CAP == ComputeShares.share_within_cap == 0.5
    c._init_compute_share(64, 256.0, 0.0)  # an explicit value is still taken
    assert c.share_within_cap == 0.0
    with pytest.raises(ValueError, match="share_within_cap must be in"):
        c._init_compute_share(64, 256.0, 1.5)
