"""What a helper module of bench/ does when it is run as a script.

bench/ holds scripts and, beside them, helper modules the scripts import (a split-out half, a
shared registry, a report writer). A helper runs nothing itself; until session 53 `python
bench/HELPER.py --help` printed nothing and exited 0. Each helper now ends with

    if __name__ == "__main__":  # a helper module: it names the script to run instead
        from helper_cli import helper_main
        raise SystemExit(helper_main(__file__, __doc__, "bench/SCRIPT.py"))

which prints what the helper is (its docstring's first paragraph) and the script(s) to run
instead: on stdout with exit 0 for `-h`/`--help`, on stderr with exit 2 (argparse's code for
a usage error) for any other command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def helper_text(file: str, doc: str | None, runs: Sequence[str]) -> str:
    """What a helper says: that it is one, the commands to run instead and its summary.
    Each of `runs` is a script ("bench/policies.py": run as `python bench/policies.py
    --help`) or a whole command."""
    name = f"bench/{Path(file).name}"
    commands = [f"python {r} --help" if r.endswith(".py") else r for r in runs]
    summary = (doc or "").strip().split("\n\n")[0].strip()
    commands = commands or ["python bench/SCRIPT.py --help (a script of bench/, not a helper)"]
    lines = [f"usage: {commands[0]}",
             *(f"   or: {c}" for c in commands[1:]), "",
             f"{name} is not a script: other bench/ scripts (or pytest) import it, and it",
             "runs nothing itself. Run the command above instead."]
    return "\n".join(lines + (["", summary] if summary else []))


def helper_main(file: str, doc: str | None, *runs: str,
                argv: Sequence[str] | None = None) -> int:
    """Print `helper_text`: to stdout, returning 0, when `argv` (default sys.argv[1:]) asks
    for help; else to stderr, returning 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    text = helper_text(file, doc, runs)
    if "-h" in argv or "--help" in argv:
        print(text)
        return 0
    print(text, file=sys.stderr)
    return 2


if __name__ == "__main__":  # itself a helper: the scripts that end as above are its users
    raise SystemExit(helper_main(__file__, __doc__))
