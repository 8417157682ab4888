"""`VLLMServer.start` failures say what happened (no vLLM needed: the command is replaced)."""

from __future__ import annotations

import sys

import pytest

from kvsaga.integrations.vllm import launch
from kvsaga.integrations.vllm.launch import VLLMServer


def _server(tmp_path, script: str, log: bool, monkeypatch) -> VLLMServer:
    server = VLLMServer(tmp_path, 2**20, log=tmp_path / "vllm.log" if log else None)
    monkeypatch.setattr(server, "command", lambda: [sys.executable, "-c", script])
    return server


def test_a_server_that_exits_names_its_status_and_its_error(tmp_path, monkeypatch):
    script = "import sys; print('ValueError: --block-size must be a multiple of 32'); sys.exit(3)"
    server = _server(tmp_path, script, True, monkeypatch)
    with pytest.raises(RuntimeError) as e:
        server.start(timeout_s=60)
    text = str(e.value)
    assert text.startswith("vLLM server exited with status 3")
    assert "ValueError: --block-size must be a multiple of 32" in text
    assert server.proc is None


def test_a_server_without_a_log_says_how_to_keep_one(tmp_path, monkeypatch):
    server = _server(tmp_path, "import sys; sys.exit(1)", False, monkeypatch)
    with pytest.raises(RuntimeError, match=r"exited with status 1 .*\n\(pass log=PATH"):
        server.start(timeout_s=60)


def test_a_server_that_never_answers_is_stopped_and_says_so(tmp_path, monkeypatch):
    server = _server(tmp_path, "import time; time.sleep(60)", True, monkeypatch)
    children = []
    real_popen = launch.subprocess.Popen

    def popen(*args, **kwargs):
        children.append(real_popen(*args, **kwargs))
        return children[-1]

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    with pytest.raises(RuntimeError, match=r"did not become healthy within 2 s"):
        server.start(timeout_s=2)
    # The sleeping child was ended, not left running for its 60 s.
    assert server.proc is None and len(children) == 1 and children[0].poll() is not None


def test_connector_extra_without_a_connector_policy_is_refused(tmp_path):
    """connector_policy None starts plain vLLM: connector_extra was dropped without a word."""
    with pytest.raises(ValueError, match=r"connector_extra \{'admission': False\} "
                                         r"configures the kvsaga connector"):
        VLLMServer(tmp_path, 2**20, connector_extra={"admission": False})
    plain = VLLMServer(tmp_path, 2**20)
    assert "--kv-transfer-config" not in plain.command()
    kept = VLLMServer(tmp_path, 2**20, connector_policy="ttl", connector_extra={"admission": False})
    assert '"admission": false' in kept.command()[-1]
