"""kvsaga-serve's shutdown bound (`--graceful-shutdown-s`, kvsaga/serve/shutdown.py) where
the first test file (test_graceful_shutdown.py) cannot see it: the exit comes within the
grace plus the final event's time even while the engine thread is inside a step that lasts
far longer (a hung forward pass), the flag's value decides whether a stream is cut, and
the flag is refused where it would do nothing (--replicas)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvsaga.serve.cli import build_parser, main, settings_from_args
from tests.serve.test_graceful_shutdown import (
    _sigterm_and_wait,
    _stream_running,
    _wait_healthy,
    _wait_in_step,
)
from tests.serve_process import ServeProcess

HUNG_STEP_S = 30.0  # past the old second join of the engine thread (10 s)


def _server_script(step_s: float, slow_flag: Path | None = None,
                   in_slow_step: Path | None = None) -> str:
    """kvsaga-serve with each step slowed to `step_s`; with `slow_flag`, only once that
    file exists, and then the first slow step creates `in_slow_step` as it begins."""
    return (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from kvsaga.engine.engine import LLMEngine\n"
        "step = LLMEngine.step\n"
        f"FLAG = {str(slow_flag) if slow_flag else None!r}\n"
        f"IN_STEP = {str(in_slow_step) if in_slow_step else None!r}\n"
        "def slow(self):\n"
        "    if FLAG is None or os.path.exists(FLAG):\n"
        "        if IN_STEP is not None:\n"
        "            Path(IN_STEP).touch()\n"
        f"        time.sleep({step_s})\n"
        "    else:\n"
        "        time.sleep(0.05)\n"
        "    return step(self)\n"
        "LLMEngine.step = slow\n"
        "from kvsaga.serve.cli import main\n"
        "sys.exit(main())\n"
    )


def _start(script: str, tiny_dir: Path, grace: str) -> ServeProcess:
    return ServeProcess([sys.executable, "-c", script, "--model", str(tiny_dir),
                         "--device", "cpu", "--served-model-name", "tiny",
                         "--log-stats-interval", "0", "--log-level", "info",
                         "--graceful-shutdown-s", grace], stdout=subprocess.DEVNULL)


def _payloads(events: list[str]) -> list[dict]:
    return [json.loads(e) for e in events[1:] if e != "[DONE]" and not e.startswith("cut")]


def test_sigterm_exits_within_the_bound_while_a_step_hangs(tiny_dir: Path, tmp_path: Path):
    """The engine thread is inside a 30 s step when SIGTERM comes, with a 1 s grace: the
    stream gets its final event and the process exits within grace + FINAL_EVENT_S and a
    margin for a loaded machine. Before, the app's shutdown joined the busy engine thread
    once more for 10 s after the drain had already stopped it (exit after about 12 s)."""
    flag, in_step = tmp_path / "slow", tmp_path / "in-slow-step"
    server = _start(_server_script(HUNG_STEP_S, flag, in_step), tiny_dir, "1")
    try:
        port = server.port(120)
        _wait_healthy(server, port)
        events, reader = _stream_running(server, port, 200, include_usage=True)
        flag.touch()
        _wait_in_step(server, in_step)
        exit_s = _sigterm_and_wait(server, 60)
        reader.join(30)
        err = server.stderr()
    finally:
        server.stop()
    # grace 1 s + FINAL_EVENT_S 2 s (+ the drain's 0.5 s join); the old code took > 11 s
    _assert_exited_cleanly(server, exit_s, err)
    assert events[-1] == "[DONE]", events
    assert _payloads(events)[-1]["error"]["code"] == "server_shutting_down", events[-3:]


@pytest.mark.parametrize("grace, completes", [("1", False), ("30", True)])
def test_the_grace_decides_whether_a_running_stream_finishes(tiny_dir: Path, grace, completes):
    """The same stream (16 tokens at 0.25 s a step, SIGTERM once tokens arrive, so about
    3 s left): cut with the shutdown event under a 1 s grace, finished whole (all 16
    tokens, no error) under a 30 s one; the process exits either way."""
    server = _start(_server_script(0.25), tiny_dir, grace)
    try:
        port = server.port(120)
        _wait_healthy(server, port)
        events, reader = _stream_running(server, port, 16, include_usage=True)
        _sigterm_and_wait(server, 90)
        reader.join(30)
        err = server.stderr()
    finally:
        server.stop()
    assert server.proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err, err
    assert events[-1] == "[DONE]", events
    payloads = _payloads(events)
    errors = [p for p in payloads if "error" in p]
    if completes:
        assert not errors, events
        usage = [p["usage"] for p in payloads if p.get("usage")]
        assert usage and usage[-1]["completion_tokens"] == 16, events
        assert "request(s) still running" not in err
    else:
        assert [e["error"]["code"] for e in errors] == ["server_shutting_down"], events
        assert "request(s) still running" in err


def test_graceful_shutdown_s_with_replicas_is_refused(tiny_dir: Path, capsys):
    """--replicas' shutdown is Ray Serve's: the flag would be accepted and do nothing, so
    it is refused (before anything loads), as --router without --replicas is."""
    for value in ("3", "5"):  # the default's value too, when given
        rc = main(["--model", str(tiny_dir), "--replicas", "2",
                   "--graceful-shutdown-s", value])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "--graceful-shutdown-s" in err and "--replicas" in err, err
    # without the flag the default holds; with it, its value
    assert settings_from_args(build_parser().parse_args([])).graceful_shutdown_s == 5.0
    args = build_parser().parse_args(["--graceful-shutdown-s", "12"])
    assert settings_from_args(args).graceful_shutdown_s == 12.0


def _assert_exited_cleanly(server: ServeProcess, exit_s: float, err: str) -> None:
    """The server exited within the 8 s bound after SIGTERM (with a margin for a loaded
    machine), by status 0 or the re-raised signal, with no traceback."""
    assert exit_s < 8.0, f"exit {exit_s:.1f} s after SIGTERM: {err}"
    assert server.proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err, err
