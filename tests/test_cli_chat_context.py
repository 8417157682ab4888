"""`kvsaga chat` when a turn would outgrow the model's context: the turn is refused with the
tokens it needs against the context length, the program stays up, the conversation and the
KV cache are as they were, and `/reset` starts a new conversation. `kvsaga generate` with a
prompt longer than the context fails in one line.

On a tiny random model (tests/helpers_models.py: 256 positions, byte-level tokenizer), so a
line of 400 characters is over the context by itself."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from kvsaga import cli
from kvsaga.engine import llm as llm_module
from kvsaga.engine.engine import ContextTooLong

LONG = "x" * 400
_STATS = re.compile(r"(\d+) tokens in .* (\d+)/(\d+) prompt tokens cached$")
_REFUSED = re.compile(r"^kvsaga: turn refused: it needs (\d+) tokens .* the model's context "
                      r"holds (\d+); nothing was sent and the conversation is as it was: (.*)$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.helpers_models import build_tiny_model

    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("chat-context"))


@pytest.fixture
def turns(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Each chat turn's session state and the cache's used blocks, before and after, and
    whether it was refused; the LLM is recorded under the key "llm" of the first entry."""
    seen: list[dict] = []
    real_load = cli.load_llm

    def load(args):
        llm = real_load(args)
        seen.append({"llm": llm})
        return llm

    def state(session) -> tuple:
        mgr = session.llm.engine.manager
        mgr.check_integrity()
        return (session.session_id, session.context_ids, list(session.messages),
                mgr.stats().num_used_blocks)

    def spy(real):
        def run(self, *args, **kwargs):
            turn = {"before": state(self), "refused": False}
            seen.append(turn)
            try:
                return real(self, *args, **kwargs)
            except ContextTooLong:
                turn["refused"] = True
                raise
            finally:
                turn["after"] = state(self)
        return run

    monkeypatch.setattr(cli, "load_llm", load)
    monkeypatch.setattr(llm_module.AgentSession, "generate", spy(llm_module.AgentSession.generate))
    monkeypatch.setattr(llm_module.AgentSession, "chat", spy(llm_module.AgentSession.chat))
    return seen


def _chat(tiny: Path, lines: list[str], monkeypatch, *flags: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{ln}\n" for ln in lines)))
    return cli.main(["chat", *flags, "--max-tokens", "3", "--stats", "--model", str(tiny),
                     "--device", "cpu", "--temperature", "0", "--log-level", "warning"])


def _stats(err: str) -> list[tuple[int, int, int]]:
    """(tokens, cached, prompt tokens) of each --stats line."""
    found = [_STATS.search(ln) for ln in err.splitlines() if ln.startswith("[stats]")]
    assert all(found)
    return [tuple(int(x) for x in m.groups()) for m in found]


def _refusals(err: str) -> list[tuple[int, int, str]]:
    found = [_REFUSED.match(ln) for ln in err.splitlines() if "turn refused" in ln]
    assert all(found), err
    return [(int(m[1]), int(m[2]), m[3]) for m in found]


@pytest.mark.parametrize("raw", [True, False])
def test_a_turn_over_the_context_is_refused_and_the_next_line_continues(
        raw, tiny, turns, capsys, monkeypatch):
    flags = ("--raw",) if raw else ()
    assert _chat(tiny, ["abc", LONG, "def"], monkeypatch, *flags) == 0
    out, err = capsys.readouterr()
    limit = turns[0]["llm"].engine.max_model_len
    ((needed, holds, fix),) = _refusals(err)
    assert holds == limit and needed > limit and "/reset" in fix
    assert "Traceback" not in err and LONG not in out
    first, refused, third = turns[1:]
    assert [t["refused"] for t in turns[1:]] == [False, True, False]
    # Nothing of the refused turn is left: same context, messages and blocks in use.
    assert refused["after"] == refused["before"] == first["after"] == third["before"]
    (n1, cached1, prompt1), (_, cached3, prompt3) = _stats(err)
    assert cached1 == 0
    if raw:  # the third line extends turn 1's exact ids, every token with K/V a hit
        assert cached3 == prompt1 + n1 - 1 and prompt3 > prompt1 + n1
    else:  # the template turn reuses turn 1's prompt (tests/test_cli.py says why not more)
        assert cached3 >= prompt1
    turns[0]["llm"].engine.manager.check_integrity()


def test_a_first_line_over_the_context_is_refused_without_offering_reset(
        tiny, turns, capsys, monkeypatch):
    assert _chat(tiny, [LONG, "abc"], monkeypatch, "--raw") == 0
    ((_, _, fix),) = _refusals(capsys.readouterr().err)
    assert fix == "send a shorter line"
    assert [t["refused"] for t in turns[1:]] == [True, False]
    assert turns[1]["after"][1:] == ([], [], 0)  # no context, no messages, no block held


def test_reset_starts_a_new_conversation(tiny, turns, capsys, monkeypatch):
    assert _chat(tiny, ["abc", "/reset", "def"], monkeypatch, "--raw") == 0
    out, err = capsys.readouterr()
    assert "kvsaga: new conversation" in err and "/reset" not in out
    first, second = turns[1:]
    assert second["before"][0] != first["before"][0]  # another session
    assert second["before"][1:3] == ([], [])
    (_, cached1, prompt1), (_, cached2, prompt2) = _stats(err)
    # "def\n" is a fresh context as long as "abc\n", not an extension of turn 1.
    assert prompt2 == prompt1 and cached2 == cached1 == 0


def test_an_answer_cut_at_the_context_says_so_and_reset_recovers(
        tiny, turns, capsys, monkeypatch):
    near = "y" * 252  # with BOS and "\n" 254 tokens: 2 of --max-tokens 3 fit in 256
    assert _chat(tiny, [near, "more", "/reset", "abc"], monkeypatch, "--raw") == 0
    err = capsys.readouterr().err
    limit = turns[0]["llm"].engine.max_model_len
    assert (f"kvsaga: the answer stopped at the model's context limit of {limit} tokens; "
            "/reset starts a new conversation") in err
    assert [t["refused"] for t in turns[1:]] == [False, True, False]
    (n1, _, prompt1), _ = _stats(err)
    assert (prompt1, n1) == (limit - 2, 2)
    assert _refusals(err)[0][0] > limit


def test_chat_help_and_the_readme_document_reset(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["chat", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "A line that is just /reset starts a new conversation" in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`/reset`" in readme


def test_generate_over_the_context_fails_in_one_line(tiny, capsys):
    argv = ["generate", "--raw", LONG, "--model", str(tiny), "--device", "cpu",
            "--log-level", "warning"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert re.fullmatch(r"kvsaga: error: prompt of 40\d tokens leaves no room to generate "
                        r"within the context limit of 256 tokens\n", err)
