"""bench/serve_throughput.py with failed requests: a run that lost requests has output tok/s
over less work, so the table shows requests and errors per server, the goal is "not judged:
N requests failed", and --write-results writes nothing (review repro r3: vLLM lost 8 of 16
requests and kvsaga-serve's 1.76x was judged "met", the table showing no errors)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import serve_throughput as st  # noqa: E402


def _run(tok_s: float, errors: int, requests: int) -> dict:
    return {"wall_s": 10.0, "requests": requests, "errors": ["APITimeoutError"] * errors,
            "prompt_tokens": 520 * requests, "output_tokens": int(tok_s * 10),
            "output_tok_s": tok_s, "prompt_tok_s": 0.0, "server_cpu_s": 20.0,
            "output_tok_per_cpu_s": tok_s / 2, "loadavg": 2.0, "foreign_cores": 0.1,
            "client_cores": 0.05}


ARGS = argparse.Namespace(requests=16, max_tokens=64, kv_memory=1 << 30, block_size=32,
                          max_num_seqs=16, repeat=1, order="vllm,kvsaga", neighbours=0,
                          cpu_quota=None)


def test_failed_requests_are_shown_and_not_judged() -> None:
    runs = {"vllm": [_run(51.2, 8, 8)], "kvsaga-serve:graph": [_run(90.0, 0, 16)]}
    text = st._table(ARGS, {n: st._summary(rs) for n, rs in runs.items()}, "cmd")
    assert "| server | requests | errors | wall s |" in text
    assert "| vllm | 8 | 8 | 10.0 | 51.2 |" in text
    assert "| kvsaga-serve:graph | 16 | 0 | 10.0 | 90.0 |" in text
    assert "(goal >= 1.0x: not judged: 8 requests failed)" in text and ": met" not in text


def test_errors_in_any_run_of_either_arm_count() -> None:
    runs = {"vllm": [_run(50.0, 0, 16), _run(52.0, 0, 16), _run(60.0, 0, 16)],
            # the median run (90) is clean; another run lost 2 requests
            "kvsaga-serve:graph": [_run(80.0, 2, 14), _run(90.0, 0, 16), _run(95.0, 0, 16)]}
    res = {n: st._summary(rs) for n, rs in runs.items()}
    assert st._failed(res["kvsaga-serve:graph"], 16) == 2
    # a run with fewer completed requests than sent and no error string also failed some
    assert st._failed(st._summary([_run(80.0, 0, 15)]), 16) == 1
    text = st._table(ARGS, res, "cmd")
    assert "not judged: 2 requests failed" in text
    assert "| kvsaga-serve:graph | 16 | 2 |" in text  # the median's requests, all errors
    clean = {n: st._summary([r for r in rs if not r["errors"]]) for n, rs in runs.items()}
    assert "(goal >= 1.0x: met)" in st._table(ARGS, clean, "cmd")


def test_main_writes_no_results_when_requests_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() with --write-results and a vLLM run that lost requests: RESULTS is not written
    (it was, before main returned 1), and the exit status is 1."""
    written = []
    monkeypatch.setattr(st, "_write_results", lambda table, path: written.append(table))
    monkeypatch.setattr(st.agent_replay, "vllm_model_dir", lambda model: "/nonexistent")
    cfg = NS(num_layers=1, num_kv_heads=1, head_dim=4)
    monkeypatch.setattr(st.agent_replay, "_load_tokenizer", lambda model: (None, cfg))
    monkeypatch.setattr(st.agent_replay, "machine", lambda: {"cpu": "x"})
    monkeypatch.setattr(st, "batch_prompts", lambda kind, n: ["p"] * n)
    monkeypatch.setattr(st, "governor_state", lambda url: {})

    class Server:
        url, proc = "http://127.0.0.1:1", None
        server = NS(proc=None, eager=False)

        def wait_ready(self, timeout_s: float) -> None:
            pass

        def stop(self) -> None:
            pass

    monkeypatch.setattr(st.agent_replay.Arm, "start", lambda self, *a: Server())
    lost = {"n": 0}

    def send_batch(url, prompts, max_tokens, timeout, pid, neighbours):
        lost["n"] += 1  # the first batch (vLLM's) loses half its requests
        r = _run(50.0, 8, 8) if lost["n"] == 1 else _run(90.0, 0, 16)
        return {**r, "server_threads_cpu_s": dict.fromkeys(
            ("busiest", "main", "kernel_pool", "other_live", "rest"), 0.0)}

    monkeypatch.setattr(st, "send_batch", send_batch)
    argv = ["--requests", "16", "--order", "vllm,kvsaga", "--write-results"]
    assert st.main(argv) == 1
    assert written == []
    lost["n"] = 1  # no run loses any
    assert st.main(argv) == 0
    assert len(written) == 1 and "(goal >= 1.0x: met)" in written[0]


@pytest.mark.parametrize("repeat", ["0", "-1"])
def test_repeat_below_one_is_refused_before_the_model_loads(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, repeat: str) -> None:
    """Review s48, bench finding 9: `--repeat 0` loaded the tokenizer, ran nothing, then
    crashed in `_summary([])`."""
    from tests.exits import usage_error

    def loaded(*_a, **_k):
        raise AssertionError("the model loaded before --repeat was checked")

    monkeypatch.setattr(st.agent_replay, "vllm_model_dir", loaded)
    with pytest.raises(SystemExit) as e:
        st.main(["--repeat", repeat])
    assert f"--repeat must be >= 1, got {repeat}" in usage_error(e, capsys)


def test_an_even_repeat_says_which_middle_run_is_the_median() -> None:
    """With two runs the "median run" is the lower one, and the table says so; with an odd
    count it needs no note."""
    runs = {"vllm": [_run(50.0, 0, 16), _run(60.0, 0, 16)],
            "kvsaga-serve:graph": [_run(90.0, 0, 16), _run(80.0, 0, 16)]}
    res = {n: st._summary(rs) for n, rs in runs.items()}
    assert res["vllm"]["output_tok_s"] == 50.0 and res["kvsaga-serve:graph"]["output_tok_s"] == 80.0
    even = st._table(argparse.Namespace(**{**vars(ARGS), "repeat": 2}), res, "cmd")
    assert f"the median run by output tok/s ({st.MEDIAN_RUN})." in even
    assert st.MEDIAN_RUN not in st._table(ARGS, res, "cmd")
