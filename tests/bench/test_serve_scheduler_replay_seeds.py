"""bench/serve_scheduler_replay.py against bench/fit_seeds.py: it wrote `--json` rows on
any seed, its default 0 (the vLLM connector's gate fit) and the workflow scheduler's own fit
seeds among them, so a file of fit seeds read as a held-out reading. Now it applies the
rule of the other replays (`fit_seeds.run_seed_note`, shared with bench/agent_replay.py and
the vLLM replay's report): a run that writes refuses them before any replay unless
`--fit-seeds` labels it a diagnosis; a run that writes nothing says so and runs."""

from __future__ import annotations

import json

import pytest

from tests.bench_scripts import import_bench, load_bench


def _never(*_a, **_k):
    raise AssertionError("replayed before the seed was refused")


@pytest.fixture
def m():
    return load_bench("serve_scheduler_replay")


@pytest.mark.parametrize("seeds,says", [
    ("0", "--seeds: seed(s) read by a fit, so not held out: 0 by the vLLM connector's gate "
          "fit"),
    ("211,101", "not held out: 101 by the workflow scheduler's fit"),
])
def test_a_run_that_writes_json_refuses_fit_seeds_before_any_replay(
        m, monkeypatch, tmp_path, seeds, says) -> None:
    monkeypatch.setattr(m, "run_seed", _never)
    out = tmp_path / "rows.json"
    with pytest.raises(SystemExit) as e:
        m.main(["--seeds", seeds, "--json", str(out)])
    msg = str(e.value.code)
    assert says in msg and msg.endswith("a diagnosis on them: --fit-seeds")
    assert "211" not in msg  # a held-out seed beside them is not named
    assert not out.exists()


def test_fit_seeds_takes_registry_seeds_only(m, monkeypatch, tmp_path) -> None:
    """A held-out seed under `--fit-seeds` would be used up in a diagnosis, unreported; the
    run's one geometric mean would also mix both kinds."""
    monkeypatch.setattr(m, "run_seed", _never)
    with pytest.raises(SystemExit, match=r"--seeds with --fit-seeds: seed\(s\) no fit read: "
                                         "211 "):
        m.main(["--seeds", "0,211", "--fit-seeds", "--json", str(tmp_path / "r.json")])


def _rows(args, seed, params):
    return {"seed": seed, "blocks": 4, "prefill_tokens": 10 * seed + 1, "tct_mean_s": 2.0,
            "tct_p95_s": 3.0, "demotions": 0, "undone": 0, "preemptions": 0,
            "makespan_s": 5.0, "events": [], "manager_hints": {("s0", 0): 1.0}}


def test_the_allowed_runs_are_labelled(m, monkeypatch, tmp_path, capsys) -> None:
    """Held-out seeds (the vLLM gate's seen seed 60 among them: no vLLM gate runs here)
    write unlabelled rows; `--fit-seeds` labels the output and every row; registry seeds
    without writing run with the line and "(nothing written)"."""
    monkeypatch.setattr(m, "run_seed", _rows)
    out = tmp_path / "rows.json"
    assert m.main(["--seeds", "211,60", "--json", str(out)]) == 0
    assert "not held out" not in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["seed"] for r in rows] == [211, 60]
    assert all(r["fit_seeds_note"] is None for r in rows)

    assert m.main(["--seeds", "0,101", "--fit-seeds", "--json", str(out)]) == 0
    head = ("fit seeds, not held out (a diagnosis): 0 by the vLLM connector's gate fit "
            "(bench/vllm_gate_fit.py); 101 by the workflow scheduler's fit")
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(head) and said[1].startswith("seed 0:")
    assert [r["fit_seeds_note"] for r in json.loads(out.read_text())] == [said[0]] * 2

    assert m.main(["--seeds", "0,211"]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert said.startswith("fit seeds, not held out (a diagnosis): 0 by the vLLM")
    assert said.endswith("; held out: 211 (nothing written)")


def test_the_shared_rule() -> None:
    """`run_seed_note` as the three replays call it: None for held-out seeds, the refusal
    ending with the caller's words, the diagnosis line, the note of a run that writes
    nothing."""
    fs = import_bench("fit_seeds")
    rule = {"flag": "--s", "refused": "use --fit-seeds"}
    assert fs.run_seed_note([211, 212], **rule, fit_seeds=False, writes=True) is None
    with pytest.raises(ValueError, match=r"^--s: seed\(s\) read by a fit.*; use --fit-seeds$"):
        fs.run_seed_note([211, 1], **rule, fit_seeds=False, writes=True)
    assert fs.run_seed_note([1], **rule, fit_seeds=True, writes=True) == fs.diagnosis_header(
        [1], "--s")
    with pytest.raises(ValueError, match="no fit read: 211"):
        fs.run_seed_note([1, 211], **rule, fit_seeds=True, writes=False)
    assert fs.run_seed_note([1, 211], **rule, fit_seeds=True, writes=False,
                            held_out_ok=True).endswith("; held out: 211")
    assert fs.run_seed_note([60], **rule, fit_seeds=False, writes=True) is None
    with pytest.raises(ValueError, match="60 by the vLLM gate's rules"):
        fs.run_seed_note([60], **rule, fit_seeds=False, writes=True, gate_seen=True)
    assert fs.run_seed_note([1, 211], **rule, fit_seeds=False, writes=False) == (
        fs.diagnosis_header([1, 211], "--s", held_out_ok=True) + " (nothing written)")
