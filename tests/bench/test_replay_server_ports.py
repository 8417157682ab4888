"""bench/replay/servers.py's ports: a port probed free and passed on can be taken by another
process before the server binds it. kvsaga-serve is started with `--port 0` and the port it
bound is read back; vLLM (which cannot say what port 0 gave it) is started once more on a
fresh port when it exits with "address already in use"."""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.test_agent_replay import _load_script, tiny_dir  # noqa: F401 (fixture)


def _servers():
    _load_script()  # puts bench/ (the replay package) on sys.path
    from replay import servers

    return servers


# A child that binds a socket per (address, lowest port) argument in order, each on the
# first free port from that lowest one up (0: any; "+": above the previous socket's, so the
# order of the ports is known), prints the ports, listens on them once a line comes on its
# stdin, says "listening", and exits at the next line. The sockets are a process's of their
# own: a socket an earlier test left open in the pytest process is none of them.
_LISTENER = """
import socket, sys
socks, last = [], 0
for spec in sys.argv[1:]:
    host, low = spec.rsplit(",", 1)
    port = last + 1 if low == "+" else int(low)
    while True:
        s = socket.socket()
        try:
            s.bind((host, port))
            break
        except OSError:
            s.close()
            if port == 0 or port >= 65535:
                raise
            port += 1
    last = s.getsockname()[1]
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
sys.stdin.readline()
for s in socks:
    s.listen()
print("listening", flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def _listener(*specs: str):
    """The child (_LISTENER) bound to `specs`: yields (process, its ports, listen)."""
    proc = subprocess.Popen([sys.executable, "-c", _LISTENER, *specs], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.communicate()[1]
        ports = [int(p) for p in line.split()]

        def listen() -> None:
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "listening\n", proc.communicate()[1]

        yield proc, ports, listen
    finally:
        proc.kill()
        proc.wait()


def test_listening_port_reads_the_port_a_process_listens_on() -> None:
    servers = _servers()
    with _listener("127.0.0.1,0") as (proc, [port], listen):
        assert servers.listening_port(proc.pid) is None  # bound, not listening
        listen()
        assert servers.listening_port(proc.pid) == port
        assert servers.listening_port(proc.pid, "127.0.0.1") == port


def test_listening_port_skips_a_lower_port_on_another_address() -> None:
    """The process listens on 127.0.0.2 at a lower port too (as the pytest process did when
    the test asked about itself with a socket an earlier test left open): before, the
    lowest listener won, whatever its address."""
    servers = _servers()
    with _listener("127.0.0.2,0", "127.0.0.1,+") as (proc, [other, port], listen):
        listen()
        assert other < port
        assert servers.listening_port(proc.pid) == port  # the default host, 127.0.0.1
        assert servers.listening_port(proc.pid, "127.0.0.2") == other


def test_listening_port_refuses_to_guess_between_two_ports_at_the_host() -> None:
    servers = _servers()
    with _listener("127.0.0.1,0", "127.0.0.1,+") as (proc, [low, high], listen):
        listen()
        with pytest.raises(RuntimeError, match=f"at several ports \\({low}, {high}\\)"):
            servers.listening_port(proc.pid)


def test_listening_port_counts_the_wildcard_address_of_the_family() -> None:
    servers = _servers()
    with _listener("0.0.0.0,0") as (proc, [port], listen):
        listen()
        assert servers.listening_port(proc.pid, "127.0.0.1") == port


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
