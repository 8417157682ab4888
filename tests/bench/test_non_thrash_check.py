"""bench/scheduling_fit.py --non-thrash-check: bad input is refused by name before any
simulation, and the line reports the figures `non_thrash_worse` returns."""

from __future__ import annotations

import re

import pytest

from tests.bench_scripts import bench_modules
from tests.exits import usage_error

fit = bench_modules("scheduling_fit")


@pytest.mark.parametrize("text,match", [
    ("{paused_reserve: true}", "takes a JSON object"),
    ('["paused_reserve"]', "non-empty JSON object"),
    ("{}", "non-empty JSON object"),
    ('{"paused_reservee": true}', r"unknown workflow scheduler parameters \['paused_reservee'\]"),
    ('{"paused_reserve": "yes"}', "paused_reserve must be True, False or .short."),
    ('{"growth_reserve": -1}', "growth_reserve must be a number >= 0")])
def test_bad_params_are_refused_by_name_before_any_run(fit, monkeypatch, capsys, text, match):
    def no_run(*a, **k):
        raise AssertionError("simulated despite bad input")
    monkeypatch.setattr(fit, "non_thrash_worse", no_run)
    with pytest.raises(ValueError, match=match):
        fit.parse_params(text)
    with pytest.raises(SystemExit) as e:
        fit.main(["--non-thrash-check", text])
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_the_line_names_the_worse_figures(fit, monkeypatch, capsys):
    seen = []

    def worse(params, workers, policy):
        seen.append((params, workers, policy))
        return ["swe 1x 50% seed 101: mean TCT 10.0 -> 10.5 s (+5.0%)"]
    monkeypatch.setattr(fit, "non_thrash_worse", worse)
    assert fit.main(["--non-thrash-check", '{"paused_reserve": true}']) == 0
    out = capsys.readouterr().out
    assert seen == [({"paused_reserve": True}, 1, fit.DEFAULT_POLICY)]
    assert "{'paused_reserve': True}: non-thrash points" in out
    assert out.rstrip().endswith("swe 1x 50% seed 101: mean TCT 10.0 -> 10.5 s (+5.0%)")


def test_held_out_defaults_are_set_for_the_run_and_refused_elsewhere(fit, monkeypatch,
                                                                      capsys):
    """`--held-out SEEDS --defaults PARAMS` runs with PARAMS as workflow's defaults (a
    previous default beside the fresh run); elsewhere, or with a bad value, it is refused
    before anything changed, naming --defaults (a bad value named --non-thrash-check)."""
    from kvsaga.scheduler import WorkflowScheduler
    kw = WorkflowScheduler.__init__.__kwdefaults__
    monkeypatch.setitem(kw, "decode_prefill_tokens", kw["decode_prefill_tokens"])
    seen = []

    def run(tasks, workers):
        seen.append(kw["decode_prefill_tokens"])
        return []
    monkeypatch.setattr(fit, "run", run)
    monkeypatch.setattr(fit, "held_out_table", lambda *a: "table")
    assert fit.main(["--held-out", "59", "--families", "swe",
                     "--defaults", '{"decode_prefill_tokens": 0}']) == 0
    assert seen == [0] and "--defaults" in capsys.readouterr().out
    kw["decode_prefill_tokens"] = 128
    for argv, says in (
            (["--tail-guard-check", "--defaults", '{"decode_prefill_tokens": 0}'],
             "--defaults applies to --held-out only"),
            (["--held-out", "59", "--defaults", '{"decode_prefill_tokens": -1}'],
             "--defaults: scheduler parameter decode_prefill_tokens must be an integer >= 0, "
             "got -1"),
            (["--held-out", "59", "--defaults", "[1]"], "--defaults takes a non-empty JSON"),
            (["--held-out", "59", "--defaults", '{"nope": 1}'],
             "--defaults: unknown workflow scheduler parameters ['nope']")):
        with pytest.raises(SystemExit) as e:
            fit.main(argv)
        assert says in usage_error(e, capsys)
    assert kw["decode_prefill_tokens"] == 128  # a refused value changed nothing
