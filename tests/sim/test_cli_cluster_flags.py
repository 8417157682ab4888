"""Flags the cluster run (--gpus/--router) does not use are not dropped without a word, and
--router's help says that it alone selects the cluster run (review finding: the help said
"with --gpus", yet --router alone switched to it; --jobs and --slo-factor were silently
ignored there)."""

from __future__ import annotations

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
    (["--jobs", "2"], "--jobs do not apply"),
    (["--slo-factor", "2"], "--slo-factor do not apply"),
    (["--jobs", "2", "--slo-factor", "2"], "--jobs and --slo-factor do not apply"),
])
def test_ignored_flags_are_named(extra, named, capsys):
    assert main(TINY + extra) == 0
    out, err = capsys.readouterr()
    assert named in err
    assert "on 1 GPUs" in out  # --router alone: the cluster run, on one GPU


def test_no_note_without_them(capsys):
    assert main(TINY) == 0
    assert "do not apply" not in capsys.readouterr().err
