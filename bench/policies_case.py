"""The one case a diagnosis script of the eviction policies reads (policies_victims.py,
policies_decisions.py, policies_demoted.py, policies_demoted_paused.py): a trace of
bench/policies.py, a fit seed and a capacity, as `--trace`, `--seed` and `--fraction`."""

from __future__ import annotations

import argparse

import policies as P  # bench/ is on the path when run as a script
from ascii_args import float_arg, int_arg

TRACE_HELP = ("a trace of bench/policies.py (a family, or swe-slow, web-short, swe+bfcl, "
              "bfcl-v4)")


def add_case_args(p: argparse.ArgumentParser, trace_default: str | None, seed_default: int,
                  trace_help: str = TRACE_HELP) -> None:
    """--trace, --seed (a fit seed) and --fraction on `p`."""
    p.add_argument("--trace", default=trace_default, help=trace_help)
    p.add_argument("--seed", type=int_arg, default=seed_default, help="trace seed (a fit seed)")
    p.add_argument("--fraction", type=float_arg, default=0.6,
                   help="capacity: a share of the trace's peak working set, in (0, 1]")


def check_case(p: argparse.ArgumentParser, seed: int, frac: float) -> None:
    """`p.error` (exits) for a seed outside the fit seeds or a fraction outside (0, 1]."""
    if seed not in P.TUNE_SEEDS:
        p.error(f"seed {seed} is not a fit seed {P.TUNE_SEEDS}: a diagnosis reads "
                "fit data only")
    if not 0 < frac <= 1:
        p.error(f"--fraction must be in (0, 1], got {frac!r}")


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(
        __file__, __doc__, "bench/policies_victims.py", "bench/policies_decisions.py",
        "bench/policies_demoted.py", "bench/policies_demoted_paused.py"))
