"""`--help` explains every flag: each argument of `kvsaga` (every subcommand, `sim` included),
of `kvsaga-serve` and of every script in bench/ has a non-empty help string, and each
subcommand a line of its own in its parent's `--help`.

`kvsaga` and `kvsaga-serve` are checked on the parsers they build. bench/'s scripts build
theirs inside `main()`, several only after loading a model or a trace, so they are read
instead: every `add_argument` / `add_parser` call in bench/, made directly or through an
alias (`a = ap.add_argument`), must pass `help=` itself (a `**kwargs` call cannot be checked,
and counts as none)."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsaga import cli

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _walk(parser: argparse.ArgumentParser, prog: str) -> Iterator[tuple[str, str, object]]:
    """(command, argument, help) for each argument of `parser` and its subcommands, and
    (command, "<subcommand NAME>", help) for each subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield prog, f"<subcommand {name}>", helps.get(name)
                yield from _walk(sub, f"{prog} {name}")
        else:
            yield prog, "/".join(action.option_strings) or action.dest, action.help


def _missing(items) -> list[str]:
    return [f"{prog} {arg}" for prog, arg, text in items
            if not isinstance(text, str) or not text.strip()]


def test_every_kvsaga_argument_and_subcommand_has_help():
    items = list(_walk(cli.build_parser(), "kvsaga"))
    assert _missing(items) == []
    commands = {arg for _, arg, _ in items if arg.startswith("<subcommand")}
    assert {"<subcommand generate>", "<subcommand chat>"} <= commands
    pytest.importorskip("kvsaga.sim.cli")
    assert "<subcommand sim>" in commands and any(p == "kvsaga sim" for p, _, _ in items)


def test_every_kvsaga_serve_argument_has_help():
    serve_cli = pytest.importorskip("kvsaga.serve.cli")
    items = list(_walk(serve_cli.build_parser(), "kvsaga-serve"))
    assert len(items) > 10 and _missing(items) == []


_ADDERS = ("add_argument", "add_parser")


def _aliases(tree: ast.AST) -> set[str]:
    """Names bound to an adder, as in `a = ap.add_argument` (most bench scripts' style)."""
    return {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Attribute) and node.value.attr in _ADDERS
            for t in node.targets if isinstance(t, ast.Name)}


def _calls_without_help(path: Path, root: Path = BENCH.parent) -> list[str]:
    """`file:line call` for each add_argument / add_parser call in `path`, made directly or
    through an alias, whose help is absent, empty or hidden behind **kwargs."""
    bad = []
    tree = ast.parse(path.read_text(), str(path))
    aliases = _aliases(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not (
                isinstance(node.func, ast.Attribute) and node.func.attr in _ADDERS
                or isinstance(node.func, ast.Name) and node.func.id in aliases):
            continue
        text = next((k.value for k in node.keywords if k.arg == "help"), None)
        if text is None or (isinstance(text, ast.Constant)
                            and not (isinstance(text.value, str) and text.value.strip())):
            bad.append(f"{path.relative_to(root)}:{node.lineno} "
                       f"{ast.unparse(node)[:80]}")
    return bad


def test_every_bench_flag_has_help():
    scripts = sorted(BENCH.rglob("*.py"))
    assert len(scripts) > 50
    assert [bad for path in scripts for bad in _calls_without_help(path)] == []


def test_the_bench_check_sees_a_missing_help(tmp_path):
    """The reader above finds what it must: no help, an empty one, **kwargs; not a help
    given by a variable or a string."""
    script = tmp_path / "bench" / "x.py"
    script.parent.mkdir()
    script.write_text(
        "ap.add_argument('--a', type=int)\n"
        "ap.add_argument('--b', help='')\n"
        "ap.add_argument('--c', **kw)\n"
        "sub.add_parser('run')\n"
        "ap.add_argument('--d', help=TEXT)\n"
        "ap.add_argument('--e', help='the e')\n"
        "a = ap.add_argument\n"
        "a('--f', type=int)\n"
        "a('--g', help='the g')\n"
        "b('--h')\n"
    )
    found = [line.split()[0] for line in _calls_without_help(script, tmp_path)]
    assert found == ["bench/x.py:1", "bench/x.py:2", "bench/x.py:3", "bench/x.py:4",
                     "bench/x.py:8"]
