"""kvsaga-serve's bounded shutdown (`--graceful-shutdown-s`, kvsaga/serve/shutdown.py): a
stream still generating when SIGTERM comes ends with a final event, and the process exits,
rather than uvicorn waiting for the generation with no limit."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvsaga.serve.cli import build_parser, settings_from_args
from kvsaga.serve.settings import ServerSettings
from tests.serve_process import ServeProcess

# The server, with each engine step slowed to STEP_S seconds: a 200-token stream then runs
# for minutes, far past any shutdown bound (the tiny model alone finishes it in about a
# second, before a signal could come).
STEP_S = 0.5
_SLOW_SERVER = (
    "import sys, time\n"
    "from kvsaga.engine.engine import LLMEngine\n"
    "step = LLMEngine.step\n"
    "def slow(self):\n"
    f"    time.sleep({STEP_S})\n"
    "    return step(self)\n"
    "LLMEngine.step = slow\n"
    "from kvsaga.serve.cli import main\n"
    "sys.exit(main())\n"
)


def _wait_healthy(server: ServeProcess, port: int) -> None:
    """Until /health answers 200 (uvicorn listens, the model has loaded)."""
    deadline = time.monotonic() + 120
    while True:
        assert server.proc.poll() is None, server.stderr()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        assert time.monotonic() < deadline, f"not healthy: {server.stderr_so_far()}"
        time.sleep(0.2)


def _read_stream(port: int, events: list[str], started: threading.Event,
                 max_tokens: int = 200, include_usage: bool = False) -> None:
    """The stream's `data:` payloads into `events` (its status first); `started` once
    tokens arrive (or the stream ended)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"model": "tiny", "prompt": "hello", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    try:
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        events.append(f"status {resp.status}")
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                if len(events) >= 3:  # tokens arrive: the generation runs
                    started.set()
    except (OSError, http.client.HTTPException) as e:
        events.append(f"cut: {type(e).__name__}")
    finally:
        conn.close()
        started.set()


def _stream_running(server: ServeProcess, port: int, max_tokens: int = 200,
                    include_usage: bool = False) -> tuple[list[str], threading.Thread]:
    """A stream read on a thread, once its tokens arrive (not cut, not yet done)."""
    events: list[str] = []
    started = threading.Event()
    reader = threading.Thread(target=_read_stream, daemon=True,
                              args=(port, events, started, max_tokens, include_usage))
    reader.start()
    assert started.wait(120), server.stderr_so_far()
    assert events[0] == "status 200", events
    assert not any(e.startswith("cut") or e == "[DONE]" for e in events), events
    return events, reader


def _sigterm_and_wait(server: ServeProcess, limit_s: float) -> float:
    """SIGTERM to the server, then its exit within `limit_s` (else the test fails); the
    seconds from the signal to the exit."""
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(limit_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {limit_s:.0f} s after SIGTERM: {server.stderr_so_far()}")
    return time.monotonic() - sent


def _wait_in_step(server: ServeProcess, in_step: Path, limit_s: float = 60) -> None:
    """Wait until the server's engine thread is inside the long step (the test script
    touches `in_step` there); the test fails if the server exits or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while not in_step.exists():
        assert server.proc.poll() is None and time.monotonic() < deadline, (
            server.stderr_so_far())
        time.sleep(0.05)


@pytest.mark.parametrize("flag", [[], ["--graceful-shutdown-s", "1"]])
def test_sigterm_ends_a_running_stream_with_a_final_event_and_exits(tiny_dir: Path, flag):
    """Without the flag (the default grace) and with one: SIGTERM while a stream runs ends
    the process within the bound, and the stream's last events are the shutdown error and
    [DONE]. Before the flag existed uvicorn waited for the generation to finish (here
    minutes), so the process was still running at the bound."""
    server = ServeProcess([sys.executable, "-c", _SLOW_SERVER, "--model", str(tiny_dir),
                           "--device", "cpu", "--served-model-name", "tiny",
                           "--log-stats-interval", "0", "--log-level", "info", *flag],
                          stdout=subprocess.DEVNULL)
    try:
        port = server.port(120)
        _wait_healthy(server, port)
        events, reader = _stream_running(server, port)
        # The bound: the grace (5 s by default) plus the final event's 2 s, and room for a
        # loaded machine; the stream alone would need 200 * STEP_S = 100 s more.
        _sigterm_and_wait(server, 60)
        reader.join(30)
        err = server.stderr()
    finally:
        server.stop()
    # uvicorn re-raises the SIGTERM it caught once it has shut down (a shell reads 143)
    assert server.proc.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err, err
    assert events[0] == "status 200" and events[-1] == "[DONE]", events
    final = json.loads(events[-2])
    assert final["error"]["code"] == "server_shutting_down", events[-3:]
    assert "request(s) still running" in err


def test_graceful_shutdown_flag_default_and_bounds(capsys):
    assert ServerSettings().graceful_shutdown_s == 5.0
    s = settings_from_args(build_parser().parse_args(["--graceful-shutdown-s", "0"]))
    assert s.graceful_shutdown_s == 0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match="graceful_shutdown_s must be a number >= 0"):
            settings_from_args(build_parser().parse_args(["--graceful-shutdown-s", bad]))
    help_text = build_parser().format_help()
    assert "--graceful-shutdown-s" in help_text and "server_shutting_down" in help_text


def test_the_config_bounds_uvicorn_past_the_grace():
    from kvsaga.serve.shutdown import FINAL_EVENT_S, uvicorn_config

    config = uvicorn_config(object(), 3.0)
    assert config.timeout_graceful_shutdown == 3.0 + FINAL_EVENT_S
