"""Fixtures tests/bench shares."""

from __future__ import annotations

import sys

import pytest

from tests.bench.afs_calibration import BENCH


@pytest.fixture(scope="module")
def veto_mods():
    """bench/'s policies_check, scheduling_veto_noise and scheduling_veto_nulls."""
    sys.path.insert(0, str(BENCH))
    try:
        import policies_check
        import scheduling_veto_noise
        import scheduling_veto_nulls
        yield policies_check, scheduling_veto_noise, scheduling_veto_nulls
    finally:
        sys.path.remove(str(BENCH))
