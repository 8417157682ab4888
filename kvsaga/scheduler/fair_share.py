"""Agent Fair Share: which tenant's waiting session the `workflow` scheduler admits next, and
(below, "Compute") how a batch step's tokens are split among tenants.

Each tenant has a weight (1 by default) and a deficit. At each session admission, every
backlogged tenant (one with a session waiting for admission) is credited its weight share of
that admission and the admitted tenant is debited 1; the tenant with the largest deficit
goes next (ties: the oldest waiting session). Deficits restart at 0 whenever the backlogged
set changes.

Only admissions in fair order are charged: those of a backlogged tenant whose deficit is the
largest (`FairShare.charge`), whichever of its sessions goes (its head, a session
backfilled behind the head, or a demoted session of it coming back). The admissions of any
other tenant are work-conserving and not charged: a session of another tenant that holds
less than its memory share admitted while the favoured tenant's next session cannot fit
(`_entitled_heads`), or another tenant's backfilled or demoted session. The memory shares
below bound those; charging them would push the admitted tenant's deficit below -1 and
void the bound (tests/test_manager_stateful.py found that sequence).

Deviation bound: a tenant's deficit is its weighted fair share of the charged admissions
minus its charged admissions. The backlogged tenants' deficits sum to 0 and each stays
above -1 (a tenant is debited only when its deficit is the largest, hence >= 0, and it is
credited a positive share first), so each stays below k - 1 (k tenants). Hence, while the backlogged
set stays the same, each tenant's admissions exceed its fair share by less than 1 and fall
short of it by less than k - 1: for two tenants, less than one session either way.
tests/scheduler/test_fair_share.py checks it on random weights and admission sequences.

Memory (in `WorkflowScheduler`): with k >= 2 tenants present (admitted or waiting), tenant
t's share of the tiers is limit x w_t / (sum of the present tenants' weights). When a
session of t waits and t's admitted working sets plus its own fit within t's share, it is
refused only while other tenants' active sessions (a step queued or running) hold the room:
other tenants' paused sessions above their shares are demoted for it (all that are needed,
or none when that cannot make room), and the next session of a tenant that does not fit
does not hold it back (it is tried next). When the admitted working sets outgrow the tiers
(contexts grew past their prediction), the shrink demotes only paused sessions of tenants
above their shares: a tenant within its share is not demoted for another's growth. Without
a second tenant nothing binds: a tenant alone uses all of the memory.
tests/scheduler/test_share.py and test_share_shrink.py check both sides.

Compute (`ComputeShares`, `WorkflowScheduler(share_step_tokens=N)`, default
`SHARE_STEP_TOKENS` 128; 0 = off): while two or more tenants compete in a batch step (a
request running or waiting), the competing tenant with the least weighted service (prefill
tokens computed for it in competing steps, over its weight; ties: a tenant with a step
waiting, then the running queue's order) is favoured: it may fill the step up to the token
budget. Every other competing tenant computes at most max(floor(N x w_t / sum of the other
competing tenants' weights), 1) tokens besides its decodes (`favoured_allowances`): a
running prefill chunk or an admitted step's first chunk takes only what its tenant has
left, a tenant with nothing left sits the step out, and its queued step does not hold back
another tenant's. Decodes (and 1-token chunks) are never cut by the share and are charged
first. Running requests take the step's one token budget in the running queue's
(admission) order, and the favoured tenant's chunk may take the whole budget (its
allowance), so a running prefill's chunk leaves one token of the budget per decode of
another tenant queued behind it (`_kept_behind`, session 57): before, another tenant's
decode behind the favoured tenant's long prefill waited as long as that prefill lasted. A
decode behind its own tenant's prefill still waits when that chunk takes the budget left,
as with one tenant (vLLM's order). Catch-up with a bounded lag (start-time fair queueing's
rule, less a lag): a tenant that enters competition, or comes back after a step without
work, starts at no less than the least weighted service of the tenants already competing
less `share_lag_tokens` (weighted: tokens per unit of weight, times its weight); when none
of them competes any more (tenants that all enter at once), at no less than the virtual
time less the lag: the least weighted service of the last two or more tenants that
competed, never lowered.
Without a floor a tenant joining a long-running server late would be favoured until it
matched the incumbents' whole history; with no lag (0: 2842931's rule) a light agent
tenant, which has a step without work at every tool pause, lost at each pause the credit it
was owed and rode in the heavy tenant's steps again (bench/RESULTS.md, the noisy-neighbour
lines). The lag lets it keep up to that much credit across a pause.

Under `decode_stall`'s prefill cap (a step's prompt tokens capped while steps decode), the
favoured tenant's running prefills keep up to `share_within_cap` of the cap ahead of the
other tenants' chunks, which take the rest in the running queue's order within their
allowances (`favoured_room`; 0: queue order alone, the rule before session 41, under which
the others' chunks took the whole cap first).

Why favour the tenant behind rather than split the step evenly (the rule before): a light
tenant's steps otherwise ride in batch steps full of a heavy tenant's prefill (its decodes
wait for the whole step), and an even split caps the light tenant's own prefill too; its
mean TCT was above its TCT alone on its 1/k of the GPU (bench/RESULTS.md, noisy
neighbour). Max-min fairness gives a tenant that asks for less than its share all it asks.

Bounds (tests/scheduler/test_share_compute.py checks both): (1) per step, a competing tenant
that is not favoured computes at most its cap above plus its decodes, so a step that carries
the favoured tenant's work holds at most N + (number of other competing tenants) tokens of
the others' prefill (each cap is at least 1 token, so a cap whose floor is 0 adds one token
above N); (2) service, two tenants: while both have more work than a step holds and budget
>= N x (1 + largest weight / smallest weight), the spread of their weighted service (largest
minus smallest service / weight) never grows past max(its start, budget / smallest weight):
the tenant behind gains more per step than the one ahead until it overtakes it, by at most
one step's budget; (3) lag: a tenant entering competition starts at most `share_lag_tokens`
of weighted service behind the least-served tenant already there (any tenants, weights and
demands), or, when none of those is still competing, at most the lag behind the virtual
time, so a tenant joining late is favoured only until it makes up at most the lag
(plus one step's budget), not until it matches the incumbents' whole history (nor,
arriving together with a returning tenant, that tenant's whole past service). With two
tenants that both have more work than a step holds whenever both compete, and the budget
condition of (2), the spread of weighted service, once the second has entered, never
exceeds max(share_lag_tokens, budget / smallest weight, the lead the entrant had then),
across any sequence of entries and exits: an entry raises the one behind to at most the
lag behind and lowers nobody, a tenant alone is not counted, and (2) holds between
entries. tests/scheduler/test_fair_share_lag.py checks both on random input (the spread
test fails without the catch-up) and a late tenant through the scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from kvsaga.policy.bounded import TRACKED_TENANTS
from kvsaga.scheduler.base import check_float, check_int

# `WorkflowScheduler(share_step_tokens=..., share_lag_tokens=...)`'s defaults: the pick of
# `python bench/scheduling_mix.py` (session 13, on 0eb44ff's code, AFS fit seeds 102-109,
# both mixes and capacities, 32 points) by a rule written before that fit ran: the lowest
# mean afs_max_slowdown_ratio among the arms whose mean TCT is within 3% of the share off at
# every fit point (`scheduling_mix.pick_default`). Off / (64, 128, 256, 512) x lag 8192:
# mean ratio 1.908 / 1.543, 1.618, 1.715, 1.810; 128 with lag 8192 is the only arm within 3%
# everywhere (worst +0.4%, noisy seed 106 25%; mean TCT 24.36 -> 21.57 s), so the share is
# on by default since then (it was opt-in: session 12's rule refused any cost at any point).
SHARE_STEP_TOKENS = 128
SHARE_LAG_TOKENS = 8192.0  # one batch step of the preset's 8192-token budget
# `WorkflowScheduler(share_within_cap=...)`: the part of `decode_stall`'s prefill cap that
# the favoured tenant's running prefills keep (`ComputeShares.favoured_room`). Session 41's
# pick on the AFS fit seeds 102-109 (32 mix cases, `bench/scheduling_veto_noise.py run
# --defaults '{"share_within_cap": X}'`), by a rule written after the three parts' figures
# were read (the one written before, no case's mean TCT up over 5%, was met by none, nor by
# a null run): among the parts (1, 0.5, 0.25) that pass the calibrated AFS veto, the
# lowest mean change of log ratio whose mean TCT (geometric mean over the cases) stays within
# the null runs' own drift (0.88%: "slow" x1.0088, "jitter1" x0.9995). 1: veto -0.0437,
# goal cases 19 -> 22, mean TCT x1.0110 (outside); 0.5: -0.0242, 19 -> 20, x0.9917; 0.25:
# -0.0141, 19 -> 20, x1.0049. (bench/RESULTS.md, "Agent Fair Share of compute under the
# prefill cap".)
SHARE_WITHIN_CAP = 0.5
# The weights `check_weights` accepts. A tenant's turn comes at least once every ~(largest /
# smallest weight) competing steps (bound (2) below), so the ratio is what a light tenant
# waits: 1e12 at these bounds, already far past any useful ratio. Outside them the
# arithmetic itself fails: 1e308 overflowed a compute cap (int(inf): OverflowError out of
# `schedule`) and the shares' weight sums, and a subnormal weight made weighted service inf.
MIN_TENANT_WEIGHT = 1e-6
MAX_TENANT_WEIGHT = 1e6


def check_weights(weights: object) -> dict[str | None, float]:
    """`WorkflowScheduler(tenant_weights=...)`, checked: a mapping (or None: every tenant
    weighs 1) of tenant names (str or None) to numbers from `MIN_TENANT_WEIGHT` (1e-6) to
    `MAX_TENANT_WEIGHT` (1e6); ValueError naming the parameter and the bound otherwise (a
    list or a number failed deep in `dict()` with a TypeError)."""
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        raise ValueError(f"scheduler parameter tenant_weights must be a mapping of tenant to "
                         f"weight, got {type(weights).__name__} {weights!r}")
    for t, w in weights.items():
        if t is not None and not isinstance(t, str):
            raise ValueError(f"scheduler parameter tenant_weights: tenant {t!r} must be a str "
                             f"or None")
        check_float(f"tenant_weights[{t!r}]", w, 0.0, strict=True, finite=True)
        if not MIN_TENANT_WEIGHT <= w <= MAX_TENANT_WEIGHT:
            raise ValueError(f"scheduler parameter tenant_weights[{t!r}] must be from "
                             f"{MIN_TENANT_WEIGHT:g} to {MAX_TENANT_WEIGHT:g} (beyond, a light "
                             f"tenant's turn would come once in more than 1e12 steps, and the "
                             f"share arithmetic overflows), got {w!r}")
    return dict(weights)


class FairShare:
    """Deficits of the backlogged tenants (see the module docstring).

    Args:
        weights: weight per tenant; absent tenants weigh 1.
    """

    def __init__(self, weights: Mapping[str | None, float]) -> None:
        self.weights = dict(weights)
        self.deficits: dict[str | None, float] = {}  # backlogged tenants only

    def weight(self, tenant: str | None) -> float:
        return self.weights.get(tenant, 1.0)

    def backlog_changed(self, backlogged: Iterable[str | None]) -> None:
        """The set of backlogged tenants changed: their deficits restart at 0."""
        self.deficits = dict.fromkeys(backlogged, 0.0)

    def next_tenant(self, oldest: Callable[[str | None], float]) -> str | None:
        """The backlogged tenant with the largest deficit; ties go to the smallest
        `oldest(tenant)` (the arrival of its oldest waiting session)."""
        d = self.deficits
        if len(d) == 1:
            return next(iter(d))
        return max(d, key=lambda t: (d[t], -oldest(t)))

    def charge(self, tenant: str | None) -> None:
        """`tenant` had a session admitted: credit every backlogged tenant its share of the
        admission and debit `tenant` 1. A tenant not backlogged, or admitted out of fair
        order (its deficit is not the largest), is not charged."""
        d = self.deficits
        if tenant not in d or d[tenant] < max(d.values()):
            return  # out of fair order (see the module docstring): not charged
        total = sum(self.weight(t) for t in d)
        for t in d:
            d[t] += self.weight(t) / total
        d[tenant] -= 1.0


def favoured_allowances(tenants: Collection[str | None],
                        weights: Mapping[str | None, float], served: Mapping[str | None, float],
                        step_tokens: int, budget: int) -> tuple[str | None, dict[str | None, int]]:
    """Agent Fair Share of one batch step's compute: the favoured tenant and the tokens each
    competing tenant may have computed in the step (see the module docstring, "Compute").

    `tenants`: the competing tenants, in tie order (how much each asks for does not matter:
    a favoured tenant's demand is bounded by the budget anyway). `served`: tokens computed
    for each tenant in earlier competing steps (raised on entry by `ComputeShares`'s
    catch-up rule). The tenant with the least `served / weight` (ties: the first in
    `tenants`) gets `budget`; each other one max(floor(step_tokens x its weight / the other
    tenants' weights), 1).

    Raises:
        ValueError: fewer than two tenants, or a weight that is not positive.
    """
    if len(tenants) < 2:
        raise ValueError(f"compute shares need two or more competing tenants, got "
                         f"{list(tenants)!r}")
    w = {t: weights.get(t, 1.0) for t in tenants}
    bad = [t for t, x in w.items() if not x > 0]
    if bad:
        got = ", ".join(f"{t!r}: {w[t]!r}" for t in bad)
        raise ValueError(f"tenant weights must be > 0, got {got}")
    fav = min(tenants, key=lambda t: served.get(t, 0.0) / w[t])
    rest = sum(x for t, x in w.items() if t != fav)
    out = {t: max(int(step_tokens * w[t] / rest), 1) for t in tenants if t != fav}
    out[fav] = budget
    return fav, out


class ComputeShares:
    """Agent Fair Share of compute, a part of `WorkflowScheduler` (a mixin): while two or
    more tenants compete (a request running or waiting), each batch step follows
    `favoured_allowances`: the tenant with the least weighted service so far may fill the
    step, each other one computes at most its part of `share_step_tokens` besides its
    decodes; a running request's prefill chunk and an admitted request's first chunk take
    only what their tenant's allowance has left (none left: it sits the step out); a tenant
    entering competition starts at no less than the least weighted service of those already
    in it less `share_lag_tokens` (`_catch_up`). The share never cuts a decode, so a step in
    which every running request decodes, within the budget, runs them all (the simulator's
    decode runs rely on it), and a running prefill's chunk leaves one token per decode of
    another tenant queued behind it (`_kept_behind`); a decode behind its own tenant's
    prefill still waits when that chunk takes the budget left (the module docstring).
    With fewer than two tenants competing, or `share_step_tokens` 0, nothing changes (one
    tenant, the common case, pays nothing for the default being on). Only chunks computed
    are billed: a step's bills of chunks whose forward pass failed (`Scheduler.discard`), of
    a prefill that preempted itself (`_ungrant`), or of a `schedule` that raised are taken
    back (`_unbill`).

    Why: a tenant with many sessions otherwise fills every batch step with its prefill
    chunks, and another tenant's decodes ride in those long steps (bench/RESULTS.md, the
    noisy-neighbour rows).
    """

    share_step_tokens = SHARE_STEP_TOKENS
    share_lag_tokens = SHARE_LAG_TOKENS  # the catch-up's lag (`_catch_up`), weighted tokens
    share_within_cap = SHARE_WITHIN_CAP  # the favoured tenant's part of a prefill cap
    _allow: dict[str | None, int] | None = None
    # The favoured tenant's running prefills not granted yet in this step (id -> tokens):
    # what `favoured_room` keeps for them under a cap on the step's prefill.
    _fav_reserved: dict[int, int] | None = None
    # Per running prefill (by id), the other tenants' decodes queued behind it (`_kept_behind`).
    _behind: Mapping[int, int] = {}
    _served: dict[str | None, float]  # tokens computed per tenant in competing steps
    # The last step's bills (`_serve`), per tenant: its service before the first of them and
    # each (request, tokens) billed, in order: what `_unbill` takes back from.
    _bills: dict[str | None, tuple[float | None, list[tuple[object, int]]]]
    _competing: frozenset[str | None] | set[str | None] = frozenset()  # at the last step
    # The catch-up's floor when no competing tenant stays (`_catch_up`): the greatest least
    # weighted service of any two or more tenants that competed, read a step later.
    _virtual: float = 0.0

    def _init_compute_share(self, step_tokens: object, lag_tokens: object,
                            within_cap: object = SHARE_WITHIN_CAP) -> None:
        """Check and set `WorkflowScheduler`'s `share_step_tokens`, `share_lag_tokens`
        (finite: the lag is what bounds how long a newcomer is favoured) and
        `share_within_cap` (`favoured_room`)."""
        self.share_step_tokens = check_int("share_step_tokens", step_tokens, 0)
        self.share_within_cap = check_float("share_within_cap", within_cap, 0.0, finite=True)
        if self.share_within_cap > 1:
            raise ValueError(f"scheduler parameter share_within_cap must be in [0, 1], got "
                             f"{within_cap!r}")
        lag = check_float("share_lag_tokens", lag_tokens, 0.0)
        if math.isinf(lag):
            raise ValueError(f"scheduler parameter share_lag_tokens must be finite (it bounds "
                             f"how far behind a tenant enters competition), got {lag_tokens!r}")
        self.share_lag_tokens = lag
        self._served = {}
        self._bills = {}

    def _compete(self, needs: Sequence[int]) -> dict[str | None, int] | None:
        """The step's allowances, from the running requests' `needs` (None: no sharing)."""
        self._fav_reserved = None
        if not self.share_step_tokens:
            return None
        # Tenants with a step waiting first: they win ties of service (at the start, the
        # tenant that would wait goes ahead of the one whose prefill runs).
        tenants = dict.fromkeys(r.tenant for r in self._waiting_heads())
        tenants.update(dict.fromkeys(r.tenant for r in self.running))
        self._catch_up(tenants)
        if len(tenants) < 2:
            return None
        fav, allow = favoured_allowances(tenants, self.tenant_weights, self._served,
                                         min(self.share_step_tokens,
                                             self.max_num_batched_tokens),
                                         self.max_num_batched_tokens)
        reserved = {}
        for r, n in zip(self.running, needs, strict=True):
            if n == 1:  # a decode is never cut: charged first (not served: see `_serve`)
                allow[r.tenant] -= 1
            elif n > 1 and r.tenant == fav and self.share_within_cap:
                reserved[id(r)] = n
        self._fav_reserved = reserved
        self._behind = self._decodes_behind(needs)
        return allow

    def _decodes_behind(self, needs: Sequence[int]) -> dict[int, int]:
        """Per running prefill (by id), the decodes (and 1-token chunks) of other tenants
        queued behind it in the running queue, whose `needs` are this step's: the tokens
        its chunk leaves in the budget (`_kept_behind`)."""
        behind: dict[int, int] = {}
        per_tenant: dict[str | None, int] = {}  # decodes seen so far, from the queue's end
        total = 0
        for r, n in zip(reversed(self.running), reversed(needs), strict=True):
            if n == 1:
                per_tenant[r.tenant] = per_tenant.get(r.tenant, 0) + 1
                total += 1
            elif n > 1 and total > per_tenant.get(r.tenant, 0):
                behind[id(r)] = total - per_tenant.get(r.tenant, 0)
        return behind

    def _kept_behind(self, req) -> int:
        """One token per decode of another tenant queued behind the running prefill `req`
        (while tenants compete): the favoured tenant's allowance is the whole budget, so
        its long prefill ahead of another tenant's decode took every step's budget until
        it was done, and that decode waited as long (docs/scheduler.md, "Compute": a
        1000-token prefill of a tenant weighted 1000 ahead of another tenant's decode,
        budget 64, held the decode 14 steps). The prefill's own tenant's decodes behind it
        still wait as they do with one tenant (vLLM's order)."""
        if self._allow is None:
            return 0
        return self._behind.get(id(req), 0)

    def is_favoured(self, req) -> bool:
        """Whether `req` is a running prefill of the favoured tenant not granted yet in this
        step (`favoured_room`)."""
        reserved = self._fav_reserved
        return reserved is not None and id(req) in reserved

    def favoured_room(self, req) -> int:
        """Prompt tokens of the favoured tenant's running prefills not granted yet in this
        step, which a cap on the step's prefill keeps for them ahead of `req` (0 when `req`
        is the favoured tenant's, or nobody is favoured). Why: the running prefills are
        granted in the running queue's order, so under a cap smaller than the budget
        (`decode_stall`'s `decode_prefill_tokens`, 128 of 8192) the other tenants' chunks,
        each within its allowance of `share_step_tokens`, took the whole cap first, and the
        favoured tenant's prefill ran a few tokens a step (session 41, the noisy-neighbour
        mix at AFS seed 181 50%: the light tenant's steps took 159 prefill chunks a session
        against the heavy tenant's 84; `python bench/scheduling_afs_split.py noisy:181:0.5
        --time --defaults '{"share_within_cap": 0}'`)."""
        reserved = self._fav_reserved
        if not reserved or id(req) in reserved:
            return 0
        return sum(reserved.values())

    def _catch_up(self, tenants: Collection[str | None]) -> None:
        """The catch-up rule with a bounded lag: a tenant that enters competition (or comes
        back after a step without work) has its weighted service raised to at least the
        least weighted service of the tenants that were already competing less
        `share_lag_tokens`; when none of those still competes, to at least the virtual time
        less the lag (`_virtual`: the least weighted service of the last two or more
        tenants to compete, never lowered). Without a floor a tenant joining late, with no
        service, would be favoured until it matched the incumbents' whole history (in a
        long-running server, capping them for an unbounded time); the lag lets a tenant
        back from a short pause keep the credit it had (up to the lag). Why the virtual
        time: a new tenant arriving with a returning one (no tenant of the step before
        still there) was raised to nothing and favoured until it matched the returning
        tenant's whole past service; never lowered, so that entries one after another with
        nobody staying do not each lose the lag."""
        before = self._competing
        self._competing = set(tenants)
        w = self.tenant_weights
        served = self._served
        if len(before) >= 2:  # service is counted only while two or more compete
            least = min(served.get(t, 0.0) / w.get(t, 1.0) for t in before)
            self._virtual = max(self._virtual, least)
        if len(served) > TRACKED_TENANTS:
            # Bounded (kvsaga/policy/bounded.py): tenants come and go; the ones not
            # competing now are forgotten, and one that comes back enters as a new one
            # does, raised to the floor below.
            for t in [t for t in served if t not in self._competing]:
                del served[t]
        stay = [t for t in tenants if t in before]
        if len(stay) == len(tenants):
            return
        least = min((served.get(t, 0.0) / w.get(t, 1.0) for t in stay), default=self._virtual)
        floor = least - self.share_lag_tokens
        for t in tenants:  # (raised only: a tenant alone keeps no service, `_serve`)
            if t not in before and floor * w.get(t, 1.0) > served.get(t, 0.0):
                served[t] = floor * w.get(t, 1.0)

    def _serve(self, req, n: int) -> None:
        """Count `n` prefill tokens computed for `req`'s tenant in a competing step (a bill
        of this step: `_unbill` may take it back). Decodes are not counted: the share never
        cuts them, and a simulator's decode run (many decode steps decided at once) must
        leave the same service as its steps one by one."""
        tenant = req.tenant
        self._bills.setdefault(tenant, (self._served.get(tenant), []))[1].append((req, n))
        self._served[tenant] = self._served.get(tenant, 0) + n

    def _unbill(self, reqs) -> None:
        """Take back this step's bills of the requests `reqs` (their chunks are not
        computed): each tenant billed for one has its service recomputed from its value
        before the step's first bill plus the bills kept, in their order, so it is exactly
        what it would be had those chunks not been billed (subtracting could differ in the
        last bit of a float service)."""
        ids = {id(r) for r in reqs}
        for tenant, (before, bills) in self._bills.items():
            kept = [(r, n) for r, n in bills if id(r) not in ids]
            if len(kept) == len(bills):
                continue
            bills[:] = kept
            if before is None and not kept:
                del self._served[tenant]
                continue
            served = 0 if before is None else before
            for _, n in kept:
                served += n
            self._served[tenant] = served

    def _uncharge(self, chunks) -> None:
        super()._uncharge(chunks)
        self._unbill([r for r, _ in chunks])

    def schedule(self, now, executor):
        """As `Scheduler.schedule`; one that raises leaves no bill of its own (the executor
        takes back the step's slots: nothing of it is computed)."""
        if not self.share_step_tokens:  # off: no pass over the running requests
            return super().schedule(now, executor)
        self._bills = {}
        needs = [executor.num_new_tokens(r) for r in self.running]
        self._allow = self._compete(needs)
        try:
            return super().schedule(now, executor)
        except BaseException:
            self._unbill([r for _, bills in self._bills.values() for r, _ in bills])
            raise
        finally:
            self._allow = self._fav_reserved = None

    def decode_run_starts(self, now: float) -> None:
        """The competing tenants as `schedule`'s `_compete` records them at the run's first
        step, newcomers caught up (`_catch_up`). Without it a tenant that left at a finish
        and came back while every step between was in a decode run stayed recorded as
        competing and was not caught up: the simulator's fast path then served it
        differently from `Simulator(reference=True)` and the engine (review of session 42:
        a returning tenant's service 20017 against 64609 tokens)."""
        super().decode_run_starts(now)
        if self.share_step_tokens:
            self._bills = {}
            self._compete([1] * len(self.running))
            self._fav_reserved = None

    def admit_waiting(self, now, budget, executor, out) -> None:
        alone = self._allow is None  # a decode run's call: every running request decodes
        if alone and self.share_step_tokens:
            self._bills = {}
            self._allow = self._compete([1] * len(self.running))
        try:
            super().admit_waiting(now, budget, executor, out)
        finally:
            if alone:
                self._allow = self._fav_reserved = None

    def _grant(self, req, n: int) -> int:
        if self._fav_reserved:
            self._fav_reserved.pop(id(req), None)  # visited: its room is its own grant now
        allow = self._allow
        if allow is None or n <= 1:
            return n
        n = max(min(n, allow[req.tenant]), 0)
        allow[req.tenant] -= n
        self._serve(req, n)
        return n

    def _ungrant(self, req, n: int) -> None:
        super()._ungrant(req, n)
        self._unbill([req])

    def _chunk_limit(self, req, budget: int) -> int:
        allow = self._allow
        if allow is None:
            return budget
        return max(min(budget, allow.get(req.tenant, budget)), 0)

    def _charge_chunk(self, req, n: int) -> None:
        if self._allow is not None and req.tenant in self._allow:
            self._allow[req.tenant] -= n
            self._serve(req, n)

    def _share_backfill(self, head) -> list:
        """When `head`'s tenant has no allowance left in this step: the first waiting
        request of each tenant that has some (so one tenant's queue does not hold the
        others' compute back)."""
        allow = self._allow
        if allow is None or allow.get(head.tenant, 1) > 0:
            return []
        seen = {head.tenant}
        out = []
        for r in self._waiting_heads():
            if r.tenant not in seen and allow.get(r.tenant, 0) > 0:
                seen.add(r.tenant)
                out.append(r)
        return out
