"""kvsaga-serve's shutdown when no request is in flight but the engine thread is inside a
long step (a hung forward pass; its request's client went away): the app's own shutdown
waits for the thread within the grace's bound, and not at all after a second Ctrl-C
(kvsaga/serve/app.py `EngineWait`, set by kvsaga/serve/shutdown.py's DrainingServer).

Before (findings s53 diffservectl MED 1): uvicorn went straight to the app's shutdown, which
joined the busy thread for 10 s in one call nothing could interrupt: a second Ctrl-C did
nothing for about 10 s, and SIGTERM under `--graceful-shutdown-s 1` exited after about
10.4 s, where README promises about 3 s and grace + 3 s."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.serve.test_graceful_shutdown import _sigterm_and_wait, _wait_healthy, _wait_in_step
from tests.serve.test_graceful_shutdown_bound import HUNG_STEP_S, _assert_exited_cleanly
from tests.serve.test_second_ctrl_c import _assert_stopped_now, _ctrl_c_twice, _script
from tests.serve_process import ServeProcess

APP_SHUTDOWN = "Waiting for application shutdown"  # uvicorn's line as the lifespan's begins


def _start(script: str, tiny_dir: Path, grace: str) -> ServeProcess:
    return ServeProcess([sys.executable, "-c", script, "--model", str(tiny_dir),
                         "--device", "cpu", "--served-model-name", "tiny",
                         "--log-stats-interval", "0", "--log-level", "info",
                         "--graceful-shutdown-s", grace], stdout=subprocess.DEVNULL)


def _hung_step_no_request(server: ServeProcess, flag: Path, in_step: Path) -> None:
    """A stream whose first step lasts HUNG_STEP_S: once the engine thread is inside it, its
    client closes the connection (the server then has no request left to wait for)."""
    port = server.port(120)
    _wait_healthy(server, port)
    flag.touch()
    body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 50,
                       "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        _wait_in_step(server, in_step)


def test_second_ctrl_c_cuts_the_apps_wait_for_a_hung_engine_thread(tiny_dir: Path,
                                                                   tmp_path: Path):
    """Under a 120 s grace, the first Ctrl-C finds no request and goes to the app's
    shutdown while the engine thread is inside a 30 s step; the second Ctrl-C, sent once
    that shutdown began, ends the wait: main() returns within a few seconds (a margin for a
    loaded machine), status 130, no traceback. Before: about 10 s (the lifespan's join)."""
    flag, in_step = tmp_path / "slow", tmp_path / "in-slow-step"
    server = _start(_script(HUNG_STEP_S, flag, in_step), tiny_dir, "120")
    try:
        _hung_step_no_request(server, flag, in_step)
        returned_s = _ctrl_c_twice(server, 60, when=APP_SHUTDOWN)
        err = server.stderr()
    finally:
        server.stop()
    _assert_stopped_now(server, returned_s, err)
    assert "still inside a step" in err, err
    # The step's frames hold the engine's C++ objects at exit: held, not leaked, and not
    # listed by nanobind (test_hung_step_leak_report.py)
    assert "nanobind" not in err, err


def test_sigterm_exits_within_the_grace_bound_with_no_request_left(tiny_dir: Path,
                                                                   tmp_path: Path):
    """SIGTERM under `--graceful-shutdown-s 1`, no request left, the engine thread inside a
    30 s step: the process exits within grace + FINAL_EVENT_S (the app's wait ends there)
    and a margin for a loaded machine (test_graceful_shutdown_bound.py's 8 s). Before: the
    lifespan's 10 s join, exit after about 10.4 s."""
    flag, in_step = tmp_path / "slow", tmp_path / "in-slow-step"
    server = _start(_script(HUNG_STEP_S, flag, in_step), tiny_dir, "1")
    try:
        _hung_step_no_request(server, flag, in_step)
        exit_s = _sigterm_and_wait(server, 60)
        err = server.stderr()
    finally:
        server.stop()
    _assert_exited_cleanly(server, exit_s, err)
    assert APP_SHUTDOWN in err and "still inside a step" in err, err
