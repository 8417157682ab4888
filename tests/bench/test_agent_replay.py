"""Smoke test of bench/agent_replay.py: two policies, 2 sessions x 2 steps, on a tiny random
model served by real kvsaga-serve subprocesses; checks the JSON the benchmark writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.bench_scripts import load_bench


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.helpers_models import build_tiny_model

    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("replay-tiny"))


def _load_script():
    return load_bench("agent_replay")


def test_replay_writes_every_field(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    rc = _load_script().main([
        "--model", str(tiny_dir), "--sessions", "2", "--steps", "2", "--policies", "lru,graph",
        "--token-scale", "0.005", "--time-scale", "0.01", "--max-tool-s", "0.05",
        "--arrival-gap", "0", "--start-timeout", "60", "--json", str(out),
        "--idle-spinners", "--fit-seeds",  # (the default seed 0 is a fit seed)
    ])
    assert rc == 0
    from replay.conditions import RUNNING_SPINNERS

    assert not RUNNING_SPINNERS  # stopped with the run
    d = json.loads(out.read_text())
    assert set(d["policies"]) == {"lru", "graph"}
    assert d["config"]["idle_spinners"] is True
    for s in d["policies"].values():
        # what the machine and the server did over the replay (bench/replay/conditions.py)
        assert s["server_cpu_s"] > 0 and s["server_voluntary_switches"] > 0
        assert 0 <= s["machine_idle_share"] <= 1 and 0 <= s["machine_steal_share"] <= 1
        assert s["errors"] == 0 and s["requests"] == 4 and s["tasks_completed"] == 2
        assert s["prefill_tokens"] == s["prompt_tokens"] - s["cached_tokens"] > 0
        # the server's own counters over the replay (warm-up left out): every attempt, so
        # the usage figure where nothing was preempted, more where something was
        assert s["computed_prompt_counts"] == "all attempts"
        assert (s["computed_prompt_tokens"] == s["prefill_tokens"] if s["preemptions"] == 0
                else s["computed_prompt_tokens"] >= s["prefill_tokens"])
        assert 0 <= s["cached_share"] <= 1
        assert s["replica_changes"] is None and s["routes"] == {}  # one node: no headers
        for key in ("step_latency_mean_s", "step_latency_p95_s", "task_time_mean_s"):
            assert s[key] > 0
    ratio = d["prefill_ratio_lru_over_graph"]
    assert ratio == pytest.approx(
        d["policies"]["lru"]["prefill_tokens"] / d["policies"]["graph"]["prefill_tokens"])
    ws, kv = d["working_set"], d["kv_budget"]
    # Tiny model: 2 layers x 2 KV heads x 16 x (K, V) x 4 bytes.
    assert ws["kv_bytes_per_token"] == 2 * 2 * 16 * 2 * 4
    assert kv["bytes"] == kv["blocks"] * 16 * ws["kv_bytes_per_token"]
    assert len(d["steps"]["lru"]) == 4


def test_scheduler_arms_run_interleaved_and_write_their_section(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--kvsaga-arms` with `--repeat 2`: both arms run twice (A B, B A), medians and paired
    ratios are reported, and `--write-results` writes only its own section."""
    mod = _load_script()
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n## Other\n\nkept\n")
    monkeypatch.setattr(mod, "RESULTS", results)
    out = tmp_path / "replay.json"
    rc = mod.main([
        "--model", str(tiny_dir), "--sessions", "2", "--steps", "2",
        "--kvsaga-arms", "fcfs+lru,workflow+graph", "--repeat", "2",
        "--token-scale", "0.005", "--time-scale", "0.01", "--max-tool-s", "0.05",
        "--arrival-gap", "0", "--start-timeout", "60", "--json", str(out), "--write-results",
        "--fit-seeds",  # (the default seed 0 is a fit seed)
    ])
    assert rc == 0
    d = json.loads(out.read_text())
    assert list(d["policies"]) == ["fcfs+lru", "workflow+graph"]
    assert d["config"]["idle_spinners"] is False  # the plain path, end to end
    for rounds in d["rounds"]:
        for s in rounds.values():
            assert s["server_cpu_s"] > 0 and s.get("machine_spinners_share", 0.0) == 0.0
    assert [sorted(r) for r in d["rounds"]] == [["fcfs+lru", "workflow+graph"]] * 2
    for name, s in d["policies"].items():
        assert s["runs"] == 2 and s["errors"] == 0
        per_round = [r[name]["prefill_tokens"] for r in d["rounds"]]
        assert s["prefill_tokens"] == pytest.approx(sum(per_round) / 2)  # median of two
        assert s["range"]["prefill_tokens"] == [min(per_round), max(per_round)]
        assert sorted({r["round"] for r in d["steps"][name]}) == [0, 1]
    cmp = d["comparisons"]["workflow+graph vs fcfs+lru"]
    assert len(cmp["tct_speedup"]) == 2 and cmp["goal"] == 2.0
    assert d["fit_seeds_note"].startswith("fit seeds, not held out (a diagnosis): 0 by")
    text = results.read_text()
    assert "\nFit seeds, not held out (a diagnosis): 0 by the vLLM connector's gate" in text
    assert text.startswith("# R\n\n## Other\n\nkept\n")
    assert "## Agent replay: schedulers on live kvsaga-serve" in text
    assert "--kvsaga-arms fcfs+lru,workflow+graph --repeat 2" in text
    assert "| workflow+graph |" in text


def test_run_order_alternates() -> None:
    mod = _load_script()
    a, b, c = (mod.Arm(n, "kvsaga", "lru") for n in "abc")
    order = [(r, x.name) for r, x in mod.run_order([a, b, c], 3)]
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"),
                     (2, "a"), (2, "b"), (2, "c")]


@pytest.mark.parametrize("bad", ["fcfs", "fcfs+nope", "nope+lru", "fcfs+lru,fcfs+lru"])
def test_bad_kvsaga_arms_are_named(bad: str) -> None:
    with pytest.raises(SystemExit, match="--kvsaga-arms"):
        _load_script().scheduler_arms(bad)


@pytest.mark.parametrize(("argv", "arm"), [
    (["--policies", "lru,ttl,lru"], "lru"),
    (["--engine", "vllm", "--vllm-policies", "ttl,ttl"], "vllm+ttl"),
    (["--engine", "vllm", "--kvsaga-policies", "ttl,ttl"], "kvsaga-serve:ttl"),
])
def test_an_arm_named_twice_is_refused(argv: list[str], arm: str) -> None:
    """As `--kvsaga-arms` is (review s48, bench finding 8): a round keeps one replay per
    arm name, so the second silently replaced the first in the judged figures."""
    m = _load_script()
    with pytest.raises(SystemExit, match=re.escape(f"the arm {arm!r} is named twice")):
        m.arms(m.build_parser().parse_args(argv))


def test_write_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    """The run's block of its section is replaced, nothing else: a section's text written
    before any block (an old run's, or a note) stays, the block added after it; a new
    section goes at the end of the one whose heading starts with `parent`, else at the end.
    Replacing the whole section wiped the notes written in it."""
    mod = _load_script()
    path = tmp_path / "R.md"
    w = mod.WRITER
    path.write_text("# R\n\n## A (long)\n\na\n\n### Mine\n\nold\n\n### B\n\nb\n\n## C\n\nc\n")
    mod.write_section(path, "### Mine", "new\nlines", w)
    mod.write_section(path, "### Mine", "newer", w)
    text = path.read_text()
    mine = text.split("### Mine\n")[1].split("### B")[0]
    assert mine.startswith("\nold\n\n<!-- begin: written by bench/agent_replay.py (")
    assert "newer" in mine and "new\nlines" not in mine and mine.count("<!-- begin") == 1
    mod.write_section(path, "## D", "d", w)
    assert text.split("## C")[1] == "\n\nc\n" and "## C\n\nc\n\n## D\n\n<!-- begin" in (
        path.read_text())
    mod.write_section(path, "### E", "e", w, parent="## A")  # new: at the end of its parent
    assert "### B\n\nb\n\n### E\n\n<!-- begin" in path.read_text()


def test_connector_arm_names_map_to_the_connector_settings() -> None:
    """`--vllm-policies` (and vllm_scheduler_replay's `--policies`) names: POLICY runs the
    connector's defaults, +gate / +nogate / +noroom set its admission gate; anything else fails
    before a server starts."""
    _load_script()  # puts bench/ (the replay package) on sys.path
    from replay.servers import connector_arm

    assert connector_arm("ttl") == ("ttl", {})
    assert connector_arm("graph+gate") == ("graph", {"admission": True})
    assert connector_arm("ttl+nogate") == ("ttl", {"admission": False})
    assert connector_arm("ttl+noroom") == ("ttl", {"admission": True,
                                                   "gate_args": {"room_admit": False}})
    for bad in ("nope", "ttl+gates", "ttl+"):
        with pytest.raises(SystemExit, match="connector arm"):
            connector_arm(bad)


def test_vllm_sections_are_one_per_seed_and_scale() -> None:
    """--engine vllm runs of other seeds or scales write sections of their own beside each
    other (a report over several seeds is one run per seed); a rerun replaces its own."""
    m = _load_script()
    parse = m.build_parser().parse_args
    a = m.results_title(parse(["--engine", "vllm", "--seed", "15", "--token-scale", "0.05"]))
    b = m.results_title(parse(["--engine", "vllm", "--seed", "16", "--token-scale", "0.05"]))
    c = m.results_title(parse(["--engine", "vllm", "--seed", "15", "--token-scale", "0.1"]))
    assert len({a, b, c}) == 3 and all(t.startswith("### Agent replay, interleaved repeats")
                                       for t in (a, b, c))
    assert "seed 15" in a and "x0.05" in a
    assert a == m.results_title(parse(["--engine", "vllm", "--seed", "15",
                                       "--token-scale", "0.05"]))
    eos = m.results_title(parse(["--engine", "vllm", "--seed", "15", "--token-scale", "0.05",
                                 "--ignore-eos"]))
    assert eos != a and "EOS ignored" in eos
    kv = m.results_title(parse(["--engine", "vllm", "--seed", "15", "--token-scale", "0.05",
                                "--kv-fraction", "0.25"]))
    assert kv != a and "KV 0.25 of the working set" in kv


def test_vllm_sections_name_the_settings_that_differ_from_the_defaults() -> None:
    """Review repro vllm_title_collision: runs differing in --kv-memory, --steps,
    --vllm-policies or --hint had one title, so the later replaced the earlier's section.
    Each now names what differs; a default run's title is the one RESULTS already has."""
    m = _load_script()
    base = ["--engine", "vllm", "--seed", "15", "--token-scale", "0.1", "--time-scale", "2"]
    plain = m.results_title(m.build_parser().parse_args(base))
    assert plain == ("### Agent replay, interleaved repeats: swe seed 15, 6 sessions, tokens "
                     "x0.1, pauses x2 (written by bench/agent_replay.py)")
    titles = {plain}
    for extra in (["--kv-memory", "20000000"], ["--steps", "16"],
                  ["--vllm-policies", "ttl+nogate"], ["--hint", "none"],
                  ["--steps", "16", "--hint", "none"]):
        title = m.results_title(m.build_parser().parse_args(base + extra))
        assert all(x in title for x in extra), title
        titles.add(title)
    assert len(titles) == 6
    # Named as given: a rerun with the default value spelled out keeps the plain title.
    assert m.results_title(m.build_parser().parse_args(base + ["--steps", "8"])) == plain


def test_vllm_sections_name_the_model_and_the_block_size_vllm_runs() -> None:
    """Review s49 gate finding 4: a run on another --model or with --block-size 64 (kept
    under vLLM) had the default run's title and replaced its block. The block size is named
    as vLLM runs it: 16 (the default) and 48 run as 32, the default's title; main() names
    --model as given, before it exports the default model's HF directory."""
    m = _load_script()
    base = ["--engine", "vllm", "--seed", "31", "--token-scale", "0.05"]
    plain = m.results_title(m.build_parser().parse_args(base))
    for extra in (["--model", "/some/other-model-hf"], ["--block-size", "64"]):
        title = m.results_title(m.build_parser().parse_args(base + extra))
        assert title != plain and " ".join(extra) in title
    for same in (["--block-size", "48"], ["--block-size", "32"], ["--vllm-python", "/x/py"]):
        assert m.results_title(m.build_parser().parse_args(base + same)) == plain
    adjusted = m.build_parser().parse_args(base)
    adjusted.block_size = 32  # as main() sets it before the write
    assert m.results_title(adjusted) == plain


def test_median_summary_leaves_a_figure_a_round_lacks_out_and_survives_none() -> None:
    """Review s49 gate finding 5: a figure other than a connector counter missing from a
    round (a /metrics scrape without the prefix-cache counters) was 0 there: 900, absent,
    950 gave the cell "900 (0-950)"; and `replica_changes` None after an int (a round whose
    steps named no replica) lost the whole run with a TypeError. Now the median is over the
    rounds that have it, the cell says how many did, and None is skipped."""
    _load_script()
    from replay.report import median_summary, table_rows

    base = {"errors": 0, "failed_sessions": 0, "error_examples": [], "prefill_tokens": 1000,
            "cached_share": 0.5, "step_latency_mean_s": 1.0, "step_latency_p95_s": 2.0,
            "task_time_mean_s": 10.0, "task_time_p95_s": 12.0}
    got = median_summary([{**base, "computed_prompt_tokens": 900}, dict(base),
                          {**base, "computed_prompt_tokens": 950}])
    assert got["computed_prompt_tokens"] == 925
    assert got["range"]["computed_prompt_tokens"] == [900, 950]
    assert got["rounds_with"] == {"computed_prompt_tokens": 2}
    assert table_rows({"vllm": got})[0][2] == "925 (900-950, 2 of 3 rounds)"
    assert table_rows({"vllm": got})[0][1] == "1,000"  # every round had it: no note
    got = median_summary([{**base, "replica_changes": 3},
                          {**base, "replica_changes": None, "errors": 12}])
    assert got["replica_changes"] == 3 and got["rounds_with"] == {"replica_changes": 1}
    assert got["errors"] == 12
    lone = median_summary([dict(base), {**base, "computed_prompt_tokens": 7}])
    assert table_rows({"vllm": lone})[0][2] == "7 (1 of 2 rounds)"


def test_median_summary_counts_a_counter_one_round_never_logged_as_zero() -> None:
    """The connector logs a release reason only once one happened: a round without it must
    not fail the summary (it is 0 there)."""
    _load_script()
    from replay.report import median_summary

    base = {"errors": 0, "error_examples": [], "prefill_tokens": 10}
    got = median_summary([{**base, "connector_released_admit": 4}, dict(base),
                          {**base, "connector_released_admit": 2}])
    assert got["connector_released_admit"] == 2
    assert got["range"]["connector_released_admit"] == [0, 4]
    assert median_summary([dict(base), {**base, "connector_x": 3}])["connector_x"] == 1.5


def test_ignore_eos_reaches_every_request_of_either_engine() -> None:
    """--ignore-eos: each step asks for its full output tokens (the body carries ignore_eos
    next to the arm's session hint); without it the body is the arm's alone."""
    import threading
    from types import SimpleNamespace

    _load_script()
    from replay.arms import Arm
    from replay.client import PolicyResult, run_session
    from replay.workload import ReplaySession, ReplayStep

    sent = []

    def create(**kw):
        sent.append(kw["extra_body"])
        usage = SimpleNamespace(prompt_tokens=5, completion_tokens=2, prompt_tokens_details=None)
        msg = SimpleNamespace(message=SimpleNamespace(content="ok"))
        parsed = SimpleNamespace(usage=usage, choices=[msg])
        return SimpleNamespace(headers={}, parse=lambda: parsed)

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(
        with_raw_response=SimpleNamespace(create=create))))
    sess = ReplaySession("s0", "wf", 0.0, "sys", ["a", "b"],
                         [ReplayStep(3, 2, "t", 0.0, 1.0), ReplayStep(3, 2, None, 0.0, None)])
    for engine in ("vllm", "kvsaga"):
        for flag in (True, False):
            sent.clear()
            run_session(client, Arm("x", engine, "lru"), sess, 0.0, PolicyResult("x"),
                        threading.Lock(), flag)
            assert len(sent) == 2
            assert all(b.get("ignore_eos", False) is flag for b in sent)
            assert all(("kv_transfer_params" in b) == (engine == "vllm") for b in sent)


def test_ceiling_bounds_any_speedup_by_the_tool_pauses() -> None:
    from types import SimpleNamespace as NS

    mod = _load_script()
    # Two sessions: tool pauses 3 + 1 s and 5 s (the last step has no pause after it).
    sessions = [NS(steps=[NS(tool_s=3.0), NS(tool_s=1.0), NS(tool_s=9.0)]),
                NS(steps=[NS(tool_s=5.0), NS(tool_s=7.0)])]
    summary = {"vllm": {"task_time_mean_s": 6.0}, "vllm+ttl": {"task_time_mean_s": 5.0}}
    (line,) = mod.ceiling_lines(sessions, summary)
    assert "4.5 s a task" in line and "1.33x faster than vllm" in line  # 6.0 / 4.5
    assert mod.ceiling_lines([NS(steps=[NS(tool_s=0.0)])], summary) == []


def test_pressure_line_says_the_baselines_prefill_over_the_floor() -> None:
    from types import SimpleNamespace as NS

    mod = _load_script()
    summary = {"vllm": {"task_time_mean_s": 6.0, "prefill_tokens": 3000,
                        "floor_prefill_tokens": 2000}}
    ceiling, pressure = mod.ceiling_lines([NS(steps=[NS(tool_s=2.0), NS(tool_s=0.0)])], summary)
    assert "3.00x faster than vllm" in ceiling
    assert "3,000 prefill tokens, 1.50x the 2,000" in pressure


def test_only_arms_runs_the_named_arms_of_the_mode() -> None:
    """`--only-arms kvsaga-serve:ttl` with `--engine vllm` keeps that one arm (the same
    server as in the full run); a name the mode lacks, an empty list, or `--write-results`
    (a partial section) fail before any server starts."""
    m = _load_script()
    args = m.build_parser().parse_args(["--engine", "vllm", "--kvsaga-policies", "ttl,lru"])
    systems = m.arms(args)
    assert [a.name for a in systems] == ["vllm", "vllm+ttl", "kvsaga-serve:ttl",
                                         "kvsaga-serve:lru"]
    assert m.select_arms(systems, None, True) == systems
    kept = m.select_arms(systems, "kvsaga-serve:lru, vllm", False)
    assert [(a.name, a.engine, a.policy) for a in kept] == [
        ("vllm", "vllm", None), ("kvsaga-serve:lru", "kvsaga", "lru")]
    for bad in ("ttl", "kvsaga-serve:graph", " , "):
        with pytest.raises(SystemExit, match="--only-arms"):
            m.select_arms(systems, bad, False)
    with pytest.raises(SystemExit, match="--write-results"):
        m.select_arms(systems, "vllm", True)


def test_kvsaga_scheduler_params_reach_every_kvsaga_serve_arm_only() -> None:
    """`--kvsaga-scheduler-params JSON` starts each kvsaga-serve arm with
    `--scheduler-params JSON` (its other flags kept), no vLLM arm; not a JSON object: a
    clear error before any server starts."""
    m = _load_script()
    args = m.build_parser().parse_args(["--engine", "vllm", "--kvsaga-policies", "ttl",
                                        "--kvsaga-scheduler-params", '{"shrink_after": 1}'])
    systems = m.with_scheduler_params(m.arms(args), args.kvsaga_scheduler_params)
    assert [(a.name, a.serve_args) for a in systems] == [
        ("vllm", ()), ("vllm+ttl", ()),
        ("kvsaga-serve:ttl", ("--scheduler-params", '{"shrink_after": 1}'))]
    assert m.with_scheduler_params(systems, None) == systems
    for bad in ("[1]", "{shrink"):
        with pytest.raises(SystemExit, match="--kvsaga-scheduler-params must be a JSON object"):
            m.with_scheduler_params(systems, bad)


def test_host_line_names_the_vector_isa_and_the_boot() -> None:
    """RESULTS' host line says which vector ISA the CPU has and when the machine booted:
    "AMD EPYC" alone named an AVX-512 host and an AVX2 one, whose times differ ~5x."""
    _load_script()
    from replay.report import host_text, machine, vector_isa

    assert vector_isa({"sse2", "avx", "avx2", "avx512f"}) == "AVX-512"
    assert vector_isa({"sse2", "avx", "avx2"}) == "AVX2"
    assert vector_isa({"sse2"}) == "baseline"
    assert vector_isa(set()) == "unknown"
    host = {"cpu": "AMD EPYC", "vector_isa": "AVX2", "cores": 2, "booted_utc": "2026-12-01 10:53",
            "python": "3.11.7", "torch": "2.13.0+cpu", "torch_threads": 2}
    assert host_text(host) == ("AMD EPYC (AVX2, 2 cores, shared; booted 2026-12-01 10:53 UTC; "
                               "Python 3.11.7, torch 2.13.0+cpu, 2 threads by default)")
    old = {k: host[k] for k in ("cpu", "cores", "python", "torch")}  # a JSON from before
    assert host_text(old) == "AMD EPYC (2 cores, shared; Python 3.11.7, torch 2.13.0+cpu)"
    now = machine()
    assert now["vector_isa"] in ("AVX-512", "AVX2", "AVX", "baseline", "unknown")
    assert now["torch_threads"] >= 1


def test_kvsaga_scheduler_params_refuse_write_results() -> None:
    """`--write-results` with `--kvsaga-scheduler-params` would write the run under the
    defaults' section title: refused, before anything runs."""
    m = _load_script()
    args = m.build_parser().parse_args(["--engine", "vllm", "--write-results",
                                        "--kvsaga-scheduler-params", '{"shrink_after": 1}'])
    with pytest.raises(SystemExit, match="not with --write-results"):
        m.with_scheduler_params(m.arms(args), args.kvsaga_scheduler_params, args.write_results)
    with pytest.raises(SystemExit, match="not with --write-results"):
        m.main(["--write-results", "--kvsaga-scheduler-params", '{"shrink_after": 1}',
                "--fit-seeds"])


def test_kvsaga_policy_with_flags_is_a_variant_judged_against_its_plain_arm() -> None:
    """`--kvsaga-policies ttl,ttl+--cpu-host=shared` adds kvsaga-serve with that flag; the
    goal line compares only the plain arm with the connector, and the variant gets a line
    against the plain arm with no goal. A part that is not --flag=value fails at once."""
    m = _load_script()
    from replay.report import comparisons

    args = m.build_parser().parse_args(
        ["--engine", "vllm", "--kvsaga-policies", "ttl,ttl+--cpu-host=shared"])
    systems = m.arms(args)
    assert [(a.name, a.serve_args) for a in systems] == [
        ("vllm", ()), ("vllm+ttl", ()), ("kvsaga-serve:ttl", ()),
        ("kvsaga-serve:ttl --cpu-host=shared", ("--cpu-host", "shared"))]
    row = {"task_time_mean_s": 10.0, "task_time_p95_s": 20.0, "prefill_tokens": 100}
    rounds = [{"vllm": {**row, "task_time_mean_s": 30.0}, "vllm+ttl": row,
               "kvsaga-serve:ttl": {**row, "task_time_mean_s": 8.0},
               "kvsaga-serve:ttl --cpu-host=shared": {**row, "task_time_mean_s": 16.0}}]
    lines = comparisons(args, systems, rounds)["lines"]
    assert [line.split(":")[0] for line in lines] == ["vllm+ttl vs vllm", "kvsaga-serve",
                                                      "kvsaga-serve"]
    assert "kvsaga-serve:ttl vs vllm+ttl: mean TCT speed-up 1.25x" in lines[1]
    assert "(issue 13 goal >= 1x: met)" in lines[1]
    assert lines[2].startswith("kvsaga-serve:ttl --cpu-host=shared vs kvsaga-serve:ttl: mean "
                               "TCT speed-up 0.50x;")
    args = m.build_parser().parse_args(["--engine", "vllm", "--kvsaga-policies", "ttl+shared"])
    with pytest.raises(SystemExit, match="'shared' in 'ttl\\+shared' is not --flag=value"):
        m.arms(args)
    args = m.build_parser().parse_args(
        ["--engine", "vllm", "--kvsaga-policies", "lru,ttl+--cpu-host=shared"])
    with pytest.raises(SystemExit, match="compared with its plain policy arm; add 'ttl'"):
        m.arms(args)
