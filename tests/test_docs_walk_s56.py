"""Session 56's walk of docs/scheduler.md, docs/policies.md, docs/integrations_benchmarks.md and
docs/cluster_handover.md as a user reads them (findings/s56/docswalk2.md): the two bugs it
found (a batch limit in `SimConfig.scheduler_params`, an offline policy as a vLLM connector
arm) and drift guards for what those docs state that the code could change silently. Reads
docs and signatures; builds schedulers over a tiny manager; runs nothing long."""

from __future__ import annotations

import argparse
import ast
import math
import re
import shlex
from pathlib import Path

import pytest

from tests.bench_scripts import load_bench
from tests.test_docs_code_map import _section

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _manager():
    from kvsaga import KVCacheManager, KVSpec

    return KVCacheManager(KVSpec(1, 1, 4, block_size=4), 8)


# -- finding 1: a batch limit given as a scheduler parameter to the simulator -------------
@pytest.mark.parametrize("limit", ["max_num_seqs", "max_num_batched_tokens"])
def test_simconfig_refuses_a_batch_limit_among_the_scheduler_params(limit):
    """Before the fix SimConfig accepted it and `Simulator` then died with `TypeError:
    make_scheduler() got multiple values for keyword argument` (it passes the limits
    beside the params), as the engine and kvsaga-serve refuse it by name."""
    from kvsaga.sim import SimConfig

    with pytest.raises(ValueError, match=rf"scheduler_params: '{limit}' .*SimConfig\.{limit}"):
        SimConfig(num_gpu_blocks=64, scheduler_params={limit: 2})
    SimConfig(num_gpu_blocks=64, scheduler_params={"max_bypass": 2})  # its own: accepted


# -- finding 2: an offline policy as a vLLM connector arm ---------------------------------
@pytest.mark.parametrize("name", ["belady", "oracle-ttl", "belady+gate"])
def test_connector_arm_refuses_an_offline_policy_before_any_server(name):
    """The connector refuses `belady` / `oracle-ttl` (they need the future); before the fix
    the bench's arm check passed them, and the refusal came when that arm's vLLM started,
    after the plain vLLM arm had run."""
    load_bench("agent_replay")  # puts bench/ (the replay package) on sys.path
    from replay.servers import connector_arm

    with pytest.raises(SystemExit, match="online policy"):
        connector_arm(name)
    assert connector_arm("graph+fifo")[0] == "graph"


# -- scheduler.md --------------------------------------------------------------------------
def _param_rows() -> dict[str, str]:
    section = _section(_read("scheduler.md"), "## Parameters of `WorkflowScheduler`")
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| `(\w+)` \|(.*)$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _choices():
    from kvsaga.scheduler.admission_order import (
        ADMISSION_ORDERS,
        READMIT_COSTS,
        READMIT_ORDERS,
    )
    from kvsaga.scheduler.decode_stall import DECODE_PREFILL_WHEN
    from kvsaga.scheduler.workflow import SHRINK_ON, SHRINK_ORDERS, UNDO_DEMOTIONS
    from kvsaga.scheduler.working_set_gate import GROWTH_CHARGES

    return {"shrink_order": SHRINK_ORDERS, "shrink_on": SHRINK_ON,
            "admission_order": ADMISSION_ORDERS, "readmit_order": READMIT_ORDERS,
            "readmit_cost": READMIT_COSTS, "growth_charge": GROWTH_CHARGES,
            "undo_demotion": [v for v in UNDO_DEMOTIONS if isinstance(v, str)],
            "paused_reserve": ["short"], "decode_prefill_when": DECODE_PREFILL_WHEN}


@pytest.mark.parametrize("name", sorted(_choices()))
def test_each_choice_parameter_row_names_exactly_the_accepted_values(name):
    """A value the code accepts is named in the parameter's row (a user reads its choices
    there), and every quoted value in the row is accepted."""
    from kvsaga.scheduler import make_scheduler

    row = _param_rows()[name]
    quoted = set(re.findall(r'"(\w+)"', row))
    accepted = set(_choices()[name])
    assert quoted == accepted, (name, sorted(quoted - accepted), sorted(accepted - quoted))
    for value in quoted:
        make_scheduler("workflow", _manager(), **{name: value})


def test_readmit_charge_row_counts_the_values():
    from kvsaga.scheduler.working_set_gate import READMIT_CHARGES

    m = re.search(r"the (\d+) other values are opt-in", _param_rows()["readmit_charge"])
    assert m and int(m[1]) == len(READMIT_CHARGES) - 1


def test_stated_upper_bounds_are_the_codes():
    """scheduler.md, "The two schedulers": the bounds it names, each enforced."""
    from kvsaga.scheduler import make_scheduler
    from kvsaga.scheduler.base import MAX_COUNT, MAX_HORIZON_STEPS
    from kvsaga.scheduler.fair_share import MAX_TENANT_WEIGHT, MIN_TENANT_WEIGHT
    from kvsaga.scheduler.working_set_gate import MAX_GROWTH_RESERVE

    text = _read("scheduler.md")
    intro = _section(text, "## The two schedulers")
    assert ("`backfill_window`, `decode_prefill_tokens` and `prior_growth_tokens` at most "
            "2**31 - 1") in " ".join(intro.split())
    assert MAX_COUNT == 2**31 - 1 and MAX_HORIZON_STEPS == 1e9 and MAX_GROWTH_RESERVE == 1e6
    assert "`horizon_steps` at most 1e9" in intro and "`growth_reserve` at most 1e6" in intro
    for name, over in [("backfill_window", MAX_COUNT + 1), ("decode_prefill_tokens",
                       MAX_COUNT + 1), ("prior_growth_tokens", MAX_COUNT + 1),
                       ("horizon_steps", MAX_HORIZON_STEPS * 2),
                       ("growth_reserve", MAX_GROWTH_RESERVE * 2)]:
        with pytest.raises(ValueError, match=name):
            make_scheduler("workflow", _manager(), **{name: over})
    assert (MIN_TENANT_WEIGHT, MAX_TENANT_WEIGHT) == (1e-6, 1e6)
    assert "from 1e-6 to 1e6" in _section(text, "## Agent Fair Share (several tenants)")


def test_prefill_cap_gate_off_rule():
    """scheduler.md, "The prefill cap": with the cap off, a gate is refused, "always" is not."""
    from kvsaga.scheduler import make_scheduler

    section = " ".join(_section(_read("scheduler.md"), "### The prefill cap").split())
    assert '"demoted", "demoted_queue" or "recompute") with the cap off is refused' in section
    make_scheduler("workflow", _manager(), decode_prefill_tokens=0, decode_prefill_when="always")
    for gate in ("demoted", "demoted_queue", "recompute"):
        with pytest.raises(ValueError, match="decode_prefill_when"):
            make_scheduler("workflow", _manager(), decode_prefill_tokens=0,
                           decode_prefill_when=gate)


# -- cluster_handover.md -------------------------------------------------------------------
def _constants(path: str) -> dict[str, object]:
    """Module-level `NAME = literal` or arithmetic of literals and earlier such names (`2 *
    _PULL_TIMEOUT_S`) of a file, read without importing it (handover.py imports Ray Serve)."""
    simple = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp,
              ast.operator, ast.unaryop)
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    out: dict[str, object] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        expr = ast.Expression(node.value)
        names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
        if all(isinstance(n, simple) for n in ast.walk(expr)) and names <= set(out):
            out[node.targets[0].id] = eval(compile(expr, path, "eval"),
                                           {"__builtins__": {}}, dict(out))
    return out


def test_cluster_handover_states_the_codes_numbers():
    from kvsaga.routing import KvsagaRouter
    from kvsaga.routing_base import Router

    text = " ".join(_read("cluster_handover.md").split())
    h = _constants("kvsaga/integrations/ray/handover.py")
    g = _constants("kvsaga/integrations/ray/gateway.py")
    assert h["_PULL_TIMEOUT_S"] == 60 and "`_PULL_TIMEOUT_S`" in text
    assert "up to 60 s, `_PULL_TIMEOUT_S`" in text and "timed out after 60 s" in text
    assert h["_HANDOVER_HOLD_S"] == 120 and "neither within 120 s frees the session" in text
    # the commit memory: the hold and one more pull timeout
    assert h["_HANDOVER_HOLD_S"] + h["_PULL_TIMEOUT_S"] == 3 * 60
    assert "remembers a commit for 3 x 60 s" in text
    assert h["_PROBE_TIMEOUT_S"] == 5 and "a pinned call, at most 5 s" in text
    assert h["_PROBE_KEPT_S"] == 1 and "for 1 s after a probe kept the hold (`_PROBE_KEPT_S`)" \
        in text
    assert KvsagaRouter.refused_move_s == 30 and "`refused_move_s` (30 s)" in text
    assert Router._MAX_VOIDED == 4096
    assert "(`Router.move_unanswered`, at most 4096 sessions" in text
    assert g["PULL_REFUSED_HEADER"] == "x-kvsaga-pull-refused"
    assert g["PULL_UNCOMMITTED_HEADER"] == "x-kvsaga-pull-uncommitted"
    assert "`x-kvsaga-pull-refused` header" in text and "(`x-kvsaga-pull-uncommitted`)" in text
    handover = (ROOT / "kvsaga/integrations/ray/handover.py").read_text(encoding="utf-8")
    for code in ("session_busy", "session_move_failed", "aborted"):
        assert f'code="{code}"' in handover and f"`{code}`" in text
    assert '"Retry-After": "1"' in handover and "(`Retry-After: 1`)" in text


# -- integrations_benchmarks.md ------------------------------------------------------------
# The scripts with flags that the doc names (bench/vllm_replay_bound.py, also named, is a
# helper module without any).
BENCH_SCRIPTS = ("agent_replay", "serve_throughput", "vllm_scheduler_replay", "wake_latency")


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _flags(script: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The option strings of `script`'s own parser: its `main` runs up to its parse_args,
    which stops it (nothing runs)."""
    def stop(self, *args, **kwargs):
        raise _Parsed(self)

    mod = load_bench(script)
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", stop)
        with pytest.raises(_Parsed) as parsed:
            mod.main([])
    return {s for a in parsed.value.parser._actions for s in a.option_strings}


def test_integrations_benchmarks_flags_are_the_scripts(monkeypatch):
    text = _read("integrations_benchmarks.md")
    for script in (*BENCH_SCRIPTS, "vllm_replay_bound"):
        assert f"bench/{script}.py" in text
    from kvsaga.serve.cli import build_parser

    serve = {s for a in build_parser()._actions for s in a.option_strings}  # `--cpu-host`
    known = serve.union(*(_flags(s, monkeypatch) for s in BENCH_SCRIPTS))
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text)) - {"--flag"}
    assert named and not named - known, sorted(named - known)


def test_integrations_benchmarks_names_every_connector_arm():
    load_bench("agent_replay")
    from replay.servers import CONNECTOR_SUFFIXES

    text = _read("integrations_benchmarks.md")
    for suffix in CONNECTOR_SUFFIXES:
        assert f"`POLICY+{suffix}`" in text, suffix


def test_integrations_benchmarks_recorded_live_command_parses_and_passes_the_seed_check():
    """The recorded live command runs as written (since session 49 a fit seed with --json
    needs --fit-seeds: without it the command exited 2)."""
    text = " ".join(_read("integrations_benchmarks.md").split())
    m = re.search(r"`python bench/agent_replay\.py ([^`]+)`", text)
    argv = shlex.split(m[1].replace("VENV/bin/python", "/nonexistent").replace(
        "...", "/nonexistent/x.json"))
    agent = load_bench("agent_replay")
    parser = agent.build_parser()
    args = parser.parse_args(argv)
    agent.check_seed(parser, args)  # exits 2 on a fit seed without --fit-seeds


def test_integrations_benchmarks_connector_defaults():
    from kvsaga.integrations.vllm.gate import SessionGate
    from kvsaga.integrations.vllm.step_cost import BEST_EFFORT_STEPS
    from kvsaga.policy import DEFAULT_POLICY
    from tests.test_docs_code_map import _defaults

    gate = _defaults(SessionGate.__init__)
    text = " ".join(_read("integrations_benchmarks.md").split())
    assert gate["room_steps"] == 2 and "`room_steps` went from 1 to 2" in text
    assert BEST_EFFORT_STEPS == 0 and "`best_effort_steps` is 0 by default" in text
    assert (gate["aging_s"], gate["prior_steps"]) == (20, 16)
    assert "its pick (aging_s 20, prior_steps 16)" in text
    assert DEFAULT_POLICY == "graph" and "the default is `graph` again" in text


# -- policies.md ---------------------------------------------------------------------------
# policies.md, `graph`: the ranges it states for every numeric parameter of graph, ttl and
# saga, as (policy, parameter, the doc's words, values accepted, values refused).
POLICY_RANGES = [
    ("graph", "min_wait_s", "> 0", [1e-9], [0, -1.0, math.inf]),
    ("graph", "plain_interval_s", "> 0", [1e-9], [0, math.inf]),
    ("graph", "calib_prior", "> 0", [1e-9, None], [0, math.inf]),
    ("graph", "alpha", "in (0, 1]", [1, 1e-9], [0, 1.5]),
    ("graph", "wait_alpha", "in (0, 1]", [1, 1e-9], [0, 1.5]),
    ("graph", "prefetch_lead_s", ">= 0", [0], [-1e-9, math.inf]),
    ("graph", "relearn_share", ">= 0, infinite allowed", [0, math.inf], [-1e-9, math.nan]),
    ("ttl", "base_ttl_s", "(> 0)", [1e-9], [0, math.inf]),
    ("ttl", "max_usage", "(in [0, 1))", [0, 0.999], [1, -1e-9]),
    ("saga", "alpha", "(in (0, 1])", [1, 1e-9], [0, 1.5]),
    ("saga", "max_ttl_s", "(> 0)", [1e-9], [0]),
    ("saga", "prior_median_s", "(> 0)", [1e-9], [0]),
    ("saga", "prior_sigma", "(> 0)", [1e-9], [0]),
    ("saga", "prior_steps", "(> 0)", [1e-9], [0]),
]


@pytest.mark.parametrize("policy,name,words,good,bad", POLICY_RANGES)
def test_policies_doc_states_each_parameters_range(policy, name, words, good, bad):
    from kvsaga.policy import make_policy

    section = " ".join(_section(_read("policies.md"), "### `graph` (the default)").split())
    start = section.index("Each numeric parameter must be")
    stated = section[start: section.index("`graph` also accepts", start)]
    assert f"`{name}`" in stated and words in stated, (name, words)
    for value in good:
        make_policy(policy, **{name: value})
    for value in (*bad, True, "1"):
        with pytest.raises(ValueError, match=name):
            make_policy(policy, **{name: value})
