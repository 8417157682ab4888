"""`kvsaga sim`'s review s47 simcore fixes at the command line: `--json` is strict JSON (a
non-finite figure is null: a bare `NaN`, which jq and `JSON.parse` refuse, was written for
a `belady_ratio` whose Belady recomputed nothing), and a session that ends one token into a
block fits the blocks of its tokens but the last (the run, and a `--plot` sweep's
capacities)."""

from __future__ import annotations

import json
import math

import numpy as np

import kvsaga.sim.cli as cli
from kvsaga.cli import main
from kvsaga.sim.cli_outputs import finite_or_null
from kvsaga.sim.cost import PRESETS
from kvsaga.sim.trace import Session, SharedPrefix, Step, write_trace

TINY = ["sim", "--workload", "swe", "--sessions", "2", "--scale", "0.05", "--arrival-rate", "1",
        "--kv-memory", "1G", "--policy", "lru", "--quiet"]
BLOCK = PRESETS["a100-llama3-8b"].block_bytes


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_writes_non_finite_figures_as_null(tmp_path, monkeypatch):
    real = cli.compare

    def with_nan(*args, **kwargs):
        rows = real(*args, **kwargs)
        rows[0]["belady_ratio"], rows[0]["tct_p95_s"] = math.nan, -math.inf
        return rows

    monkeypatch.setattr(cli, "compare", with_nan)
    out = tmp_path / "r.json"
    assert main(TINY + ["--json", str(out)]) == 0
    row = _strict(out.read_text())["results"][0]
    assert row["belady_ratio"] is None and row["tct_p95_s"] is None
    assert row["policy"] == "lru" and row["recomputed_tokens"] >= 0


def test_cluster_json_writes_non_finite_figures_as_null(tmp_path, monkeypatch):
    real = cli.simulate_cluster

    class WithNan:
        def __init__(self, result):
            self.result = result

        def row(self):
            row = self.result.row()
            row["tct_mean_s"] = math.nan
            return row

    monkeypatch.setattr(cli, "simulate_cluster", lambda *a, **k: WithNan(real(*a, **k)))
    out = tmp_path / "r.json"
    assert main(TINY + ["--gpus", "2", "--router", "round-robin", "--json", str(out)]) == 0
    (row,) = _strict(out.read_text())["results"]
    assert row["tct_mean_s"] is None and row["router"] == "round-robin"


def test_finite_or_null_keeps_what_json_reads():
    data = {"a": [1, 2.5, math.inf, (None, "x", True)], "b": np.float32("nan"),
            "c": np.int64(3), "d": {"e": np.float64(0.5)}}
    assert finite_or_null(data) == {"a": [1, 2.5, None, [None, "x", True]], "b": None,
                                    "c": 3.0, "d": {"e": 0.5}}


def test_a_session_one_token_into_a_block_fits_the_blocks_before(tmp_path, capsys):
    """31 prompt + 2 output tokens need KV for 32: 2 blocks of 16. `--kv-memory` of 2 blocks
    was refused (exit 2); a `--plot` sweep from 4 blocks skipped its 0.5x (2 blocks)."""
    s = Session(id="a", workflow="w", arrival_s=0.0, shared_prefix=SharedPrefix("g", 0),
                steps=(Step(31, 2),))
    trace, out, png = tmp_path / "t.jsonl", tmp_path / "r.json", tmp_path / "r.png"
    write_trace([s], trace)
    assert main(["sim", "--trace", str(trace), "--kv-memory", str(2 * BLOCK), "--policy",
                 "lru", "--quiet"]) == 0
    assert main(["sim", "--trace", str(trace), "--kv-memory", str(4 * BLOCK), "--policy",
                 "lru", "--quiet", "--json", str(out), "--plot", str(png)]) == 0
    sweep = _strict(out.read_text())["sweep"]
    assert min(r["num_gpu_blocks"] for r in sweep) == 2
