"""Issue 10's checks as the tune runs them (`run_checks`), each a simulation of its own:
the calibrated AFS veto, the non-thrash check and issue 10's fit check, and the result one
returns (`CheckResult`). Split out of bench/policies_tune.py (session 45) to keep that
module under ~600 lines: these only run the checks, through the scheduling benches they
load on use, while the walk that consults them (`vetted_pick`) and its rule stay there.
bench/policies_tune.py re-exports every name here, and its `tune` calls `run_checks`
through that module, so a test that patches `policies_tune.run_checks` still takes effect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from policies_records import NON_THRASH_SLACK


class CheckResult(NamedTuple):
    """One of issue 10's checks of a candidate, run by the tune (`vetted_pick`)."""
    check: str  # "AFS veto" or "non-thrash check"
    passes: bool
    figures: str  # what it printed, in one line


# The check a candidate takes, in this order: (spec, against) -> CheckResult.
Check = Callable[[str, str], CheckResult]


def run_checks(workers: int) -> list[Check]:
    """Issue 10's two checks as `vetted_pick` runs them, simulating on `workers` processes:
    the calibrated AFS veto (`policies_check.calibrated_afs`, as `python
    bench/policies_check.py --afs` runs it since session 32), then the non-thrash check
    (`scheduling_fit.non_thrash_worse` with the workflow scheduler's defaults unchanged and
    slack `NON_THRASH_SLACK`, the rule `NON_THRASH_CHECKS` records), then, since session
    32, issue 10's fit check (`scheduling_fit.fit_gain_check`: no added p95 miss and no
    lower smallest gain at the thrash points the 2x goal is about). Each spec is
    registered as a policy name first (`policies_check.register`)."""
    import policies_check as C  # they import the scheduling benches: loaded on use

    def afs(spec: str, against: str) -> CheckResult:
        C.register(spec), C.register(against)
        t = time.perf_counter()
        ok, verdict = C.calibrated_afs(spec, against, workers)
        return CheckResult("AFS veto", ok, f"{verdict}; {time.perf_counter() - t:.0f} s")

    def non_thrash(spec: str, against: str) -> CheckResult:
        C.register(spec), C.register(against)
        import scheduling_fit as F  # after the registration, as policies_check does
        t = time.perf_counter()
        worse = F.non_thrash_worse(F.PREVIOUS, workers, policy=spec, against=against,
                                   slack=NON_THRASH_SLACK)
        figures = (f"{len(F._NON_THRASH)} non-thrash points, {len(worse)} figures worse by "
                   f"more than {NON_THRASH_SLACK:.0%} or SLO drops"
                   + (": " + "; ".join(worse) if worse else "")
                   + f"; {time.perf_counter() - t:.0f} s")
        return CheckResult("non-thrash check", not worse, figures)

    def fit_gain(spec: str, against: str) -> CheckResult:
        C.register(spec), C.register(against)
        import scheduling_fit as F
        t = time.perf_counter()
        ok, figures = F.fit_gain_check(spec, against, workers)
        return CheckResult("issue 10's fit check", ok,
                           f"{figures}; {time.perf_counter() - t:.0f} s")

    return [afs, non_thrash, fit_gain]


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/policies.py"))
