"""`kvsaga-serve` in a subprocess on a port it picks itself (`--port 0`), read back from the
line it logs at info level ("... at http://127.0.0.1:PORT/v1 ...").

A port a test probes (bind to 0, close) and then passes on can be taken by any other process
on the host before the server binds it, and the server then exits 2 ("cannot listen on"):
the outcome would depend on what else runs. With `--port 0` nothing can take it between."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Sequence

_BOUND = re.compile(r" at http://127\.0\.0\.1:(\d+)/v1\b")


class ServeProcess:
    """`argv` (a kvsaga-serve command line, without --port, logging at info level) run with
    `--port 0`; its stderr is drained by a thread (a full pipe would block the server) and
    kept whole for `stderr()`."""

    def __init__(self, argv: Sequence[str], **popen_kwargs) -> None:
        self.proc = subprocess.Popen([*argv, "--port", "0"], stderr=subprocess.PIPE,
                                     text=True, **popen_kwargs)
        self._lines: list[str] = []
        self._port: int | None = None
        self._bound = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._lines.append(line)
            m = _BOUND.search(line)
            if m is not None and self._port is None:
                self._port = int(m.group(1))
                self._bound.set()
        self._bound.set()  # the process closed stderr (it exited): nobody waits for ever

    def port(self, timeout: float) -> int:
        """The port the server bound; fails the test, with its stderr, if it exited first
        or said nothing of it within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self._bound.wait(0.1):
            assert time.monotonic() < deadline, f"no bound port logged: {self.stderr_so_far()}"
        assert self._port is not None, f"exited {self.proc.wait()}: {self.stderr()}"
        return self._port

    def stderr_so_far(self) -> str:
        return "".join(self._lines)

    def stderr(self, timeout: float = 60) -> str:
        """All it wrote to stderr, once it has exited (waits up to `timeout` seconds)."""
        self.proc.wait(timeout)
        self._reader.join(timeout)
        return "".join(self._lines)

    def stop(self, timeout: float = 30) -> None:
        """Terminate it if it still runs (then kill it if it does not end)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout)
