"""Which tenant's slowdown moved, and through which TCT, when a `workflow` candidate changes
the two-tenant mixes' afs_max_slowdown_ratio (the fit's AFS veto; a diagnosis, it changes
nothing and judges nothing).

    python bench/scheduling_veto_split.py run OUT.json --seeds 102,...,109 \
        [--defaults '{"shrink_on": "contexts"}']
    python bench/scheduling_veto_split.py compare BASE.json CAND.json [CAND2.json ...]
    python bench/scheduling_veto_split.py reports BASE.txt CAND.txt

`reports`: the veto's own verdict from two saved outputs of `bench/scheduling_mix.py --report
--seeds ...` (the incumbent's and the candidate's `--defaults`): per case (the default
workflow+graph row of each mix, seed and capacity) the afs_max_slowdown_ratio before and
after as the report prints it, and how many rose (the veto rejects a candidate if any did).

`run`: every mix row of `bench/scheduling_mix.py --report` (both mixes on each seed, at
their capacities) under workflow+graph only, the workflow defaults set to `--defaults` for
the run as the veto sets them (`set_workflow_defaults`), with each tenant's mean TCT shared
and alone on half the GPU (`add_tenant_slowdowns`, the veto's denominator: the same
scheduler, policy and parameters); written as JSON.

`compare`: per row, the ratio before and after, each tenant's shared / alone TCT and
slowdown before and after, and the change in log(ratio) split into the part the shared TCTs
explain and the part the alone TCTs explain (a Shapley split of two groups: the mean of each
group's effect taken first and taken second, so the parts sum to the change); "through"
names the part with the larger magnitude, and "slower together" the tenants whose shared
TCT rose by more than 1%.

Why (issue 10, session 22): rounds 11 and 14's candidates, which lifted bfcl 1x 25% on the
fit seeds, were rejected by the veto, and a first look (RESULTS "Predict when admitted
contexts leave") found a tenant's ratio can rise because its run alone sped up.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

from ascii_args import ascii_int
from scheduling import PRESET, capacity
from scheduling_mix import MIX_FRACS, MIXES, mix_trace, set_workflow_defaults

from kvsaga.sim.compare import add_tenant_slowdowns
from kvsaga.sim.simulator import SimConfig, Simulator


def run_rows(seeds: list[int]) -> list[dict]:
    """workflow+graph's mix rows on `seeds`, with the tenants' shared and alone TCTs."""
    out = []
    for seed in seeds:
        for name in MIXES:
            for frac in MIX_FRACS[name]:
                sessions = mix_trace(name, seed)
                cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac, 2),
                                policy="graph", scheduler="workflow")
                row = Simulator(sessions, cfg).run().to_dict()
                add_tenant_slowdowns(row, sessions, cfg)
                out.append({"mix": name, "seed": seed, "frac": frac,
                            "ratio": row["afs_max_slowdown_ratio"],
                            "tenants": {t: {k: e[k] for k in ("tct_mean_s", "tct_alone_s",
                                                              "slowdown")}
                                        for t, e in row["tenants"].items()}})
                print(f"{name} seed {seed} {frac:.0%}: ratio {out[-1]['ratio']:.2f}",
                      file=sys.stderr, flush=True)
    return out


def _log_ratio(shared: dict[str, float], alone: dict[str, float]) -> float:
    slow = [shared[t] / alone[t] for t in shared]
    return math.log(max(slow) / min(slow))


def split(base: dict, cand: dict) -> tuple[float, float]:
    """The change in log(ratio) from `base` to `cand` (two rows of one case) explained by
    the shared TCTs and by the alone TCTs (Shapley over the two groups; they sum to it)."""
    s0 = {t: e["tct_mean_s"] for t, e in base["tenants"].items()}
    a0 = {t: e["tct_alone_s"] for t, e in base["tenants"].items()}
    s1 = {t: e["tct_mean_s"] for t, e in cand["tenants"].items()}
    a1 = {t: e["tct_alone_s"] for t, e in cand["tenants"].items()}
    r00, r10, r01, r11 = (_log_ratio(s0, a0), _log_ratio(s1, a0), _log_ratio(s0, a1),
                          _log_ratio(s1, a1))
    shared = 0.5 * ((r10 - r00) + (r11 - r01))
    alone = 0.5 * ((r01 - r00) + (r11 - r10))
    return shared, alone


def compare_lines(base: list[dict], cand: list[dict], label: str) -> list[str]:
    key = {(r["mix"], r["seed"], r["frac"]): r for r in base}
    out = [f"{label}:", "| case | ratio | tenant: shared s / alone s / slowdown | "
           "d log ratio: shared / alone | through | slower together |",
           "|---|---|---|---|---|---|"]
    counts = {"up": 0, "up_shared": 0, "up_alone": 0, "down": 0, "slower": 0}
    for r in cand:
        b = key[(r["mix"], r["seed"], r["frac"])]
        ds, da = split(b, r)
        up = r["ratio"] > b["ratio"] + 1e-9
        through = "shared" if abs(ds) >= abs(da) else "alone"
        slower = [t for t, e in r["tenants"].items()
                  if e["tct_mean_s"] > 1.01 * b["tenants"][t]["tct_mean_s"]]
        counts["up" if up else "down"] += 1
        if up:
            counts["up_" + through] += 1
        counts["slower"] += bool(slower)
        cells = "; ".join(
            f"{t}: {b['tenants'][t]['tct_mean_s']:.1f} -> {e['tct_mean_s']:.1f} / "
            f"{b['tenants'][t]['tct_alone_s']:.1f} -> {e['tct_alone_s']:.1f} / "
            f"{b['tenants'][t]['slowdown']:.2f} -> {e['slowdown']:.2f}"
            for t, e in r["tenants"].items())
        out.append(f"| {r['mix']} seed {r['seed']} {r['frac']:.0%} | {b['ratio']:.2f} -> "
                   f"{r['ratio']:.2f} | {cells} | {ds:+.3f} / {da:+.3f} | {through} | "
                   f"{', '.join(slower) or '-'} |")
    out.append(f"{label}: ratio higher at {counts['up']} of {len(cand)} cases "
               f"({counts['up_shared']}"
               f" mostly through the shared TCTs, {counts['up_alone']} mostly through the "
               f"alone TCTs), lower or equal at {counts['down']}; a tenant slower together "
               f"(shared TCT +1% or more) at {counts['slower']}")
    return out


# `scheduling_mix.tenant_table` names a mix row's seed only when more than one mix seed ran
# (the default `--report` runs one): such a row is keyed with this seed.
NO_SEED = -1
REPORT_ROW = re.compile(r"^- (\w+)(?: seed (\d+))? (\d+)% workflow\+graph: .*"
                        r"afs_max_slowdown_ratio (\S+)$")


def report_ratios(text: str) -> dict[tuple[str, int, int], str]:
    """The default workflow+graph rows' ratios of a `--report` output, as printed (a row
    without a seed keyed with `NO_SEED`)."""
    out = {}
    for line in text.splitlines():
        m = REPORT_ROW.match(line)
        if m:
            float(m[4])  # "inf" and "nan" are read; anything else is not a ratio
            seed = NO_SEED if m[2] is None else int(m[2])
            out[(m[1], seed, int(m[3]))] = m[4]
    return out


def _case(key: tuple[str, int, int]) -> str:
    seed = "" if key[1] == NO_SEED else f" seed {key[1]}"
    return f"{key[0]}{seed} {key[2]}%"


def reports_lines(base_text: str, cand_text: str) -> list[str]:
    """`reports`' table and verdict line (module docstring)."""
    base, cand = report_ratios(base_text), report_ratios(cand_text)
    if not base or set(base) != set(cand):
        raise ValueError("the two reports do not hold the same mix rows")
    out = ["| case | afs_max_slowdown_ratio |", "|---|---|"]
    up = 0
    for key in sorted(base):
        up += float(cand[key]) > float(base[key])
        out.append(f"| {_case(key)} | {base[key]} -> {cand[key]} |")
    out.append(f"ratio higher at {up} of {len(base)} cases (the veto: "
               f"{'rejected' if up else 'passes'})")
    return out


def json_object(text: str) -> dict:
    """`run --defaults`: a JSON object, or an error naming what it was instead."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--defaults is not JSON ({e}): {text!r}") from e
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError(
            f"--defaults must be a JSON object of workflow defaults, got {text!r}")
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the mix rows (module docstring)")
    r.add_argument("out", help="the JSON file to write")
    r.add_argument("--seeds", required=True, help="comma-separated")
    r.add_argument("--defaults", type=json_object, default=None,
                   help="workflow defaults for the run, a JSON object")
    rp = sub.add_parser("reports", help="compare two saved --report outputs")
    rp.add_argument("base_report", help="the incumbent's --report output (text)")
    rp.add_argument("cand_report", help="the candidate's --report output (text)")
    c = sub.add_parser("compare", help="compare saved `run` files (module docstring)")
    c.add_argument("base", help="the incumbent's `run` JSON")
    c.add_argument("cands", nargs="+", help="candidates' `run` JSON files")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        if a.defaults:
            try:
                set_workflow_defaults(a.defaults)
            except (ValueError, TypeError) as e:
                ap.error(str(e))
        rows = run_rows([ascii_int(s) for s in a.seeds.split(",")])
        with open(a.out, "w") as f:
            json.dump({"defaults": a.defaults, "rows": rows}, f, indent=1)
        return 0
    if a.cmd == "reports":
        with open(a.base_report) as f, open(a.cand_report) as g:
            try:
                print("\n".join(reports_lines(f.read(), g.read())))
            except ValueError as e:
                ap.error(str(e))
        return 0
    with open(a.base) as f:
        base = json.load(f)["rows"]
    for path in a.cands:
        with open(path) as f:
            d = json.load(f)
        label = json.dumps(d["defaults"]) + (f" (null {d['null']})" if d.get("null") else "")
        print("\n".join(compare_lines(base, d["rows"], label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
