"""bench/gpu_check.py: the parts that need no GPU, and its refusal on a machine without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_stops_at_once_and_says_why(tmp_path):
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == gpu_check.NO_CUDA
    assert "no CUDA device" in proc.stderr
    assert not out.with_suffix(".json").exists()


@pytest.mark.parametrize(
    "name, mem",
    [
        ("NVIDIA H200", 4800.0),
        ("NVIDIA H100 80GB HBM3", 3350.0),
        ("NVIDIA H100 PCIe", 2000.0),
        ("NVIDIA A100-SXM4-80GB", 2039.0),
        ("NVIDIA A100-SXM4-40GB", 1555.0),
        ("NVIDIA A100 80GB PCIe", 1935.0),
    ],
)
def test_card_peaks_by_name(name, mem):
    peaks = gpu_check.card_peaks(name)
    assert peaks["mem_gbps"] == mem
    assert peaks["host_link_gbps"] > 0 and peaks["bf16_tflops"] > 0


def test_unknown_card_has_no_peaks():
    assert gpu_check.card_peaks("NVIDIA GeForce GTX 1080") is None


def _run(tokens, gaps=None):
    return {"tokens": tokens, "top2_gap": gaps or [1.0] * len(tokens)}


def test_greedy_parity_equal_and_near_ties():
    same = gpu_check.compare_greedy([_run([1, 2, 3])], [_run([1, 2, 3])])
    assert same["ok"] and same["prompts"][0]["equal"]
    # Parted at position 1, where the CPU's top two were 1e-4 apart: a tie, accepted.
    tie = gpu_check.compare_greedy([_run([1, 2, 3], [1.0, 1e-4, 1.0])], [_run([1, 5, 6])])
    assert tie["ok"] and tie["prompts"][0] == {"equal": False, "first_diff": 1,
                                               "gap_at_diff": 1e-4, "ok": True}


def test_greedy_parity_fails_on_a_clear_divergence_or_a_short_run():
    clear = gpu_check.compare_greedy([_run([1, 2]), _run([1, 2])], [_run([1, 2]), _run([1, 9])])
    assert not clear["ok"] and [p["ok"] for p in clear["prompts"]] == [True, False]
    short = gpu_check.compare_greedy([_run([1, 2, 3])], [_run([1, 2])])
    assert not short["ok"] and short["prompts"][0]["first_diff"] == 2


def test_junit_counts_separate_collection_errors(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="" name="tests.serve.test_api"><error message="x"/></testcase>'
        '<testcase classname="tests.k.test_a" name="test_ok"/>'
        '<testcase classname="tests.k.test_a" name="test_bad"><failure message="y"/></testcase>'
        '<testcase classname="tests.k.test_a" name="test_skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    c = gpu_check.junit_counts(xml)
    assert (c["passed"], c["failed"], c["errors"], c["skipped"]) == (1, 1, 1, 1)
    assert c["failed_ids"] == ["tests.k.test_a::test_bad"]
    assert c["collection_errors"] == ["tests.serve.test_api"]
    assert gpu_check.junit_counts(tmp_path / "missing.xml") == {}


def test_child_timeout_is_reported(tmp_path):
    status, _, secs = gpu_check.run_child([sys.executable, "-c", "import time; time.sleep(30)"],
                                          1.0, dict(os.environ))
    assert status == "timeout" and secs < 20
    status, log, _ = gpu_check.run_child([sys.executable, "-c", "print('hi'); exit(3)"], 30.0,
                                         dict(os.environ))
    assert status == "failed" and "hi" in log


def test_installed_layout_imports_the_kernels_without_an_install(tmp_path):
    root = gpu_check.installed_layout(tmp_path)
    code = "import importlib.util as u; print(u.find_spec('kvsaga.kernels').origin)"
    # -S: no site-packages, so no editable install can answer instead of the layout.
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, text=True,
                          capture_output=True, env=dict(os.environ, PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr
    want = REPO / "kvsaga" / "kernels" / "__init__.py"
    assert Path(proc.stdout.strip()).resolve() == want.resolve()


def test_package_version_of_a_missing_package_is_absent():
    assert gpu_check.package_version("torch") == torch.__version__
    assert gpu_check.package_version("no-such-package-kvsaga") == "absent"


def test_offload_share_of_host_link():
    detail = {"results": [{"GB/s": 32.0}]}
    assert gpu_check.offload_vs_link(detail, {"host_link_gbps": 64.0})["results"][0][
        "pct_host_link"] == 50.0
    assert gpu_check.offload_vs_link(detail, None)["results"][0]["pct_host_link"] is None


def test_random_model_loads_and_greedy_run_reports_gaps(tmp_path):
    path = gpu_check.write_random_model(tmp_path / "m", num_layers=2)
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 2
    runs = gpu_check.greedy_run(str(path), "cpu")
    assert len(runs) == len(gpu_check.PARITY_PROMPTS)
    for r in runs:
        assert len(r["tokens"]) == len(r["top2_gap"]) == gpu_check.PARITY_TOKENS
        assert all(g >= 0 for g in r["top2_gap"])
    # Greedy is deterministic: the same path twice agrees with itself.
    assert gpu_check.compare_greedy(runs, gpu_check.greedy_run(str(path), "cpu"))["ok"]


def test_markdown_renders_every_section():
    report = {
        "when": "2026-01-01 00:00 UTC", "python": "3.12.3", "torch": "2.11.0", "triton": "3.6.0",
        "gpu": {"name": "NVIDIA H200", "peaks": gpu_check.card_peaks("NVIDIA H200")},
        "steps": [
            {"name": "tests", "status": "passed", "seconds": 40.0, "log_tail": "",
             "detail": {"passed": 9, "failed": 0}},
            {"name": "kernels", "status": "passed", "seconds": 60.0, "log_tail": "",
             "detail": {"rows": [{"case": "decode_b64_4k", "impl": "triton", "ms": 1.5,
                                  "gbps": 3900.0, "pct_peak": 81.25}]}},
            {"name": "offload", "status": "failed", "seconds": 5.0, "log_tail": "Traceback boom",
             "detail": {"results": [{"kv": "llama3-8b", "blocks": 16, "direction": "offload",
                                     "GB/s": 40.0, "plain_GB/s": 50.0, "share_of_plain": 0.8,
                                     "pct_host_link": 62.5}]}},
            {"name": "engine", "status": "passed", "seconds": 90.0, "log_tail": "",
             "detail": {"model": "default", "parity": {"ok": True},
                        "generate": {"kvsaga": {"ttft_s": 0.02, "decode_tok_s": 150.0,
                                                "batch_tok_s": 2000.0, "prompt_tokens": 8000}}}},
        ],
    }
    md = gpu_check.markdown(report)
    for text in ("NVIDIA H200", "| decode_b64_4k | triton | 1.500 | 3900.0 | 81.2 |",
                 "| llama3-8b | 16 | offload | 40.0 | 50.0 | 80% | 62 |", "2000.0 tok/s",
                 "offload: failed", "Traceback boom", '"ok": true'):
        assert text in md
