"""README.md: CI runs exactly its set-up and test commands, and every example runs as
written and shows what the text beside it claims."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = str(Path(sys.executable).parent)  # where pip put `kvsaga` and `kvsaga-serve`
# One intra-op thread: on a loaded small machine, OpenMP threads spin-waiting for a
# descheduled sibling make the model many times slower.
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "OMP_NUM_THREADS": "1"}


def _section(heading: str) -> str:
    body = README.split(f"\n{heading}\n", 1)[1]
    return re.split(r"\n## ", body, maxsplit=1)[0]


def _blocks(heading: str, lang: str) -> list[str]:
    """The fenced blocks of one section in `lang`."""
    return re.findall(rf"```{lang}\n(.*?)```", _section(heading), flags=re.S)


def _commands(block: str) -> list[str]:
    """Shell commands of a block: continuations joined, trailing comments dropped."""
    joined = block.replace("\\\n", " ")
    return [ln.split("  #")[0].strip() for ln in joined.splitlines() if ln.strip()]


def _fenced_commands(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1]
    block = section.split("```", 2)[1]
    return [ln.strip() for ln in block.splitlines()[1:] if ln.strip()]


def test_ci_runs_exactly_the_readme_commands():
    setup = _fenced_commands(README, "## Set up")
    test = _fenced_commands(README, "## Test")
    assert len(setup) == 1 and len(test) == 1
    ci = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()]
    assert ci.index(setup[0]) < ci.index(test[0])


def _exec(code: str) -> tuple[dict, str]:
    """Run a README Python block; its namespace and what it printed."""
    import torch

    ns: dict = {}
    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), ns)
    finally:
        torch.set_num_threads(threads)
    return ns, out.getvalue()


def _shell(command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=ENV,
                          timeout=600, cwd=kwargs.pop("cwd", ROOT), **kwargs)


@pytest.fixture(scope="module")
def default_model():
    from kvsaga.engine.loader import default_model_path
    from kvsaga.engine.model_config import ModelLoadError

    try:
        return default_model_path()
    except ModelLoadError as e:
        pytest.skip(str(e))


def test_allocator_example_prints_the_hit_after_the_tool_call():
    (code,) = _blocks("## The allocator, for engine authors", "python")
    ns, out = _exec(code)
    assert out == "0 100\n"
    assert ns["resumed"].num_cached_tokens == len(ns["prompt_ids"])


def test_engine_example_answers_and_step_two_hits_all_of_step_one(default_model):
    (code,) = _blocks("## The bundled engine", "python")
    ns, out = _exec(code)
    answer, step = out.strip().splitlines()
    assert "Paris" in answer
    m = re.fullmatch(r"step 2: (\d+) of (\d+) prompt tokens cached \(step 1 left (\d+)\)", step)
    assert m is not None, step
    cached, prompt, held = (int(x) for x in m.groups())
    assert cached == held == ns["held"] and prompt > cached > 0


_STATS = re.compile(r"\[stats\] ttft [\d.]+ s, (\d+) tokens in .* (\d+)/(\d+) prompt tokens cached")


def test_shell_examples_stream_answers_with_stats(default_model):
    (block,) = _blocks("## The bundled engine", "bash")
    generate, chat = _commands(block)
    r = _shell(generate)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and _STATS.search(r.stderr)
    r = _shell(chat)
    assert r.returncode == 0, r.stderr
    assert "> " not in r.stdout and r.stdout.count("\n") >= 2
    (n1, cached1, prompt1), (_, cached2, _) = [
        tuple(int(x) for x in m.groups()) for m in _STATS.finditer(r.stderr)]
    # The second turn hits every token of the first whose K/V exists (all but the last).
    assert cached1 == 0 and cached2 == prompt1 + n1 - 1


def test_simulator_example_prints_a_row_per_policy(tmp_path):
    (block,) = _blocks("## The simulator", "bash")
    (command,) = _commands(block)
    r = _shell(command, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
    header = next(ln for ln in lines if "policy" in ln and "belady" in ln)
    col = header.index("policy")
    rows = {ln[col]: ln for ln in lines[lines.index(header) + 1 :] if len(ln) > col}
    assert {"lru", "ttl", "graph", "belady"} <= set(rows), r.stdout
    # Multi-word headings come after it, so "x" (of "x belady") indexes the rows too.
    assert rows["belady"][header.index("x")] == "1.000", r.stdout


def test_vllm_example_exports_the_model_dir_it_serves(tmp_path, default_model):
    """The first line writes the HF directory the vLLM command loads; the connector's JSON is
    the one `kv_transfer_config` builds (the vLLM run itself: tests/integrations/vllm)."""
    import json

    from kvsaga.integrations.vllm import kv_transfer_config

    block = _blocks("## In vLLM", "bash")[0]
    export, serve = _commands(block)
    r = _shell(export, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    args = shlex.split(serve)
    model = tmp_path / args[args.index("--model") + 1]
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    config = json.loads(args[args.index("--kv-transfer-config") + 1])
    assert config == json.loads(kv_transfer_config("ttl"))


def test_serve_example_reuses_the_whole_first_step(default_model):
    import httpx

    from kvsaga.serve.cli import build_parser, settings_from_args

    (block,) = _blocks("## kvsaga-serve", "bash")
    serve, tuned = _commands(block)
    # The tuned command's flags are valid (its run would only differ in sizes).
    args = build_parser().parse_args(shlex.split(tuned.replace('"$KEY"', "k"))[1:])
    assert settings_from_args(args).metrics_compat == "vllm"
    # --port 0 and the port it logs: a port probed here and passed on could be taken by
    # another process before the server bound it (exit 2, "cannot listen on").
    server = ServeProcess(shlex.split(serve), env=ENV, stdout=subprocess.DEVNULL)
    try:
        port = server.port(300)
        deadline = time.monotonic() + 300
        while True:
            assert server.proc.poll() is None, server.stderr()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "kvsaga-serve did not become healthy"
            time.sleep(0.5)
        (code,) = _blocks("## kvsaga-serve", "python")
        ns, out = _exec(code.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    finally:
        server.stop()
    m = re.fullmatch(r"(\d+) of (\d+) prompt tokens cached; step 1 was (\d+)\n", out)
    assert m is not None, out
    cached, prompt, step1 = (int(x) for x in m.groups())
    assert cached == step1 - 1 and prompt > cached
