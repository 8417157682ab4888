"""`bench/cluster.py --fit` with the grid cut to the choice of `busy_balance_alone` (the
quiet test's floor also holds a lone session that is alone in the fleet): the same cases,
seeds and ranking as the fit, on two settings, each with the other knobs at their defaults.
Fit seeds only (bench/cluster.py refuses others with --fit).

    python bench/cluster_lone.py --fit --seed 1,2 --gpus 64 --family bfcl \\
        --sessions-per-gpu 16 --load 16
    python bench/cluster_lone.py --fit --seed 1,2 --sessions-per-gpu 16 --load 2
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster  # noqa: E402  (bench/cluster.py)

GRID = (
    {"busy_balance_alone": False},
    {"busy_balance_alone": True},
)


if __name__ == "__main__":
    if "--fit" not in sys.argv[1:]:
        sys.exit("bench/cluster_lone.py runs the fit only: pass --fit")
    cluster.FIT_GRID = GRID
    cluster.main()
