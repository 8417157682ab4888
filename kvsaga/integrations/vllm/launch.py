"""Start and stop a vLLM OpenAI server as a subprocess, for tests and benchmarks.

The server runs in an interpreter of the caller's choice (vLLM usually lives in its own
environment), bound to 127.0.0.1, with an exact KV budget (`--kv-cache-memory-bytes`), prefix
caching on, and the kvsaga connector on or off. It starts in a process group of its own, so
`stop()` ends the API server and the engine processes it spawned, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kvsaga.integrations.vllm import kv_transfer_config

SCHEDULER_CLS = "kvsaga.integrations.vllm.scheduler.KVSagaScheduler"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VLLMServer:
    """One vLLM server process.

    Attributes:
        model: HF model directory.
        kv_cache_bytes: the KV budget.
        connector_policy: a kvsaga policy name to enable the retention connector with; None
            for plain vLLM (prefix caching only).
        connector_extra: more `kv_connector_extra_config` entries (e.g. `admission`);
            given without `connector_policy`, ValueError (they were dropped unsaid).
        scheduler_cls: a Scheduler class by qualified name (`--scheduler-cls`, run under
            `--scheduling-policy priority`), e.g. `SCHEDULER_CLS` (kvsaga's plug-in); None:
            vLLM's own.
        python: the interpreter that has vLLM.
        served_name: the model name clients send.
        dtype, block_size, max_model_len, max_num_seqs: as vLLM's flags.
        eager: `--enforce-eager` (skips torch.compile's warm-up, minutes on a small CPU).
        log: file that receives the server's output.
    """

    model: Path
    kv_cache_bytes: int
    connector_policy: str | None = None
    connector_extra: dict = field(default_factory=dict)
    scheduler_cls: str | None = None
    python: str = sys.executable
    served_name: str = "model"
    dtype: str = "float32"
    block_size: int = 32  # vLLM's CPU attention takes multiples of 32
    max_model_len: int = 2048
    max_num_seqs: int = 16
    eager: bool = True
    log: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        if self.connector_extra and self.connector_policy is None:
            raise ValueError(f"connector_extra {self.connector_extra!r} configures the kvsaga "
                             "connector, which connector_policy None leaves off (plain vLLM): "
                             "name a policy, or leave connector_extra out")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--block-size", str(self.block_size),
            "--kv-cache-memory-bytes", str(self.kv_cache_bytes),
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
        ]  # fmt: skip
        if self.eager:
            cmd.append("--enforce-eager")
        if self.scheduler_cls is not None:
            cmd += ["--scheduling-policy", "priority", "--scheduler-cls", self.scheduler_cls]
        if self.connector_policy is not None:
            cmd += [
                "--kv-transfer-config",
                kv_transfer_config(self.connector_policy, **self.connector_extra),
            ]
        return cmd

    def start(self, timeout_s: float = 900.0) -> VLLMServer:
        """Start the server and wait until /health answers 200.

        Raises:
            RuntimeError: the server exited (the message gives its status) or did not become
                healthy in time; the message carries the end of its log.
        """
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
        # From a source checkout, the connector the server loads is this checkout's, wherever
        # the command runs from (the vLLM environment may have another kvsaga, or none). An
        # installed kvsaga's directory is not added: it holds that environment's packages.
        root = Path(__file__).resolve().parents[3]
        if (root / "pyproject.toml").is_file():
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(root), env.get("PYTHONPATH")) if p)
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        finally:
            if self.log:
                out.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1.0)
        status = self.proc.poll()
        what = (f"exited with status {status}" if status is not None else
                f"did not become healthy within {timeout_s:g} s")
        text = self.log.read_text(errors="replace") if self.log else ""
        errors = [ln for ln in text.splitlines() if "Error:" in ln][:3]  # the root cause first
        self.stop()
        where = (f"its log, {self.log}, ends:\n" + text[-2000:] if self.log else
                 "(pass log=PATH to keep its output)")
        raise RuntimeError(f"vLLM server {what} (port {self.port}, {self.command()[0]}):\n"
                           + "".join(e + "\n" for e in errors) + where)

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 30 s)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):  # engine processes left in the group
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None

    def __enter__(self) -> VLLMServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
