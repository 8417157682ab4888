"""The code-describing docs against the code (session 54, lane docsarch): the paths they name
exist, docs/design.md's layout names every module and C++ file there is, and the parameter
tables of docs/scheduler.md, docs/policies.md and docs/simulator.md give the signatures' own
defaults. Read-only: parses the docs and inspects signatures; nothing runs but one trace
generation (the quickstart's capacity figure)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CODE_DOCS = ("architecture.md", "design.md", "simulator.md", "cluster.md", "workloads.md",
             "scheduler.md", "policies.md", "cluster_handover.md", "integrations_benchmarks.md")


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """From the line `heading` to the next heading of the same or a higher level."""
    start = text.index(heading + "\n")
    level = heading.split(" ")[0]
    stop = re.compile(rf"^#{{1,{len(level)}}} ", re.M)
    m = stop.search(text, start + len(heading) + 1)
    return text[start: m.start() if m else len(text)]


def _layout(text: str) -> str:
    section = _section(text, "## Layout")
    return section[section.index("```"): section.rindex("```")]


@pytest.mark.parametrize("doc", CODE_DOCS)
def test_every_source_path_a_doc_names_exists(doc):
    named = set(re.findall(r"(?<![\w/.-])((?:kvsaga|csrc|tests|bench)/[\w/.-]*\.(?:py|h|cpp))\b",
                           _read(doc)))
    assert named, doc  # the pattern still finds what the doc names
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"docs/{doc} names files that do not exist: {missing}"


def test_design_layout_names_every_module_and_cpp_file():
    layout = _layout(_read("design.md"))
    words = set(re.findall(r"[\w.]+", layout))
    pkg = ROOT / "kvsaga"
    modules = [p.stem for p in pkg.glob("*.py") if p.stem != "__init__"]
    modules += [p.stem for p in (pkg / "policy").glob("*.py") if p.stem != "__init__"]
    unnamed = sorted(m for m in modules if m not in words and f"{m}.py" not in words)
    assert not unnamed, f"docs/design.md's layout names no {unnamed}"
    sources = sorted(p.name for p in (ROOT / "csrc").iterdir() if p.suffix in (".h", ".cpp"))
    assert sources
    unnamed = [s for s in sources if s not in words]
    assert not unnamed, f"docs/design.md's layout names no csrc/{unnamed}"


def test_design_layout_lists_each_extension_setup_builds():
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    built = re.findall(r'\("(kvsaga\._\w+)", "(\w+\.cpp)"\)', setup)
    assert len(built) == 5
    layout = _layout(_read("design.md"))
    for name, cpp in built:
        assert name in layout and cpp in layout, (name, cpp)


def _literal(cell: str):
    cell = cell.replace("`", "").strip()
    try:
        return ast.literal_eval(cell)
    except (ValueError, SyntaxError):  # a value then a gloss: None ("demoted_queue")
        return ast.literal_eval(cell.split()[0])


def _table(section: str) -> dict[str, str]:
    """name -> the default cell, for each row `| `name`[, `name2`] | default | ... |` (a row of
    several names gives each its own value: "a, b" or "a / b")."""
    out: dict[str, str] = {}
    for line in section.splitlines():
        m = re.match(r"^\| ((?:`\w+`(?:, | / )?)+) \| ([^|]+) \|", line)
        if not m:
            continue
        names = re.findall(r"`(\w+)`", m.group(1))
        cell = m.group(2).strip()
        if len(names) == 1:
            out[names[0]] = cell
        elif " / " in cell:
            out.update(zip(names, cell.split(" / "), strict=True))
        else:
            values = ast.literal_eval("(" + cell.replace("`", "") + ",)")
            assert len(values) == len(names), line
            out.update((n, repr(v)) for n, v in zip(names, values, strict=True))
    return out


def _defaults(fn, skip=()) -> dict[str, object]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not p.empty and k not in skip}


def _check(table: dict[str, str], defaults: dict[str, object], prose: dict[str, tuple]):
    assert set(table) == set(defaults), (sorted(set(defaults) - set(table)),
                                         sorted(set(table) - set(defaults)))
    for name, cell in table.items():
        if name in prose:  # a default the table states in words
            words, value = prose[name]
            assert cell == words and defaults[name] == value, (name, cell, defaults[name])
            continue
        doc, code = _literal(cell), defaults[name]
        same_kind = type(doc) is type(code) or not isinstance(doc, bool) and not isinstance(
            code, bool)  # 8192 for 8192.0 is fine; True for 1 is not
        assert doc == code and same_kind, (name, cell, code)


def test_scheduler_parameter_table_gives_the_signature_defaults():
    from kvsaga.scheduler.workflow import WorkflowScheduler

    table = _table(_section(_read("scheduler.md"), "## Parameters of `WorkflowScheduler`"))
    defaults = _defaults(WorkflowScheduler.__init__, skip=("manager", "limits"))
    # None: every tenant weighs 1; inf: the opt-in `shrink_exempt_s` off
    _check(table, defaults, {"tenant_weights": ("1 each", None),
                             "shrink_exempt_s": ("inf", float("inf"))})


@pytest.mark.parametrize("name", ["ttl", "graph", "saga", "adaptive"])
def test_policy_parameter_tables_give_the_signature_defaults(name):
    from kvsaga.policy import POLICIES

    text = _read("policies.md")
    heading = next(line for line in text.splitlines() if line.startswith(f"### `{name}`"))
    table = _table(_section(text, heading))
    # `cost` and `graph` (an ExecutionGraph to learn into) are objects, named in the prose
    _check(table, _defaults(POLICIES[name].__init__, skip=("cost", "graph")), {})


def test_policies_table_names_every_policy():
    from kvsaga.policy import POLICIES

    section = _section(_read("policies.md"), "## Which policy to pick")
    assert set(re.findall(r"^\| `([\w-]+)`", section, re.M)) == set(POLICIES)


def test_simconfig_table_gives_the_dataclass_defaults():
    from kvsaga.sim import SimConfig

    table = _table(_section(_read("simulator.md"), "## `SimConfig`"))
    defaults = {f.name: f.default for f in dataclasses.fields(SimConfig)}
    _check(table, defaults, {})


def test_the_quickstart_capacity_figure_is_the_longest_sessions_blocks():
    """docs/simulator.md's quickstart: the blocks its longest session needs (the first
    session `Simulator` names as not fitting is not always the longest one: at 7,000 blocks
    it names one of 7,493)."""
    from kvsaga.sim import generate, get_preset
    from kvsaga.sim.simulator import blocks_needed

    text = _read("simulator.md")
    assert 'generate("swe", 100, seed=1)' in text
    stated = int(re.search(r"longest session \(here ([\d,]+) blocks", text)[1].replace(",", ""))
    spec = get_preset("a100-llama3-8b").kv_spec
    assert stated == max(blocks_needed(s, spec) for s in generate("swe", 100, seed=1))
