"""Fixtures tests/bench shares."""

from __future__ import annotations

from tests.bench_scripts import bench_modules

# bench/'s policies_check, scheduling_veto_noise and scheduling_veto_nulls.
veto_mods = bench_modules("policies_check", "scheduling_veto_noise", "scheduling_veto_nulls")
