"""bench/sim_speed.py on one tiny case: it measures both paths, checks their results are
equal, and writes only its own section of RESULTS.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("sim_speed", ROOT / "bench" / "sim_speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sim_speed"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_measures_both_paths_and_writes_its_section(tmp_path):
    mod = load()
    cases = [mod.Case("tiny", "swe", 4, 0.05, "1G", "lru"),
             mod.Case("tiny cluster", "swe", 6, 0.05, "1G", "lru", gpus=2)]
    here = str(ROOT)  # this checkout as its own baseline: the same results
    rows = mod.measure(cases, repeat=1, baseline=here, previous=here)
    assert [r["case"] for r in rows] == ["tiny", "tiny cluster"]
    assert all(r["ref_s"] > 0 and r["fast_s"] > 0 and r["sessions"] in (4, 6) for r in rows)
    assert all(r["base_s"] > 0 and r["base_same"] for r in rows)
    assert all(r["prev_s"] > 0 and r["prev_same"] for r in rows)
    body = mod.report(rows, {}, "python bench/sim_speed.py", 1.0, baseline_name="itself",
                      previous_name="itself too")
    assert "tiny cluster" in body and "identical results" in body
    assert "checkout of itself too" in body and "Every result row equals" in body
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n## Other\n\nkept\n\n## Simulator speed\n\nstale-body\n")
    mod.write_section(body, results)
    text = results.read_text()
    assert "kept" in text and "stale-body" not in text and text.count("## Simulator speed") == 1


def test_case_filter_picks_cases_by_name():
    mod = load()
    assert [c.name for c in mod.select(["readme lru", "@1.0"])] == [
        "readme lru", "swe x20 @1.0, 20G, lru"]
    assert mod.select(None) == mod.CASES
    assert mod.select(["no such case"]) == []


def test_split_times_the_parts_and_puts_every_method_back():
    from kvsaga.manager import KVCacheManager
    from kvsaga.scheduler.base import Scheduler

    mod = load()
    before = (Scheduler.schedule, KVCacheManager.begin_step)
    parts = mod.split(mod.Case("tiny", "swe", 4, 0.05, "1G", "lru"))
    assert (Scheduler.schedule, KVCacheManager.begin_step) == before
    total = parts["total"][1]
    assert parts["KVCacheManager.begin_step"][0] > 0 and parts["policy.blocks_cached"][0] > 0
    assert 0 < parts["schedule: admits a step"][0] <= parts["KVCacheManager.begin_step"][0]
    assert all(0 <= sec <= total for label, (_, sec) in parts.items())
