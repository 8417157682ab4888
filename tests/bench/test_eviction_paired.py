"""bench/allocator.py --eviction-scaling --paired (bench/eviction_paired.py): a tiny real run's
structure, the paired arithmetic (ratios within a round, quartiles, rounds over 2x, growth
relative to lru's, the goals) on known samples, and the flags' checks. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.bench_scripts import BENCH, load_bench

# The scripts run as a user runs them, with this tree's kvsaga.
ENV = {**os.environ, "PYTHONPATH": str(BENCH.parent)}


def load():
    """bench/eviction_paired.py, after the bench/allocator.py and bench/eviction_scaling.py
    it imports."""
    load_bench("allocator")
    load_bench("eviction_scaling")
    return load_bench("eviction_paired")


def test_quartiles_interpolate_between_order_statistics():
    mod = load()
    assert mod.quartiles([4.0, 1.0, 3.0, 2.0, 5.0]) == (2.0, 3.0, 4.0)
    # n = 4: positions 0.75, 1.5, 2.25 in the sorted values 1, 2, 4, 8.
    assert mod.quartiles([8.0, 1.0, 4.0, 2.0]) == pytest.approx((1.75, 3.0, 5.0))
    assert mod.quartiles([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        mod.quartiles([])


def test_tiny_real_run_pairs_every_arm_in_every_round():
    mod = load()
    calls = []

    def timer(m, sid, n, now):  # the real allocation, a made-up time: no timing asserted
        m.allocate_slots(sid, n, now=now)
        calls.append(now)
        return 1e-6

    samples = mod.paired_samples([8, 16], ("lru", "ttl", "saga"), rounds=5,
                                 rounds_per_build=2, new_blocks=4, timer=timer)
    assert set(samples) == {"instant", "apart"}
    for reading in samples.values():
        assert set(reading) == {8, 16}
        for arms in reading.values():
            assert list(arms) == ["lru", "ttl", "saga", mod.AA]
            assert all(len(v) == 5 for v in arms.values())
            assert all(x == pytest.approx(1e-6 * 1e9 / 4) for v in arms.values() for x in v)
    assert len(calls) == 5 * 2 * 2 * 4  # rounds x readings x counts x arms
    text = "\n".join(mod.report(samples, 2))
    assert text.count("| paused sessions | lru ns | ttl | saga | lru (A/A) |") == 2
    assert "1.00x [1.00-1.00] (0)" in text and "Growth from 8 to 16" in text


def test_ratios_are_taken_within_a_round():
    mod = load()
    # lru's time swings 10x between rounds (the host's load); ttl is always 1.5x lru's in the
    # same round, saga 3x in one round of four: the paired ratios see neither swing.
    lru = [100.0, 1000.0, 200.0, 400.0]
    samples = {"instant": {
        1000: {"lru": lru, "ttl": [1.5 * x for x in lru],
               "saga": [1.2 * lru[0], 3.0 * lru[1], 1.2 * lru[2], 1.2 * lru[3]],
               mod.AA: [0.9 * lru[0], 1.1 * lru[1], 1.0 * lru[2], 1.0 * lru[3]]},
        4000: {"lru": lru, "ttl": [1.5 * x for x in lru],
               "saga": [2.4 * x for x in lru], mod.AA: list(lru)},
    }}
    fig = mod.summarize(samples)["instant"]
    assert fig["lru_ns"] == {1000: 300.0, 4000: 300.0}
    assert fig["ratio"][4000]["ttl"] == pytest.approx((1.5, 1.5, 1.5, 0))
    # As a difference the swing stays: ttl's excess 50, 500, 100, 200 -> median 150.
    assert fig["excess"][4000]["ttl"] == pytest.approx(150.0)
    assert fig["excess"][4000][mod.AA] == 0.0
    assert fig["ratio"][4000]["saga"] == pytest.approx((2.4, 2.4, 2.4, 4))
    # saga at 1,000: ratios 1.2, 3.0, 1.2, 1.2 -> quartiles 1.2, 1.2, 1.65; one over 2x.
    assert fig["ratio"][1000]["saga"] == pytest.approx((1.2, 1.2, 1.65, 1))
    assert fig["ratio"][1000][mod.AA] == pytest.approx((0.975, 1.0, 1.025, 0))
    # Growth relative to lru's: ttl 1.5 / 1.5 = 1 every round; saga 2.4 / (1.2, 3, 1.2, 1.2).
    assert fig["growth"]["ttl"] == pytest.approx((1.0, 1.0, 1.0))
    assert fig["growth"]["saga"] == pytest.approx((1.7, 2.0, 2.0))
    assert fig["raw_growth"]["lru"] == pytest.approx((1.0, 1.0, 1.0))
    lines = mod.goals(fig, [1000, 4000])
    assert lines[0].startswith("- every policy's median <= 2x lru at 4,000 paused sessions: "
                               "**missed** (worst saga 2.40x; over it: saga 2.40x)")
    # The A/A arm's relative growth: 1/0.9, 1/1.1, 1, 1 -> IQR 0.977..1.028: bound 1.051.
    assert "**missed** (worst saga 2.000x; over it: saga 2.000x)" in lines[1]
    assert "1.051x" in lines[1]


def test_goals_met_within_the_bounds():
    mod = load()
    lru = [100.0, 120.0, 80.0, 100.0]
    by = {"lru": lru, "ttl": [1.9 * x for x in lru], mod.AA: [0.95 * lru[0], 1.05 * lru[1],
                                                             lru[2], lru[3]]}
    samples = {"apart": {1000: by, 4000: by, 16000: {k: list(v) for k, v in by.items()}}}
    fig = mod.summarize(samples)["apart"]
    lines = mod.goals(fig, [1000, 4000, 16000])
    assert "**met** (worst ttl 1.90x)" in lines[0]
    assert "flat from 1,000 to 16,000" in lines[1] and "**met**" in lines[1]


def test_paired_samples_checks_its_input():
    mod = load()
    with pytest.raises(ValueError, match="lru"):
        mod.paired_samples([8], ("ttl",), 2, 1)
    with pytest.raises(ValueError, match="at least 1"):
        mod.paired_samples([8], ("lru",), 0, 1)


@pytest.mark.parametrize("argv, message", [
    (["--paired", "0"], "at least 1, got 0"),
    (["--paired", "2", "--rounds-per-build", "0"], "--rounds-per-build must be at least 1"),
    (["--paired", "2", "--policies", "lru,nope"], "bad policy spec 'nope'"),
    (["--paired", "2", "--policies", "ttl,saga"], "add lru to --policies"),
    (["--paired", "2", "--paused", "4k"], "--paused takes comma-separated integers"),
    (["--paired", "2", "--write"], "drop --write"),
])
def test_bad_flags_stop_before_any_build(argv, message):
    r = subprocess.run([sys.executable, str(BENCH / "allocator.py"), "--eviction-scaling",
                        "--paused", "8", *argv],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode != 0
    assert message in r.stderr
    assert "built" not in r.stderr


def test_rounds_per_build_needs_paired():
    r = subprocess.run([sys.executable, str(BENCH / "allocator.py"), "--eviction-scaling",
                        "--rounds-per-build", "4"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 2 and "go with --paired ROUNDS" in r.stderr


def test_help_names_every_paired_flag():
    r = subprocess.run([sys.executable, str(BENCH / "allocator.py"), "--help"],
                       capture_output=True, text=True, timeout=120, env=ENV, check=True)
    for flag in ("--paired ROUNDS", "--rounds-per-build N", "--paired-seed SEED"):
        assert flag in r.stdout


def test_a_saved_reading_is_reported_again(tmp_path, capsys):
    mod = load()
    lru = [100.0, 200.0]
    samples = {r: {"1000": {"lru": lru, "ttl": [150.0, 300.0], mod.AA: lru},
                   "4000": {"lru": lru, "ttl": [150.0, 300.0], mod.AA: lru}}
               for r in ("instant", "apart")}
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"command": "python bench/allocator.py --eviction-scaling "
                                            "--paired 2 --rounds-per-build 1",
                                 "samples": samples}), encoding="utf-8")
    mod.main([str(saved)])
    out = capsys.readouterr().out
    assert out.count("| 4,000 | 150 | 1.50x [1.50-1.50] (0) | 1.00x [1.00-1.00] (0) |") == 2
    assert "caches rebuilt every 1 rounds" in out and "ttl +75" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit, match="not the --json of a --paired run"):
        mod.main([str(bad)])
