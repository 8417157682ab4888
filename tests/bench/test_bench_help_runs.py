"""`python bench/X.py --help` answers for every top-level bench/*.py: exit 0 and usage text.

Until session 53, 28 of them were helper modules that other scripts import (the tune's
halves, the seed registry, the RESULTS.md block writer, the vLLM replay's parts): run with
--help they printed nothing and exited 0. Each now ends with bench/helper_cli.py's
`helper_main`, which says what it is and which script to run instead (exit 0 for --help, 2
with the same text on stderr otherwise).

Every script runs with --help in ONE child process (runpy, as `python bench/X.py --help`
runs it: `__name__ == "__main__"`, bench/ first on sys.path), so that torch and kvsaga load
once: ~95 fresh interpreters took ~8 minutes on a loaded 2-core machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_scripts import import_bench

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

# Runs each script named on the command line as `python bench/NAME --help` would, and
# writes {name: [exit code or the exception, stdout, the end of stderr]} as JSON to fd 1.
DRIVER = r"""
import contextlib, io, json, runpy, sys
bench, names = sys.argv[1], sys.argv[2:]
results = {}
for name in names:
    path = f"{bench}/{name}"
    out, err = io.StringIO(), io.StringIO()
    sys.argv, saved_path = [path, "--help"], list(sys.path)
    sys.path.insert(0, bench)
    code = "ran to the end without exiting"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    except BaseException as e:
        code = f"raised {type(e).__name__}: {e}"
    finally:
        sys.path[:] = saved_path  # as a fresh run has it (a script may edit it)
    results[name] = [code, out.getvalue(), err.getvalue()[-400:]]
sys.__stdout__.write(json.dumps(results))
"""


def _run_help(names: list[str]) -> dict[str, list]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    r = subprocess.run([sys.executable, "-c", DRIVER, str(BENCH), *names], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def help_runs() -> dict[str, list]:
    return _run_help(sorted(p.name for p in BENCH.glob("*.py")))


def test_every_bench_script_answers_help_with_usage(help_runs):
    scripts = sorted(p.name for p in BENCH.glob("*.py"))
    assert len(scripts) > 90 and sorted(help_runs) == scripts
    bad = {name: (code, out[:80], err) for name, (code, out, err) in help_runs.items()
           if code != 0 or not out.lstrip().startswith("usage:")}
    assert bad == {}


def test_a_helper_says_which_script_to_run_instead(help_runs):
    code, out, _ = help_runs["policies_tune.py"]
    assert code == 0
    assert out.startswith("usage: python bench/policies.py --help\n")
    assert "bench/policies_tune.py is not a script" in out
    assert out.rstrip().endswith("The tuning half of bench/policies.py: pick the default "
                                 "policy on the tuning seeds.")
    assert help_runs["results_blocks.py"][1].count("   or: python bench/") >= 2


def test_a_helper_run_without_help_exits_2_saying_the_same_on_stderr():
    """A fresh interpreter, exactly as a user runs it."""
    r = subprocess.run([sys.executable, str(BENCH / "policies_case.py"), "--trace", "swe"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: python bench/policies_victims.py --help\n")
    assert "bench/policies_case.py is not a script" in r.stderr


def test_helper_main_reads_help_anywhere_on_the_command_line(capsys):
    helper_main = import_bench("helper_cli").helper_main
    assert helper_main("/x/bench/h.py", "Doc.\n\nMore.", "bench/a.py", "pytest bench",
                       argv=["--x", "-h"]) == 0
    out = capsys.readouterr().out
    assert out == ("usage: python bench/a.py --help\n   or: pytest bench\n\nbench/h.py is not a "
                   "script: other bench/ scripts (or pytest) import it, and it\nruns nothing "
                   "itself. Run the command above instead.\n\nDoc.\n")
    assert helper_main("/x/bench/h.py", None, "bench/a.py", argv=[]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: python bench/a.py --help\n")
