"""Which seeds a bench/vllm_scheduler_replay.py report may use: held out from every fit
(bench/fit_seeds.py, the vLLM gate's seen seeds included where an arm runs the gate), or,
with `--fit-seeds`, labelled a diagnosis and never in one median with held-out ones. Kept
apart from the replay loop so each file stays one concept; the replay script calls
`check_seeds` before any replay, so a refused seed costs none.
"""

from __future__ import annotations

import argparse
import json

from fit_seeds import fits_reading, run_seed_note
from vllm_replay_report import seed_groups


def measures_gate(args: argparse.Namespace) -> bool:
    """Whether any arm of the report runs the vLLM connector's session gate: a connector arm
    whose settings over `--connector-extra` leave `admission` on. Plain vLLM, its all-hits
    and `vllm@N` arms and the `offload-*` tier alone run none, so the gate's seen seeds
    (bench/fit_seeds.py `VLLM_GATE_SEEN`, which counts only where a run measures the gate)
    are held out for them (review s49, gatediff finding 5)."""
    from replay.servers import connector_arm
    from vllm_offload_sim import split_offload
    from vllm_scheduler_replay import arm_extra, split_order

    try:
        extra = json.loads(args.connector_extra)
    except ValueError as e:
        raise SystemExit(f"--connector-extra {args.connector_extra!r}: not JSON ({e})") from None
    for arm in (p.strip() for p in args.policies.split(",") if p.strip()):
        base, _ = split_offload(arm)
        if base is not None and arm_extra(
                extra, connector_arm(split_order(base)[0])[1]).get("admission", True) is not False:
            return True
    return False


def check_seeds(args: argparse.Namespace, seeds: list[int]) -> str | None:
    """The line that says which of the report's seeds are not held out (None: all are),
    printed here; exits with the reason where the run would write results (`--write-results`,
    `--json`) on a seed a fit read (bench/fit_seeds.py, the vLLM gate's seen seeds included
    where an arm runs the gate: `measures_gate`) without `--fit-seeds`, or where
    `--fit-seeds` names only seeds no fit read (they would be used up unreported). With
    `--fit-seeds` fresh seeds may stand beside the fit seeds, named held out in the line: the
    recorded sections group fit seeds 0-4 apart from fresh ones, a layout 80fdbad left no way
    to write (review s49, gatediff finding 1), but never in one median: each `--seed-groups`
    group (none: all seeds, one median) holds fit seeds only or fresh seeds only (review
    s49 gate3, finding 5). Before, only `--fit` checked its seeds, and a
    report on fit seed 0 read as a held-out one (review s49, gate finding 1)."""
    gate_seen = measures_gate(args)
    try:
        note = run_seed_note(seeds, "--seeds", fit_seeds=args.fit_seeds,
                             writes=args.write_results or args.json is not None,
                             refused="or report on them labelled a diagnosis, beside any "
                                     "held-out seeds: --fit-seeds",
                             gate_seen=gate_seen, held_out_ok=True)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.fit_seeds:
        refuse_mixed_groups(seeds, seed_groups(args.seed_groups, seeds), gate_seen)
    if note is not None:
        print(note, flush=True)
    return note


def refuse_mixed_groups(seeds: list[int], groups: list[list[int]] | None,
                        gate_seen: bool) -> None:
    """Exit where a median of the report (a `--seed-groups` group, or all `seeds` without
    groups) would mix seeds a fit read with held-out ones: the table would show one figure
    over both, named apart only in the note above it."""
    for group in groups or [seeds]:
        fit = [s for s in group if fits_reading(s, gate_seen=gate_seen)]
        fresh = [s for s in group if s not in fit]
        if fit and fresh:
            where = ("--seed-groups group " + ",".join(map(str, group)) if groups
                     else "--seeds without --seed-groups")
            raise SystemExit(
                f"--fit-seeds: {where} mixes fit seeds ({', '.join(map(str, fit))}) with "
                f"held-out seeds ({', '.join(map(str, fresh))}) in one median; give each "
                "kind its own --seed-groups group")


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/vllm_scheduler_replay.py"))
