"""The victims of the indexed policies do not depend on PYTHONHASHSEED.

A grouped policy keeps the sessions to re-key at its next search in a set of session ids
(groups.py `_dirty`), and a search keys them, and pushes them into the index, in that set's
order, which the hash seed picks (CI runs each time with a random one). That order reaches
the index's entry versions, the order of its timers and the ids of the class keys
(search.py `_keys`), never a key or a tie-break between two sessions: heap entries order by
(key, tail block, version) and two live sessions never share a tail block, and the class
keys are functions of the class signature and the grid point alone (session 52's review
traced each use). This runs the same walks in processes with different seeds
and compares every victim named, on both indexes; under seeds 0, 1 and 2, `graph`'s Python
index gives its sessions different versions on this walk, its victims the same ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kvsaga._core import cpp_available

# Builds its managers itself, naming the core (tests/policy/conftest.py): runs once.
READS_NO_CORE = True

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ("0", "1", "2")

CHILD = """if True:
    import hashlib, json, os, sys
    from kvsaga.policy import make_policy
    from tests.policy.helpers import bench_shape_walk, make
    from tests.policy.victim_record import record

    def digest(rec):
        return hashlib.sha256(json.dumps(rec).encode()).hexdigest()

    out = {}
    for core in sys.argv[1].split(","):
        for name in ("ttl", "saga", "graph", "adaptive"):
            m = make(make_policy(name), num_blocks=300, core=core)
            rec = []
            choose = m.policy.choose_victims

            def named(n, now, *args, choose=choose, rec=rec):
                v = choose(n, now, *args)
                rec.append(None if v is None else list(v))
                return v

            m.policy.choose_victims = named
            for now in bench_shape_walk(m, 300, extra=200):
                pass
            rec.append(named(10**6, now + 5.0))  # every cached block, first victim first
            out[f"bench/{core}/{name}"] = digest(rec)
    for spec in ("graph", "adaptive-all"):
        for workload in ("ops", "agents"):
            out[f"{workload}/{spec}"] = digest(record(spec, "gpu64", workload, calls=600))
    os.write(1, (json.dumps(out, sort_keys=True) + "\\n").encode())  # one write: one line
"""


def _victims(seed: str, cores: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": seed,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    env.pop("KVSAGA_CORE", None)
    r = subprocess.run([sys.executable, "-c", CHILD, cores], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"PYTHONHASHSEED={seed}: the walk failed:\n{r.stderr[-4000:]}"
    return r.stdout.strip().splitlines()[-1]


def test_victims_do_not_depend_on_the_hash_seed():
    cores = "python,cpp" if cpp_available() else "python"
    outs = {seed: _victims(seed, cores) for seed in SEEDS}
    assert len(set(outs.values())) == 1, (
        f"victims differ between PYTHONHASHSEEDs: {outs}")
