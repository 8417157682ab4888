"""bench/policies.py's command line: the options `main` reads (`parse`) and the marked
blocks of RESULTS.md its modes write (`write_section`, `append_evaluation`, `refuse_early`;
bench/results_blocks.py), with the writers' names. Split out of bench/policies.py (session
45) to keep that module under ~600 lines; it re-exports every name here, and `main` calls
them through it, so callers and tests that use or patch `policies.NAME` are unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import results_blocks
from ascii_args import ascii_float, ascii_int, int_arg

# The writers of its marked blocks (bench/results_blocks.py), one a mode.
WRITER, REF_WRITER = "bench/policies.py", "bench/policies.py --reference"
REGRET_WRITER, TUNE_WRITER = "bench/policies.py --regret", "bench/policies.py --tune"


def write_section(text: str, path: Path, writer: str) -> None:
    """Write `text` (a section: its heading line, then the body) as `writer`'s own marked block
    of that section of RESULTS.md (bench/results_blocks.py): its last run's block is replaced,
    nothing else is touched (notes written there by hand stay); a section without one gets it
    at its end, a missing section is added at the end of the file.

    Raises:
        results_blocks.BlockError: as `results_blocks.replace_block` (nothing written).
    """
    heading, _, body = text.partition("\n")
    results_blocks.replace_block(path, heading, writer, body.strip("\n"))


def eval_title(seeds: list[int], when: str) -> str:
    """The heading of one evaluation run's own section (`when`: the time it is written)."""
    return (f"## Eviction policies (held-out, seeds {', '.join(map(str, seeds))}, written {when}; "
            "simulated)")


def append_evaluation(text: str, path: Path, title: str) -> None:
    """Add the evaluation's `text` (headed `SECTION`) as a new section `title` at the end of
    RESULTS.md, the run as one marked block under it: earlier runs' sections stay as they are.

    Raises:
        results_blocks.BlockError: `title` already heads two sections (nothing written).
    """
    results_blocks.append_block(path, title, WRITER, text.partition("\n")[2].strip("\n"))


def refuse_early(parser, path: Path, heading: str, writer: str | None = None) -> None:
    """`parser.error` now, before the run, if writing under `heading` would be refused after it
    (`results_blocks.check`; `writer`: the one whose block is replaced there)."""
    try:
        results_blocks.check(path, heading, writer)
    except results_blocks.BlockError as e:
        parser.error(f"{e} (or run with --no-write)")


def _ints(text: str) -> list[int]:
    return [ascii_int(x) for x in text.split(",") if x]


def parse(argv: list[str] | None, description: str):
    """`main`'s command line, read and checked (`parser.error` on a bad one): returns the
    parser (its modes refuse through it later), the arguments, the traces, seeds, policy
    specs and capacities to run, and the command as written."""
    from policies import (  # it imports this module: loaded here, not at the top
        EVAL_SEEDS,
        FAMILIES,
        FRACTIONS,
        POLICIES,
        TRACES,
        TUNE_CANDIDATES,
        TUNE_SEEDS,
        parse_spec,
        split_specs,
    )

    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tune", action="store_true",
                   help="pick the default on the fit seeds by the tune rule (least worst "
                        "ratio to the best of lru/saga/ttl, then fewest cases above 1.0x, "
                        "then least tokens)")
    p.add_argument("--traces", default=None,
                   help="comma-separated traces (default: the held-out ones, "
                        f"{', '.join(TRACES)}; with --tune, the built-in families and the "
                        f"held-out traces, {', '.join(dict.fromkeys(FAMILIES + TRACES))}: "
                        "the families at FAMILY_SEEDS, the traces at TRACE_SEEDS)")
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)),
                   help="capacities as shares of each trace's peak working set")
    p.add_argument("--policies", default=None,
                   help="comma-separated policy specs (default: all; with --tune, "
                        "TUNE_CANDIDATES)")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds (default: EVAL_SEEDS; with --tune, TUNE_SEEDS)")
    p.add_argument("--workers", type=int_arg, default=2, help="processes")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--from-json", default=None,
                   help="re-render the section from a saved bench/plots/policies.json "
                        "(with --tune: policies_tune.json)")
    p.add_argument("--rewalk", action="store_true",
                   help="with --tune --from-json: rerun the walk through issue 10's checks "
                        "on the saved rows (no tuning simulation), and save it")
    p.add_argument("--reference", action="store_true",
                   help="offline references and policies against the exhaustive optimum "
                        "on tiny traces")
    p.add_argument("--regret", action="store_true",
                   help="per-victim regret by block class instead of the sweep")
    p.add_argument("--smooth", action="store_true",
                   help="also judge each pressured case by its mean over five pool sizes "
                        "within +-2%% (bench/policies_smooth.py); with --tune, pick on that")
    args = p.parse_args(argv)
    if args.rewalk and not (args.tune and args.from_json):
        p.error("--rewalk reruns a saved tuning's walk: it needs --tune and --from-json")
    names = tuple(dict.fromkeys(FAMILIES + TRACES)) if args.tune else TRACES  # swe once
    traces = [t for t in (args.traces or ",".join(names)).split(",") if t]
    for t in traces:
        if t not in TRACES + FAMILIES:
            p.error(f"unknown trace {t!r}; choose from {', '.join(TRACES + FAMILIES)}")
    seeds = _ints(args.seeds or ",".join(map(str, TUNE_SEEDS if args.tune else EVAL_SEEDS)))
    policies = split_specs(args.policies or ",".join(
        TUNE_CANDIDATES if args.tune else POLICIES))
    for x in policies:
        try:
            base, params = parse_spec(x)
        except ValueError as e:
            p.error(str(e))
        if base == "hindsight" and params:
            p.error(f"{x!r}: hindsight takes no parameters, got {sorted(params)}")
    command = " ".join(["python bench/policies.py", *(argv if argv is not None else sys.argv[1:])])
    fractions = [ascii_float(x) for x in args.fractions.split(",")]
    return p, args, traces, seeds, policies, fractions, command


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/policies.py"))
