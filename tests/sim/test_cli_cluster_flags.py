"""Flags the cluster run (--gpus/--router) does not use are not dropped without a word, and
--router's help says that it alone selects the cluster run (review finding: the help said
"with --gpus", yet --router alone switched to it; --jobs and --slo-factor were silently
ignored there). --report-period (session 49): lagging load reports in the cluster run,
checked as it is parsed, named when the single-GPU run ignores it."""

from __future__ import annotations

import json

import pytest

from kvsaga.cli import build_parser, main

TINY = ["sim", "--workload", "swe", "--sessions", "2", "--scale", "0.05", "--arrival-rate",
        "1", "--kv-memory", "1G", "--policy", "lru", "--router", "round-robin", "--quiet"]


def _help(flag: str) -> str:
    sim = build_parser()._subparsers._group_actions[0].choices["sim"]
    return " ".join(next(a.help for a in sim._actions if flag in a.option_strings).split())


def test_router_help_says_it_selects_the_cluster_run():
    text = _help("--router")
    assert "with --gpus:" not in text and "giving it runs the cluster simulation" in text
    assert "ignores it" in _help("--jobs") and "ignores it" in _help("--slo-factor")


@pytest.mark.parametrize(("extra", "named"), [
    # one flag: "does" (until session 52 "--jobs do not apply")
    (["--jobs", "2"], "--jobs does not apply to the cluster run"),
    (["--slo-factor", "2"], "--slo-factor does not apply to the cluster run"),
    (["--jobs", "2", "--slo-factor", "2"], "--jobs and --slo-factor do not apply"),
])
def test_ignored_flags_are_named(extra, named, capsys):
    assert main(TINY + extra) == 0
    out, err = capsys.readouterr()
    assert named in err
    assert "on 1 GPUs" in out  # --router alone: the cluster run, on one GPU


def test_no_note_without_them(capsys):
    assert main(TINY) == 0
    assert "not apply" not in capsys.readouterr().err


def test_report_period_help_names_the_live_default():
    text = _help("--report-period")
    assert "every this many seconds" in text and "Default (or 0): live reports" in text


@pytest.mark.parametrize(("value", "said"), [
    ("-1", "must be a finite number of seconds >= 0, got '-1'"),
    ("nan", "must be a finite number of seconds >= 0, got 'nan'"),
    ("inf", "must be a finite number of seconds >= 0, got 'inf'"),
    ("soon", "expected a number of seconds, got 'soon'"),
])
def test_a_bad_report_period_exits_2_naming_the_flag(value, said, capsys):
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--report-period", value])
    assert e.value.code == 2
    assert f"argument --report-period: {said}" in capsys.readouterr().err


def test_the_report_period_reaches_the_rows_and_the_refusals_are_printed(tmp_path, capsys):
    out_json = tmp_path / "rows.json"
    argv = [a if a != "round-robin" else "kvsaga" for a in TINY]
    assert main(argv + ["--gpus", "2", "--report-period", "0.5", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "reports every 0.5 s; imports refused: kvsaga workflow lru 0 (0.00 GB)" in out
    data = json.loads(out_json.read_text())
    assert data["config"]["report_period_s"] == 0.5
    assert [r["report_period_s"] for r in data["results"]] == [0.5]


def test_the_report_period_is_said_ignored_on_one_gpu(capsys):
    single = [a for a in TINY if a not in ("--router", "round-robin")]
    assert main(single + ["--report-period", "0.5"]) == 0
    assert "--report-period applies to the cluster run" in capsys.readouterr().err
