"""`kvsaga-serve --replicas 1` as a user runs it, on a local Ray cluster it starts itself
(review s57 ray): the port it logs for `--port 0`, the replica's status line, a stream whose
replica is killed mid-way, and a drained shutdown. One cluster for the module, in a
subprocess; the SIGTERM test stops it, so it runs last."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("transformers")

from kvsaga.serve.cli import main  # noqa: E402
from tests.helpers_models import build_tiny_model  # noqa: E402
from tests.serve_process import ServeProcess  # noqa: E402

REPO = Path(__file__).parents[2]
STEP_S = 0.05  # a 200-token stream runs for 10 s: a signal or a kill lands mid-way
# kvsaga-serve whose replicas step slowly: the engine factory is a subclass of LLMEngine
# defined here, in __main__, which Ray pickles by value into the replica (patching
# LLMEngine.step in this process would not reach the replica's).
_SLOW_REPLICAS = (
    "import functools, sys, time\n"
    "from kvsaga.engine.engine import LLMEngine\n"
    "from kvsaga.integrations.ray import deployment\n"
    "class SlowEngine(LLMEngine):\n"
    "    def step(self):\n"
    f"        time.sleep({STEP_S})\n"
    "        return super().step()\n"
    "build = deployment.build_application\n"
    "def slow(settings, n, **kw):\n"
    "    kw['factory'] = functools.partial(SlowEngine, settings.model, device='cpu',\n"
    "        progress=False, kv_memory_bytes=4 * 2**20, max_num_seqs=4)\n"
    "    return build(settings, n, **kw)\n"
    "deployment.build_application = slow\n"
    "from kvsaga.serve.cli import main\n"
    "sys.exit(main())\n"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("ray-s57-tiny"))


def descendants(pid: int) -> set[int]:
    """The processes below `pid` (the local cluster the server started), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def server(tiny_dir: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = ServeProcess([sys.executable, "-c", _SLOW_REPLICAS, "--replicas", "1",
                         "--model", str(tiny_dir), "--device", "cpu",
                         "--served-model-name", "tiny", "--log-stats-interval", "1",
                         "--log-level", "info"], stdout=subprocess.DEVNULL, env=env)
    seen: set[int] = set()
    try:
        proc.port(180)
        seen = descendants(proc.proc.pid)
        yield proc
    finally:
        seen |= descendants(proc.proc.pid) if proc.proc.poll() is None else set()
        proc.stop(60)
        for pid in seen:  # only ours: what the server started, should it have left any
            if cmdline(pid):
                os.kill(pid, signal.SIGKILL)


def request(port: int, method: str, path: str, body: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_serving(server: ServeProcess, port: int, limit_s: float = 180) -> None:
    """Until a short completion is answered 200 (a replica is up, its model loaded)."""
    deadline = time.monotonic() + limit_s
    while True:
        assert server.proc.poll() is None, server.stderr()
        try:
            status, _ = request(port, "POST", "/v1/completions",
                                {"model": "tiny", "prompt": "hi", "max_tokens": 1})
            if status == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"not serving: {server.stderr_so_far()}"
        time.sleep(0.5)


class Stream:
    """A 200-token completion streamed on a thread: its `data:` payloads, or how it was
    cut; `started` once tokens arrive."""

    def __init__(self, port: int) -> None:
        self.events: list[str] = []
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(port,), daemon=True)
        self.thread.start()

    def _read(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 200, "ignore_eos": True,
                "stream": True}
        try:
            conn.request("POST", "/v1/completions", json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            self.events.append(f"status {resp.status}")
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith("data: "):
                    self.events.append(line[len("data: "):])
                    if len(self.events) >= 4:
                        self.started.set()
        except (OSError, http.client.HTTPException) as e:
            self.events.append(f"cut: {type(e).__name__}")
        finally:
            conn.close()
            self.started.set()

    def running(self, server: ServeProcess) -> Stream:
        assert self.started.wait(120), server.stderr_so_far()
        assert self.events[0] == "status 200", self.events
        assert not any(e.startswith("cut") or e == "[DONE]" for e in self.events), self.events
        return self

    def ended(self) -> list[str]:
        self.thread.join(120)
        assert not self.thread.is_alive(), self.events
        return self.events


def test_port_0_logs_the_port_the_proxy_listens_on(server: ServeProcess):
    """The logged URL is the proxy's: it logged port 0 before (review s57 ray F3)."""
    port = server.port(0)
    assert port != 0
    wait_serving(server, port)
    status, body = request(port, "GET", "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny"


def test_the_replica_logs_its_status_line(server: ServeProcess):
    """`--log-stats-interval` works with --replicas: the replica's status line reaches
    the log (its `kvsaga` logger was never configured: review s57 ray F2)."""
    port = server.port(0)
    wait_serving(server, port)
    request(port, "POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 8})
    deadline = time.monotonic() + 60
    while "generation throughput" not in server.stderr_so_far():
        assert time.monotonic() < deadline, server.stderr_so_far()
        time.sleep(0.2)


def test_a_replica_killed_mid_stream_ends_it_with_an_error_event(server: ServeProcess):
    """Its stream ends with a `replica_unavailable` error event and [DONE], as one node's
    server ends a stream it cuts; it was cut with neither (review s57 ray F5)."""
    port = server.port(0)
    wait_serving(server, port)
    stream = Stream(port).running(server)
    replicas = [p for p in descendants(server.proc.pid) if "KvsagaEngine" in cmdline(p)]
    assert len(replicas) == 1, [cmdline(p) for p in descendants(server.proc.pid)]
    os.kill(replicas[0], signal.SIGKILL)
    events = stream.ended()
    assert events[-1] == "[DONE]", events[-3:]
    assert json.loads(events[-2])["error"]["code"] == "replica_unavailable", events[-3:]
    wait_serving(server, port)  # Serve replaced it


def test_sigterm_drains_the_requests_in_flight(server: ServeProcess):
    """SIGTERM lets a running stream finish, then the server and its cluster stop: the
    local cluster's proxy was stopped first, cutting it (review s57 ray F1)."""
    port = server.port(0)
    wait_serving(server, port)
    below = descendants(server.proc.pid)
    stream = Stream(port).running(server)
    server.proc.send_signal(signal.SIGTERM)
    events = stream.ended()
    assert events[-1] == "[DONE]", events[-3:]
    last = json.loads(events[-2])
    assert "error" not in last and last["choices"][0]["finish_reason"] == "length", events[-3:]
    assert server.proc.wait(60) == 0, server.stderr()
    deadline = time.monotonic() + 30  # the cluster's processes go with it
    while left := [p for p in below if cmdline(p)]:
        assert time.monotonic() < deadline, [cmdline(p) for p in left]
        time.sleep(0.2)


def test_a_port_in_use_fails_in_one_line_before_ray_starts(tiny_dir: Path, capsys):
    """Exit 2 with one line naming the port, before Ray starts: it took 16 s and gave a
    14-line remote traceback (review s57 ray F4)."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["--replicas", "1", "--port", str(port), "--model", str(tiny_dir),
                     "--device", "cpu", "--log-level", "warning"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [
        f"kvsaga-serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_port_0_on_a_joined_cluster_is_refused(tiny_dir: Path, capsys,
                                               monkeypatch: pytest.MonkeyPatch):
    """With RAY_ADDRESS every node's proxy takes the one port: 0 names none (exit 2)."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # never reached
    code = main(["--replicas", "1", "--port", "0", "--model", str(tiny_dir),
                 "--device", "cpu", "--log-level", "warning"])
    err = capsys.readouterr().err
    assert code == 2 and "--port 0 with RAY_ADDRESS" in err and len(err.splitlines()) == 1, err
