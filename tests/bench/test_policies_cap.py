"""bench/policies_cap.py: a diagnosis of fit cases only, with the cap on and off."""

from __future__ import annotations

import pytest

from tests.bench.test_policies import load
from tests.exits import usage_error


def test_cases_parse_and_only_fit_seeds_run(capsys):
    cap = load("policies_cap")
    assert cap.parse_case("swe:1:0.3") == ("swe", 1, 0.3)
    for bad in ("swe:1", "swe:x:0.3", "swe:1:0.3:4"):
        with pytest.raises(ValueError, match="bad case"):
            cap.parse_case(bad)
    with pytest.raises(ValueError, match="not a fit seed"):
        cap.parse_case("swe:961:0.3")  # a fresh seed is refused before any run
    with pytest.raises(SystemExit) as e:
        cap.main(["--cases", "swe:971:0.3"])
    assert "seed 971 is not a fit seed" in usage_error(e, capsys)


def test_the_arms_are_the_default_scheduler_and_the_cap_off():
    cap = load("policies_cap")
    arms = dict(cap.ARMS)
    assert arms["default"] == {} and arms["cap off"] == {"decode_prefill_tokens": 0}
    from kvsaga.scheduler.decode_stall import DECODE_PREFILL_TOKENS
    assert DECODE_PREFILL_TOKENS > 0  # else the two arms would be one scheduler
