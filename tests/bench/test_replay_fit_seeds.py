"""The replays of the vLLM connector's workload against bench/fit_seeds.py (review s49, gate
findings 1 and 2): the registry held only the gate fit's seeds 0-4, not the seeds its rules
were chosen after reading, and neither bench/agent_replay.py nor bench/vllm_scheduler_replay.py's
report checked any seed, so a run on fit seed 0 wrote a section that read as held out. Now a
run that writes results refuses them unless `--fit-seeds` labels it a diagnosis; one that
writes nothing says so and runs. Nothing is served or replayed: the runs are stubbed."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest

from tests.bench.test_agent_replay_judging import _mods, _result
from tests.bench.test_results_writers_replay import ar, vsr  # noqa: F401  (fixtures)
from tests.bench_scripts import import_bench
from tests.exits import usage_error

GATE_SEEN = (*range(5, 15), 30, *range(60, 73))


def _never(*_a, **_k):
    raise AssertionError("ran before the seed was refused")


def test_the_gates_seen_seeds_are_refused_where_a_run_measures_the_gate() -> None:
    """`idle_admit_s` was chosen after seeds 5-14 were seen, the pause expiry rules after
    60-72, and seed 30 found the ride-along stall (bench/RESULTS.md, docs/integrations.md,
    docs/integrations_benchmarks.md); the policies evaluation's `seen_ok` does not pass
    them. The simulated benches, which run no vLLM gate, still take them (cluster.py's
    report seeds are 7, 11 and 12)."""
    fs = import_bench("fit_seeds")
    assert fs.VLLM_GATE_SEEN_SEEDS == GATE_SEEN
    for seed in GATE_SEEN:
        err = fs.fit_seed_error([211, seed], "--seeds", gate_seen=True)
        assert err is not None and f"{seed} by the vLLM gate's rules" in err and "211" not in err
        assert fs.fit_seed_error([seed], "--x", seen_ok=True, gate_seen=True) is not None
    assert fs.fit_seed_error([7, 11, 12], "--seed") is None
    assert fs.fit_seed_error([15, 73, 74, 75], "--seeds", gate_seen=True) is None
    assert "the vLLM gate's rules" in fs.diagnosis_header([60], "--seed", gate_seen=True)
    with pytest.raises(ValueError, match="no fit read: 60"):
        fs.diagnosis_header([60], "--seed")


@pytest.fixture
def replay_stubbed(tmp_path, monkeypatch):
    """bench/agent_replay.py with its model, tokenizer, workload and servers stubbed (every
    arm replays two 5 s tasks), writing into a temporary RESULTS.md."""
    m, _, _, _, _, _ = _mods()
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n")
    monkeypatch.setattr(m, "RESULTS", results)
    monkeypatch.setattr(m, "vllm_model_dir", lambda model: str(tmp_path))
    monkeypatch.setattr(m, "_load_tokenizer", lambda model: (
        None, NS(num_layers=1, num_kv_heads=1, head_dim=4)))
    monkeypatch.setattr(m, "machine", lambda: {"cpu": "x", "cores": 1, "python": "3",
                                               "torch": "t", "loadavg_at_start": [0.0]})
    monkeypatch.setattr(m, "build_sessions", lambda args, tok: [
        NS(steps=[NS(tool_s=0.0)]) for _ in range(2)])
    monkeypatch.setattr(m, "working_set", lambda s, tok: {
        "peak_context_tokens": 100, "longest_context_tokens": 10, "shared_prefix_tokens": 0})
    monkeypatch.setattr(m, "replay", lambda *a: _result([5.0, 5.0]))
    return m


def test_agent_replay_refuses_fit_seeds_where_it_writes_before_the_model_loads(
        replay_stubbed, monkeypatch, capsys, tmp_path) -> None:
    m = replay_stubbed
    for name in ("vllm_model_dir", "_load_tokenizer", "machine", "replay"):
        monkeypatch.setattr(m, name, _never)
    out = str(tmp_path / "r.json")
    for argv, says in (
            (["--engine", "vllm", "--write-results"], "--seed: seed(s) read by a fit, so not "
             "held out: 0 by the vLLM connector's gate fit"),
            (["--engine", "vllm", "--seed", "60", "--json", out], "60 by the vLLM gate's rules"),
            (["--seed", "101", "--json", out], "101 by the workflow scheduler's fit"),
            (["--seed", "211", "--fit-seeds"], "--seed with --fit-seeds: seed(s) no fit "
             "read: 211")):
        with pytest.raises(SystemExit) as e:
            m.main(argv)
        err = usage_error(e, capsys)
        assert says in err, argv
        assert "--fit-seeds" in err
    assert m.RESULTS.read_text() == "# R\n"


def test_agent_replay_labels_a_fit_seed_run_and_notes_a_quick_look(replay_stubbed, capsys,
                                                                    tmp_path) -> None:
    """`--fit-seeds`: the section, the JSON and the output say "fit seeds, not held out";
    the default seed 0 without writing runs with that line printed; a gate-seen seed is
    held out for kvsaga-serve's own modes, which run no vLLM gate."""
    m = replay_stubbed
    out = tmp_path / "r.json"
    assert m.main(["--policies", "lru,graph", "--write-results", "--fit-seeds",
                   "--json", str(out)]) == 0
    head = "fit seeds, not held out (a diagnosis): 0 by the vLLM connector's gate fit"
    assert capsys.readouterr().out.startswith(head)
    assert "\nFit seeds, not held out (a diagnosis): 0 by the vLLM" in m.RESULTS.read_text()
    assert json.loads(out.read_text())["fit_seeds_note"].startswith(head)
    assert m.main(["--policies", "lru"]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert said.startswith(head) and said.endswith("(nothing written)")
    assert m.main(["--policies", "lru", "--seed", "60", "--json", str(out)]) == 0
    assert "not held out" not in capsys.readouterr().out
    assert json.loads(out.read_text())["fit_seeds_note"] is None


def test_vllm_scheduler_replay_report_refuses_fit_seeds_where_it_writes(
        vsr, ar, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    """The report path refuses a registry seed, the gate's seen seeds included, before any
    replay where it writes results; `--fit-seeds` runs it labelled, never a fresh seed nor
    with `--fit` (which checks its own seeds)."""
    model = ["--model-dir", str(tmp_path)]
    out = str(tmp_path / "rows.json")
    monkeypatch.setattr(vsr, "replay", _never)
    for argv, says in (
            (["--write-results"], "--seeds: seed(s) read by a fit, so not held out: 0 by"),
            (["--seeds", "81,5,6", "--json", out], "5 by the vLLM gate's rules"),
            (["--seeds", "81", "--fit-seeds"], "--seeds with --fit-seeds: seed(s) no fit "
             "read: 81"),
            (["--seeds", "0", "--fit", "--fit-seeds"], "--fit-seeds applies to the report")):
        with pytest.raises(SystemExit) as e:
            vsr.main([*model, *argv])
        assert says in str(e.value), argv
    assert not (tmp_path / "rows.json").exists()
    monkeypatch.setattr(vsr, "replay", lambda args, d, seed, policy, **k: NS(
        figures=lambda: {"task_time_mean_s": 1.0}))
    assert vsr.main([*model, "--seeds", "0,81"]) == 0  # a quick look: said, not refused
    assert capsys.readouterr().out.startswith(
        "fit seeds, not held out (a diagnosis): 0 by the vLLM connector's gate fit (bench/"
        "vllm_gate_fit.py); held out: 81 (nothing written)")
    assert vsr.main([*model, "--seeds", "0,60", "--fit-seeds", "--write-results",
                     "--json", out]) == 0
    text = ar.RESULTS.read_text(encoding="utf-8")
    assert f"0.002 s per token, --seeds 0,60, --model-dir {tmp_path.name} (written" in text
    assert "Fit seeds, not held out (a diagnosis): 0 by the vLLM connector's gate fit" in text
    assert "60 by the vLLM gate's rules" in json.loads(
        (tmp_path / "rows.json").read_text())["fit_seeds_note"]
    assert vsr.main([*model, "--seeds", "81", "--json", out]) == 0  # held out: no note
    assert json.loads((tmp_path / "rows.json").read_text())["fit_seeds_note"] is None


def test_vllm_scheduler_replay_writes_fit_seeds_beside_held_out_ones(
        vsr, ar, tmp_path, monkeypatch, capsys) -> None:  # noqa: F811
    """Review s49 gatediff finding 1: every recorded report since 17044 of bench/RESULTS.md
    reads fit seeds 0-4 beside fresh seeds in their own `--seed-groups` group. 80fdbad refused
    that run both ways: without `--fit-seeds` for seeds 0-4 (advising `--fit-seeds`), with it
    for the fresh seeds. `--fit-seeds` takes the mix now and says which seeds are which;
    fresh seeds alone are still refused, and the refusals advise what is accepted."""
    model = ["--model-dir", str(tmp_path)]
    mixed = ["--seeds", "0,1,2,3,4,96,97,98", "--seed-groups", "0,1,2,3,4;96,97,98",
             "--policies", "ttl"]
    out = tmp_path / "rows.json"
    monkeypatch.setattr(vsr, "replay", _never)
    with pytest.raises(SystemExit) as e:
        vsr.main([*model, *mixed, "--json", str(out)])
    assert str(e.value).endswith("; or report on them labelled a diagnosis, beside any "
                                 "held-out seeds: --fit-seeds")
    with pytest.raises(SystemExit) as e:
        vsr.main([*model, "--seeds", "96,97", "--fit-seeds", "--json", str(out)])
    assert "seed(s) no fit read: 96, 97" in str(e.value)
    assert "beside held-out seeds or not; run held-out seeds alone without it" in str(e.value)
    assert not out.exists()
    monkeypatch.setattr(vsr, "replay", lambda args, d, seed, policy, **k: NS(
        figures=lambda: {"task_time_mean_s": 1.0}))
    assert vsr.main([*model, *mixed, "--fit-seeds", "--write-results", "--json",
                     str(out)]) == 0
    note = json.loads(out.read_text())["fit_seeds_note"]
    assert note.startswith("fit seeds, not held out (a diagnosis): 0 by the vLLM connector's "
                           "gate fit (bench/vllm_gate_fit.py); 1 by")
    assert note.endswith("; 4 by the vLLM connector's gate fit (bench/vllm_gate_fit.py); "
                         "held out: 96, 97, 98")
    assert note[0].upper() + note[1:] + "." in ar.RESULTS.read_text(encoding="utf-8")


@pytest.mark.parametrize(("argv", "says"), [
    (["--seeds", "0,96"], "--seeds without --seed-groups mixes fit seeds (0) with held-out "
     "seeds (96) in one median"),
    (["--seeds", "0,1,96,97", "--seed-groups", "0,1;1,96,97"], "--seed-groups group 1,96,97 "
     "mixes fit seeds (1) with held-out seeds (96, 97)")])
def test_vllm_scheduler_replay_refuses_fit_and_held_out_seeds_in_one_median(
        vsr, tmp_path, monkeypatch, argv, says) -> None:  # noqa: F811
    """Review s49 gate3 finding 5: `--fit-seeds` took a fit seed and a held-out seed in one
    median (no `--seed-groups`, or one group naming both): the table showed one figure over
    both. It is refused before any replay; each kind in its own group is accepted."""
    model = ["--model-dir", str(tmp_path)]
    out = tmp_path / "rows.json"
    monkeypatch.setattr(vsr, "replay", _never)
    with pytest.raises(SystemExit) as e:
        vsr.main([*model, *argv, "--fit-seeds", "--write-results", "--json", str(out)])
    assert says in str(e.value)
    assert str(e.value).endswith("give each kind its own --seed-groups group")
    assert not out.exists()


def test_vllm_scheduler_replay_counts_the_gates_seen_seeds_only_where_an_arm_runs_it(
        vsr, tmp_path, monkeypatch) -> None:  # noqa: F811
    """Review s49 gatediff finding 5: the report refused the gate's seen seeds (5-14, 30,
    60-72) whatever its arms, but bench/fit_seeds.py counts them only where a run measures
    the vLLM connector's gate. Plain vLLM, the offload tier alone and a connector arm with
    admission off (`+nogate`, or `--connector-extra` admission false) run none."""
    model = ["--model-dir", str(tmp_path)]
    out = str(tmp_path / "rows.json")
    monkeypatch.setattr(vsr, "replay", lambda args, d, seed, policy, **k: NS(
        figures=lambda: {"task_time_mean_s": 1.0}))
    monkeypatch.setattr(vsr, "pin_hash_seed", lambda args, argv: None)
    for arms, extra in (("offload-lru", "{}"), ("ttl+nogate", "{}"),
                        ("ttl+nogate+offload-kvsaga", "{}"), ("ttl", '{"admission": false}')):
        assert vsr.main([*model, "--seeds", "7", "--policies", arms, "--connector-extra",
                         extra, "--json", out]) == 0, arms
        assert json.loads((tmp_path / "rows.json").read_text())["fit_seeds_note"] is None
    for arms in ("ttl", "ttl+nogate,ttl+sched", "ttl+offload-lru"):
        monkeypatch.setattr(vsr, "replay", _never)
        with pytest.raises(SystemExit) as e:
            vsr.main([*model, "--seeds", "7", "--policies", arms, "--json", out])
        assert "7 by the vLLM gate's rules" in str(e.value), arms
    with pytest.raises(SystemExit, match="--connector-extra 'x': not JSON"):
        vsr.main([*model, "--seeds", "7", "--connector-extra", "x", "--json", out])
