"""bench/vllm_scheduler_replay.py's report lines that need no vLLM (the replay itself runs
against the real scheduler in tests/integrations/vllm's environment)."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_bench


def _load():
    return load_bench("vllm_scheduler_replay")


def test_bound_lines_give_the_ceiling_pressure_and_end_per_seed() -> None:
    mod = _load()
    args = mod.build_parser().parse_args(
        ["--seeds", "0", "--unbounded-blocks", "2000", "--token-scale", "0.05",
         "--time-scale", "2"])
    tool = mod.tool_s_per_task(args, 0)
    assert tool > 0
    rows = {"vllm": {0: {"task_time_mean_s": 3 * tool, "prefill_tokens": 4500, "end_s": 20.0,
                         "rebuilt_tokens": 1200, "rebuild_share": 0.25, "busy_s": 8.0}},
            "vllm@2000": {0: {"task_time_mean_s": tool, "prefill_tokens": 3000, "end_s": 9.0}}}
    (line,) = mod.bound_lines(args, rows)
    assert line.startswith("- seed 0: ceiling 3.00x")
    assert "pressure 1.50x" in line and "ends at 20.0 s" in line
    assert "rebuild share 25.0% (plain vLLM computed 1,200 tokens again: 2.0 s of its 8.0 s" in line
    bound = mod.tct_bound(args, 0)["bound_s"]
    assert f"no connector gains more than {3 * tool / bound:.2f}x" in line
    args.unbounded_blocks = 0  # no unbounded arm: no pressure figure
    del rows["vllm@2000"]
    (line,) = mod.bound_lines(args, rows)
    assert "pressure" not in line and "ceiling 3.00x" in line


def test_rebuild_share_is_the_rebuilt_tokens_time_over_the_steps_time() -> None:
    mod = _load()
    res = mod.ArmResult(prompt_tokens=100, cached_tokens=40, scheduled_tokens=300,
                        decode_tokens=20, rebuilt_tokens=80, rebuild_s=80 * 0.002, busy_s=0.8,
                        task_s=[1.0, 2.0], wait_s=[0.1])
    f = res.figures()
    assert f["rebuilt_tokens"] == 80 and abs(f["rebuild_share"] - 0.2) < 1e-12
    assert mod.ArmResult(task_s=[1.0], wait_s=[0.0], prompt_tokens=1).figures()[
        "rebuild_share"] == 0.0  # no steps: no share (not a division by zero)


def test_hint_session_is_a_choice_and_a_label_names_the_section() -> None:
    mod = _load()
    args = mod.build_parser().parse_args(["--hint", "session", "--label", "calibrated"])
    assert args.hint == "session" and args.label == "calibrated"


def _fit():
    return load_bench("vllm_gate_fit")


def test_fit_grid_parses_fifo_and_pairs_and_names_a_bad_entry() -> None:
    gf = _fit()
    grid = gf.parse_grid("fifo; 20:16 ;10:8;")
    assert [s.label for s in grid] == ["fifo", "predicted 20 / 16", "predicted 10 / 8"]
    assert grid[1].gate_args() == {"admission_order": "predicted", "aging_s": 20.0,
                                   "prior_steps": 16.0}
    assert len(gf.parse_grid(gf.DEFAULT_GRID)) == 16  # fifo and the 15 settings fitted
    (be,) = gf.parse_grid("20:16 best_effort_steps=5 gate.room_steps=1.5")
    assert be.label == "predicted 20 / 16 best_effort_steps=5 gate.room_steps=1.5"
    assert be.connector_extra({"best_effort_steps": 10, "gate_args": {"room_admit": True}}) == {
        "best_effort_steps": 5, "gate_args": {"room_admit": True, "room_steps": 1.5,
                                              "admission_order": "predicted", "aging_s": 20.0,
                                              "prior_steps": 16.0}}
    for bad in ("20", "x:1", "0:8", "20:0.5", "fifo;fifo", "", "20:16 be", "20:16 x=[",
                "20:16 gate.aging_s=3", "20:16 =1"):
        with pytest.raises(SystemExit) as e:
            gf.parse_grid(bad)
        assert "--fit-grid" in str(e.value)


def test_fit_refuses_seeds_outside_the_fit_seeds() -> None:
    gf = _fit()
    assert gf.check_fit_seeds([0, 4, 0]) == [0, 4]
    for seeds in ([0, 76], [81], []):
        with pytest.raises(SystemExit) as e:
            gf.check_fit_seeds(seeds)
        assert "fit seeds" in str(e.value)


def test_fit_chooses_the_best_worst_seed_then_median_ties_to_the_first() -> None:
    gf = _fit()
    a, b, c, d = (gf.Setting("fifo"), gf.Setting("predicted", 20.0, 16.0),
                  gf.Setting("predicted", 10.0, 8.0), gf.Setting("predicted", 5.0, 4.0))
    # b has the best median but the worst seed; c and d tie on both: c is listed first
    ups = {a: {0: 1.2, 1: 1.3, 2: 1.4}, b: {0: 1.1, 1: 1.9, 2: 2.0},
           c: {0: 1.25, 1: 1.3, 2: 1.5}, d: {0: 1.5, 1: 1.3, 2: 1.25}}
    assert gf.choose(ups) == c
    assert gf.choose({a: ups[a], b: {0: 1.2, 1: 1.35, 2: 1.5}}) == b  # equal worst: median


class _Figures:
    def __init__(self, tct: float) -> None:
        self.tct = tct

    def figures(self) -> dict:
        return {"task_time_mean_s": self.tct}


def test_fit_replays_every_setting_on_every_seed_and_writes_its_table() -> None:
    """A stand-in for the replay: TCT by (seed, the setting the connector extra names)."""
    gf = _fit()
    import argparse
    import json

    calls = []

    def fake_replay(args, model_dir, seed, policy):
        calls.append((seed, policy, args.connector_extra))
        if policy is None:
            return _Figures(40.0 + seed)
        g = json.loads(args.connector_extra)["gate_args"]
        assert json.loads(args.connector_extra)["keep"] == 1  # the caller's extra is kept
        tct = 30.0 if g["admission_order"] == "fifo" else 20.0 + g["aging_s"] * seed
        return _Figures(tct)

    args = argparse.Namespace(connector_extra='{"keep": 1, "gate_args": {"room_admit": true}}')
    grid = gf.parse_grid("fifo;1:16;5:16")
    res = gf.fit(args, "dir", [0, 1], grid, fake_replay)
    assert len(calls) == 2 + 3 * 2 and args.connector_extra.startswith('{"keep"')
    assert res["chosen"] == grid[1]  # 1:16 is 2.00x / 1.95x worst; fifo 1.33x; 5:16 1.64x
    assert res["speedups"][grid[0]] == {0: 40 / 30, 1: 41 / 30}
    lines = gf.fit_table(res, gf.Setting("predicted", 20.0, 16.0))
    assert lines[2].startswith("| fifo | 1.33x | 1.37x | 1.33x |")
    assert lines[3].startswith("| **predicted 1 / 16** | 2.00x | 1.95x |")
    assert "Chosen: **predicted 1 / 16**" in lines[-1] and "not in this grid" in lines[-1]
    # every setting ran over the extra: 1:16 is that default only where the extra is, too
    assert "1 / 16 ran with keep=1 gate.room_admit=true from --connector-extra" in gf.fit_table(
        res, grid[1])[-1]
    kept = gf.Setting("predicted", 1.0, 16.0, (("keep", 1), ("gate.room_admit", True)))
    assert "is the pick." in gf.fit_table(res, kept)[-1]
    assert json.dumps(gf.to_json(res))  # plain JSON


def test_the_default_is_found_where_an_entry_leaves_a_setting_at_its_default() -> None:
    gf = _fit()
    default = gf.Setting("predicted", 20.0, 16.0, (("best_effort_steps", 10.0),))
    grid = gf.parse_grid("fifo;20:16 best_effort_steps=0;20:16;20:16 best_effort_steps=10")
    assert gf.find_default(grid, default) == grid[2]  # best_effort_steps left at its default
    assert gf.find_default(grid[3:], default) == grid[3]
    assert gf.find_default(grid[:2], default) is None
    assert gf.gate_default().order in ("fifo", "predicted")  # read from the code


def test_an_entry_run_over_connector_extra_is_the_default_only_if_that_extra_is() -> None:
    """3fb55f1's reproduction: '20:16' run with --connector-extra best_effort_steps 10 where
    the default is 0 measured riding along on, so it is not the connector's default."""
    gf = _fit()
    import argparse

    default = gf.Setting("predicted", 20.0, 16.0, (("best_effort_steps", 0.0),))
    grid = gf.parse_grid("20:16;fifo")

    def fake_replay(args, model_dir, seed, policy):
        return _Figures(40.0 if policy is None else 20.0)

    ride = gf.fit(argparse.Namespace(connector_extra='{"best_effort_steps": 10}'), "dir", [0],
                  grid, fake_replay)
    last = gf.fit_table(ride, default)[-1]
    assert "is the pick" not in last
    assert ("not in this grid as run (predicted 20 / 16 ran with best_effort_steps=10 from "
            "--connector-extra, so it is not the default)") in last
    assert 'over --connector-extra {"best_effort_steps": 10}' in gf.fit_table(ride, default)[-2]
    assert gf.find_default(grid, default, {"best_effort_steps": 10}) is None
    assert gf.differs(grid[1], default, {"gate_args": {"room_admit": True}}) == [
        ("gate.room_admit", True), ("gate.admission_order", "fifo")]
    # the default's own value over it, or an entry that sets the default back: the default
    same = gf.fit(argparse.Namespace(connector_extra='{"best_effort_steps": 0}'), "dir", [0],
                  grid, fake_replay)
    assert gf.fit_table(same, default)[-1].endswith(f"({default.label}) is the pick.")
    back = gf.parse_grid("20:16 best_effort_steps=0")
    assert gf.find_default(back, default, {"best_effort_steps": 10}) == back[0]


def _section_args(mod, *extra: str):
    return mod.build_parser().parse_args(["--step-s", "0.025", "--token-s", "0.00065", *extra])


def test_results_sections_name_the_reply_cap_in_the_arms_and_the_fits_title() -> None:
    """Two runs that differ only in --reply-tokens write two sections, the fit's too."""
    mod = _load()
    fit = "The gate's admission-order fit", "bench/vllm_scheduler_replay.py --fit", "."
    plain, _ = mod.results_section(_section_args(mod, "--label", "x"), [], *fit,
                                   mod.defaults())
    # the title before --reply-tokens was in it: earlier sections are replaced on a rerun
    assert plain == ("### The gate's admission-order fit on a simulated clock: 0.025 s per "
                     "step + 0.00065 s per token, x (written by bench/vllm_scheduler_replay.py "
                     "--fit)")
    argv = ["--reply-tokens", "8", "--label", "x"]
    capped, body = mod.results_section(_section_args(mod, *argv), argv, *fit, mod.defaults())
    assert capped != plain and "per token, replies <= 8 tokens, x (written" in capped
    assert body.startswith("`VENV/bin/python bench/vllm_scheduler_replay.py --reply-tokens 8")
    assert "replies at most 8 tokens, 32-token blocks" in body and body.endswith("hints median.")
    arms, _ = mod.results_section(_section_args(mod, *argv), argv, "vLLM's scheduler",
                                  "bench/vllm_scheduler_replay.py", ".", mod.defaults())
    assert arms.startswith("### vLLM's scheduler on a simulated clock: 0.025 s")
    assert "replies <= 8 tokens, x (written by bench/vllm_scheduler_replay.py)" in arms


def test_results_sections_name_every_setting_that_is_not_the_default() -> None:
    """Review s49 gate finding 4: runs on other seeds, hints, sessions, KV shares and arms
    had one title (step cost, reply cap and label alone), so the later silently replaced
    the earlier's block. Each such setting is named now; a default run's title, and the
    settings that change no figure of the table (--json, --breakdown, --seed-groups), keep
    the title it had."""
    mod = _load()
    cost = ["--step-s", "0.025", "--token-s", "0.00065"]

    def title(*argv: str) -> str:
        args = mod.build_parser().parse_args([*cost, *argv])
        return mod.arms_section(args, list(argv), mod.defaults())[0]

    a = title("--seeds", "81,82,83", "--hint", "median", "--sessions", "10",
              "--kv-fraction", "0.15", "--policies", "ttl")
    b = title("--seeds", "84,85,86", "--hint", "session", "--sessions", "6",
              "--kv-fraction", "0.5", "--policies", "ttl+nogate")
    assert a != b
    assert a == ("### vLLM's scheduler on a simulated clock: 0.025 s per step + 0.00065 s "
                 "per token, --sessions 10, --seeds 81,82,83, --kv-fraction 0.15, --policies "
                 "ttl (written by bench/vllm_scheduler_replay.py)")
    assert ", --seeds 84,85,86, --hint session, --policies ttl+nogate (written" in b
    plain = title()
    assert plain == ("### vLLM's scheduler on a simulated clock: 0.025 s per step + 0.00065 s "
                     "per token (written by bench/vllm_scheduler_replay.py)")
    assert title("--json", "x.json", "--breakdown", "--seed-groups", "0") == plain
    titles = {plain} | {title(*extra) for extra in (
        ["--token-scale", "0.1"], ["--time-scale", "2"], ["--kv-blocks", "31"],
        ["--all-hits"], ["--connector-extra", '{"best_effort_steps": 0}'],
        ["--block-size", "64"], ["--model-dir", "/other"])}
    assert len(titles) == 8


def test_a_title_names_no_path_grid_or_label_repeat() -> None:
    """Review s49 gatediff finding 2: 80fdbad's titles named `--model-dir`'s absolute path
    (so the same command from another $HOME wrote another section), `--fit-grid` whole and
    every setting beside the `--label` that already says what the run is."""
    mod = _load()

    def title(*argv: str) -> str:
        args = mod.build_parser().parse_args(["--step-s", "0.025", "--token-s", "0.00065",
                                              *argv])
        return mod.results_section(args, list(argv), "F", "w", ".", mod.defaults())[0]

    assert title("--model-dir", "/a/m-hf") == title("--model-dir", "/b/m-hf")
    assert title("--model-dir", "/a/m-hf").endswith(", --model-dir m-hf (written by w)")
    assert title("--model-dir", str(mod.DEFAULT_MODEL_DIR).replace("/", "/x/", 1)) == title()
    assert title("--fit", "--fit-grid", "20:16 best_effort_steps=0") == title()
    assert title("--fit-seeds") == title()
    assert title("--seeds", "81", "--sessions", "10", "--label", "ten sessions") == (
        "### F on a simulated clock: 0.025 s per step + 0.00065 s per token, ten sessions "
        "(written by w)")


def _recorded_sections() -> list[tuple[str, list[str]]]:
    """Each section bench/RESULTS.md holds from this replay (arms and `--fit`) with the
    command its body records, less the two that were retitled by hand with the dates of
    the code they measured (room_steps 1 and 2, 16736 and 16776): their command is one, and
    its rerun is meant to start a section of its own."""
    import re
    import shlex
    from pathlib import Path

    lines = (Path(__file__).parents[2] / "bench" / "RESULTS.md").read_text(
        encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if (line.startswith("### ") and "(written by bench/vllm_scheduler_replay.py" in line
                and " UTC" not in line):
            cmd = re.search(r"`VENV/bin/python bench/vllm_scheduler_replay.py ([^`]*)`",
                            "\n".join(lines[i + 1:i + 6]))
            out.append((line, shlex.split(cmd.group(1))))
    return out


def test_each_recorded_sections_command_rebuilds_its_title() -> None:
    """Review s49 gatediff finding 2: a rerun of a recorded section's command must write
    into that section (docs/simulator.md: replaced by their next run), the `--fit` ones
    too. After 80fdbad none of the 26 did; the five unlabelled sections were retitled once
    to what their commands build now (their labelled peers kept theirs)."""
    mod = _load()
    fit = ("The gate's admission-order fit", "bench/vllm_scheduler_replay.py --fit", "")
    recorded = _recorded_sections()
    assert len(recorded) >= 24
    for line, argv in recorded:
        args = mod.build_parser().parse_args(argv)
        if args.fit:
            title = mod.results_section(args, argv, *fit, mod.defaults())[0]
        else:
            title = mod.arms_section(args, argv, mod.defaults())[0]
        assert title == line, argv


def test_fit_writes_its_section_under_the_shared_title(tmp_path, monkeypatch) -> None:
    """`--fit --write-results` through main: the section's title is `results_section`'s."""
    mod = _load()
    (tmp_path / "config.json").write_text("{}")
    written = []

    class _Ar:
        RESULTS, VLLM_SECTION = "RESULTS.md", "vllm"

        @staticmethod
        def write_section(path, title, body, writer, parent):
            written.append((title, body))

        @staticmethod
        def refuse_early(path, title, writer, parent):
            pass

    monkeypatch.setattr(mod, "_agent_replay", lambda: _Ar)
    monkeypatch.setattr(mod, "replay", lambda args, d, seed, policy: _Figures(
        40.0 if policy is None else 20.0))
    argv = ["--model-dir", str(tmp_path), "--seeds", "0", "--fit", "--fit-grid", "20:16",
            "--reply-tokens", "8", "--write-results"]
    assert mod.main(argv) == 0
    ((title, body),) = written
    assert title == mod.results_section(mod.build_parser().parse_args(argv), argv,
                                        "The gate's admission-order fit",
                                        "bench/vllm_scheduler_replay.py --fit", "",
                                        mod.defaults())[0]
    assert "replies <= 8 tokens" in title and "| **predicted 20 / 16** | 2.00x |" in body


def test_breakdown_line_names_each_arms_parts() -> None:
    bd = load_bench("vllm_replay_breakdown")
    f = {"task_time_mean_s": 30.0, "task_wait_mean_s": 4.0, "task_service_mean_s": 6.0,
         "steps": 1200, "busy_s": 50.0, "rebuild_share": 0.1}
    rows = {"vllm": {3: f}, "vllm+ttl": {3: {**f, "connector_gate_wait_s": 12.5}}}
    (line,) = bd.breakdown_lines(rows, {3: 20.0})
    assert line.startswith("- seed 3: mean TCT = tool pauses + queue waits + service")
    assert "vllm 30.0 = 20.0 + 4.0 + 6.0 s (1,200 steps, 50.0 s busy, 5.0 s rebuild)" in line
    assert "gate waits 12.5 s)" in line


def test_fit_grid_sched_keys_become_scheduler_args_and_order_suffixes_split() -> None:
    gf = _fit()
    (setting,) = gf.parse_grid('20:16 sched.aging_s=60 sched.work="steps" keep_demoted=true')
    extra = setting.connector_extra({"scheduler_args": {"prior_steps": 8}})
    assert extra["scheduler_args"] == {"prior_steps": 8, "aging_s": 60, "work": "steps"}
    assert extra["keep_demoted"] is True and "sched.aging_s" not in extra
    assert "scheduler_args" not in gf.parse_grid("20:16")[0].connector_extra({})
    args = _load().build_parser().parse_args(["--fit-arm", "ttl+sched"])
    assert gf.fit_arm(args) == "ttl+sched" and gf.fit_arm(object()) == gf.FIT_ARM
    mod = _load()
    assert mod.split_order("ttl+nogate+sched") == ("ttl+nogate", "sched")
    assert mod.split_order("ttl+srpt") == ("ttl", "srpt")
    assert mod.split_order("ttl+ride") == ("ttl+ride", None)


def test_a_nogate_arm_leaves_out_the_gate_keys_of_connector_extra() -> None:
    """The connector refuses the gate's keys with admission off (they were ignored), so a
    `--connector-extra` meant for the gated arms would fail the +nogate arm beside them."""
    arm_extra = _load().arm_extra
    base = {"gate_args": {"room_admit": False}, "keep_demoted": True, "reserve_blocks": 2,
            "step_cost_args": {"min_steps": 3}}
    # (step_cost_args kept: the stats' step fit reads it with admission off too)
    assert arm_extra(base, {"admission": False}) == {"reserve_blocks": 2, "admission": False,
                                                     "step_cost_args": {"min_steps": 3}}
    assert arm_extra(base, {"admission": True}) == {**base, "admission": True}
    assert arm_extra(base, {}) == base and "admission" not in base


@pytest.mark.parametrize(("groups", "says"), [
    ("5,6;7", "seed 7 is not among --seeds 5,6"),
    ("5;;6", "a group names no seed"),
    ("5,x", "'5,x' is not comma-separated integers"),
])
def test_seed_groups_are_checked_before_any_replay(tmp_path, monkeypatch, groups: str,
                                                   says: str) -> None:
    """A group naming a seed the run does not replay, an empty group or a non-integer is
    refused before the first replay (review s48, bench finding 3: it crashed the median
    after every replay, before --json or --write-results, losing the run)."""
    mod = _load()
    (tmp_path / "config.json").write_text("{}")

    def replayed(*_a, **_k):
        raise AssertionError("a replay ran before --seed-groups was checked")

    monkeypatch.setattr(mod, "replay", replayed)
    with pytest.raises(SystemExit, match=says):
        mod.main(["--seeds", "5,6", "--seed-groups", groups, "--model-dir", str(tmp_path)])
    assert mod.seed_groups("5;6", [5, 6]) == [[5], [6]] and mod.seed_groups(None, [5]) is None
