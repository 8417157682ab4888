"""Issue 10's non-thrash check for a policy *spec*, not only a bare name.

`bench/scheduling_fit.py --policy-check AGAINST --policy NAME` judges a change of the default
policy on issue 10's fit seeds, but takes registered names only, and a tune candidate is
often a policy with other constants (`graph[demoted_mean=1]`). This registers each spec
given under its own spec string as a policy name (a subclass whose defaults are the spec's
constants; nothing else changes) and runs that check, so both arms can be specs:

    python bench/policies_check.py --policy 'graph[demoted_mean=1]' \\
        --against 'graph[demoted_mean=0]'

The registration lives in this process and the workers it forks (the simulations are run
by a process pool, which on Linux forks).
"""

from __future__ import annotations

import argparse
import sys

from policies import parse_spec  # bench/ is on the path when run as a script

from kvsaga.policy import POLICIES


def register(spec: str) -> str:
    """Make `spec` a policy name: `POLICIES[spec]` builds its policy with the spec's
    constants as defaults (a bare name is left as it is). Returns the name."""
    if spec in POLICIES:
        return spec
    name, params = parse_spec(spec)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} in {spec!r}")
    base = POLICIES[name]
    base(**params)  # a bad constant fails here, naming it, before anything is registered

    def init(self, *args, **kw) -> None:
        base.__init__(self, *args, **{**params, **kw})

    POLICIES[spec] = type(f"{base.__name__}Spec", (base,), {"__init__": init, "name": spec})
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="the candidate (a name or a spec)")
    p.add_argument("--against", required=True, help="the incumbent (a name or a spec)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    try:
        policy, against = register(args.policy), register(args.against)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    import scheduling_fit  # after the registration: it checks names against POLICIES
    return scheduling_fit.main(["--policy-check", against, "--policy", policy,
                                "--workers", str(args.workers)])


if __name__ == "__main__":
    sys.exit(main())
