"""bench/scheduling_afs_split.py observes without changing: its per-tenant counts add up to
the run's own totals, its ratio and TCTs equal the unobserved row's, the wrapped methods are
restored, a bad case is refused by name, and `--by-tenant`'s split of the decodes' prefill
stall by the prefilling tenant adds up to the stall it splits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.bench_scripts import bench_modules, import_bench

mods = bench_modules("scheduling", "scheduling_afs_split")


def test_split_adds_up_and_the_row_is_unchanged(mods):
    sched, afs = mods
    per = afs.split("noisy", 8, 0.25)
    row = sched._run(("noisy", 8, 1.0, 0.25, "workflow", "graph", None))
    tenants = [t for t in per if t != "all"]
    assert sorted(tenants) == sorted(row["tenants"])
    for k in ("recomputed", "admitted", "demoted"):
        assert sum(per[t][k] for t in tenants) == per["all"][k]
    assert per["all"]["admitted"] > 0 and per["all"]["recomputed"] > 0
    assert per["all"]["mismatch"] == 0
    for t in tenants:
        assert per[t]["tct"] == row["tenants"][t]["tct_mean_s"]
        assert per[t]["tct_alone"] == row["tenants"][t]["tct_alone_s"]
        assert per[t]["readmitted"] <= per[t]["admitted"]
    slow = [per[t]["slowdown"] for t in tenants]
    assert max(slow) / min(slow) == pytest.approx(row["afs_max_slowdown_ratio"])


def test_recording_restores_the_methods(mods):
    _, afs = mods
    before = (afs.WorkflowScheduler._admitted, afs.WorkflowScheduler._demote_session,
              afs.WorkflowScheduler._set_blocks, afs.StepExecutor._slots)
    with pytest.raises(RuntimeError), afs.recording():
        assert afs.WorkflowScheduler._admitted is not before[0]
        raise RuntimeError
    assert before == (afs.WorkflowScheduler._admitted, afs.WorkflowScheduler._demote_session,
                      afs.WorkflowScheduler._set_blocks, afs.StepExecutor._slots)


@pytest.mark.parametrize("case, msg", [
    ("noisy:8", "NAME:SEED:FRAC"), ("busy:8:0.25", "no mix 'busy'"),
    ("noisy:x:0.25", "SEED must be an integer"), ("noisy:8:0.3", "runs at"),
])
def test_bad_case_refused(mods, case, msg):
    _, afs = mods
    with pytest.raises(ValueError, match=msg):
        afs.parse_case(case)


def test_by_tenant_split_adds_up_to_the_prefill_stall(mods):
    """`--by-tenant`: each session's decodes stalled by prefill, split by the tenant whose
    prefill the step carried, sum to its stall (recomputed + first-time); per tenant, the
    split sums to `time_split`'s "prefill stall" of the same run, and the demotions by
    cause to the run's demotions and to `split`'s per-tenant count."""
    _, afs = mods
    run = afs.observed("noisy", 102, 0.5)
    for p in run["sessions"].values():
        assert sum(p["stall by tenant"].values()) == pytest.approx(
            p["stall recomputed"] + p["stall first-time"], abs=1e-9)
    per = afs.tenant_split("noisy", 102, 0.5, run)
    times = afs.time_split("noisy", 102, 0.5, run)
    counts = afs.split("noisy", 102, 0.5)
    assert set(per) == {"a", "b"}
    for t, v in per.items():
        assert set(v["by"]) == {"a", "b"} and min(v["by"].values()) > 0
        assert sum(v["by"].values()) == pytest.approx(times[t]["prefill stall"])
        assert v["prefill stall"] == pytest.approx(times[t]["prefill stall"])
        assert v["steps beside prefill"] > 0
        assert v["demotions"].total() == counts[t]["demoted"]
    assert sum(v["demotions"].total() for v in per.values()) == len(run["demotions"])
    text = "\n".join(afs.tenant_lines("noisy:102:0.5", per))
    assert "(by a " in text and "on prediction" in text


def test_by_tenant_has_help(mods, capsys):
    _, afs = mods
    with pytest.raises(SystemExit) as e:
        afs.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--time", "--by-tenant", "--defaults"):
        assert flag in text


def test_by_tenant_split_is_pro_rata_the_prefill_tokens():
    """One hand-built step: tenant a prefills 3n tokens and tenant b n beside a decode, so
    the decode's stall is charged 0.75 to a and 0.25 to b (an equal split, 0.5 each, passed
    the test above; review mutate_by_tenant.sh)."""
    gap = import_bench("scheduling_bound_gap")
    n = 40
    step = [(SimpleNamespace(tenant="a"), 3 * n), (SimpleNamespace(tenant="b"), n)]
    by = gap.stall_by_tenant(step, 1.0)
    assert by == pytest.approx({"a": 0.75, "b": 0.25})
    assert gap.stall_by_tenant([(SimpleNamespace(tenant=None), n)], 1.0) == {"default": 1.0}
