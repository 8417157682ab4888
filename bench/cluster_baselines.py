"""bench/cluster.py --routers / --baselines: the rows of a previous run, read back from the
tables it wrote into a RESULTS section, for the routers a run does not simulate (the
round-robin and affinity rows do not depend on the kvsaga router's code).

Split from bench/cluster.py in session 49, unchanged, so that it stays under 600 lines:
cluster.py runs and writes the report; this module reads a written one back.
"""

from __future__ import annotations

import re
from pathlib import Path

from kvsaga.config import parse_bytes
from kvsaga.sim.cluster import CLUSTER_COLUMNS


def same_experiment(args, case: tuple[int, str, int], load: float, row: dict) -> None:
    """Refuse a reused row whose case heading names another load, scale or KV memory than
    this run's: the section title and (GPUs, family, seed) alone do not tell them apart."""
    ours = {"load": f"{load:g}x", "scale": f"{args.scale:g}", "KV": args.kv_memory}
    theirs = {"load": f"{row['load']:g}x", "scale": f"{row['scale']:g}", "KV": row["kv"]}
    if parse_bytes(row["kv"]) == parse_bytes(args.kv_memory):
        theirs["KV"] = ours["KV"]  # the same capacity spelled another way
    wrong = [f"{k} {theirs[k]} (this run: {ours[k]})" for k in ours if ours[k] != theirs[k]]
    if wrong:
        raise ValueError(f"--baselines {args.baselines}: the {case[0]} GPUs, {case[1]}, seed "
                         f"{case[2]} rows were run at another {', '.join(wrong)}")


def baseline_rows(path: Path, title: str) -> dict[tuple[int, str, int], list[dict]]:
    """The rows of the tables a previous run wrote into section `title` of `path`, by
    (GPUs, family, seed), each with the load, scale and KV memory its case heading names
    (`same_experiment` checks them): `--routers` reuses them for the routers it does not
    simulate (the round-robin and affinity rows do not depend on the kvsaga router's code).
    The figures are as printed (mean TCT to 0.1 s), so a ratio over them can differ from the
    first run's in its last digit."""
    text = path.read_text(encoding="utf-8")
    section = re.search(rf"^{re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if section is None:
        raise ValueError(f"{path} has no section {title!r}")
    found = {}
    for gpus, family, seed, head, table in re.findall(
            r"^### (\d+) GPUs: \d+ (\S+) sessions \(seed (\d+)([^\n]*)\n\n```\n(.*?)\n```",
            section.group(1), re.S | re.M):
        took = re.search(r"took (\d+) s\)$", head) or re.search(r"\((\d+) s of simulation", head)
        setup = re.match(r", load ([^,]+)x, scale ([^)]+)\), (\S+) KV per GPU", head)
        if setup is None:
            raise ValueError(f"{path}: the heading of {family} seed {seed} does not name its "
                             f"load, scale and KV memory: {head!r}")
        rows = []
        for line in table.splitlines()[1:]:
            cells = line.split()
            if len(cells) != len(CLUSTER_COLUMNS):
                raise ValueError(f"{path}: a row of {family} seed {seed} has {len(cells)} "
                                 f"cells, not {len(CLUSTER_COLUMNS)}: {line!r}")
            row = {key: _cell(cell, fmt) for (_, key, fmt), cell in zip(CLUSTER_COLUMNS, cells,
                                                                       strict=True)}
            row.update(family=family, seed=int(seed), wall_s=0.0, reused=True,
                       load=float(setup.group(1)), scale=float(setup.group(2)),
                       kv=setup.group(3),
                       case_wall_s=float(took.group(1)) if took else 0.0)
            rows.append(row)
        found[(int(gpus), family, int(seed))] = rows
    return found


def _cell(text: str, fmt: str):
    """One printed table cell back as a number (`CLUSTER_COLUMNS` formats) or text."""
    if fmt == "{:,}" or (fmt == "{}" and text.isdigit()):
        return int(text.replace(",", ""))
    return float(text) if fmt != "{}" else text


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/cluster.py"))
