"""docs/workloads.md's stated constants and its "Resulting magnitudes" table against the cost
model and the generators (session 55, lane docswalk): the table is computed from the presets,
so a changed constant must change it too. Read-only; nothing is simulated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = (Path(__file__).resolve().parents[2] / "docs" / "workloads.md").read_text(encoding="utf-8")
FLAT = " ".join(DOC.split())


def _magnitude_rows() -> dict[str, list[str]]:
    start = DOC.index("| preset | prefill 1K | prefill 8K |")
    rows = {}
    for line in DOC[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _num(text: str) -> float:
    return float(re.search(r"[\d.,]+", text)[0].replace(",", ""))


def _close(doc: str, value: float) -> bool:
    """`doc` is `value` as printed: to the digits shown (one unit of the last one)."""
    digits = re.search(r"[\d.,]+", doc)[0].replace(",", "")
    unit = 10 ** -len(digits.split(".")[1]) if "." in digits else 1
    return abs(float(digits) - value) <= unit


def test_magnitudes_table_is_the_presets():
    from kvsaga.sim.cost import PRESETS

    rows = _magnitude_rows()
    assert set(rows) == set(PRESETS)
    for name, p in PRESETS.items():
        kv = p.default_kv_memory_bytes()
        p1k, p8k, p1k_100k, dec, budget, per_token = rows[name]
        assert _close(p1k, p.prefill_time(1000) * 1e3), (name, p1k)
        assert _close(p8k, p.prefill_time(8192)), (name, p8k)
        assert _close(p1k_100k, p.prefill_time(1000, context=100_000) * 1e3), (name, p1k_100k)
        assert _close(dec, p.decode_step_time(1, 1024) * 1e3), (name, dec)
        gb, blocks = budget.split(", ")
        assert _close(gb, kv / 1e9) and _num(blocks) == p.num_blocks(kv), (name, budget)
        recompute, reload = per_token.split(" / ")
        assert _close(recompute, p.recompute_cost(1000) / 1000 * 1e6), (name, recompute)
        assert _close(reload, p.reload_cost(1000) / 1000 * 1e6), (name, reload)


def test_default_budget_sentence_is_the_a100_8b_preset():
    from kvsaga.sim.cost import get_preset

    p = get_preset("a100-llama3-8b")
    blocks = p.num_blocks(p.default_kv_memory_bytes())
    m = re.search(r"default KV budget \(([\d,]+) blocks, (\d+)K tokens\)", FLAT)
    assert int(m[1].replace(",", "")) == blocks
    assert int(m[2]) == blocks * p.kv_spec.block_size // 1000


@pytest.mark.parametrize("name", ["swe", "web", "bfcl", "assistant"])
def test_stated_arrival_rates_are_the_families(name):
    from kvsaga.sim import WORKLOADS

    m = re.search(rf"most of them under cache pressure: .*?\b{name} (\d+(?:\.\d+)?)", FLAT)
    assert float(m[1]) == WORKLOADS[name].arrival_rate


def test_stated_generator_constants():
    from kvsaga.sim import workloads
    from kvsaga.sim.family import ToolSpec

    assert f"`OBSERVATION_SCALE = {workloads.OBSERVATION_SCALE}`" in FLAT
    assert f"grow past {workloads.MAX_CONTEXT:,} tokens" in FLAT
    assert f"capped at {ToolSpec.__dataclass_fields__['max_s'].default:,.0f} s" in FLAT
