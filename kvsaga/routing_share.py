"""The fleet fair-share check of a steal (split from kvsaga/routing.py): whether a tenant
above its share is held back because a tenant below its share has work waiting that an idle
replica could take (`ShareCheck._held_back`). Pure Python, no torch."""

from __future__ import annotations

import functools

from kvsaga._validate import is_int


class ShareCheck:
    """Mixin of `KvsagaRouter`: `_held_back` and what it reads. It reads the router's
    `fair` (`FairShare`), `config`, `tenant_steps`, `replica_sessions` and `in_flight`,
    and calls its `waiting` and `_most_room` (`ArrivalBook`)."""

    def _held_back(self, tenant: str, idle: list[str], stats) -> bool:
        """Fair share holds a steal back for `tenant` (`FairShare.holds_back`): it is above
        `steal_max_share` while another tenant below its fair share has work waiting that
        one of `idle` could take (`_could_go`), as this router sees it: a step it sent
        there, not finished, on a replica with steps waiting. Work that no idle replica
        has room for held back every steal for the tenants above their share, the idle
        replicas taking nothing for as long as it waited (review s48 roomdiff 1). Only the
        tenants below their share are looked at: `holds_back` drops the others unread.
        What every (tenant, replica) pair reads is found once a decision: the tenants'
        share ratios (`FairShare.share_ratios`), each replica's steps waiting, and the
        most room an idle replica shows (`_most_room`): with 64 tenants, a share ratio
        for each summed every tenant's service, and each pair tested the idle replica's
        room, its arrivals walked again (12.7 ms a decision at 64 replicas x 4,000
        sessions in flight; routing3)."""
        return self.fair.holds_back(tenant, self._waiting_below(tenant, idle, stats),
                                    self.config.steal_max_share)

    def _waiting_below(self, tenant: str, idle: list[str], stats):
        """The tenants but `tenant` below their fair share with work waiting that one of
        `idle` could take (`_held_back`), lazily: `holds_back` reads them only when
        `tenant` is above `steal_max_share`, and stops at the first."""
        steps = self.tenant_steps
        ratios = self.fair.share_ratios(t for t in steps if t != tenant)
        room = functools.cache(lambda: self._most_room(idle, stats))
        hot: dict[str, bool] = {}  # replica -> it has steps waiting
        for t, where in steps.items():
            if t == tenant or not ratios[t] < 1.0:
                continue
            for x, n in where.items():
                if x not in self.in_flight:
                    continue
                waits = hot.get(x)
                if waits is None:
                    waits = hot[x] = self.waiting(x, stats) > 0
                if waits and self._could_go(t, x, n, room, stats):
                    yield t
                    break

    def _could_go(self, tenant: str, x: str, steps: int, room, stats) -> bool:
        """Whether one of `tenant`'s `steps` unfinished steps on replica `x` could go to an
        idle replica: a one-shot step (the tenant's next one is placed afresh, no KV to
        import), or a session's that the idle replica with the most room (`room()`,
        `_most_room`) has room for (`_room_for`'s test) at its size in `x`'s report (not
        listed there: it could). It reads `tenant`'s sessions on `x` only
        (`replica_sessions`), and the idle replicas' room once a decision: it walked every
        session in flight for each replica with work waiting, each session's room tested
        on every idle replica (64 replicas, 4,000 sessions in flight: 38 ms a decision;
        review s52 routing 1), then every tenant's sessions on `x` for each tenant (16
        tenants: 11 ms; diffrouting 1)."""
        st = stats.get(x)
        listed = st.session_tokens if st is not None else {}
        least = None  # the smallest of its sessions there: if it has no room, none has
        for s, n in self.replica_sessions.get(x, {}).get(tenant, {}).items():
            steps -= n
            tokens = listed.get(s)
            if type(tokens) is not int and not is_int(tokens):  # (an int: one test)
                return True
            if least is None or tokens < least:
                least = tokens
        if steps > 0 or least is None:
            return steps > 0
        return least <= room()
