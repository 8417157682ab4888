"""kvsaga-serve's flags: sizes, keys from the environment, help on every flag."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kvsaga import __version__
from kvsaga.config import KVSpec
from kvsaga.engine.weights import open_checkpoint
from kvsaga.serve.cli import build_parser, engine_factory, settings_from_args
from kvsaga.serve.settings import ServerSettings
from tests.exits import usage_error


def test_flags_to_settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KVSAGA_API_KEY", "env-a, env-b")
    args = build_parser().parse_args(["--kv-memory", "2G", "--port", "9001", "--policy", "lru"])
    s = settings_from_args(args)
    assert s.kv_memory_bytes == 2 * 2**30 and s.port == 9001 and s.host == "127.0.0.1"
    assert s.api_keys == ("env-a", "env-b") and s.url == "http://127.0.0.1:9001/v1"
    s = settings_from_args(build_parser().parse_args(["--api-key", "flag"]))
    assert s.api_keys == ("flag",) and not s.enforce_eager
    assert settings_from_args(build_parser().parse_args(["--enforce-eager"])).enforce_eager


def test_max_graph_tokens_flag_default_and_bounds():
    from kvsaga.engine.cuda_graphs import MIXED_TOKEN_CAP, TOKEN_SIZES

    assert ServerSettings().max_graph_tokens == MIXED_TOKEN_CAP
    s = settings_from_args(build_parser().parse_args(["--max-graph-tokens", "0"]))
    assert s.max_graph_tokens == 0
    for bad in (-1, TOKEN_SIZES[-1] + 1):
        with pytest.raises(ValueError, match="max_graph_tokens"):
            settings_from_args(build_parser().parse_args(["--max-graph-tokens", str(bad)]))


def test_graph_capture_flag_default_and_choices(capsys):
    assert ServerSettings().graph_capture == "startup"  # a server records before serving
    s = settings_from_args(build_parser().parse_args(["--graph-capture", "lazy"]))
    assert s.graph_capture == "lazy"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--graph-capture", "never"])
    assert "argument --graph-capture: invalid choice: 'never'" in usage_error(e, capsys)
    with pytest.raises(ValueError, match="graph_capture must be"):
        ServerSettings(graph_capture="never")


def test_enforce_eager_reaches_the_engine(tiny_dir: Path):
    """The engine that `--enforce-eager` loads runs eagerly (on CPU it always does; the
    argument must still arrive, since LLMEngine refuses unknown ones)."""
    s = settings_from_args(build_parser().parse_args(["--model", str(tiny_dir), "--enforce-eager",
                                                      "--device", "cpu", "--kv-memory", "4M"]))
    engine = engine_factory(s)()
    assert engine.runner.graphs is None
    s = settings_from_args(build_parser().parse_args(["--model", str(tiny_dir), "--device", "cpu",
                                                      "--kv-memory", "4M",
                                                      "--max-graph-tokens", "64"]))
    assert engine_factory(s)().runner.mixed is None  # LLMEngine took it (CPU: no graphs)
    s = settings_from_args(build_parser().parse_args(["--model", str(tiny_dir), "--device", "cpu",
                                                      "--kv-memory", "4M",
                                                      "--graph-capture", "lazy"]))
    assert engine_factory(s)().runner.graphs is None  # LLMEngine took it too


def test_every_flag_has_help_stating_its_default():
    """`kvsaga-serve --help` lists every flag with its default (README)."""
    parser = build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        assert action.help, action.dest
        if action.option_strings and action.default is not argparse.SUPPRESS and not (
                action.const is True and action.default is False):  # store_true: off
            assert "(default" in formatter._get_help_string(action), action.dest


def _serve(*argv: str) -> subprocess.CompletedProcess:
    """kvsaga-serve in a child process; a server that hangs instead of exiting fails."""
    cmd = [sys.executable, "-m", "kvsaga.serve.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_missing_model_exits_non_zero_before_serving():
    r = _serve("--model", "/nope", "--port", "0")
    assert r.returncode == 2
    assert r.stderr == "kvsaga-serve: error: model path does not exist: /nope\n"


def test_an_unavailable_device_exits_non_zero_in_one_line():
    r = _serve("--device", "tpu", "--port", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "device 'tpu'" in r.stderr


def test_a_load_failure_after_start_exits_non_zero(tiny_dir: Path, tmp_path: Path):
    """Weights or tokenizer that fail while loading (after the port is bound) stop the
    server with one error line, not 503 forever; the traceback only under debug."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "tokenizer.json").unlink()
    r = _serve("--model", str(broken), "--port", "0", "--device", "cpu", "--log-level", "warning")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"kvsaga-serve: error: the model failed to load: {broken}: no tokenizer.json (only "
        "fast tokenizers are supported)")
    assert "Traceback" not in r.stderr


def test_ctrl_c_stops_the_server_without_a_traceback(tiny_dir: Path):
    """SIGINT (Ctrl-C) shuts the server down cleanly, without a traceback. uvicorn 0.54
    re-raises the signal it caught once it has shut down, which printed a KeyboardInterrupt
    traceback after the clean shutdown (kvsaga-serve now exits 130 then, as a shell
    expects); uvicorn 0.55 returns instead (exit 0)."""
    import signal
    import time
    import urllib.request

    from tests.serve_process import ServeProcess

    # --port 0 and the port it logs (info level): a port probed here and passed on could be
    # taken by another process before the server bound it (exit 2, "cannot listen on").
    server = ServeProcess([sys.executable, "-m", "kvsaga.serve.cli", "--model", str(tiny_dir),
                           "--device", "cpu", "--log-level", "info"], stdout=subprocess.DEVNULL)
    proc = server.proc
    try:
        port = server.port(90)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, server.stderr()
                time.sleep(0.2)
        else:
            pytest.fail("the server did not become healthy")
        proc.send_signal(signal.SIGINT)
        err = server.stderr(60)
    finally:
        server.stop()
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_version():
    r = _serve("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"kvsaga-serve {__version__}"


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-num-seqs", "0"], "--max-num-seqs must be an int >= 1, got 0"),
    (["--max-num-batched-tokens", "0"], "--max-num-batched-tokens must be an int >= 1, got 0"),
    (["--max-model-len", "0"], "--max-model-len must be an int >= 1 or None, got 0"),
    (["--max-tokens-limit", "0"], "--max-tokens-limit must be an int >= 1 or None, got 0"),
    (["--kv-memory", "0"], "--kv-memory must be an int >= 1 or None, got 0"),
    (["--log-stats-interval", "inf"], "--log-stats-interval must be a number >= 0"),
    (["--session-idle", "nan"], "--session-idle must be a number > 0 (inf: never), got nan"),
    (["--session-idle", "-1"], "--session-idle must be a number > 0 (inf: never), got -1.0"),
    (["--api-key", ""], "--api-key '' names no key"),
    (["--api-key", " , "], "--api-key ' , ' names no key"),
    (["--api-key", "cl\u00e9"], "api keys must be printable ASCII"),
    (["--api-key", "a,b c"], "api keys must be printable ASCII without spaces"),
    (["--served-model-name", ""], "--served-model-name must be a non-empty name"),
    (["--served-model-name", "  "], "--served-model-name must be a non-empty name"),
])
def test_bad_settings_fail_in_one_line_before_the_model_loads(argv, message, capsys,
                                                              monkeypatch: pytest.MonkeyPatch):
    """Values the engine would only refuse once loading (or never: a server where every
    request fails, or one silently without auth) are refused with exit status 2 at once."""
    from kvsaga.serve import cli

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(cli, "preflight", refuse)
    monkeypatch.setattr(cli, "engine_factory", refuse)
    assert cli.main([*argv, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"kvsaga-serve: error: {err.split('error: ', 1)[1]}" and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--kv-memory", "--host-memory"])
@pytest.mark.parametrize("model", ["tiny", "default"])
def test_a_budget_that_holds_no_kv_block_fails_in_one_line_before_the_model_loads(
        flag, model, tiny_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    """The block's bytes come from the checkpoint's config (an HF directory's config.json,
    the bundled SmolLM2's GGUF header). The budget was checked only once the weights had
    loaded, after the port was bound, as "the model failed to load: kv_memory_bytes=1 ..."."""
    from kvsaga.serve import cli

    def refuse(*a, **k):
        raise AssertionError("the port was bound before the budget was checked")

    monkeypatch.setattr(cli, "listen_sockets", refuse)
    monkeypatch.setattr(cli, "engine_factory", refuse)
    where = ["--model", str(tiny_dir)] if model == "tiny" else []
    assert cli.main([*where, flag, "1", "--device", "cpu", "--port", "0"]) == 2
    c = open_checkpoint(tiny_dir).config
    block = 737280 if model == "default" else (  # SmolLM2: 30 layers x 3 heads x 64, fp32
        KVSpec(c.num_layers, c.num_kv_heads, c.head_dim, "float32", 16).bytes_per_block)
    assert capsys.readouterr().err == (
        f"kvsaga-serve: error: {flag} 1 holds no KV block of {block} bytes for this model\n")


def test_a_max_model_len_past_the_models_context_fails_in_one_line_before_the_model_loads(
        capsys, monkeypatch: pytest.MonkeyPatch):
    """The bundled SmolLM2's GGUF says context_length 8192; a longer --max-model-len was
    taken without a word (vLLM refuses it). Refused before the port is bound, naming the
    flag (review s48 engine 1)."""
    from kvsaga.serve import cli

    def refuse(*a, **k):
        raise AssertionError("the port was bound before --max-model-len was checked")

    monkeypatch.setattr(cli, "listen_sockets", refuse)
    monkeypatch.setattr(cli, "engine_factory", refuse)
    assert cli.main(["--max-model-len", "8193", "--device", "cpu", "--port", "0"]) == 2
    assert capsys.readouterr().err == (
        "kvsaga-serve: error: --max-model-len 8193 exceeds the model's max_position_embeddings "
        "(a GGUF's context_length) of 8192; use at most 8192, or set "
        "KVSAGA_ALLOW_LONG_MAX_MODEL_LEN=1 to allow it (positions the model was not trained "
        "on: output of unknown quality)\n")


def test_a_block_over_the_default_cpu_budget_names_block_size_before_the_model_loads(
        capsys, monkeypatch: pytest.MonkeyPatch):
    """Without --kv-memory the engine takes 512 MiB off CUDA; a --block-size whose block is
    larger passed the check and failed after the port was bound, as "the model failed to
    load: kv_memory_bytes=536870912 ...", a flag the user never gave (review s47 lastdiff)."""
    from kvsaga.engine.engine import DEFAULT_CPU_KV_MEMORY_BYTES
    from kvsaga.serve import cli

    def refuse(*a, **k):
        raise AssertionError("the port was bound before the budget was checked")

    monkeypatch.setattr(cli, "listen_sockets", refuse)
    monkeypatch.setattr(cli, "engine_factory", refuse)
    assert cli.main(["--block-size", "16384", "--device", "cpu", "--port", "0"]) == 2
    block = 737280 // 16 * 16384  # SmolLM2, fp32: 46,080 bytes a token
    assert capsys.readouterr().err == (
        f"kvsaga-serve: error: --block-size 16384: a KV block of {block} bytes for this model "
        f"exceeds the default --kv-memory on cpu ({DEFAULT_CPU_KV_MEMORY_BYTES} bytes); give a "
        "smaller --block-size or a larger --kv-memory\n")


@pytest.mark.parametrize("value", [",", " ", " , "])
def test_an_api_key_variable_that_names_no_key_fails_as_the_flag_does(
        value, capsys, monkeypatch: pytest.MonkeyPatch):
    """KVSAGA_API_KEY set to commas or spaces parses to no key: serving silently without
    authentication would be the surprise the flag's check prevents (empty: unset, no auth)."""
    from kvsaga.serve import cli

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(cli, "preflight", refuse)
    monkeypatch.setattr(cli, "engine_factory", refuse)
    monkeypatch.setenv("KVSAGA_API_KEY", value)
    assert cli.main(["--port", "0"]) == 2
    assert f"KVSAGA_API_KEY={value!r} names no key" in capsys.readouterr().err


def test_session_idle_inf_never_ends_idle_sessions():
    """--session-idle inf (never end idle sessions) is accepted, as it was before settings
    were checked up front: the sweep sleeps 60 s at a time and ends nothing."""
    import math

    from kvsaga.serve import cli
    from kvsaga.serve.sessions import SessionRegistry

    args = cli.build_parser().parse_args(["--session-idle", "inf"])
    settings = cli.settings_from_args(args)
    assert settings.session_idle_s == math.inf
    assert min(60.0, settings.session_idle_s / 2) == 60.0
    reg = SessionRegistry(tokenizer=None)
    reg.open("s").last_used = 0.0
    assert reg.idle(settings.session_idle_s, now=1e12) == []
    assert reg.idle(10.0, now=1e12) == ["s"]


def test_settings_built_directly_are_checked_too():
    from kvsaga.serve.settings import ServerSettings

    with pytest.raises(ValueError, match="policy 'belady' is not an online policy"):
        ServerSettings(policy="belady")
    with pytest.raises(ValueError, match="max_queue must be an int >= 0, got -1"):
        ServerSettings(max_queue=-1)
    with pytest.raises(ValueError, match="block_size must be an int >= 1, got 2.5"):
        ServerSettings(block_size=2.5)
    with pytest.raises(ValueError, match="served_model_name must be a non-empty name"):
        ServerSettings(served_model_name=3)


def test_a_busy_port_fails_in_one_line_before_the_model_loads():
    """Another server on the port: one line naming the address, exit 2, nothing loaded (it
    was uvicorn's error after the model began loading, exit 3, and the log of the rest)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _serve("--port", str(port), "--log-level", "warning")
    assert r.returncode == 2
    assert r.stderr.startswith(f"kvsaga-serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert r.stderr.count("\n") == 1, r.stderr


def test_the_server_listens_on_the_socket_it_bound():
    from kvsaga.serve.cli import listen_sockets

    socks = listen_sockets("127.0.0.1", 0)
    try:
        assert [s.family for s in socks] == [socket.AF_INET]
        port = socks[0].getsockname()[1]
        with pytest.raises(OSError), socket.socket() as other:
            other.bind(("127.0.0.1", port))
    finally:
        for s in socks:
            s.close()


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 on this host")
@pytest.mark.parametrize(("host", "bound"), [
    ("", [("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)]),  # every interface, both
    ("::", [("::", socket.AF_INET6)]),  # IPv6 only (V6ONLY), not dual-stack
    ("::1", [("::1", socket.AF_INET6)]),
])
def test_it_binds_the_addresses_uvicorn_binds(host, bound):
    """As uvicorn's single-process server (asyncio's create_server(host=...)): one socket
    per getaddrinfo address, IPv6 ones V6ONLY; port 0 gives every socket the same port."""
    from kvsaga.serve.cli import bound_urls, listen_sockets

    socks = listen_sockets(host, 0)
    try:
        assert sorted((s.getsockname()[0], s.family) for s in socks) == sorted(bound)
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1
        for s in socks:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        port = ports.pop()
        assert sorted(bound_urls(socks)) == sorted(
            f"http://[{a}]:{port}" if f == socket.AF_INET6 else f"http://{a}:{port}"
            for a, f in bound)
    finally:
        for s in socks:
            s.close()


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 on this host")
def test_a_name_with_both_families_binds_both(monkeypatch: pytest.MonkeyPatch):
    """'localhost' listed as 127.0.0.1 and ::1 (an /etc/hosts with both) is both, on one
    port; an address listed twice is bound once."""
    from kvsaga.serve import cli

    real = socket.getaddrinfo

    def resolve(host, port, *a, **k):
        assert host == "localhost"
        return real("127.0.0.1", port, *a, **k) * 2 + real("::1", port, *a, **k)

    monkeypatch.setattr(cli.socket, "getaddrinfo", resolve)
    socks = cli.listen_sockets("localhost", 0)
    try:
        assert sorted(s.getsockname()[0] for s in socks) == ["127.0.0.1", "::1"]
        assert len({s.getsockname()[1] for s in socks}) == 1
    finally:
        for s in socks:
            s.close()


def test_without_the_serve_extra_it_names_the_extra(tiny_dir: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch):
    from kvsaga.serve import cli

    for missing in ("uvicorn", "kvsaga.engine.llm"):  # the server's, the model's
        with monkeypatch.context() as m:
            m.setitem(sys.modules, missing, None)  # as if not installed
            assert cli.main(["--model", str(tiny_dir), "--device", "cpu", "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert "pip install 'kvsaga[serve]'" in err and missing in err, err
        assert err.count("\n") == 1


@pytest.mark.parametrize("host", [None, "dedicated", "shared", "auto"])
@pytest.mark.parametrize("policy", ["", "ACTIVE"])
def test_cpu_host_sets_its_variables_before_torch_loads_and_yours_win(host: str | None,
                                                                       policy: str):
    """`--cpu-host` sets GOMP_SPINCOUNT (dedicated; auto, the default, which also sets
    KVSAGA_CPU_THREADS=adaptive) or KVSAGA_CPU_SERIAL_BELOW (shared: 8 MiB) before anything
    imports torch (libgomp reads its variables once, when torch loads it); a variable
    already set is kept, and an OMP_WAIT_POLICY the user set gets no spin count (libgomp
    would take the count over it). Run in a child: this process has torch."""
    script = """
import json, os, sys
os.environ.pop("GOMP_SPINCOUNT", None)
os.environ.pop("OMP_WAIT_POLICY", None)
os.environ.pop("KVSAGA_CPU_THREADS", None)
if sys.argv[3]:
    os.environ["OMP_WAIT_POLICY"] = sys.argv[3]
os.environ["KVSAGA_CPU_SERIAL_BELOW"] = sys.argv[2]
from kvsaga.serve import cli
seen = {}
def preflight(settings):
    seen.update(torch="torch" in sys.modules, spin=os.environ.get("GOMP_SPINCOUNT"),
                serial=os.environ.get("KVSAGA_CPU_SERIAL_BELOW"),
                threads=os.environ.get("KVSAGA_CPU_THREADS"))
    raise SystemExit(0)
cli.preflight = preflight
seen.update(policy=os.environ.get("OMP_WAIT_POLICY"))
try:
    cli.main(["--cpu-host", sys.argv[1]] if sys.argv[1] else [])
except SystemExit:
    pass
print(json.dumps(seen))
"""
    import json

    for serial, want in (("4096", "4096"), ("", "8388608" if host == "shared" else "")):
        out = subprocess.run([sys.executable, "-c", script, host or "", serial, policy],
                             capture_output=True, text=True, check=True, timeout=120).stdout
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen["torch"] is False
        assert seen["serial"] == want  # yours wins; empty counts as unset
        spins = host != "shared" and not policy
        assert seen["spin"] == ("10000" if spins else None)
        assert seen["policy"] == (policy or "PASSIVE")
        assert seen["threads"] == ("adaptive" if host in (None, "auto") else None)


def test_apply_cpu_host_returns_what_it_set_and_refuses_unknown_hosts(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from kvsaga.serve.cli import CPU_HOST_ENV, apply_cpu_host

    for name in {k for env in CPU_HOST_ENV.values() for k in env}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")
    assert apply_cpu_host("dedicated") == {}  # your spin count stays
    assert apply_cpu_host("shared") == {"KVSAGA_CPU_SERIAL_BELOW": "8388608"}
    assert apply_cpu_host("shared") == {}  # set now
    import os

    assert os.environ["GOMP_SPINCOUNT"] == "500"
    with pytest.raises(ValueError, match="--cpu-host must be one of"):
        apply_cpu_host("laptop")
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--cpu-host", "laptop"])
    assert "argument --cpu-host: invalid choice: 'laptop'" in usage_error(e, capsys)


def test_the_root_fixture_covers_every_variable_cpu_host_sets():
    """tests/conftest.py restores what `--cpu-host` sets after every test that runs
    kvsaga-serve's main() in-process; a variable added to CPU_HOST_ENV must join it."""
    from kvsaga.serve.cli import CPU_HOST_ENV
    from tests.conftest import _CPU_HOST_VARIABLES

    assert {k for env in CPU_HOST_ENV.values() for k in env} <= set(_CPU_HOST_VARIABLES)


def test_a_bad_cpu_threads_variable_exits_2_before_the_model_loads(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    from kvsaga.serve import cli

    def preflight(settings):
        raise AssertionError("the model load was reached")

    monkeypatch.setattr(cli, "preflight", preflight)
    monkeypatch.setenv("KVSAGA_CPU_THREADS", "sometimes")
    assert cli.main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "kvsaga-serve: error: KVSAGA_CPU_THREADS='sometimes': expected one of fixed, " \
           "adaptive" in err


@pytest.mark.parametrize("max_model_len", [None, "100000"])
def test_a_bad_allow_long_max_model_len_variable_exits_2_before_the_model_loads(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], max_model_len):
    """The flag was read only past the model's context: a typo went unnoticed with a short
    --max-model-len, and past it kvsaga-serve failed with rc 1 and a generic error."""
    from kvsaga.serve import cli

    def preflight(settings):
        raise AssertionError("the model load was reached")

    monkeypatch.setattr(cli, "preflight", preflight)
    monkeypatch.setenv("KVSAGA_ALLOW_LONG_MAX_MODEL_LEN", "yes")
    flags = ["--max-model-len", max_model_len] if max_model_len else []
    assert cli.main(["--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsaga-serve: error: KVSAGA_ALLOW_LONG_MAX_MODEL_LEN='yes': "
                          "expected 1 or true"), err
    assert len(err.strip().splitlines()) == 1, err
