"""The policy spec grammar the eviction benchmarks share (bench/policies.py and the tune,
checks and scaling scripts that import it from there): `name` or `name[key=value,...]`,
a value a number or names joined by `+`, and comma-separated lists of such specs.

Kept apart from bench/policies.py, whose subject is running and judging policies, because
every policy bench parses specs and the rule for a constant's type (a 0 or 1 becomes a bool
where the policy's constant is one) belongs to the grammar, not to any one bench.
"""

from __future__ import annotations

import inspect
import re

from ascii_args import ascii_float

from kvsaga.policy import POLICIES as POLICY_CLASSES


def parse_spec(spec: str) -> tuple[str, dict[str, float | tuple[str, ...]]]:
    """`name` or `name[key=value,...]` -> (name, constants). A value is a number, or names
    joined by `+` (a tuple: `adaptive[experts=ttl+saga+lru]`)."""
    m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", spec)
    if m is None:
        raise ValueError(f"bad policy spec {spec!r}: expected name or name[key=value,...]")
    params: dict[str, float | tuple[str, ...]] = {}
    for item in filter(None, (m.group(2) or "").split(",")):
        key, _, value = item.partition("=")
        try:
            params[key.strip()] = ascii_float(value)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z][\w-]*(\+[A-Za-z][\w-]*)*", value.strip()):
                raise ValueError(f"bad constant {item!r} in {spec!r}: expected key=number "
                                 "or key=name+name...") from None
            params[key.strip()] = tuple(value.strip().split("+"))
    return m.group(1), _typed(m.group(1), params)


def _typed(name: str, params: dict) -> dict:
    """A spec's 0 or 1 as a bool where the policy's constant defaults to a bool: a spec writes
    `shadow_cache=1`, and adaptive refuses the float 1.0 for its bool constants (since
    6f0b3eb), so every adaptive candidate of `TUNE_CANDIDATES` failed to run. Equal to the
    number as saved (True == 1.0); other values are left for the policy to refuse."""
    cls = POLICY_CLASSES.get(name)
    if cls is None:
        return params
    defaults = inspect.signature(cls).parameters
    out = dict(params)
    for k, v in params.items():
        if k in defaults and isinstance(defaults[k].default, bool) and v in (0.0, 1.0) \
                and not isinstance(v, tuple):
            out[k] = bool(v)
    return out


def split_specs(text: str) -> list[str]:
    """Comma-separated policy specs; commas inside a spec's brackets stay in it."""
    return [x for x in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", text) if x.strip()]


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/policies.py"))
