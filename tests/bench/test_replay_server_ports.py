"""bench/replay/servers.py's ports: a port probed free and passed on can be taken by another
process before the server binds it. kvsaga-serve is started with `--port 0` and the port it
bound is read back; vLLM (which cannot say what port 0 gave it) is started once more on a
fresh port when it exits with "address already in use"."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from tests.bench.test_agent_replay import _load_script, tiny_dir  # noqa: F401 (fixture)


def _servers():
    _load_script()  # puts bench/ (the replay package) on sys.path
    from replay import servers

    return servers


def test_listening_port_reads_the_port_a_process_listens_on() -> None:
    import os

    servers = _servers()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert servers.listening_port(os.getpid()) != s.getsockname()[1]  # bound, not listening
        s.listen()
        assert servers.listening_port(os.getpid()) == s.getsockname()[1]


def test_kvsaga_serve_starts_although_the_probed_port_is_taken(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The chance event made certain: the port a probe would hand out is held by another
    socket. The old code passed it on, and kvsaga-serve exited 2 ("cannot listen")."""
    servers = _servers()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setattr(servers, "_free_port", lambda: busy)
        args = argparse.Namespace(model=str(tiny_dir), block_size=16, max_num_seqs=4,
                                  host_memory=0, replicas=None)
        server = servers.Server(args, "lru", 1 << 22, tmp_path / "serve.log")
        try:
            server.wait_ready(120)
            assert server.port != busy
            assert server.url == f"http://127.0.0.1:{server.port}"
            assert server.metrics()["kv_blocks"] > 0  # the server answers on that port
        finally:
            server.stop()


class _FakeVLLM:
    """VLLMServer's start/port/base_url: the first start fails as a taken port makes vLLM
    fail (or with `error`), later ones succeed."""

    def __init__(self, error: str) -> None:
        self.port, self.error, self.starts = 1111, error, []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float) -> None:
        self.starts.append(self.port)
        if len(self.starts) == 1:
            raise RuntimeError(f"vLLM server exited with status 1 (port {self.port}):\n"
                               + self.error)


def _arm(servers, fake: _FakeVLLM):
    arm = servers.VLLMArm.__new__(servers.VLLMArm)  # without loading vLLM's settings
    arm.server, arm.url = fake, fake.base_url
    return arm


def test_vllm_is_started_again_on_a_fresh_port_when_its_port_was_taken() -> None:
    servers = _servers()
    fake = _FakeVLLM("ERROR [Errno 98] error while attempting to bind on address "
                     "('127.0.0.1', 1111): address already in use")
    arm = _arm(servers, fake)
    arm.wait_ready(10)
    assert len(fake.starts) == 2 and fake.starts[1] != 1111
    assert arm.url == f"http://127.0.0.1:{fake.starts[1]}"


def test_vllm_failing_for_another_reason_is_not_retried() -> None:
    servers = _servers()
    fake = _FakeVLLM("ValueError: No available memory for the cache blocks")
    arm = _arm(servers, fake)
    with pytest.raises(RuntimeError, match="No available memory"):
        arm.wait_ready(10)
    assert fake.starts == [1111]
