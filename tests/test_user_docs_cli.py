"""Found by following the README and docs as a new user (session 35): bad input fails in one
line naming the flag, and the docs' examples and signatures are the code's."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from kvsaga.config import parse_bytes

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.md").read_text()


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    return err.splitlines()[-1] if err else ""


def test_a_negative_size_is_named_as_such():
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_bytes("-1G")
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")
    assert parse_bytes("1G") == 2**30


@pytest.mark.parametrize("flag", ["--kv-memory", "--host-memory"])
def test_sim_negative_size_names_the_flag(flag, capsys):
    from kvsaga.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sim", flag, "-1G"])  # argparse used to say "expected one argument"
    assert e.value.code == 2
    line = _err(capsys)
    assert flag in line and "cannot be negative" in line


def test_serve_negative_size_names_the_flag(capsys):
    from kvsaga.serve.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--host-memory", "-2G"])
    assert e.value.code == 2
    line = _err(capsys)
    assert "--host-memory" in line and "cannot be negative" in line


@pytest.mark.parametrize("argv, flag", [
    (["--max-body", "0"], "--max-body must be"),
    (["--session-idle", "-1"], "--session-idle must be"),
    (["--log-stats-interval", "-1"], "--log-stats-interval must be"),
    (["--kv-memory", "0"], "--kv-memory must be"),
    (["--max-num-seqs", "0"], "--max-num-seqs must be"),
    (["--port", "70000"], "--port 70000 out of range"),
])
def test_serve_range_errors_name_the_flag_typed(argv, flag, capsys):
    from kvsaga.serve.cli import main

    assert main(argv) == 2  # ServerSettings named its field: max_body_bytes, session_idle_s
    line = _err(capsys)
    assert line.startswith(f"kvsaga-serve: error: {flag}") and "_" not in line


def test_serve_router_without_replicas_is_refused(capsys):
    from kvsaga.serve.cli import build_parser, main

    assert build_parser().parse_args([]).router is None  # --replicas alone: the default router
    # A missing model exits 2 too, so an unfixed CLI fails this fast instead of serving.
    assert main(["--router", "affinity", "--model", "/nonexistent/model.gguf"]) == 2
    line = _err(capsys)
    assert "--router" in line and "--replicas" in line


def test_sim_missing_trace_names_the_flag(tmp_path, capsys):
    from kvsaga.cli import main

    missing = tmp_path / "missing.jsonl"
    assert main(["sim", "--trace", str(missing), "--quiet"]) == 2
    assert _err(capsys) == f"kvsaga sim: error: --trace '{missing}': No such file or directory"


def test_a_scheduler_without_parameters_says_so():
    from kvsaga.scheduler import check_param_names

    with pytest.raises(ValueError) as e:
        check_param_names("fcfs", {"max_wait_s": 5},
                          exclude=("max_num_seqs", "max_num_batched_tokens"))
    assert str(e.value).endswith("it takes none besides max_num_seqs, max_num_batched_tokens")


def test_offload_config_names_a_bad_retention():
    from kvsaga.integrations.vllm import offload_transfer_config

    with pytest.raises(ValueError, match="retention"):
        offload_transfer_config(16_000_000_000, "graph", True)
    assert "MultiConnector" in offload_transfer_config(16_000_000_000, "graph", {"policy": "ttl"})


def test_api_md_python_blocks_run():
    for code in re.findall(r"```python\n(.*?)```", API, flags=re.S):
        exec(compile(code, "docs/api.md", "exec"), {})


def _doc_signature(name: str) -> list[str]:
    """The parameters of `name(...)` as docs/api.md writes them first."""
    start = API.index(f"`{name}(") + len(name) + 2
    text = API[start:API.index(")`", start)]
    return [p.strip() for p in re.sub(r"\s+", " ", text).split(",") if p.strip()]


@pytest.mark.parametrize("name", ["KVCacheManager", "LLMEngine"])
def test_api_md_signatures_are_the_code(name):
    pytest.importorskip("torch")
    from kvsaga import KVCacheManager
    from kvsaga.engine.engine import LLMEngine

    cls = {"KVCacheManager": KVCacheManager, "LLMEngine": LLMEngine}[name]
    code = []
    for p in list(inspect.signature(cls).parameters.values()):
        if p.kind is p.KEYWORD_ONLY and "*" not in code:
            code.append("*")
        if p.default is inspect.Parameter.empty:
            code.append(p.name)
        elif callable(p.default):
            code.append(f"{p.name}=time.{p.default.__name__}")
        else:
            code.append(f"{p.name}={p.default!r}".replace("'", '"'))
    assert _doc_signature(name) == code
