"""bench/cpu_attention.py runs (each path checked against the reference inside) and
reports a row per CPU path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kvsaga.kernels import inplace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import cpu_attention  # noqa: E402


@pytest.mark.skipif(not inplace.available(), reason="kvsaga._paged_attn not built")
def test_cpu_attention_times_every_path(capsys):
    rows = cpu_attention.main(["--repeat", "1", "--layers", "2", "--block-size", "16"])
    labels = [(op, label) for op, label, _ in rows]
    assert ("paged attention", "generic loops") in labels
    assert ("every layer", "generic loops") in labels
    assert ("cache_write", "torch reference") in labels
    assert ("cache_write", "C++ row copy") in labels
    assert ("prefill attention", "SDPA path") in labels
    assert ("extend attention", "SDPA path") in labels
    assert ("long extend", "SDPA path") in labels
    assert all(ms > 0 for _, _, ms in rows)
    assert "CPU ms per call" in capsys.readouterr().out
