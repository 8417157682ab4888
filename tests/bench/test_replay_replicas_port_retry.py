"""bench/replay/servers.py's `Server` behind Ray Serve (`--replicas`): Ray Serve's proxy is
given a probed port, which another process can take before the proxy binds it; the server
then exits with "address already in use" and is started once more on a fresh port
(`Server.wait_ready`). Tested without Ray: the subprocess, the health probe and the replica
warm-up are faked (the session-51 leftover: this path had no test)."""

from __future__ import annotations

import argparse
import itertools

import pytest

from tests.bench_scripts import load_bench

IN_USE = "ERROR: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use\n"


def _servers():
    load_bench("agent_replay")  # puts bench/ (the replay package) on sys.path
    from replay import servers

    return servers


class _FakeProcess:
    """What `subprocess.Popen` starts: the i-th start fails with `failures[i]` written to
    its log (then exits 1) when there is one, else it runs until terminated."""

    def __init__(self, world: dict, cmd, stdout, **_kwargs) -> None:
        self.cmd = cmd
        self.pid = 40000 + len(world["started"])
        port = cmd[cmd.index("--port") + 1]
        failures = world["failures"]
        self.returncode = None
        if len(world["started"]) < len(failures):
            stdout.write(failures[len(world["started"])].format(port=port))
            stdout.flush()
            self.returncode = 1
        world["started"].append(self)

    def poll(self):
        return self.returncode

    def terminate(self) -> None:
        self.returncode = -15

    def wait(self, timeout=None):
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


class _Healthy:
    status_code = 200


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch):
    """The faked start: `failures` (what each start writes before it exits, in order),
    `started` (the processes), `warmed` (warm_replicas' calls), ports probed 4001, 4002..."""
    import httpx

    servers = _servers()
    state = {"failures": [], "started": [], "warmed": [], "probed": itertools.count(4001)}
    monkeypatch.setattr(servers.subprocess, "Popen",
                        lambda cmd, stdout, **kw: _FakeProcess(state, cmd, stdout, **kw))
    monkeypatch.setattr(servers, "_free_port", lambda: next(state["probed"]))
    monkeypatch.setattr(httpx, "get", lambda url, timeout: _Healthy())
    monkeypatch.setattr(servers, "warm_replicas",
                        lambda url, n, timeout_s: state["warmed"].append((url, n)))
    state["servers"] = servers
    return state


def _server(world, tmp_path, replicas: int | None = 2):
    args = argparse.Namespace(model=None, block_size=16, max_num_seqs=4, host_memory=0,
                              replicas=replicas)
    extra = ["--replicas", str(replicas)] if replicas else []
    return world["servers"].Server(args, "lru", 1 << 22, tmp_path / "serve.log", extra=extra)


def _ports(world) -> list[str]:
    return [p.cmd[p.cmd.index("--port") + 1] for p in world["started"]]


def test_a_taken_proxy_port_is_probed_again_and_the_server_started_once_more(world, tmp_path):
    world["failures"] = [IN_USE]
    server = _server(world, tmp_path)
    try:
        server.wait_ready(5)
        assert _ports(world) == ["4001", "4002"]
        assert server.url == "http://127.0.0.1:4002"
        assert world["warmed"] == [("http://127.0.0.1:4002", 2)]  # on the second port
        assert world["started"][0].cmd[:-1] == world["started"][1].cmd[:-1]  # but the port
    finally:
        server.stop()
    assert world["started"][1].returncode == -15


def test_the_start_is_retried_once_only(world, tmp_path):
    world["failures"] = [IN_USE, IN_USE]
    server = _server(world, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="exited with 1:(.|\n)*4002: .*already in use"):
            server.wait_ready(5)
        assert _ports(world) == ["4001", "4002"] and world["warmed"] == []
    finally:
        server.stop()


def test_a_start_failing_for_another_reason_is_not_retried(world, tmp_path):
    world["failures"] = ["RuntimeError: Ray could not start: no GPU\n"]
    server = _server(world, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="exited with 1:\nRuntimeError: Ray could not"):
            server.wait_ready(5)
        assert _ports(world) == ["4001"]
    finally:
        server.stop()


def test_a_single_engine_server_picks_its_own_port_and_is_not_retried(world, tmp_path):
    """Without --replicas kvsaga-serve binds port 0 itself: nothing can take its port, so
    an "address already in use" there is a real failure, reported as it is."""
    world["failures"] = [IN_USE]
    server = _server(world, tmp_path, replicas=None)
    try:
        with pytest.raises(RuntimeError, match="already in use"):
            server.wait_ready(5)
        assert _ports(world) == ["0"]
    finally:
        server.stop()
