"""Every KVSAGA_* variable (kvsaga/envs.py) is documented, and a bad value of any of them is
refused by `kvsaga generate` / `kvsaga chat` and by `kvsaga-serve` with exit status 2 and
one line naming it, before the model loads.

Until session 52 kvsaga-serve checked two of them up front: with KVSAGA_KERNELS=bogus it
started, /health said ok and every completion answered 500 (the variable is read at the
first attention call); with a bad KVSAGA_CORE, KVSAGA_CPU_WEIGHTS or KVSAGA_CPU_SERIAL_BELOW
it bound its port, loaded the model, then exited 1. `kvsaga generate` checked none: a typo
cost the whole model load, then exit 1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvsaga import envs

ROOT = Path(__file__).resolve().parents[1]

# A bad value for each variable that has one, in lower case (a choice is lowered before the
# message names it). KVSAGA_API_KEY is any string; one naming no key is refused by
# kvsaga-serve's own test (tests/serve/test_cli.py).
BAD = {
    "KVSAGA_KERNELS": "cuda",
    "KVSAGA_CORE": "c++",
    "KVSAGA_CPU_WEIGHTS": "twice",
    "KVSAGA_CPU_SERIAL_BELOW": "8mib",
    "KVSAGA_CPU_THREADS": "sometimes",
    "KVSAGA_ALLOW_LONG_MAX_MODEL_LEN": "yes",
}


def test_every_variable_has_a_bad_value_here_and_is_documented():
    assert set(BAD) == set(dir(envs)) - {"KVSAGA_API_KEY"}
    docs = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    assert [name for name in dir(envs) if name not in docs] == []


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_names_a_bad_variable(name, monkeypatch: pytest.MonkeyPatch):
    envs.check()  # the test environment's own values are good
    monkeypatch.setenv(name, BAD[name])
    with pytest.raises(ValueError, match=rf"^{name}='{re.escape(BAD[name])}': expected ") as e:
        envs.check()
    assert "\n" not in str(e.value) and str(e.value).count("KVSAGA_") == 1


def test_check_names_every_bad_variable(monkeypatch: pytest.MonkeyPatch):
    for name, value in BAD.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as e:
        envs.check()
    assert [part.split("=")[0] for part in str(e.value).split("; ")] == list(BAD)


def _refuse_loading(*args, **kwargs):
    raise AssertionError("the model load was reached")


@pytest.mark.parametrize("name", sorted(BAD))
def test_kvsaga_serve_refuses_a_bad_variable_before_the_model_loads(
        name, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    cli = pytest.importorskip("kvsaga.serve.cli")
    monkeypatch.setattr(cli, "preflight", _refuse_loading)
    monkeypatch.setattr(cli, "engine_factory", _refuse_loading)
    monkeypatch.setenv(name, BAD[name])
    assert cli.main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvsaga-serve: error: {name}='{BAD[name]}': expected "), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("command", [["generate", "hello"], ["chat"]])
@pytest.mark.parametrize("name", sorted(BAD))
def test_kvsaga_generate_and_chat_refuse_a_bad_variable_before_the_model_loads(
        name, command, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    llm = pytest.importorskip("kvsaga.engine.llm")
    from kvsaga import cli

    monkeypatch.setattr(llm, "LLM", _refuse_loading)
    monkeypatch.setenv(name, BAD[name])
    with pytest.raises(SystemExit) as e:
        cli.main([*command, "--device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvsaga: error: {name}='{BAD[name]}': expected "), err
    assert err.count("\n") == 1, err
