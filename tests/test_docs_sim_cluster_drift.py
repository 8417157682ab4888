"""docs/simulator.md, docs/cluster.md and docs/engine_profiles.md against the code (session 55,
lane docswalk): the fields, keys, flags and defaults these pages state, compared with the
dataclasses, parsers and the files `kvsaga sim` writes, so that neither side can move alone.
The runs are tiny (a few sessions at 5% scale, about a second each)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

from tests.test_docs_code_map import _read, _section

ROOT = Path(__file__).resolve().parents[1]


def _named(text: str) -> set[str]:
    return set(re.findall(r"`(\w+)`", text))


def _sim_parser() -> argparse.ArgumentParser:
    from kvsaga.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices["sim"]


def _sim(capsys, *argv: str) -> tuple[int, str]:
    """`kvsaga sim` in this process on a tiny swe trace; its status and stderr."""
    from kvsaga.cli import main

    status = main(["sim", "--workload", "swe", "--sessions", "3", "--scale", "0.05",
                   "--kv-memory", "1G", "--policy", "lru", "--quiet", *argv])
    return status, capsys.readouterr().err


def test_metrics_section_names_every_simresult_field():
    from kvsaga.sim import SimResult

    named = _named(_section(_read("simulator.md"), "## Metrics (`SimResult`)"))
    missing = [f.name for f in dataclasses.fields(SimResult) if f.name not in named]
    assert not missing, f"docs/simulator.md, Metrics, names no {missing}"


def test_cluster_row_keys_are_the_documented_ones(tmp_path, capsys):
    """Every key of a `--gpus` JSON row is in the section's list of a row's keys."""
    out = tmp_path / "c.json"
    status, _ = _sim(capsys, "--gpus", "2", "--json", str(out))
    assert status == 0
    row = json.loads(out.read_text())["results"][0]
    section = _section(_read("simulator.md"), "## Several GPUs: `kvsaga sim --gpus N --router a,b`"
                       " (`kvsaga/sim/cluster.py`)")
    listed = section[section.index("One row per router x scheduler x policy"):]
    listed = _named(listed[: listed.index("(as a\nsingle-GPU row's")])
    assert set(row) <= listed, sorted(set(row) - listed)


def test_json_keys_are_the_documented_ones(tmp_path, capsys):
    """Without `--plot` the file is `config` and `results`; the doc says `sweep` needs `--plot`
    (before session 55 it listed `sweep` as always written)."""
    out = tmp_path / "r.json"
    status, _ = _sim(capsys, "--json", str(out))
    assert status == 0
    assert set(json.loads(out.read_text())) == {"config", "results"}
    text = " ".join(_read("simulator.md").split())
    assert 'plus `"sweep": [...]` with `--plot`' in text


def test_trace_note_names_the_flags_set_off_their_defaults(tmp_path, capsys):
    """The doc's rule for the `--trace` note: a flag set to its default is not named."""
    from kvsaga.sim import generate, write_trace

    trace = tmp_path / "t.jsonl"
    write_trace(generate("web", 2, seed=1, scale=0.05), trace)
    status, err = _sim(capsys, "--trace", str(trace), "--workload", "web", "--seed", "1")
    assert status == 0
    # --sessions 3 and --scale 0.05 (set by _sim) and --workload web differ from the
    # defaults; --seed 1 is the default.
    assert "--workload and --sessions and --scale do not apply with --trace" in err, err
    assert "--seed" not in err, err
    text = " ".join(_read("simulator.md").split())
    assert "the note names those set to other than their defaults" in text


def test_sim_synopses_name_only_sim_flags():
    flags = {o for a in _sim_parser()._actions for o in a.option_strings}
    text = _read("simulator.md")
    blocks = re.findall(r"```\n(kvsaga sim .*?)```", text, flags=re.S)
    assert len(blocks) == 2, blocks
    named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", " ".join(blocks)))
    assert named and named <= flags, sorted(named - flags)


def test_cluster_doc_states_the_routing_defaults():
    """Each "`field` (value" docs/cluster.md gives for a RoutingConfig field is its default."""
    from kvsaga.routing_config import RoutingConfig

    defaults = {f.name: getattr(RoutingConfig(), f.name) for f in dataclasses.fields(RoutingConfig)}
    text = " ".join(_read("cluster.md").split())
    stated = {}
    for name, value in re.findall(r"`(\w+)` \((-?[\d.]+)[,;) ]", text):
        if name in defaults:
            stated.setdefault(name, set()).add(float(value))
    # The pattern still finds the doc's figures.
    assert set(stated) >= {"resume_weight", "prefix_slack", "steal_min_waiting", "steal_margin",
                           "max_commitment", "busy_balance", "busy_balance_min_s",
                           "busy_balance_quiet", "busy_balance_force"}, sorted(stated)
    wrong = {n: v for n, v in stated.items() if v != {float(defaults[n])}}
    assert not wrong, (wrong, {n: defaults[n] for n in wrong})
    assert "`busy_balance_alone`, on by default" in text and defaults["busy_balance_alone"]
    assert "`busy_balance_crowding` (opt-in, 0 by default)" in text
    assert defaults["busy_balance_crowding"] == 0


def test_cluster_doc_states_the_deployment_defaults():
    """`build_application`'s defaults, read from its source (importing it imports Ray)."""
    tree = ast.parse((ROOT / "kvsaga/integrations/ray/deployment.py").read_text())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)
             and n.name == "build_application"]
    consts = {n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign)
              and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}

    def value(node):  # a literal, or a module constant naming one
        return ast.literal_eval(consts[node.id] if isinstance(node, ast.Name) else node)

    params = {a.arg: value(d) for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults,
                                               strict=True) if d is not None}
    text = " ".join(_read("cluster.md").split())
    assert params["stuck_step_s"] == 120
    assert "`stuck_step_s` (120" in text
    assert params["stats_period_s"] == 0.5
    assert "`stats_period_s` (0.5 s)" in text
    assert params["router"] == "kvsaga" and "`--router` (default `kvsaga`)" in text


def _settings_table() -> dict[str, str]:
    section = _section(_read("engine_profiles.md"), "## Settings")
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| `([^`]+)`[^|]* \| ([^|]+) \|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_engine_profiles_settings_table_gives_the_defaults(monkeypatch):
    pytest.importorskip("fastapi")
    from kvsaga import envs
    from kvsaga.engine.cpu_linear import PACKED_MAX_BYTES
    from kvsaga.serve.cli import CPU_HOST_ENV, DEFAULT_CPU_HOST, build_parser

    rows = _settings_table()
    for name in ("KVSAGA_CPU_WEIGHTS", "KVSAGA_CPU_THREADS", "KVSAGA_CPU_SERIAL_BELOW",
                 "KVSAGA_KERNELS"):
        monkeypatch.delenv(name, raising=False)  # the defaults, whatever this process has
    assert rows["KVSAGA_CPU_WEIGHTS"].startswith("`auto`")
    assert envs.KVSAGA_CPU_WEIGHTS == "auto"
    assert PACKED_MAX_BYTES == 1 << 30 and "up to 1 GiB" in rows["KVSAGA_CPU_WEIGHTS"]
    assert rows["kvsaga-serve --cpu-host"] == DEFAULT_CPU_HOST == "auto"
    assert CPU_HOST_ENV == {"auto": {"GOMP_SPINCOUNT": "10000", "KVSAGA_CPU_THREADS": "adaptive"},
                            "dedicated": {"GOMP_SPINCOUNT": "10000"},
                            "shared": {"KVSAGA_CPU_SERIAL_BELOW": "8388608"}}
    assert rows["KVSAGA_CPU_THREADS"].startswith("fixed")
    assert envs.KVSAGA_CPU_THREADS == "fixed"
    assert rows["KVSAGA_CPU_SERIAL_BELOW"].startswith("0 (off)")
    assert envs.KVSAGA_CPU_SERIAL_BELOW == 0
    assert "(8388608)" in rows["KVSAGA_CPU_SERIAL_BELOW"]
    assert envs.CPU_SERIAL_BELOW_SHARED == 8388608
    assert rows["KVSAGA_KERNELS"] == "`auto`" and envs.KVSAGA_KERNELS == "auto"
    assert rows["--max-num-batched-tokens"] == "1024"
    assert build_parser().parse_args([]).max_num_batched_tokens == 1024
