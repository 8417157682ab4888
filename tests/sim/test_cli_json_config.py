"""The --json config records what the run used: with --trace the generation flags do not
apply and are null (they were recorded as if used: review finding, cli.py config), and
arrival_rate and resume_hints are recorded."""

from __future__ import annotations

import json

from kvsaga.cli import main
from kvsaga.sim.trace import write_trace
from kvsaga.sim.workloads import generate

BASE = ["sim", "--policy", "lru", "--kv-memory", "1G", "--quiet", "--jobs", "1"]


def test_trace_run_records_null_generation_fields(tmp_path):
    trace, out = tmp_path / "t.jsonl", tmp_path / "r.json"
    write_trace(generate("swe", 2, seed=2, scale=0.05), trace)
    assert main(BASE + ["--trace", str(trace), "--seed", "7", "--scale", "0.3",
                        "--workload", "web", "--arrival-rate", "2", "--no-resume-hints",
                        "--json", str(out)]) == 0
    cfg = json.loads(out.read_text())["config"]
    assert cfg["trace"] == str(trace) and cfg["sessions"] == 2
    for key in ("workload", "seed", "scale", "arrival_rate"):
        assert cfg[key] is None, key
    assert cfg["resume_hints"] is False


def test_generated_run_records_the_rate_used(tmp_path):
    out = tmp_path / "r.json"
    gen = ["--workload", "swe", "--sessions", "2", "--seed", "3", "--scale", "0.05"]
    assert main(BASE + gen + ["--json", str(out)]) == 0
    cfg = json.loads(out.read_text())["config"]
    assert (cfg["workload"], cfg["seed"], cfg["scale"]) == ("swe", 3, 0.05)
    assert cfg["arrival_rate"] == 0.01 and cfg["resume_hints"] is True
    assert main(BASE + gen + ["--arrival-rate", "0.5", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["arrival_rate"] == 0.5
