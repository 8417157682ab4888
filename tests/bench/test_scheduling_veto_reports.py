"""bench/scheduling_veto_split.py `reports`: the veto's verdict from two saved
`scheduling_mix.py --report` outputs reads only the default workflow+graph rows."""

from __future__ import annotations

import pytest

from tests.bench_scripts import bench_modules

BASE = """- mix seed 102 50% workflow+graph: a: 1 / 2 / 0.5 / 0.0; afs_max_slowdown_ratio 1.76
- mix seed 102 50% workflow+graph (share_step_tokens 0): a: 1; afs_max_slowdown_ratio 9.00
- mix seed 102 50% fcfs+lru: a: 1; afs_max_slowdown_ratio 1.20
- noisy seed 103 25% workflow+graph: a: 1 / 2; afs_max_slowdown_ratio 2.91
"""


veto = bench_modules("scheduling_veto_split")


def test_reports_reads_the_default_rows_and_counts_rises(veto):
    cand = BASE.replace("ratio 1.76", "ratio 1.80").replace("ratio 9.00", "ratio 1.00")
    lines = veto.reports_lines(BASE, cand)
    assert "| mix seed 102 50% | 1.76 -> 1.80 |" in lines
    assert "| noisy seed 103 25% | 2.91 -> 2.91 |" in lines
    assert lines[-1] == "ratio higher at 1 of 2 cases (the veto: rejected)"
    assert veto.reports_lines(BASE, BASE)[-1].endswith("(the veto: passes)")
    with pytest.raises(ValueError, match="same mix rows"):
        veto.reports_lines(BASE, BASE.splitlines()[0])


ONE_SEED = """- mix 50% workflow+graph: a: 1 / 2 / 0.5 / 0.0; afs_max_slowdown_ratio 1.76
- mix 50% workflow+graph (share_step_tokens 0): a: 1; afs_max_slowdown_ratio 9.00
- mix 25% workflow+graph: a: 1; afs_max_slowdown_ratio inf
- noisy seed 103 25% workflow+graph: a: 1 / 2; afs_max_slowdown_ratio 10.50
"""


def test_reports_reads_mix_rows_without_a_seed_and_inf(veto):
    """One mix seed run (the default `--report`): its rows name no seed; a ratio may print
    as inf; ratios compare as numbers (10.50 vs 9.80 is a fall, not a string rise)."""
    assert set(veto.report_ratios(ONE_SEED)) == {
        ("mix", veto.NO_SEED, 50), ("mix", veto.NO_SEED, 25), ("noisy", 103, 25)}
    cand = ONE_SEED.replace("ratio 1.76", "ratio 1.80").replace("ratio 10.50", "ratio 9.80")
    lines = veto.reports_lines(ONE_SEED, cand)
    assert "| mix 50% | 1.76 -> 1.80 |" in lines
    assert "| mix 25% | inf -> inf |" in lines
    assert "| noisy seed 103 25% | 10.50 -> 9.80 |" in lines
    assert lines[-1] == "ratio higher at 1 of 3 cases (the veto: rejected)"
    with pytest.raises(ValueError):
        veto.report_ratios(ONE_SEED.replace("ratio inf", "ratio 1.2.3"))


@pytest.mark.parametrize("bad,says", [("[1]", "JSON object"), ("5", "JSON object"),
                                      ("0", "JSON object"), ("{x", "not JSON")])
def test_run_defaults_must_be_a_json_object(veto, bad, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        veto.main(["run", str(tmp_path / "out.json"), "--seeds", "102", "--defaults", bad])
    assert e.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
