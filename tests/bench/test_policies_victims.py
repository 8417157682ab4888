"""bench/policies_victims.py: whose blocks a policy evicted, by the session's state, on fit
seeds only."""

from __future__ import annotations

import pytest

from tests.bench.test_policies import load
from tests.exits import usage_error


def test_an_evaluation_seed_is_refused(capsys):
    mod = load("policies_victims")
    with pytest.raises(ValueError, match="not a fit seed"):
        mod.victims("swe", 931, 0.6, "graph")
    with pytest.raises(SystemExit) as e:
        mod.main(["--seed", "941"])
    assert "seed 941 is not a fit seed" in usage_error(e, capsys)


def test_split_demoted_parts_add_up_to_the_demoted_victims():
    """`--split-demoted` (session 32) splits graph's demoted victims by whether the tool
    had returned (`imminent`); the run and the other states do not move."""
    mod = load("policies_victims")
    tokens, by, _ = mod.victims("swe+bfcl", 402, 0.6, "graph")
    tokens2, split, _ = mod.victims("swe+bfcl", 402, 0.6, "graph", split=True)
    assert tokens2 == tokens
    assert set(split) == set(mod.SPLIT_STATES)
    parts = [split[s]["blocks"] for s in ("demoted, tool out", "demoted, tool back")]
    assert sum(parts) == by["demoted"]["blocks"] > 0
    for s in ("queued", "paused"):
        assert split[s]["blocks"] == by[s]["blocks"]
