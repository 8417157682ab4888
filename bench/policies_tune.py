"""The tuning half of bench/policies.py: pick the default policy on the tuning seeds.

`python bench/policies.py --tune` runs the fit set: the built-in families (swe, web, bfcl,
assistant) at `FAMILY_SEEDS` and the held-out traces (swe-slow, web-short, swe+bfcl, bfcl-v4,
swe) at `TRACE_SEEDS`, every seed read while the policies were built, and picks, among
`TUNE_CANDIDATES`, by one rule fixed before any run under it (`TUNE_RULE`), over the
pressured cases (lru hit rate in `HIT_RANGE`): the least worst ratio to the best of lru,
saga and ttl, then the fewest cases above 1.0x of it, then the least total recomputation
(why in bench/policies.py's docstring). Over the whole fit set (per pool size, not with
`--smooth`) the rule's choice then goes through issue 10's checks (`vetted_pick`, session
29): the candidates are walked in the rule's order (`ranking`), each put through the AFS
veto, the non-thrash check and (since session 32) issue 10's fit check against
`DEFAULT_POLICY` (`run_checks`, bench/policies_tune_checks.py: the rules `AFS_CHECKS`,
`NON_THRASH_CHECKS` and `FIT_CHECKS` record, bench/policies_records.py, simulated afresh),
and the first that passes all three, or the default as it is (which takes none), is the pick; the
walk, vetoes and figures included, is printed and saved beside the rule's own pick
(`rule_pick`). It writes the pick to
bench/plots/policies_tune.json and the "## Eviction policies: tuning (simulated)" section
of bench/RESULTS.md; `DEFAULT_POLICY` and the policies' default constants must be that
pick unless a smoothed tuning sets the default by the rule below
(tests/bench/test_policies.py). The evaluation (bench/policies.py without `--tune`)
refuses these seeds. With `--smooth` the pick is made on each pressured case's mean over
five pool sizes (bench/policies_smooth.py), beside the per-size pick, and written to
bench/plots/policies_tune_smooth.json and its own section. That pick is the default only
if the smoothed tune covered the whole fit set (every seed of `TUNE_SEEDS`, every trace
of `FIT_TRACES` at the capacities `FRACTIONS`, the baselines and the incumbent among
its candidates: `fit_set_gaps`; a tune of part of it is saved apart, per size or
smoothed; a trace whose data is not installed, bfcl-v4 without `bfcl-eval`, is not run, so
a tune without it is part of it) and the pick passes issue 10's non-thrash check
(`NON_THRASH_CHECKS`: `python bench/scheduling_fit.py --policy-check INCUMBENT --policy
PICK --workers 1`, no non-thrash figure worse by more than 2%) and issue 10's AFS veto
(`AFS_CHECKS`: `python bench/policies_check.py --afs --policy PICK --against INCUMBENT
--workers 1`; since session 32 the calibrated veto scheduler candidates take, over the
two-tenant mixes' 32 cases on the AFS fit seeds; until session 31 the any-rise veto on
`bench/scheduling_mix.py --report`'s rows: no afs_max_slowdown_ratio worse, none met ->
missed), as scheduler candidates pass both; otherwise the per-size pick saved in
bench/plots/policies_tune.json stays (`smoothed_default`). The lead's rule, sixteenth
session, after ttl had become the default on a tune over seeds 401, 402 only; the AFS veto
added by the lead in the seventeenth, after graph[demoted_mean=1] had become the default
on the non-thrash check alone and moved the two-tenant mix at 50% from 1.44 (met) to 1.59
(missed).
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import results_blocks
from policies import (
    BASELINES,
    FAMILIES,
    FAMILY_SEEDS,
    FRACTIONS,
    HERE,
    HIT_RANGE,
    TIE_SHARE,
    TRACE_SEEDS,
    TRACES,
    TUNE_INCUMBENT,
    TUNE_JSON,
    TUNE_RULE,
    TUNE_SECTION,
    TUNE_SEEDS,
    TUNE_WRITER,
    _header,
    _save,
    parse_spec,
    rank,
    run,
    skipped_traces,
    tables,
    write_section,
)
from policies_records import (  # the record types too: callers build records through here
    AFS_CHECKS,
    FIT_CHECKS,
    NON_THRASH_CHECKS,
    NON_THRASH_SLACK,
    AfsCheck,  # noqa: F401
    FitCheck,  # noqa: F401
    NonThrashCheck,  # noqa: F401
)
from policies_tune_checks import Check, CheckResult, run_checks  # re-exported  # noqa: F401
from policies_verdict import wins

from kvsaga.policy import DEFAULT_POLICY, POLICIES

TUNE_SMOOTH_JSON = HERE / "plots" / "policies_tune_smooth.json"
TUNE_SMOOTH_SECTION = "## Eviction policies: tuning, smoothed over pool sizes (simulated)"
# A tuning of part of the fit set (`fit_set_gaps`) sets nothing, so it is saved apart:
# `TUNE_JSON` and `TUNE_SECTION` hold the whole fit set's per-size tuning, which
# `per_size_pick`, the evaluation's header and the default's test read, and
# `TUNE_SMOOTH_JSON` and its section the whole fit set's smoothed one, which
# `smoothed_default` and the default's test read.
TUNE_PARTIAL_JSON = HERE / "plots" / "policies_tune_partial.json"
TUNE_PARTIAL_SECTION = "## Eviction policies: tuning, part of the fit set only (simulated)"
TUNE_SMOOTH_PARTIAL_JSON = HERE / "plots" / "policies_tune_smooth_partial.json"
TUNE_SMOOTH_PARTIAL_SECTION = ("## Eviction policies: tuning, part of the fit set only, "
                               "smoothed over pool sizes (simulated)")
FIT_TRACES = tuple(dict.fromkeys(FAMILIES + TRACES))  # swe once: a family and a trace


def fit_set_gaps(seeds, candidates, traces, fractions) -> list[str]:
    """What a tuning run lacks of the whole fit set (empty: it covered it): seeds of
    `TUNE_SEEDS` or traces of `FIT_TRACES` it did not run, capacities other than `FRACTIONS`
    (fewer cases, or others the rule was not fixed on), and baselines or the incumbent not
    among its candidates."""
    gaps = []
    if missing := [s for s in TUNE_SEEDS if s not in seeds]:
        gaps.append(f"seeds {', '.join(map(str, missing))} not run")
    if missing := [t for t in FIT_TRACES if t not in traces]:
        gaps.append(f"traces {', '.join(missing)} not run")
    if sorted(map(float, set(fractions))) != sorted(FRACTIONS):
        gaps.append(f"capacities {', '.join(f'{f:g}' for f in fractions)} of the peak, not "
                    f"the fit set's {', '.join(f'{f:g}' for f in FRACTIONS)}")
    if absent := [c for c in (*BASELINES, TUNE_INCUMBENT) if c not in candidates]:
        gaps.append(f"candidates {', '.join(absent)} not run")
    return gaps


def ran_fractions(tuned: dict) -> list[float]:
    """The capacities a saved tuning ran: its "fractions", or, saved before they were
    (session 45), those of its rows."""
    return tuned.get("fractions") or sorted({r["frac"] for r in tuned.get("rows", [])})


def saved_gaps(tuned: dict) -> list[str]:
    """`fit_set_gaps` of a saved tuning (or one being judged): its seeds, candidates, traces
    and capacities."""
    return fit_set_gaps(tuned["seeds"], tuned["candidates"], tuned.get("traces", ()),
                        ran_fractions(tuned))


def per_size_pick() -> str:
    """The per-size tuning's saved pick (`TUNE_JSON`'s "pick", a full spec string): the
    default a smoothed tuning's pick must displace."""
    return json.loads(TUNE_JSON.read_text(encoding="utf-8"))["pick"]


def at_defaults(spec: str) -> bool:
    """Whether every constant `spec` names is its policy class's default (`graph[median_
    returns=1]` is plain `graph`; `graph[demoted_mean=1]` is not)."""
    name, params = parse_spec(spec)
    defaults = inspect.signature(POLICIES[name]).parameters

    def norm(v):  # a tuple default against a spec's list of names
        return list(v) if isinstance(v, tuple | list) else v

    return all(k in defaults and norm(defaults[k].default) == norm(v) for k, v in params.items())


def default_spec(tuned: dict) -> str:
    """The spec whose constants the policies' defaults must be: the smoothed pick when
    `smoothed_default` adopts it by the check, else the per-size pick."""
    _, why = smoothed_default(tuned)
    return tuned["pick"] if why.startswith("it passed") else per_size_pick()


def smoothed_default(tuned: dict, fallback: str | None = None) -> tuple[str, str]:
    """The default a saved smoothed tuning sets, and why: its pick's policy name if the run
    covered the whole fit set and the pick passes the non-thrash check against the fallback
    and then the AFS veto (`AFS_CHECKS`), or is the fallback's policy at its default
    constants (the same policy), else the fallback's policy name. The fallback is the
    per-size tuning's saved pick (`per_size_pick`) unless given. A pick of the
    fallback's policy with other constants (`graph[demoted_mean=1]`) changes the default
    policy's behaviour, so it needs the check as another policy does (seventeenth
    session: before, the name alone let it through), and the AFS veto (the lead's, the
    same session: a default change must not turn another issue's met goal into a miss),
    then issue 10's fit check (`FIT_CHECKS`, the lead's, session 32: nor lower issue 10's
    smallest fit gain)."""
    incumbent = parse_spec(fallback if fallback is not None else per_size_pick())[0]
    name = parse_spec(tuned["pick"])[0]
    if gaps := saved_gaps(tuned):
        return incumbent, (f"not the whole fit set ({'; '.join(gaps)}), so its pick does "
                           f"not set the default: the per-size pick `{incumbent}` stays")
    check = NON_THRASH_CHECKS.get(tuned["pick"])
    if (check is None or check.against != incumbent) and name == incumbent \
            and at_defaults(tuned["pick"]):
        return name, "the per-size pick's policy, picked again over the whole fit set"
    if check is None or check.against != incumbent:
        return incumbent, (f"`{tuned['pick']}` has no recorded non-thrash check against "
                           f"`{incumbent}` (issue 10): the per-size pick stays until it passes")
    if not check.passes:
        return incumbent, (f"vetoed by issue 10's non-thrash check (`{check.command}`: "
                           f"{check.figures}): the per-size pick `{incumbent}` stays")
    passed, commands = "the non-thrash check", []
    for records, what, its in ((AFS_CHECKS, "AFS veto", "AFS veto"),
                               (FIT_CHECKS, "issue-10 fit check", "fit check")):
        rec = records.get(tuned["pick"])
        if rec is None or rec.against != incumbent:
            return incumbent, (f"`{tuned['pick']}` passed {passed} but has no recorded {what} "
                               f"against `{incumbent}` (issue 10): the per-size pick stays "
                               "until it passes")
        if not rec.passes:
            return incumbent, (f"passed issue 10's {passed[4:]} but vetoed by its {its} "
                               f"(`{rec.command}`: {rec.figures}): the per-size pick "
                               f"`{incumbent}` stays")
        passed += f" and the {what}"
        commands.append(f"its {its} (`{rec.command}`)")
    return name, (f"it passed issue 10's non-thrash check (`{check.command}`), "
                  + " and ".join(commands))


def default_verdict(tuned: dict) -> str:
    """One sentence: what the smoothed tuning's pick means for the default, compared with
    `DEFAULT_POLICY` as it is now."""
    name, why = smoothed_default(tuned)
    now = (f"`kvsaga.policy.DEFAULT_POLICY` = `{DEFAULT_POLICY}`" + (
        "" if name == DEFAULT_POLICY else f", **not** `{name}` as this rule says"))
    return f"default by the rule: `{name}` ({why}); {now}"


def coverage(seeds, traces, candidates, fractions) -> str:
    """How much of the fit set a tuning ran, for its headers."""
    gaps = fit_set_gaps(seeds, candidates, traces, fractions)
    if not gaps:
        return "the whole fit set"
    return (f"part of the fit set only: seeds {', '.join(map(str, seeds))} of "
            f"{', '.join(map(str, TUNE_SEEDS))}, traces {', '.join(traces)}; "
            f"{'; '.join(gaps)}")


def pick(rows: list[dict], candidates: list[str]) -> str:
    """The tune rule (`TUNE_RULE`): the least worst ratio to the best of lru, saga and ttl
    over the pressured cases, then the fewest cases above 1.0x of it, then the least
    recomputation over them, where totals within `TIE_SHARE` of the least are equal: among
    those, the incumbent (`TUNE_INCUMBENT`, the default the tuning started from) if it is
    one of them, else the least total (on an exact tie, the first candidate)."""
    ranked = {p: rank(rows, p) for p in candidates}
    ranked = {p: r for p, r in ranked.items() if r is not None}
    if not ranked:
        raise ValueError("no candidate ran every pressured case: nothing to pick")
    head = min(r[:2] for r in ranked.values())
    tied = {p: r[2] for p, r in ranked.items() if r[:2] == head}
    least = min(tied.values())
    if TUNE_INCUMBENT in tied and tied[TUNE_INCUMBENT] <= least * (1 + TIE_SHARE):
        return TUNE_INCUMBENT
    return next(p for p in candidates if p in tied and tied[p] == least)


def ranking(rows: list[dict], candidates: list[str]) -> list[str]:
    """Every candidate that ran every pressured case, in the tune rule's order: `pick`
    among them, then `pick` among the rest, and so on (the tie band keeps the incumbent
    ahead of the challengers it ties, as `pick` does)."""
    left = [c for c in dict.fromkeys(candidates) if rank(rows, c) is not None]
    out = []
    while left:
        first = pick(rows, left)
        out.append(first)
        left.remove(first)
    return out


def is_default(spec: str) -> bool:
    """Whether `spec` is today's default policy as it is (`DEFAULT_POLICY` at its class
    defaults: `graph[median_returns=1]` while graph's `median_returns` defaults to on):
    choosing it changes nothing, so it takes no check."""
    return parse_spec(spec)[0] == DEFAULT_POLICY and at_defaults(spec)


def vetted_pick(rows: list[dict], candidates: list[str], checks: Sequence[Check],
                against: str | None = None,
                constants: dict[str, dict[str, float | list[str]]] | None = None
                ) -> tuple[str, list[dict]]:
    """The tune's choice through issue 10's checks: walk the candidates in the tune rule's
    order (`ranking`) and take the first that passes every check of `checks` against
    `against` (default: `DEFAULT_POLICY`), or that is the default now (`is_default`: no
    check). A candidate stops at its first failed check (the later ones are not run).
    Returns the choice and the walk: per candidate walked, its rule key, the checks run
    (name, passes, figures) and the check that vetoed it, if one did.

    `constants`: what each candidate's rows ran with (the saved tune's "constants"). A
    candidate is then checked, and judged the default or not, as it ran (`explicit`), not
    as its spec reads under today's class defaults: a rewalk of rows saved before a
    default constant changed (graph's `demoted_release`, session 32) would otherwise check
    another setting than the one the rule ranked, and take the old default's rows for
    today's default (session 33).

    Raises:
        ValueError: no candidate ran every pressured case, or every one walked was vetoed
            and none is the default (a run without the incumbent cannot fall back on it).
    """
    against = DEFAULT_POLICY if against is None else against
    order = ranking(rows, candidates)
    if not order:
        raise ValueError("no candidate ran every pressured case: nothing to pick")
    walked = []
    for spec in order:
        worst, above, total = rank(rows, spec)
        ran = explicit(spec, constants) if constants else spec
        entry = {"candidate": spec, "worst": worst, "above": above, "total": total,
                 "checks": [], "vetoed_by": None}
        if ran != spec:
            entry["as_run"] = ran
        walked.append(entry)
        if is_default(ran):
            entry["default"] = True
            return spec, walked
        for check in checks:
            got = check(ran, against)
            entry["checks"].append(got._asdict())
            if not got.passes:
                entry["vetoed_by"] = got.check
                break
        if entry["vetoed_by"] is None:
            return spec, walked
    raise ValueError(f"every candidate was vetoed ({', '.join(order)}) and the default "
                     f"`{DEFAULT_POLICY}` was not among them: nothing to pick")


def vetted_variants(rows: list[dict], candidates: list[str], walked: list[dict],
                    chosen: str) -> dict[str, str]:
    """`variant_picks` after the checks: for the chosen policy and for `DEFAULT_POLICY`,
    the first of its settings in the tune rule's order that is the choice, passed every
    check in the walk, or is at its class defaults now (a setting that was vetoed or never
    checked does not become that policy's defaults); for other policies (whose constants
    the default does not use), the rule's own pick among its settings."""
    passed = {w["candidate"] for w in walked if w["vetoed_by"] is None}
    guarded = {parse_spec(chosen)[0], DEFAULT_POLICY}
    out = {}
    for base, specs in _settings(candidates).items():
        if base not in guarded:
            out[base] = pick(rows, specs)
            continue
        ok = [s for s in ranking(rows, specs) if s == chosen or s in passed or at_defaults(s)]
        out[base] = ok[0] if ok else pick(rows, specs)
    return out


def vetting_lines(walked: list[dict], chosen: str, against: str) -> list[str]:
    """The walk in words, one line per candidate walked, for the tune's section."""
    out = [f"Candidates in the rule's order through issue 10's checks against `{against}` "
           "(the AFS veto first, as `python bench/policies_check.py --afs`: the calibrated "
           "veto over the two-tenant mixes' 32 cases on the AFS fit seeds, until session "
           "31 no afs_max_slowdown_ratio of the default's report rows worse; then the "
           "non-thrash check, as `--non-thrash`: no non-thrash figure worse by more than "
           f"{NON_THRASH_SLACK:.0%}, no SLO drop; since session 32 then issue 10's fit "
           "check: no added p95 miss, no lower smallest gain at the fit points; a candidate "
           "stops at its first failed "
           "check; the default as it is takes none):", ""]
    for w in walked:
        head = (f"- `{w['candidate']}` (worst {w['worst']:.2f}x, {w['above']} above 1.0x, "
                f"{w['total'] / 1e6:.3f}M tokens"
                + (f"; as its rows ran, `{w['as_run']}`" if w.get("as_run") else "") + "): ")
        if w.get("default"):
            out.append(head + "the default as it is: no check; **chosen**.")
            continue
        parts = [f"{c['check']} {'passes' if c['passes'] else 'fails'} ({c['figures']})"
                 for c in w["checks"]]
        verdict = (f"**vetoed by the {w['vetoed_by']}**" if w["vetoed_by"]
                   else "**chosen**" if w["candidate"] == chosen else "passed")
        out.append(head + "; ".join(parts) + f"; {verdict}.")
    out += ["", f"Pick after the checks: **`{chosen}`**."]
    return out


def _settings(candidates: list[str]) -> dict[str, list[str]]:
    """Policies tuned with several constant settings -> their candidate specs."""
    by_base: dict[str, list[str]] = {}
    for c in candidates:
        by_base.setdefault(parse_spec(c)[0], []).append(c)
    return {b: specs for b, specs in by_base.items() if len(specs) > 1}


def variant_picks(rows: list[dict], candidates: list[str]) -> dict[str, str]:
    """Per policy tuned with several constant settings, the setting (its candidate spec)
    the tuning rule picks among them (its class defaults must be that setting)."""
    return {b: pick(rows, specs) for b, specs in _settings(candidates).items()}


def setting_constants(candidates: list[str]) -> dict[str, dict[str, float | list[str]]]:
    """What each setting of a policy tuned with several ran with, for every constant one of
    its settings names: the spec's value, else the class default now. A bare name means the
    defaults of the day it ran, so a run saves these beside its rows and a re-render keeps
    the saved ones (tests/bench/test_policies.py pins the defaults to the pick's)."""
    out: dict[str, dict[str, float | list[str]]] = {}
    for base, specs in _settings(candidates).items():
        keys = sorted({k for s in specs for k in parse_spec(s)[1]})
        defaults = inspect.signature(POLICIES[base]).parameters
        for s in specs:
            given = parse_spec(s)[1]
            out[s] = {k: _constant(given.get(k, defaults[k].default)) for k in keys}
    return out


def _constant(value):
    """A constant as saved: a number as a float, names (`experts`) as a list of them."""
    if isinstance(value, (tuple, list)):
        return list(value)
    return float(value)


def _written(value) -> str:
    """A saved constant as a spec writes it: `2.5`, or `ttl+saga+lru`."""
    return "+".join(value) if isinstance(value, list) else f"{value:g}"


def explicit(spec: str, constants: dict[str, dict[str, float | list[str]]]) -> str:
    """`spec` with every varied constant written out (`graph` -> `graph[residual_wait=0]`)."""
    values = constants.get(spec)
    if not values:
        return spec
    return f"{parse_spec(spec)[0]}[{','.join(f'{k}={_written(v)}' for k, v in values.items())}]"


def tune_markdown(rows: list[dict], candidates: list[str], command: str, wall_s: float,
                  seeds: list[int], ran: tuple[list[str], list[float]], chosen: str,
                  constants: dict[str, dict[str, float | list[str]]],
                  notes: list[str] | None = None,
                  vetting: tuple[str, list[dict], str] | None = None) -> str:
    """The tune's section. `ran`: the traces and capacities the run was given (with `seeds`
    and `candidates`, what `fit_set_gaps` judges). `vetting`: (the pick after issue 10's
    checks, the walk, the policy checked against), as `vetted_pick` returns them; None: the
    rule's pick alone."""
    traces = sorted({r['trace'] for r in rows})
    gaps = fit_set_gaps(seeds, candidates, *ran)
    out = [TUNE_SECTION, "", _header(command, wall_s, seeds, "tuning"),
           f"Ran {coverage(seeds, ran[0], candidates, ran[1])}. "
           f"Fit set: built-in families at seeds {', '.join(map(str, FAMILY_SEEDS))}, held-out "
           f"traces at seeds {', '.join(map(str, TRACE_SEEDS))} (every seed read while the "
           "policies were built; traces run: "
           f"{', '.join(traces)}); the evaluation "
           "(\"## Eviction policies (held-out, simulated)\") refuses these seeds.", "",
           "Recomputed prompt tokens (millions; in brackets, the ratio to the best of lru, "
           "saga and ttl):", ""]
    out += tables(rows, candidates)
    out += ["", f"Pressured cases (lru hit rate in {HIT_RANGE}):", ""]
    out += wins(rows, candidates)
    part = "" if not gaps else (
        " (here on the cases run: part of the fit set only, so this pick sets nothing)")
    out += ["", f"Pick by the tune rule ({TUNE_RULE}; keys 1-3 fixed before the run){part}: "
            f"**`{chosen}`**; `kvsaga.policy.DEFAULT_POLICY` = `{DEFAULT_POLICY}`."]
    variants = variant_picks(rows, candidates)
    if vetting is not None:
        vetted, walked, against = vetting
        out += ["", *vetting_lines(walked, vetted, against)]
        variants = vetted_variants(rows, candidates, walked, vetted)
    elif not gaps:
        out.append("Not put through issue 10's checks (a run before they were automatic, "
                   "or with --smooth): the rule's pick alone.")
    for base, spec in variants.items():
        full = explicit(spec, constants)
        ran = f"ran as `{full}`; " if full != spec else ""
        how = ("the same rule and checks" if vetting is not None and base in
               {parse_spec(vetting[0])[0], DEFAULT_POLICY} else "the same rule")
        out.append(f"Constants of `{base}` by {how} among its settings: `{spec}` "
                   f"({ran}its defaults).")
    if notes:  # what changed since the run, kept with its rows
        out += ["", *notes]
    return "\n".join(out) + "\n"


def _payload(chosen: str, vetting: tuple[str, list[dict], str] | None, rows: list[dict],
             policies: list[str], seeds: list[int], traces: list[str],
             fractions: list[float], constants: dict[str, dict[str, float | list[str]]],
             notes: list[str],
             command: str, wall: float, variants: dict[str, str] | None = None,
             extra: list[dict] | None = None, smooth_s: float = 0.0) -> dict:
    """What a tuning saves (`TUNE_JSON`, or `TUNE_SMOOTH_JSON` with `extra`): the pick
    (after the walk when `vetting` is given), the rule's own, the walk and the rows."""
    if variants is None:
        variants = variant_picks(rows, policies)
    return {"pick": chosen, "rule_pick": pick(rows, policies), "seeds": seeds,
            "traces": traces, "fractions": fractions,
            "vetting": None if vetting is None else vetting[1],
            "against": None if vetting is None else vetting[2],
            "variants": {b: explicit(v, constants) for b, v in variants.items()},
            "constants": constants, "notes": notes, "candidates": policies,
            "command": command, "wall_s": wall, "rows": rows,
            "smooth_rows": extra, "smooth_s": smooth_s}


def _destination(smoothed: bool, whole: bool) -> tuple[Path, str]:
    """Where a tuning is saved and which RESULTS section it writes: one of the whole fit set
    (`whole`) its own, per size or smoothed; one of part of it apart (`TUNE_PARTIAL_JSON`,
    `TUNE_SMOOTH_PARTIAL_JSON`), never over the whole fit set's, whose pick it cannot set."""
    if smoothed:
        return (TUNE_SMOOTH_JSON, TUNE_SMOOTH_SECTION) if whole else (
            TUNE_SMOOTH_PARTIAL_JSON, TUNE_SMOOTH_PARTIAL_SECTION)
    return (TUNE_JSON, TUNE_SECTION) if whole else (TUNE_PARTIAL_JSON, TUNE_PARTIAL_SECTION)


def _cannot_walk(error: ValueError, saved, kept: bool) -> int:
    """A walk stopped by a check that cannot judge: say why and where the rows are (saved
    before the walk, session 34: a stale AFS calibration raised after 14 minutes of
    simulation and lost them). Returns 2; nothing else is written."""
    where = (f"the rows are in {saved}: rerun the walk with `--tune --from-json {saved} "
             "--rewalk` once the check can judge" if kept else
             "the rows were not saved (--no-write)")
    print(f"the walk through issue 10's checks stopped: {error}; {where}", file=sys.stderr)
    return 2


def tune(parser, args, traces: list[str], seeds: list[int], policies: list[str],
         fractions: list[float], command: str) -> int:
    """The `--tune` mode: run (or re-render from `--from-json`), pick, print, write."""
    if held := sorted(set(seeds) - set(TUNE_SEEDS)):
        parser.error(f"--seeds {','.join(map(str, held))}: --tune runs only the fit seeds: the "
                     f"built-in families {FAMILIES} at {FAMILY_SEEDS}, the held-out traces "
                     f"{TRACES} at {TRACE_SEEDS}")
    t = time.perf_counter()
    extra, smooth_s = None, 0.0
    if args.from_json:  # re-render a saved tuning
        saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        rows, command, wall = saved["rows"], saved["command"], saved["wall_s"]
        extra, smooth_s = saved.get("smooth_rows"), saved.get("smooth_s", 0.0)
        seeds, traces, policies = saved["seeds"], saved["traces"], saved["candidates"]
        fractions = ran_fractions(saved)
        if "constants" not in saved and _settings(policies):
            parser.error(f"{args.from_json} does not record what its bare policy names ran "
                         "with (\"constants\"): rerun --tune")
        constants, notes = saved.get("constants", {}), saved.get("notes", [])
        vetting = ((saved["pick"], saved["vetting"], saved["against"])
                   if saved.get("vetting") else None)
    elif seeds and (skipped := skipped_traces(traces, seeds[0])):
        # run() would leave their rows out while the tune counted them as run (the whole
        # fit set: saved over its pick); they are not run, so the tune is part of it
        print(f"skipped (data not installed): {', '.join(skipped)}; this tune covers part "
              "of the fit set only", file=sys.stderr)
        traces = [t for t in traces if t not in skipped]
    whole = not fit_set_gaps(seeds, policies, traces, fractions)
    out, section = _destination(extra is not None or (args.smooth and not args.from_json), whole)
    if not args.no_write:  # a block it may not write over: refused before the run
        try:
            results_blocks.check(HERE / "RESULTS.md", section, TUNE_WRITER)
        except results_blocks.BlockError as e:
            print(f"not run: {e} (or run with --no-write)", file=sys.stderr)
            return 2
    if args.from_json and getattr(args, "rewalk", False):
        if extra is not None or saved_gaps(saved):
            parser.error("--rewalk needs a saved per-size tuning of the whole fit set")
        try:
            vetted, walked = vetted_pick(rows, policies, run_checks(args.workers),
                                         constants=constants)
        except ValueError as e:  # a check that cannot judge (a stale AFS calibration)
            return _cannot_walk(e, args.from_json, False)
        vetting = (vetted, walked, DEFAULT_POLICY)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        notes = [*notes, f"The walk through issue 10's checks was rerun on these saved "
                 f"rows ({when}, `--tune --from-json ... --rewalk`), with the checks "
                 "as they are then."]
    if not args.from_json:
        rows, constants, notes = [], setting_constants(policies), []
        for names, fit in ((FAMILIES, FAMILY_SEEDS), (TRACES, TRACE_SEEDS)):
            mine = [t for t in traces if t in names]
            at = [s for s in seeds if s in fit]
            if mine and at:
                rows += run(mine, fractions, policies, at, args.workers)[0]
        wall = time.perf_counter() - t
        vetting = None
        if not args.smooth and whole:
            if not args.no_write:  # the rows before the walk: a walk that stops keeps them
                _save(TUNE_JSON, _payload(pick(rows, policies), None, rows, policies, seeds,
                                          traces, fractions, constants, notes, command, wall))
            try:
                vetted, walked = vetted_pick(rows, policies, run_checks(args.workers),
                                             constants=constants)
            except ValueError as e:  # a check that cannot judge (a stale AFS calibration)
                return _cannot_walk(e, TUNE_JSON, not args.no_write)
            vetting = (vetted, walked, DEFAULT_POLICY)
        if args.smooth:
            import policies_smooth as S
            extra, smooth_s = S.run_smooth(rows, S.smooth_policies(policies, True),
                                           args.workers)
    rule_pick = pick(rows, policies)
    text = tune_markdown(rows, policies, command, wall, seeds, (traces, fractions), rule_pick,
                         constants, notes, vetting)
    chosen = rule_pick if vetting is None else vetting[0]
    variants = (variant_picks(rows, policies) if vetting is None
                else vetted_variants(rows, policies, vetting[1], vetting[0]))
    if extra is not None:
        import policies_smooth as S
        srows = S.smoothed(rows, extra)
        smooth_pick = pick(srows, policies)
        text += "\n".join(S.markdown(srows, policies, smooth_s, [])) + "\n"
        verdict = default_verdict({"pick": smooth_pick, "seeds": seeds,
                                   "candidates": policies, "traces": traces,
                                   "fractions": fractions})
        text += (f"\nPick by the tune rule on the smoothed figures of "
                 f"{coverage(seeds, traces, policies, fractions)}: **`{smooth_pick}`** "
                 f"(per pool size: `{rule_pick}`); {verdict}.\n")
        chosen = smooth_pick
    print(text)
    if not args.no_write:
        text = text.replace(TUNE_SECTION, section, 1)
        _save(out, _payload(chosen, vetting, rows, policies, seeds, traces, fractions,
                            constants, notes, command, wall, variants, extra, smooth_s))
        write_section(text, HERE / "RESULTS.md", TUNE_WRITER)
    return 0


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/policies.py"))
