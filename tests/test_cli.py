"""`kvsaga generate` / `kvsaga chat`: arguments checked before the model loads, one-line
failures, streamed answers, the --stats line, prompts kept off stdout."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from kvsaga import __version__, cli
from kvsaga.engine import llm as llm_module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.helpers_models import build_tiny_model

    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("cli-tiny"))


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch):
    """Fails the test if anything tries to load a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(llm_module, "LLMEngine", refuse)


def test_version_and_help_show_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"kvsaga {__version__}"
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: auto)" in text and "(default: info)" in text
    assert "generation_config, else 256" in text


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_every_flag_states_its_default(command):
    """README: `kvsaga generate --help` lists every flag with its default."""
    import argparse

    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if action.option_strings and action.default is not argparse.SUPPRESS and not (
                action.const is True and action.default is False):  # store_true: off
            assert "(default" in formatter._get_help_string(action), action.dest


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-tokens", "0"], "argument --max-tokens: must be >= 1, got 0"),
        (["--temperature", "-1"], "argument --temperature: must be >= 0"),
        (["--top-p", "1.5"], "argument --top-p: must be in (0, 1]"),
        (["--dtype", "fp8"], "argument --dtype: invalid choice"),
        (["--seed", str(2**64)], "argument --seed: must be an int64"),  # torch's seed range
    ],
)
def test_bad_values_are_rejected_by_the_parser(argv, message, capsys, no_load):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "hi", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("device", ["tpu", "cuda:0" if not torch.cuda.is_available() else "tpu"])
def test_bad_devices_fail_in_one_line_before_loading(device, capsys, no_load):
    assert cli.main(["generate", "hi", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kvsaga: error: device {device!r}")
    assert "Traceback" not in err


def test_without_the_model_extra_it_names_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kvsaga.engine.llm", None)  # as if torch were missing
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "hi"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "pip install 'kvsaga[model]'" in err


def test_a_missing_model_fails_in_one_line(capsys):
    assert cli.main(["generate", "hi", "--model", "/nope", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "kvsaga: error: model path does not exist: /nope\n"


def test_load_crash_is_one_line_and_a_traceback_under_debug(capsys, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(llm_module, "LLMEngine", crash)
    assert cli.main(["generate", "hi", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kvsaga: error: RuntimeError: out of memory\n")
    assert "Traceback" not in err and "--log-level debug" in err
    assert cli.main(["generate", "hi", "--device", "cpu", "--log-level", "debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_line_logged_after_main_returns_reaches_the_current_stderr(monkeypatch):
    """main() called in-process sets up logging while sys.stderr is one stream (pytest's
    capsys: closed when the test ends); a line logged later, e.g. by a server's thread, must
    not fail as '--- Logging error ---'. Since session 53 main() gives the root logger back
    as it found it, so the line goes where the caller's logging sends it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    during = io.StringIO()
    monkeypatch.setattr(sys, "stderr", during)
    assert cli.main(["generate", "hi", "--model", "/nope", "--log-level", "info"]) == 2
    during.close()
    assert root.handlers == handlers and root.level == level
    after = io.StringIO()
    monkeypatch.setattr(sys, "stderr", after)
    logging.getLogger("kvsaga.test").warning("logged later")
    assert "Logging error" not in after.getvalue()


def test_a_line_logged_while_a_command_runs_reaches_the_stderr_of_that_moment(monkeypatch):
    """Within a command's logging, a record goes to the sys.stderr of the moment it is
    logged (a server's thread logs after capsys swapped the stream)."""
    with cli.command_logging("info"):  # its handler made while stderr was pytest's
        now = io.StringIO()
        monkeypatch.setattr(sys, "stderr", now)
        logging.getLogger("kvsaga.test").info("logged later")
    assert "Logging error" not in now.getvalue()
    assert re.fullmatch(r"INFO \S+ kvsaga\.test: logged later\n", now.getvalue())


def _run(argv: list[str], tiny: Path) -> list[str]:
    return [*argv, "--model", str(tiny), "--device", "cpu", "--temperature", "0"]


def test_generate_streams_the_answer_and_prints_stats(tiny, capsys, monkeypatch):
    deltas = []
    real = cli._Printer.__call__

    def spy(self, out):
        deltas.append(out.delta)
        real(self, out)

    monkeypatch.setattr(cli._Printer, "__call__", spy)
    argv = _run(["generate", "--raw", "hello", "--max-tokens", "8", "--stats"], tiny)
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert len(deltas) == 8 and out == "".join(deltas) + "\n"
    assert "[stats] ttft" in err and "8 tokens in" in err and "prompt tokens cached" in err


_STATS = re.compile(r"(\d+) tokens in .* (\d+)/(\d+) prompt tokens cached$")


def test_chat_keeps_prompts_off_stdout_and_hits_the_cache(tiny, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("first question\nsecond one\n\n"))
    argv = _run(["chat", "--max-tokens", "6", "--stats", "--log-level", "warning"], tiny)
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "> " not in out and "> " not in err  # not a terminal: no prompt at all
    assert out.count("\n") >= 2
    (n1, cached1, prompt1), (_, cached2, _) = _stats(err)
    # The random model's answer does not survive as text (invalid UTF-8), so the template
    # turn reuses turn 1's prompt; tests/engine/test_llm.py checks whole answers on SmolLM2.
    assert cached1 == 0 and cached2 >= prompt1


def _stats(err: str) -> list[tuple[int, int, int]]:
    """(tokens, cached, prompt tokens) of each --stats line."""
    found = [_STATS.search(ln) for ln in err.splitlines() if ln.startswith("[stats]")]
    assert all(found)
    return [tuple(int(x) for x in m.groups()) for m in found]


def _spy_raw_turns(monkeypatch) -> list[tuple[str, str]]:
    """(the session's context text before, the text added) of each `generate` step."""
    seen = []
    real = llm_module.AgentSession.generate

    def spy(self, text, *args, **kwargs):
        seen.append((self.context.text if self.context is not None else "", text))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(llm_module.AgentSession, "generate", spy)
    return seen


def test_chat_raw_appends_text_without_the_template(tiny, capsys, monkeypatch):
    seen = _spy_raw_turns(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("abc\ndef\n"))
    assert cli.main(_run(["chat", "--raw", "--max-tokens", "3", "--stats"], tiny)) == 0
    (_, first), (before, second) = seen
    assert first == "abc\n" and second.endswith("def\n")
    # The model sees the answer's line ended before the next line, as the terminal shows it
    # (the next line was glued onto the answer), and no empty line between.
    assert not before.endswith("\n") and second == "\ndef\n"
    (n1, _, prompt1), (_, cached2, _) = _stats(capsys.readouterr().err)
    # Raw turns extend the exact ids: every token of turn 1 with K/V (all but the last).
    assert cached2 == prompt1 + n1 - 1


def test_chat_on_a_model_without_a_template_goes_raw_as_generate_does(tiny, tmp_path, capsys,
                                                                       monkeypatch):
    """`chat` failed (exit 2) after the first line, naming no --raw, where `generate` fell
    back to the raw text; now both say once that they complete the text as is."""
    bare = tmp_path / "no-template"
    shutil.copytree(tiny, bare)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    seen = _spy_raw_turns(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nagain\n"))
    assert cli.main(_run(["chat", "--max-tokens", "2"], bare)) == 0
    assert [text.strip() for _, text in seen] == ["hello", "again"]
    err = capsys.readouterr().err
    assert err.count("no chat template: the text is completed as is (--raw)") == 1
    assert cli.main(_run(["generate", "hello", "--max-tokens", "2"], bare)) == 0
    assert "no chat template" in capsys.readouterr().err


def test_a_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(tiny, capsys, monkeypatch,
                                                                  no_load):
    """Bytes that are not UTF-8 (a lone surrogate once decoded with surrogateescape) made
    the tokenizer raise a TypeError that ended the chat (exit 1); `generate` failed the
    same way, after loading the model."""
    bad = "caf\udce9"
    where = "holds a lone surrogate '\\udce9' at character 4, which is not Unicode text"
    assert cli.main(_run(["generate", bad], tiny)) == 2  # no_load: refused before loading
    assert capsys.readouterr().err.startswith(f"kvsaga: error: the prompt {where}")
    monkeypatch.undo()  # loading allowed from here
    monkeypatch.setattr("sys.stdin", io.StringIO(f"hello\n{bad}\nmore\n"))
    assert cli.main(_run(["chat", "--max-tokens", "2", "--stats"], tiny)) == 0
    err = capsys.readouterr().err
    assert f"kvsaga: turn refused: the line {where} (bytes that are not UTF-8 decode to these); "\
           "nothing was sent" in err
    assert len(_stats(err)) == 2  # the lines before and after it were answered


def test_a_reader_that_leaves_early_is_no_failure(tiny, capsys, monkeypatch):
    """`kvsaga generate ... | head -c 1`: the closed pipe was reported as a failure (exit 1,
    a line about --log-level debug); now it exits quietly with 141, as a shell reports a
    process that SIGPIPE ended."""
    read, write = os.pipe()
    os.close(read)
    with open(write, "w") as closed_pipe:
        monkeypatch.setattr("sys.stdout", closed_pipe)
        argv = _run(["generate", "--raw", "hello", "--max-tokens", "4", "--log-level",
                     "warning"], tiny)
        assert cli.main(argv) == 141
        assert capsys.readouterr().err == ""
        closed_pipe.write("x" * 100)
        closed_pipe.flush()  # into /dev/null now: the exit's flush does not fail again
