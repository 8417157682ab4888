"""kvsaga-serve's second Ctrl-C (uvicorn's `force_exit`, kvsaga/serve/shutdown.py): "stop
now". The grace ends at once, a request not streamed gets a 503 and a stream its final event
(`server_shutting_down`, then `data: [DONE]`), the engine stops (its thread joined with a
short bound), and the process exits within seconds, with no traceback.

Before (findings s52 diffcarried LOW 3): uvicorn returned from its shutdown at once and left
the requests to `asyncio.run`'s cancellation at exit: a 500 "Internal Server Error", streams
cut with no final event, CancelledError tracebacks, the engine never stopped (nanobind's
"leaked instance" lines), and the exit about 10 s later while a step hung."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.serve.test_graceful_shutdown import _stream_running, _wait_healthy, _wait_in_step
from tests.serve.test_graceful_shutdown_bound import HUNG_STEP_S, _payloads, _server_script
from tests.serve_process import ServeProcess

GRACE = "120"  # the first Ctrl-C alone would wait this long for the requests
# What the server logs once kvsaga-serve's main() returned: after its event loop closed (the
# old code's 10 s join held it there), before the interpreter's own teardown (seconds of
# freeing torch's state, longer on a loaded machine, and no part of the shutdown).
MAIN_RETURNED = "kvsaga-serve main() returned"


def _script(*args) -> str:
    """`_server_script(*args)`, logging MAIN_RETURNED once main() returned, with Python's
    own SIGINT handler (KeyboardInterrupt), as a process started from a terminal has it. A
    background job (the harness's CI) starts its children with SIGINT ignored, and Python
    then installs no handler: uvicorn still catches the signal, but at the end re-raises it
    under the disposition it found, so the exit status read 0, not 130 (the lead's CI run,
    session 53)."""
    script = _server_script(*args)
    assert script.endswith("sys.exit(main())\n"), script
    return "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" + (
        script[:-len("sys.exit(main())\n")]) + (
        f"rc = main()\nprint({MAIN_RETURNED!r}, file=sys.stderr, flush=True)\nsys.exit(rc)\n")


def _start(script: str, tiny_dir: Path) -> ServeProcess:
    return ServeProcess([sys.executable, "-c", script, "--model", str(tiny_dir),
                         "--device", "cpu", "--served-model-name", "tiny",
                         "--log-stats-interval", "0", "--log-level", "info",
                         "--graceful-shutdown-s", GRACE], stdout=subprocess.DEVNULL)


def _post_plain(port: int, result: list, sent: threading.Event) -> None:
    """A completion not streamed (200 tokens): (status, body) into `result`; `sent` once
    its request has gone out."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"model": "tiny", "prompt": "bye", "max_tokens": 200, "ignore_eos": True}
    try:
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        sent.set()
        resp = conn.getresponse()
        result.append((resp.status, resp.read()))
    except (OSError, http.client.HTTPException) as e:
        result.append(("cut", type(e).__name__))
    finally:
        sent.set()
        conn.close()


def _start_upload(port: int) -> socket.socket:
    """A request whose body never comes whole (10 of its 1000 bytes): it waits in the
    server's body read, where no engine stop reaches it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                 b'{"model":"')
    return sock


def _running(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    # kvsaga:num_requests_running{model_name="tiny"} 2.0
    lines = [x for x in text.splitlines() if x.startswith("kvsaga:num_requests_running{")]
    assert len(lines) == 1, text
    return float(lines[0].rsplit(" ", 1)[1])


def _ctrl_c_twice(server: ServeProcess, limit_s: float,
                  when: str = "Waiting for connections to close") -> float:
    """SIGINT, then (once the server logged `when`: by default, uvicorn waits for the
    requests) SIGINT again; the seconds from the second until main() returned
    (MAIN_RETURNED), once the process exited within `limit_s`."""
    server.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while when not in server.stderr_so_far():
        assert server.proc.poll() is None and time.monotonic() < deadline, (
            server.stderr_so_far())
        time.sleep(0.05)
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    deadline = sent + limit_s
    while MAIN_RETURNED not in server.stderr_so_far():
        if server.proc.poll() is not None:  # exited: once read whole, its stderr has it
            assert MAIN_RETURNED in server.stderr(), server.stderr()
            break
        if time.monotonic() > deadline:
            pytest.fail(f"main() still running {limit_s:.0f} s after the second Ctrl-C: "
                        f"{server.stderr_so_far()}")
        time.sleep(0.02)
    returned = time.monotonic() - sent
    try:
        server.proc.wait(limit_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {limit_s:.0f} s after main() returned: "
                    f"{server.stderr_so_far()}")
    return returned


def _assert_stopped_now(server: ServeProcess, returned_s: float, err: str) -> None:
    """The second Ctrl-C's verdict: main() returned within a few seconds of it (a margin
    for a loaded machine; the old code took about 10 s), status 130, nothing unclean."""
    assert returned_s < 6.0, f"main() returned {returned_s:.1f} s after the second Ctrl-C: {err}"
    assert server.proc.returncode == 130, err
    _assert_clean(err)


def _assert_clean(err: str) -> None:
    assert "Traceback" not in err and "CancelledError" not in err, err
    assert "Internal Server Error" not in err and "Exception in ASGI" not in err, err


def test_second_ctrl_c_answers_the_requests_in_flight_and_stops_the_engine(tiny_dir: Path):
    """A stream and a request not streamed, both generating (0.25 s a step, 200 tokens),
    and a request whose body is still coming, under a 120 s grace: after the second
    Ctrl-C the request gets the 503 that the grace's end gives, the stream its final event
    and [DONE], the upload's request ends once its connection is closed (no "cancelling"
    line: without the close its task is cancelled and logged), and the process exits 130
    with no traceback; the engine stopped and its thread ended (nothing of it
    leaked at exit). Before: a 500 "Internal Server Error", a stream cut with no final
    event, tracebacks and nanobind's leak report."""
    server = _start(_script(0.25), tiny_dir)
    try:
        port = server.port(120)
        _wait_healthy(server, port)
        upload = _start_upload(port)
        plain: list = []
        sent = threading.Event()
        poster = threading.Thread(target=_post_plain, args=(port, plain, sent), daemon=True)
        poster.start()
        assert sent.wait(60) and not plain, plain
        events, reader = _stream_running(server, port)
        deadline = time.monotonic() + 60
        while _running(port) < 2:  # both are in the running batch
            assert not plain and time.monotonic() < deadline, (plain, server.stderr_so_far())
            time.sleep(0.1)
        _ctrl_c_twice(server, 30)
        poster.join(30)
        reader.join(30)
        err = server.stderr()
    finally:
        server.stop()
        upload.close()
    assert server.proc.returncode == 130, err  # the shell's status for SIGINT
    _assert_clean(err)
    assert "second Ctrl-C: ending the 3 request(s)" in err, err  # the upload's too
    assert "cancelling" not in err, err  # closing the upload's connection ended it
    assert "leaked" not in err, err  # the engine thread ended, releasing the engine
    status, body = plain[0]
    assert status == 503, plain
    assert json.loads(body)["error"]["code"] == "server_shutting_down", plain
    assert events[-1] == "[DONE]", events
    assert _payloads(events)[-1]["error"]["code"] == "server_shutting_down", events[-3:]


def test_second_ctrl_c_exits_promptly_while_a_step_hangs(tiny_dir: Path, tmp_path: Path):
    """The engine thread is inside a 30 s step: the second Ctrl-C ends the stream with its
    final event and kvsaga-serve's main() returns within a few seconds (the engine's join
    is bounded, STOP_JOIN_S, twice: the stop and the app's shutdown; then
    FORCE_FINAL_EVENT_S at most), with a margin for a loaded machine. Before, the event
    loop's close waited for the lifespan's 10 s join of the busy thread (about 10 s; the
    exit about 13 s)."""
    flag, in_step = tmp_path / "slow", tmp_path / "in-slow-step"
    server = _start(_script(HUNG_STEP_S, flag, in_step), tiny_dir)
    try:
        port = server.port(120)
        _wait_healthy(server, port)
        events, reader = _stream_running(server, port, 200)
        flag.touch()
        _wait_in_step(server, in_step)
        returned_s = _ctrl_c_twice(server, 60)
        reader.join(30)
        err = server.stderr()
    finally:
        server.stop()
    _assert_stopped_now(server, returned_s, err)
    assert events[-1] == "[DONE]", events
    assert _payloads(events)[-1]["error"]["code"] == "server_shutting_down", events[-3:]
