"""Fixtures shared by the simulator CLI's tests."""

from __future__ import annotations

import pytest

from kvsaga.sim import cli as sim_cli


@pytest.fixture
def no_run(monkeypatch):
    """`kvsaga sim` refuses before it simulates or loads a trace: either would fail the
    test (an argument check that came too late)."""
    def refuse(*a, **k):
        raise AssertionError("simulated before the arguments were checked")

    monkeypatch.setattr(sim_cli, "compare", refuse)
    monkeypatch.setattr(sim_cli, "_load", refuse)
