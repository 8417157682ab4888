"""The verdict half of bench/policies.py's sections: per online policy its pressured-case
totals (`wins`) and the ranking by the tune rule with where the default stands (`ranking`),
printed by the held-out evaluation, the tuning and the smoothed tuning alike. Split out of
bench/policies.py to keep it under the 600-line limit."""

from __future__ import annotations

from policies import BASELINES, OFFLINE, rank, score  # bench/ is on the path as a script

from kvsaga.policy import DEFAULT_POLICY


def wins(rows: list[dict], policies: list[str]) -> list[str]:
    """Per online policy: total recomputation over the pressured cases, and how often it is
    at most the best baseline."""
    out = []
    for p in policies:
        s = None if p in OFFLINE else score(rows, p)
        if s is not None:
            r = rank(rows, p)  # None when no case is pressured
            worst = f"{r[0]:.2f}x" if r else "n/a"
            out.append(f"| {p} | {s[1] / 1e6:.3f} | {s[0]} of {s[2]} | {worst} |")
    return ["| policy | recomputed (M tokens, pressured cases) | <= best baseline | "
            "worst x best baseline |", "|---|---:|---:|---:|", *out]


def ranking(rows: list[dict], policies: list[str], label: str | None = None) -> list[str]:
    """The online policies ranked by the tune rule (`rank`) on these pressured cases, and
    where the default stands: issue 11 asks that the default win this evaluation."""
    ranked = sorted((r, p) for p in policies if p not in OFFLINE
                    and (r := rank(rows, p)) is not None)
    if not ranked:
        return []
    order = ", ".join(f"`{p}` {r[0]:.2f}x ({r[1]} above 1.0x)" for r, p in ranked)
    names = [p for _, p in ranked]
    first = names[0]
    if first in BASELINES:  # its ratios are to the best baseline, itself among them
        why = ("its ratio is to the best of lru, saga and ttl, itself among them, so never "
               "below 1.0x: no policy beat the baselines on every case")
        top = f"the baseline `{first}` ranks first; {why}"
        won = f"**it ranks first, as a baseline** ({why})"
    else:
        top, won = f"`{first}` wins", "**it wins**"
    where = (f"the default `{DEFAULT_POLICY}` ranks {names.index(DEFAULT_POLICY) + 1} of "
             f"{len(names)}: " + (won if first == DEFAULT_POLICY else f"**missed** ({top})")
             if DEFAULT_POLICY in names else f"the default `{DEFAULT_POLICY}` did not run")
    head = f"- {label}: " if label else "By the tune rule on these cases (worst ratio, then " \
        "cases above 1.0x, then tokens): "
    return [f"{head}{order}; {where}."]


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/policies.py"))
