"""Cross-validation of the tune rule on saved rows (issue 11, session 33).

The tune (bench/policies_tune.py) picks the default by one rule over the fit set's pressured
cases. Whether that rule generalizes can be asked of the saved rows alone: hold one part of
the cases out, let a rule pick on the rest, and score its pick on the part held out; every
case is held out once. Two fold kinds:

- `trace`: leave one trace (family) out: swe-slow, web-short, swe+bfcl, swe, web, ...;
- `seeds`: leave one seed pair out: the pairs drawn together (102 and 103, 201 and 202, ...,
  951 and 952: `seed // 10`) and the built-in families' seeds (`FAMILY_SEEDS`) as one.

Rules (`RULES`), each a key minimized over the training cases' ratios r (a candidate's
recomputed tokens / the least of lru's, saga's and ttl's on the case):

- `worst`: the tune rule itself (`policies_tune.pick`: worst r, then cases with r > 1.0,
  then total tokens with the 2% band that keeps the incumbent);
- `count`: cases with r > 1.0, then worst r, then total tokens: issue 11's first goal is
  per case (r <= 1.0 on every case), and this counts the cases that miss it;
- `geomean`: the geometric mean of r;
- `total`: the total recomputed tokens;
- `pairs`: the mean over seed groups (below) of each group's worst r, then cases with
  r > 1.0, then total tokens: the worst-first key at the size of one held-out evaluation
  (a fresh seed pair, 10 to 18 pressured cases), not of the whole fit set.

Fixed policies (`--fixed`) are scored on every held-out case too (no pick). The score is
the held-out cases within 1.0x of the best baseline, the worst r and the geometric mean.
With `--test FILE` the rules also pick on all of the first rows and are scored on FILE's
(the fit set against the seen held-out seeds of bench/policies_seen.py), and the
cross-validation is run on the union too.

    python bench/policies_cv.py                      # the saved tune's rows
    python bench/policies_cv.py --test bench/plots/policies_seen.json --write
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from policies import (
    FAMILY_SEEDS,
    FOUND_FROM,
    HERE,
    OFFLINE,
    TARGET_BELADY,
    TARGET_BEST,
    TUNE_JSON,
    _best_baseline,
    _index,
    _ratio,
    in_range,
    split_specs,
    write_section,
)
from policies_tune import pick, ranking

CV_SECTION = ("## Eviction policies: the tune rule cross-validated, and the fit set against "
              "the seen held-out seeds (session 33, policy lane; fit and seen seeds only; "
              "simulated)")
DEFAULT = "graph[demoted_release=1]"  # the fit rows' name for today's default (session 32)
FIXED = ("ttl", "saga", "lru", "graph[demoted_release=1]", "graph[spread=1]")
EPS = 1e-12


def ratios(rows: list[dict], policy: str) -> list[float] | None:
    """`policy`'s ratio to the best baseline on every pressured case of `rows`; None when it
    did not run one of them."""
    by = _index(rows)
    cases = in_range(rows)
    if not all((*c, policy) in by for c in cases):
        return None
    return [_ratio(by[(*c, policy)]["recomputed_tokens"], _best_baseline(by, c)) for c in cases]


def _total(rows: list[dict], policy: str) -> float:
    by = _index(rows)
    return float(sum(by[(*c, policy)]["recomputed_tokens"] for c in in_range(rows)))


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(max(x, 1e-9)) for x in xs) / len(xs)) if xs else math.nan


def above(xs: list[float]) -> int:
    return sum(x > TARGET_BEST + EPS for x in xs)


def _by_key(key: Callable[[list[dict], str, list[float]], tuple]):
    def rule(rows: list[dict], candidates: list[str]) -> str:
        scored = {c: ratios(rows, c) for c in candidates}
        scored = {c: xs for c, xs in scored.items() if xs}
        if not scored:
            raise ValueError("no candidate ran every pressured case: nothing to pick")
        return min(scored, key=lambda c: key(rows, c, scored[c]))  # first among equals
    return rule


def seed_group(seed: int) -> str:
    """The seeds drawn together: the built-in families' seeds, else the pair `seed // 10`."""
    return "families" if seed in FAMILY_SEEDS else f"{seed // 10 * 10}s"


def pair_worst(rows: list[dict], policy: str) -> float:
    """The mean over seed groups (`seed_group`) with a pressured case of `policy`'s worst
    ratio in the group."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(seed_group(r["seed"]), []).append(r)
    worst = [max(xs) for g in groups.values() if (xs := ratios(g, policy))]
    return sum(worst) / len(worst)


RULES: dict[str, Callable[[list[dict], list[str]], str]] = {
    "worst": pick,
    "count": _by_key(lambda rows, c, xs: (above(xs), max(xs), _total(rows, c))),
    "geomean": _by_key(lambda rows, c, xs: (geomean(xs),)),
    "total": _by_key(lambda rows, c, xs: (_total(rows, c),)),
    "pairs": _by_key(lambda rows, c, xs: (pair_worst(rows, c), above(xs), _total(rows, c))),
}


FOLDS: dict[str, Callable[[dict], str]] = {
    "trace": lambda r: r["trace"],
    "seeds": lambda r: seed_group(r["seed"]),
}


def common_candidates(*row_sets: list[dict]) -> list[str]:
    """Policies present in every row set (in the first set's order)."""
    names = [list(dict.fromkeys(r["policy"] for r in rows)) for rows in row_sets]
    return [p for p in names[0] if all(p in n for n in names[1:])]


class Score:
    """Held-out ratios of one rule (or fixed policy) over the folds, and its picks."""

    def __init__(self) -> None:
        self.ratios: list[float] = []
        self.worst_case: tuple = ()
        self.picks: Counter[str] = Counter()

    def add(self, rows: list[dict], policy: str) -> None:
        by = _index(rows)
        for c in in_range(rows):
            x = _ratio(by[(*c, policy)]["recomputed_tokens"], _best_baseline(by, c))
            if not self.ratios or x > max(self.ratios):
                self.worst_case = c
            self.ratios.append(x)

    def cells(self) -> list[str]:
        xs = self.ratios
        if not xs:
            return ["-", "-", "-"]
        t, s, f = self.worst_case
        return [f"{len(xs) - above(xs)} of {len(xs)}", f"{max(xs):.2f}x ({t} {s}, {f:.0%})",
                f"{geomean(xs):.3f}"]


def cross_validate(rows: list[dict], candidates: list[str], fold: str,
                   fixed: list[str]) -> dict[str, Score]:
    """Every rule and fixed policy scored on each fold's held-out cases, the rules picking
    on the rest. A fold whose held-out part has no pressured case adds nothing."""
    key = FOLDS[fold]
    groups = list(dict.fromkeys(key(r) for r in rows))
    out = {name: Score() for name in (*RULES, *(f"fixed {p}" for p in fixed))}
    for g in groups:
        test = [r for r in rows if key(r) == g]
        train = [r for r in rows if key(r) != g]
        if not in_range(test):
            continue
        for name, rule in RULES.items():
            chosen = rule(train, candidates)
            out[name].picks[chosen] += 1
            out[name].add(test, chosen)
        for p in fixed:
            out[f"fixed {p}"].add(test, p)
    return out


def transfer(train: list[dict], test: list[dict], candidates: list[str],
             fixed: list[str]) -> dict[str, Score]:
    """Each rule picks on all of `train` and is scored on `test`; fixed policies on `test`."""
    out = {}
    for name, rule in RULES.items():
        s = out[name] = Score()
        chosen = rule(train, candidates)
        s.picks[chosen] += 1
        s.add(test, chosen)
    for p in fixed:
        out[f"fixed {p}"] = Score()
        out[f"fixed {p}"].add(test, p)
    return out


def table(scores: dict[str, Score]) -> list[str]:
    out = ["| rule / policy | picks (folds) | held-out cases within 1.0x | worst | "
           "geometric mean |", "|---|---|---:|---:|---:|"]
    for name, s in scores.items():
        picks = ", ".join(f"`{p}` {n}" for p, n in s.picks.most_common()) or "-"
        out.append(f"| {name} | {picks} | " + " | ".join(s.cells()) + " |")
    return out


def fit_table(rows: list[dict], candidates: list[str]) -> list[str]:
    """Every candidate on all the rows' pressured cases (no fold)."""
    out = ["| candidate | cases within 1.0x | worst | mean of the seed groups' worst | "
           "geometric mean | tokens, M |", "|---|---:|---:|---:|---:|---:|"]
    for c in candidates:
        xs = ratios(rows, c)
        if xs:
            out.append(f"| `{c}` | {len(xs) - above(xs)} of {len(xs)} | {max(xs):.2f}x | "
                       f"{pair_worst(rows, c):.2f}x | {geomean(xs):.3f} | "
                       f"{_total(rows, c) / 1e6:.3f} |")
    return out


TOLERANCES = (1.02, 1.05, 1.10)


def tolerance_table(rows: list[dict], candidates: list[str]) -> list[str]:
    """Per candidate: pressured cases strictly below the best baseline, exactly at it (a
    baseline on the cases it wins itself), within each of `TOLERANCES`, and above 1.5x."""
    out = ["| candidate | below 1.0x | exactly 1.0x | "
           + " | ".join(f"within {t:.2f}x" for t in TOLERANCES) + " | above 1.5x |",
           "|---|---:|---:|" + "---:|" * len(TOLERANCES) + "---:|"]
    for c in candidates:
        xs = ratios(rows, c)
        if not xs:
            continue
        cells = [sum(x < 1 - EPS for x in xs), sum(abs(x - 1) <= EPS for x in xs),
                 *(sum(x <= t + EPS for x in xs) for t in TOLERANCES), sum(x > 1.5 for x in xs)]
        out.append(f"| `{c}` | " + " | ".join(map(str, cells)) + " |")
    return out


def group_table(rows: list[dict], candidates: list[str]) -> list[str]:
    """Per seed group (one held-out evaluation's draw): each candidate's worst ratio and
    cases above 1.0x, and the tune rule's first among `candidates` on the group alone."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(seed_group(r["seed"]), []).append(r)
    out = ["| seeds | cases | " + " | ".join(f"`{c}`" for c in candidates)
           + " | the tune rule's first |", "|---|---:|" + "---:|" * len(candidates) + "---|"]
    firsts: Counter[str] = Counter()
    for g, rs in groups.items():
        if not in_range(rs):
            continue
        cells = []
        for c in candidates:
            xs = ratios(rs, c)
            cells.append(f"{max(xs):.2f}x, {above(xs)} above" if xs else "-")
        first = pick(rs, candidates)
        firsts[first] += 1
        out.append(f"| {g} | {len(in_range(rs))} | " + " | ".join(cells) + f" | `{first}` |")
    out += ["", "First by the tune rule per seed group: "
            + ", ".join(f"`{p}` {n}" for p, n in firsts.most_common()) + "."]
    return out


def head_to_head(rows: list[dict], policy: str, candidates: list[str]) -> list[str]:
    """Per other candidate: the pressured cases on which `policy` recomputes less, more,
    and as much (r compared, so exactly the tokens)."""
    out = [f"| against | `{policy}` less | `{policy}` more | equal |", "|---|---:|---:|---:|"]
    mine = ratios(rows, policy)
    for c in candidates:
        xs = ratios(rows, c)
        if c == policy or not xs or not mine:
            continue
        less = sum(a < b - EPS for a, b in zip(mine, xs, strict=True))
        more = sum(a > b + EPS for a, b in zip(mine, xs, strict=True))
        out.append(f"| `{c}` | {less} | {more} | {len(xs) - less - more} |")
    return out


def found_table(rows: list[dict], candidates: list[str]) -> list[str]:
    """Issue 11's second goal per candidate: pressured cases within `TARGET_BELADY` of the
    best run found (the least of `FOUND_FROM`'s runs and the candidate's own, as
    bench/policies.py judges it), and the worst ratio to it; empty unless every pressured
    case ran `hindsight`."""
    by = _index(rows)
    cases = in_range(rows)
    if not cases or not all((*c, "hindsight") in by for c in cases):
        return []
    out = [f"| candidate | within {TARGET_BELADY:.2f}x of the best run found | worst |",
           "|---|---:|---:|"]
    for p in candidates:
        if p in OFFLINE or not all((*c, p) in by for c in cases):
            continue
        xs = []
        for c in cases:
            mine = by[(*c, p)]["recomputed_tokens"]
            found = min(by[(*c, q)]["recomputed_tokens"] for q in (*FOUND_FROM, p)
                        if (*c, q) in by)
            xs.append(_ratio(mine, found))
        ok = sum(x <= TARGET_BELADY + EPS for x in xs)
        out.append(f"| `{p}` | {ok} of {len(xs)} | {max(xs):.2f}x |")
    return out


def report(fit: list[dict], candidates: list[str], fixed: list[str],
           test: list[dict] | None) -> list[str]:
    out = [f"Pressured cases: lru hit rate in [0.8, 0.98], one per pool size; r = tokens / "
           f"the best of lru, saga and ttl. Rules: {', '.join(RULES)} (bench/policies_cv.py's "
           "docstring).", "", f"### Fit rows ({len(in_range(fit))} pressured cases), every "
           "candidate", ""]
    out += fit_table(fit, candidates)
    for fold in FOLDS:
        out += ["", f"### Fit rows, leave one `{fold}` out", ""]
        out += table(cross_validate(fit, candidates, fold, fixed))
    if test is not None:
        common = common_candidates(fit, test)
        fx = [p for p in fixed if p in common]
        out += ["", f"### Seen held-out rows ({len(in_range(test))} pressured cases), every "
                "candidate they ran", ""]
        out += fit_table(test, common)
        if found := found_table(test, list(dict.fromkeys(r["policy"] for r in test))):
            out += ["", "### Seen held-out rows: issue 11's second goal (the best run found: "
                    "not a lower bound)", ""]
            out += found
        for name, rows in (("fit", [r for r in fit if r["policy"] in common]),
                           ("seen held-out", test)):
            out += ["", f"### How far from 1.0x, {name} rows (pressured cases)", ""]
            out += tolerance_table(rows, common)
        if DEFAULT in common:
            for name, rows in (("fit", fit), ("seen held-out", test)):
                out += ["", f"### The default `{DEFAULT}` case by case, {name} rows", ""]
                out += head_to_head(rows, DEFAULT, common)
        for name, rows in (("fit", fit), ("seen held-out", test)):
            out += ["", f"### Per seed group, {name} rows", ""]
            out += group_table(rows, common)
        out += ["", "### Rules picking on all the fit rows (the candidates both sets ran: "
                f"{', '.join(f'`{c}`' for c in common)}), scored on the seen held-out rows", ""]
        out += table(transfer(fit, test, common, fx))
        union = [r for r in fit if r["policy"] in common] + test
        out += ["", f"### Fit and seen rows together ({len(in_range(union))} pressured "
                "cases), every candidate both ran, in the tune rule's order", ""]
        out += fit_table(union, ranking(union, common))
        for fold in FOLDS:
            out += ["", f"### Fit and seen rows together, leave one `{fold}` out", ""]
            out += table(cross_validate(union, common, fold, fx))
        from policies_seen import report as side_by_side
        out += ["", "### The pressured cases of both sets side by side "
                "(bench/policies_seen.py's comparison)", ""]
        out += side_by_side(fit, test, common)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=str(TUNE_JSON.relative_to(HERE.parent)),
                   help="saved rows to cross-validate (default: the saved tune's)")
    p.add_argument("--test", default=None,
                   help="saved rows to score the rules' picks on (bench/plots/"
                        "policies_seen.json)")
    p.add_argument("--candidates", default=None,
                   help="what the rules pick among (default: the saved tune's candidates)")
    p.add_argument("--fixed", default=",".join(FIXED), help="policies scored as they are")
    p.add_argument("--write", action="store_true",
                   help=f"write the output to bench/RESULTS.md, {CV_SECTION[3:60]}...")
    args = p.parse_args(argv)
    saved = json.loads(Path(args.rows).read_text(encoding="utf-8"))
    fit = saved["rows"]
    candidates = (split_specs(args.candidates) if args.candidates
                  else saved.get("candidates") or common_candidates(fit))
    fixed = split_specs(args.fixed)
    present = set(r["policy"] for r in fit)
    if bad := [c for c in (*candidates, *fixed) if c not in present]:
        p.error(f"{bad}: not in {args.rows}'s rows")
    tested = json.loads(Path(args.test).read_text(encoding="utf-8")) if args.test else None
    test = tested["rows"] if tested else None
    command = " ".join(["python bench/policies_cv.py",
                        *(argv if argv is not None else sys.argv[1:])])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    head = (f"`{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
            f"average {load}; no simulation: the rows of `{saved.get('command', args.rows)}`"
            + (f" and of `{tested['command']}` ({tested['wall_s'] / 60:.1f} min)"
               if args.test else "") + ").")
    text = "\n".join([head, "", *report(fit, candidates, fixed, test)])
    print(text)
    if args.write:
        write_section(f"{CV_SECTION}\n\n{text}\n", HERE / "RESULTS.md", "bench/policies_cv.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
