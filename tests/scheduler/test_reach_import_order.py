"""`demoting_machine.reach` draws the same runs whichever kvsaga modules earlier tests
imported. Hypothesis mixes the literals of the project's imported non-test modules into its
draws, so before `reach` pinned that pool the reach tests of test_readmit_charge_cost.py and
test_readmit_binding_short.py counted other runs after test_admission_order.py's simulator
test (which imports kvsaga.sim.workloads) than alone. Run in a fresh interpreter: in this
one an earlier test may have imported the module already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from tests.scheduler.demoting_machine import DEMOTING, reach
params = {**DEMOTING, "readmit_charge": "binding_short"}
assert "kvsaga.sim.workloads" not in sys.modules
before = dict(reach("lru", params, examples=150))
import kvsaga.sim.workloads  # its literals (arrival_rate=0.004, ...) join Hypothesis's pool
after = dict(reach("lru", params, examples=150))
print(json.dumps([before, after]))
"""


def test_reach_draws_the_same_runs_after_another_kvsaga_module_is_imported():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before["demotions"] > 0
    assert before == after
