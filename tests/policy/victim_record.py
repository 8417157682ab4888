"""A recorded workload and the victims each policy names on it: the guard that a change made
for speed leaves every policy's decisions as they were (tests/policy/test_victim_record.py).

Three seeded walks, time moving in steps from 0 to seconds so that grid points, TTLs and
relearning come up: `ops`, the manager's calls at random (`apply` of test_properties.py:
steps begun, allocated, finished with tool hints, preempted, ended; pause and resume hints;
ticks; transfers) over 32 sessions sharing short prefixes, so that every victim class (dead,
plain, paused, preempted) comes up; `agents`, 48 sessions with contexts of their own that
pause on tools (the eviction bench's shape: whole paused sessions leave at once), each
prompt the last 36 tokens of context plus new ones: a window that slides once a context
passes 36 tokens (then most prompts share no prefix with the last context), not a context
that grows step by step; and `grow`, the same 48 sessions with contexts that do grow step
by step (each prompt the whole context plus new tokens, so a resume hits its own paused
context as a prefix), a session ending where its context would pass `GROW_CAP` tokens
instead of sliding. `ops` (a 28-token window over the computed tokens) and `agents` keep
windows, and so disown dead blocks at `finish_step` and `preempt`; `grow` never does. The
record of a run is every `choose_victims` answer and every offload-or-discard choice, in
order, plus the set of cached blocks after each call (which also covers a policy the
manager evicts for without asking it, as `lru` on the C++ core); the fixture keeps a
SHA-256 of each record, per policy and pool.

A ranking changed on purpose changes its record: regenerate the fixture with
`python -m tests.policy.victim_record --write` (from the repository root) and say so in the
commit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
from pathlib import Path

from kvsaga import OutOfBlocks
from kvsaga.policy import make_policy
from tests.policy.helpers import build, make
from tests.policy.test_properties import OPS, apply

FIXTURE = Path(__file__).with_name("victim_record.json")
# Policy specs: a name, or a name and its keyword arguments.
SPECS: dict[str, tuple[str, dict]] = {
    "lru": ("lru", {}),
    "ttl": ("ttl", {}),
    "saga": ("saga", {}),
    "graph": ("graph", {}),
    "belady": ("belady", {}),
    "oracle-ttl": ("oracle-ttl", {}),
    # adaptive before the fifteenth session's default (shadow caches, tests/policy/
    # test_shadow.py): realized regret, 5% margin, as recorded
    "adaptive": ("adaptive", {"shadow_cache": False, "switch_margin": 0.05}),
    "adaptive-all": ("adaptive", {"experts": ("graph", "ttl", "saga", "lru"),
                                  "shadow_share": 1.0, "realized": False,
                                  "shadow_cache": False, "switch_margin": 0.05}),
    # the default before the fourteenth session (four experts, realized regret), kept covered
    # now that `adaptive`'s default experts are graph and ttl
    "adaptive-four": ("adaptive", {"experts": ("graph", "ttl", "saga", "lru"),
                                   "realized": True, "shadow_cache": False,
                                   "switch_margin": 0.05}),
}
POOLS = {"gpu64": (64, 0), "gpu48-host16": (48, 16)}
STEPS = (0.0, 0.0, 4e-4, 1e-3, 3e-3, 0.02, 0.05, 0.4, 2.0, 7.0)
TOOLS = ("search", "edit", "test", "shell")


def _ops_call(m, rng: random.Random, now: float) -> float:
    op = rng.choice(OPS)
    return apply(m, op, rng.randrange(32), rng.randrange(1, 15), rng.randrange(4), now)


def _wait_or_hint(m, rng: random.Random, sid: str, s, r: float, now: float) -> bool:
    """A session's call that makes no step (shared by `_agents_call` and `_grow_call`, in
    the same order of draws from `rng`): one left running by a failed allocation is
    preempted; else, with `r` under 0.15, a resume or pause hint or the session's end.
    True where it made one of these calls."""
    if s is not None and s.is_running:  # its allocation found no room: it waits
        m.preempt(sid, now=now)
        return True
    if s is not None and r < 0.15:
        if r < 0.05:
            m.resume_hint(sid, now=now)
        elif r < 0.1:
            m.pause_hint(sid, now=now, tool=rng.choice(TOOLS), expected_s=rng.choice([0.01, 1.0]))
        else:
            m.end_session(sid, now=now)
        return True
    return False


def _agents_call(m, rng: random.Random, now: float) -> float:
    """A step of one of 48 sessions (a new one, or a paused one resuming): the last 36
    tokens of its context plus new tokens of its own (a sliding window; `_grow_call`'s
    contexts grow), allocated, finished on a tool; now and then a pause or resume hint, or
    the session's end; a session left running by a failed allocation is preempted."""
    i = rng.randrange(48)
    sid = f"a{i}"
    s = m.sessions.get(sid)
    r = rng.random()
    if _wait_or_hint(m, rng, sid, s, r, now):
        return now
    ctx = list(s.token_ids) if s is not None else []
    prompt = (ctx + [1000 * i + len(ctx) + j for j in range(rng.randrange(2, 12))])[-36:]
    st = m.begin_step(sid, prompt, now=now, workflow=f"w{i % 3}")
    m.allocate_slots(sid, len(prompt) - st.num_cached_tokens, now=now)
    m.finish_step(sid, now=now, tool=rng.choice(TOOLS), last_step=r > 0.97)
    return now


GROW_CAP = 48  # tokens: a `grow` session's context ends rather than pass it


def _grow_call(m, rng: random.Random, now: float) -> float:
    """A step of one of 48 sessions, as `_agents_call`, but each prompt is the session's
    whole context plus new tokens (drawn at random: no two contexts share a block), so
    that a resume hits its own paused context as a prefix; a session whose context would
    pass `GROW_CAP` tokens ends instead (its next step opens a new context), and nothing
    slides."""
    i = rng.randrange(48)
    sid = f"g{i}"
    s = m.sessions.get(sid)
    r = rng.random()
    if _wait_or_hint(m, rng, sid, s, r, now):
        return now
    ctx = list(s.token_ids) if s is not None else []
    new = [rng.randrange(1 << 20) for _ in range(rng.randrange(2, 12))]
    if len(ctx) + len(new) > GROW_CAP:
        m.end_session(sid, now=now)
        return now
    prompt = ctx + new
    st = m.begin_step(sid, prompt, now=now, workflow=f"w{i % 3}")
    m.allocate_slots(sid, len(prompt) - st.num_cached_tokens, now=now)
    m.finish_step(sid, now=now, tool=rng.choice(TOOLS), last_step=r > 0.97)
    return now


WORKLOADS = {"ops": _ops_call, "agents": _agents_call, "grow": _grow_call}


def seeded_walk(m, workload: str, seed: int, calls: int, steps: tuple[float, ...] = STEPS,
                after=None) -> None:
    """`calls` calls of `workload` on manager `m` (one refused for want of blocks passed
    over), drawn from `random.Random(seed)`, time moving by a step drawn from `steps` after
    each; `after()`, if given, after each call."""
    rng, now = random.Random(seed), 0.0
    call = WORKLOADS[workload]
    for _ in range(calls):
        with contextlib.suppress(OutOfBlocks):
            now = call(m, rng, now)
        now += rng.choice(steps)
        if after is not None:
            after()


def _policy(spec: str):
    name, kw = SPECS[spec]
    return make_policy(name, **kw) if kw else build(name)


def record(spec: str, pool: str, workload: str, seed: int = 11, calls: int = 1200) -> list:
    """The record of `spec`'s run of the seeded `workload` in `pool` (module docstring)."""
    num_blocks, host = POOLS[pool]
    m = make(_policy(spec), num_blocks=num_blocks, num_host_blocks=host)
    out: list = []
    policy = m.policy
    policy.victim_queue = None  # lru's shortcut on the C++ core: the record asks it instead
    choose, action = policy.choose_victims, policy.action

    def named(n, now):
        v = choose(n, now)
        out.append(("v", n, list(v)))
        return v

    def chose(b, now):
        a = action(b, now)
        out.append(("a", b, int(a)))
        return a

    policy.choose_victims, policy.action = named, chose
    seeded_walk(m, workload, seed, calls,
                after=lambda: out.append(("c", [b for b in range(num_blocks) if m.is_cached(b)])))
    m.check_integrity()
    return out


def digest(rec: list) -> str:
    return hashlib.sha256(json.dumps(rec).encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {FIXTURE.name}")
    args = ap.parse_args()
    got = {f"{w}/{p}/{s}": digest(record(s, p, w)) for w in WORKLOADS for p in POOLS
           for s in SPECS}
    print(json.dumps(got, indent=1))
    if args.write:
        FIXTURE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
