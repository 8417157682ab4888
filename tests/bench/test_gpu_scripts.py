"""The GPU-facing bench scripts run end to end without one, so they do not rot between loans:
bench/decode_sweep.py --small under Triton's interpreter, bench/engine_cuda_profile.py on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})


def test_decode_sweep_small_checks_every_configuration(tmp_path: Path):
    out = tmp_path / "sweep.json"
    proc = _run(["bench/decode_sweep.py", "--small", "--block-n", "32", "--warps", "4",
                 "--stages", "1", "--per-sm", "2", "--repeat", "1", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == ["default", "sweep"] * 3
    sweep = [r for r in rows if r["config"] == "sweep"]
    assert all("error" not in r and r["ms"] > 0 for r in sweep), sweep
    assert {(r["block_n"], r["warps"], r["stages"], r["per_sm"]) for r in sweep} == {(32, 4, 1, 2)}
    assert "## smollm2_b16_2048" in proc.stdout
    assert all(r["graph_ms"] is None for r in rows)  # no CUDA graph off CUDA
    assert rows[0]["host_us"] > 0


def test_decode_sweep_picks_cases_and_names_an_unknown_one(tmp_path: Path):
    out = tmp_path / "sweep.json"
    proc = _run(["bench/decode_sweep.py", "--small", "--cases", "smollm2_b16_2048",
                 "--block-n", "32", "--warps", "4", "--stages", "1", "--per-sm", "2",
                 "--repeat", "1", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["case"] for r in json.loads(out.read_text())["rows"]} == {"smollm2_b16_2048"}
    # A graph's host bound far above the context: same answers (every row checked against
    # the default's), the bound printed and recorded.
    proc = _run(["bench/decode_sweep.py", "--small", "--cases", "smollm2_b16_2048",
                 "--bound", "4096", "--block-n", "32", "--warps", "4", "--stages", "1",
                 "--per-sm", "2", "--repeat", "1", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["bound"] == 4096 and "host bound max_seq_len 4096" in proc.stdout
    assert all("error" not in r for r in got["rows"])
    bad = _run(["bench/decode_sweep.py", "--small", "--cases", "llama8b_b1_32768,nope"])
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_engine_cuda_profile_on_cpu(tmp_path: Path):
    pytest.importorskip("transformers")
    from tests.helpers_models import build_tiny_model

    model = build_tiny_model("llama_gqa4_untied", tmp_path / "tiny")
    out = tmp_path / "prof.json"
    proc = _run(["bench/engine_cuda_profile.py", "--model", str(model), "--arms",
                 "eager", "--batch", "1,3", "--steps", "2", "--top", "3", "--kv-gib", "1",
                 "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["arm"], r["batch"], r["rows"]) for r in rows] == [("eager", 1, 1), ("eager", 3, 3)]
    assert all(r["wall_ms_per_step"] > 0 for r in rows)
    assert "| eager | 3 | 0 | 3 |" in proc.stdout  # arm, batch, prompt tokens (no --mixed), rows


def test_engine_cuda_profile_mixed_steps_on_cpu(tmp_path: Path):
    """`--mixed N`: each timed step carries a fresh N-token prompt beside the decode rows."""
    pytest.importorskip("transformers")
    from tests.helpers_models import build_tiny_model

    model = build_tiny_model("llama_gqa4_untied", tmp_path / "tiny")
    out = tmp_path / "prof.json"
    proc = _run(["bench/engine_cuda_profile.py", "--model", str(model), "--arms", "eager",
                 "--batch", "2", "--mixed", "8", "--steps", "2", "--top", "3", "--kv-gib", "1",
                 "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["arm"], row["batch"]) == ("eager", 2) and row["wall_ms_per_step"] > 0
    assert row["rows"] == 3  # the two decode rows and the prompt's chunk
    assert "| eager | 2 | 8 | 3 |" in proc.stdout
