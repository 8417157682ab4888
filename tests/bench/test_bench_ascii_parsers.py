"""The bench/ parsers that read numbers out of a flag's text (a policy spec's constants, a
seed list, sim_speed's --jobs list) take ASCII digits only, as bench/ascii_args.py's flags
do: until session 54 they used plain float()/int(), which read "٤" or "４" as 4 and "1_000"
as a thousand (tests/bench/test_bench_ascii_args.py has the flags' own rule)."""

from __future__ import annotations

import argparse

import pytest

from tests.bench_scripts import import_bench

ARABIC_4, FULLWIDTH_4 = "\u0664", "\uff14"


def test_a_policy_spec_constant_takes_ascii_digits_only():
    policy_specs = import_bench("policy_specs")
    assert policy_specs.parse_spec("ttl[base_ttl_s=4]") == ("ttl", {"base_ttl_s": 4.0})
    assert policy_specs.parse_spec("ttl[base_ttl_s= 4.5 ]")[1] == {"base_ttl_s": 4.5}
    for text in (ARABIC_4, FULLWIDTH_4, "1_000"):
        with pytest.raises(ValueError, match="bad constant"):
            policy_specs.parse_spec(f"ttl[base_ttl_s={text}]")


def test_vllm_replay_seed_groups_take_ascii_digits_only():
    report = import_bench("vllm_replay_report")
    assert report.seed_groups("4,5;6", [4, 5, 6]) == [[4, 5], [6]]
    with pytest.raises(SystemExit, match="not comma-separated integers"):
        report.seed_groups(f"{ARABIC_4},5", [4, 5])


def test_sim_speed_jobs_lists_are_read_with_the_flags():
    sim_speed = import_bench("sim_speed")
    assert sim_speed.jobs_list("1,2") == [1, 2] and sim_speed.jobs_list("") == []
    for text in (f"1,{ARABIC_4}", "1_0", "0", "two"):
        with pytest.raises(argparse.ArgumentTypeError, match="integers >= 1"):
            sim_speed.jobs_list(text)


def test_a_fit_grid_entry_takes_ascii_digits_only():
    gate_fit = import_bench("vllm_gate_fit")
    (setting,) = gate_fit.parse_grid("20:16")
    assert (setting.aging_s, setting.prior_steps) == (20.0, 16.0)
    with pytest.raises(SystemExit, match="--fit-grid entry"):
        gate_fit.parse_grid(f"2{ARABIC_4}:16")
