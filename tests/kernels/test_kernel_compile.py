"""Every kernel configuration the launchers can choose compiles for sm_80 and sm_90.

Runs `python -m kvsaga.kernels.compile_check` in its own process, without the interpreter
(the checker drops TRITON_INTERPRET before importing Triton). No GPU needed; a few minutes
on two cores when Triton's cache is cold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_all_configs_compile_for_sm80_and_sm90(tmp_path):
    pytest.importorskip("triton")
    report = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "kvsaga.kernels.compile_check", "--arch", "80", "90",
         "--jobs", "2", "--json", str(report)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    rows = json.loads(report.read_text())
    kernels = {r["kernel"] for r in rows}
    assert {r["arch"] for r in rows} == {80, 90}
    assert len(rows) == 2 * len(kernels)
    for prefix in ("prefill[", "decode_split[", "decode_reduce[", "cache_write[", "copy_blocks["):
        assert any(k.startswith(prefix) for k in kernels), prefix
    assert all(r["ok"] and r["shared"] <= r["limit"] for r in rows)


def _check(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "kvsaga.kernels.compile_check", *argv],
                          env=env, capture_output=True, text=True, timeout=300)


def test_a_filter_matching_nothing_fails_the_check():
    """A typo in --filter compiled nothing and passed ("0/0 ok", exit 0)."""
    pytest.importorskip("triton")
    result = _check("--filter", "prefil[", "--jobs", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no kernel matches --filter 'prefil['" in result.stderr


def test_an_unknown_arch_is_refused_by_name():
    """--arch takes the archs with a known shared-memory limit (before: each kernel failed
    with a bare KeyError: 75)."""
    pytest.importorskip("triton")
    result = _check("--arch", "75", "--filter", "decode_reduce[fp32, head_dim=16]")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "invalid choice: 75 (choose from 80, 86, 89, 90)" in result.stderr
