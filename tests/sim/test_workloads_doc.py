"""docs/workloads.md's four families against their `WorkloadSpec`s (session 54, docsarch):
each family's prefix, step distribution, tool table (p50, p95, the log-normal's mean as
printed, observation and call sizes) and Markov chain are the code's. Read-only: parses the
doc and reads the specs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from kvsaga.sim import WORKLOADS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "workloads.md").read_text(encoding="utf-8")


def _family(name: str) -> str:
    start = DOC.index(f"### `{name}`")
    end = re.compile(r"^#{2,3} ", re.M).search(DOC, start + 4)
    return DOC[start: end.start() if end else len(DOC)]


def _seconds(cell: str) -> tuple[float, float]:
    """A duration as printed ("45 ms", "2.5 s") and one unit of its last printed digit."""
    number, unit = cell.split()
    scale = {"ms": 1e-3, "s": 1.0}[unit]
    decimals = len(number.split(".")[1]) if "." in number else 0
    return float(number) * scale, 10.0 ** -decimals * scale


def _pairs(text: str) -> dict[str, float]:
    """`name .35, other .2` -> {name: 0.35, other: 0.2}; a lone name has probability 1."""
    names = re.findall(r"(\w+)(?:\s+\.(\d+))?", text)
    return {n: float("0." + p) if p else 1.0 for n, p in names}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_prefix_and_steps_are_the_specs(name):
    spec, text = WORKLOADS[name], _family(name)
    assert int(re.search(r"Prefix ([\d,]+)", text)[1].replace(",", "")) == spec.prefix_tokens
    k, mean, lo, hi = re.search(
        r"Steps\s+Gamma\(k=([\d.]+)[^)]*\),\s+mean ([\d.]+),\s+(\d+)\.\.(\d+)", text).groups()
    assert (float(k), float(mean), int(lo), int(hi)) == (
        spec.steps_shape, spec.steps_mean, spec.steps_min, spec.steps_max)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_tool_table_is_the_specs(name):
    spec, text = WORKLOADS[name], _family(name)
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([\d,]+) \| (\d+) \|",
                      text, re.M)
    assert [r[0] for r in rows] == [t.name for t in spec.tools]
    for (tool, p50, p95, mean, observation, call), t in zip(rows, spec.tools, strict=True):
        assert _seconds(p50)[0] == pytest.approx(t.p50_s), tool
        assert _seconds(p95)[0] == pytest.approx(t.p95_s), tool
        sigma = math.log(t.p95_s / t.p50_s) / 1.645  # the doc's "How a session is sampled"
        printed, unit = _seconds(mean)  # within a unit of its last digit (user's 157.49996: 158)
        assert abs(printed - t.p50_s * math.exp(sigma**2 / 2)) < unit, tool
        assert int(observation.replace(",", "")) == round(t.observation_tokens), tool
        assert int(call) == t.call_tokens, tool


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_chain_is_the_specs(name):
    spec, text = WORKLOADS[name], _family(name)
    chain = text[text.index("Chain"):]
    chain = chain[: min(i for i in (chain.find("\n\n"), chain.find("Measured")) if i >= 0)]
    if "->" not in chain:  # the doc points at the code instead
        assert "`kvsaga/sim/workloads.py`" in chain and name == "assistant"
        return
    start = re.search(r"start((?:\s+\w+(?:\s+\.\d+)?,?)+);", chain)[1]
    assert _pairs(start) == pytest.approx(spec.start)
    rows = {m[1]: _pairs(m[2]) for m in re.finditer(r"(\w+) ->((?:\s+\w+\s+\.\d+,?)+)",
                                                      chain)}
    assert rows.keys() == spec.transitions.keys()
    for tool, row in rows.items():
        assert row == pytest.approx(spec.transitions[tool]), tool
